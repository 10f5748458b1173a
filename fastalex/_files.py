"""Opening input files safely: regular files only, never blocking on a FIFO.

Weights and images are read only from regular files (symlinks followed). A FIFO, socket,
device or directory is refused before anything is read: reading a FIFO would wait forever
for a writer. The file is opened non-blocking, then checked with ``fstat`` on the open
descriptor, so even a FIFO swapped in between a check and the open cannot hang.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import FastalexError

__all__ = ["FileProblem", "open_regular"]


class FileProblem(FastalexError):
    """Why a path cannot be read as a regular file: ``reason`` completes "<path> ..."
    (``"is a FIFO (named pipe), not a regular file"``); ``missing`` for a file that does
    not exist (or a dangling symlink)."""

    def __init__(self, reason, missing=False):
        super().__init__(reason)
        self.reason, self.missing = reason, missing


def _kind(mode) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path):
    """``(binary file object, size in bytes)`` for ``path`` if it is a regular file, else
    :class:`FileProblem`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileProblem(f"is a symlink to {os.readlink(path)!r}, which does not exist", missing=True) from None
        raise FileProblem("not found", missing=True) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem("is a symlink loop (it leads back to itself)") from None
        if isinstance(exc, IsADirectoryError):
            raise FileProblem("is a directory, not a file") from None
        if isinstance(exc, PermissionError):
            raise FileProblem("cannot be read: permission denied") from None
        raise FileProblem(f"cannot be opened ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileProblem("is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"is a {_kind(info.st_mode)}, not a regular file; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise
