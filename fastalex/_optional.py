"""Optional dependencies: import one, or say which extra installs it.

Every optional feature of fastalex goes through :func:`require`, so the error a user sees
when a package is missing always has the same form and names the pip command::

    ImportError: writing .parquet needs pyarrow: pip install 'fastalex[parquet]'
"""

from __future__ import annotations

import importlib

__all__ = ["install_hint", "require"]


def install_hint(extra: str) -> str:
    """The command that installs an extra: ``pip install 'fastalex[EXTRA]'``."""
    return f"pip install 'fastalex[{extra}]'"


def require(module: str, *, extra: str, purpose: str, package: str | None = None, alternative: str | None = None):
    """Import and return ``module`` (a dotted name), or raise ``ImportError`` saying
    "``purpose`` needs ``package``: pip install 'fastalex[``extra``]' (or ``alternative``)"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        also = f" (or {alternative})" if alternative else ""
        raise ImportError(f"{purpose} needs {package or module.split('.')[0]}: {install_hint(extra)}{also}") from None
