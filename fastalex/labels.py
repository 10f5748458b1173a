"""Class names: the 1000 ImageNet classes shipped with the package, or a file of your own.

A labels file has one class name per line, in class-index order; trailing blank lines are
ignored. ``imagenet_labels()`` is in torchvision's order (the order of its published weights).
"""

from __future__ import annotations

import functools
import os
from importlib import resources

from . import _files

__all__ = ["LabelsError", "imagenet_labels", "load_labels", "label_for"]

IMAGENET_NUM_CLASSES = 1000


class LabelsError(ValueError):
    """A labels file is missing, unreadable or has the wrong number of lines."""


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
    """Class names from a UTF-8 text file (a path or a ``file://`` URL), one per line; with
    ``num_classes`` the count must match. Only a regular file of at most
    :data:`fastalex._files.MAX_LABELS_BYTES` (16 MiB) is read: a FIFO or device is refused
    at once. Raises :class:`LabelsError`."""
    path = os.fspath(path)
    try:
        if _files.is_url(path) and _files.scheme_of(path) != "file":
            raise _files.FileProblem("is a URL; a labels file must be local (a path or file:///path)")
        data = _files.read_bounded(path, _files.MAX_LABELS_BYTES)
        text = data.decode("utf-8-sig")
    except _files.FileProblem as problem:
        if problem.missing:
            raise LabelsError(f"labels file {path} does not exist") from None
        raise LabelsError(f"labels file {path} {problem.reason}") from None
    except UnicodeDecodeError as exc:
        raise LabelsError(f"cannot read labels file {path}: it is not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    return _parse(text, path, num_classes)


def label_for(labels, index: int) -> str | None:
    """``labels[index]``, or None when there are no labels."""
    return None if labels is None else labels[index]
