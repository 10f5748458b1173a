"""Names that moved to another module keep working from their old one for a release, with a
:class:`DeprecationWarning` saying where they went.

A module whose names moved ends with::

    __getattr__ = moved("fastalex.weights", {"IMAGENET1K_V1": "fastalex.hub", ...})

The new module is imported by name when an old name is used (never at import time), so the
old module does not import the new one: the layers stay as docs/architecture.md draws them,
and ``lint-imports`` does not see these look-ups. They go away in fastalex 0.3.
"""

from __future__ import annotations

import importlib
import warnings

__all__ = ["moved", "REMOVED_IN"]

#: the release in which the old import paths go away
REMOVED_IN = "0.3"


def moved(old: str, names: dict[str, str]):
    """A module ``__getattr__`` for the module ``old``: each name of ``names`` (name -> the
    module it moved to) comes from its new module, with a DeprecationWarning naming it."""

    def __getattr__(name):
        new = names.get(name)
        if new is None:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {new}.{name}; import it from there ({old}.{name} goes "
                      f"away in fastalex {REMOVED_IN})", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
