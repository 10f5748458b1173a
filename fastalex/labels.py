"""Class names: the 1000 ImageNet classes shipped with the package, or a file of your own.

A labels file has one class name per line, in class-index order; trailing blank lines are
ignored. ``imagenet_labels()`` is in torchvision's order (the order of its published weights).
"""

from __future__ import annotations

import functools
import os
from importlib import resources

__all__ = ["LabelsError", "imagenet_labels", "load_labels"]

IMAGENET_NUM_CLASSES = 1000


from .errors import LabelsError  # noqa: E402  (defined with the other exceptions)


def _parse(text: str, source: str, num_classes: int | None) -> tuple[str, ...]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsError(f"labels file {source} is empty")
    if num_classes is not None and len(lines) != num_classes:
        raise LabelsError(f"labels file {source} has {len(lines)} labels but the model has "
                          f"{num_classes} classes (one label per line expected)")
    return tuple(lines)


@functools.lru_cache(maxsize=None)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names (``imagenet_labels()[281] == "tabby"``), read once."""
    text = resources.files("fastalex").joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    return _parse(text, "fastalex/data/imagenet_classes.txt", IMAGENET_NUM_CLASSES)


def load_labels(path, num_classes: int | None = None) -> tuple[str, ...]:
    """Class names from a text file, one per line; with ``num_classes`` the count must match.
    Raises :class:`LabelsError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist") from None
    except IsADirectoryError:
        raise LabelsError(f"labels file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from None
    return _parse(text, path, num_classes)
