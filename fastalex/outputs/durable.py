"""Files that survive interruptions: whole lines appended and fsynced a batch at a time, a
full disk said as such, one writer per output (a lock holding its pid), and the scan of a
JSON-lines file that cuts off a last line a crash left torn. See :mod:`fastalex.outputs`."""

from __future__ import annotations

import errno
import json
import os
import time

from ..errors import FastalexError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

__all__ = ["OutputError", "OutputBusyError", "RunMismatchError", "JournalError", "DiskFullError", "FULL",
           "write_all", "fsync_append", "fsync_dir", "check_output_path", "scan_jsonl", "scan_numbered",
           "not_a_record", "Lock", "Appender", "FLUSH_SECONDS"]

FLUSH_SECONDS = 2.0


class OutputError(FastalexError, ValueError):
    """An output (or its journal) that this run cannot use as asked: the CLI exits 2."""


class OutputBusyError(OutputError):
    """Another run is writing the same output."""


class RunMismatchError(OutputError):
    """``resume`` with settings other than those of the run that made the output."""


class JournalError(OutputError):
    """A journal (or JSON-lines output) line that is JSON but not one of its records."""


class DiskFullError(FastalexError, OSError):
    """No space left while writing an output or its journal (the journal keeps what was done)."""

    def __init__(self, message):
        super().__init__(message)
        self.errno = errno.ENOSPC

    def __str__(self):
        return self.args[0]


FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_append(fd, data: bytes):
    write_all(fd, data)
    os.fsync(fd)


def fsync_dir(path):
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(path, option="--output"):
    """``path`` as an output file: OutputError if it is a folder or its folder does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{option} {path}: the directory {parent} does not exist")
    return path


def scan_jsonl(path, repair=False):
    """The records of a JSON-lines file, skipping unparsable lines. With ``repair``, an
    incomplete last line (a write cut short) is truncated off the file."""
    return [r for _, r in scan_numbered(path, repair)]


def scan_numbered(path, repair=False):
    """``(line number, record)`` of each parsable line (see :func:`scan_jsonl`)."""
    records, good = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break  # torn: only the last line can lack its newline
            good += len(line)
            try:
                records.append((number, json.loads(line)))
            except ValueError:
                continue
    if repair and good < os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())
    return records


def not_a_record(path, number, record, what, fix):
    text = json.dumps(record)
    text = text if len(text) <= 60 else text[:57] + "..."
    return JournalError(f"{path} line {number}: {text} is not {what}; {fix}")


# ----------------------------------------------------------------------------- the lock

class Lock:
    """An exclusive ``flock`` on ``<path>.lock`` (holding this process's pid) while a run writes
    ``path``. Released (and the lock file removed) by :meth:`release`; a killed process's lock
    is released by the kernel."""

    def __init__(self, path):
        self.path = os.fspath(path) + ".lock"
        self.fd = None
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                who = f"pid {owner}" if owner else "another process"
                raise OutputBusyError(f"{path} is being written by another fastalex run ({who}, "
                                      f"holding {self.path}); wait for it to end, or write to another "
                                      f"file") from None
            try:  # the lock file we hold must still be the one at that name (a run that ended removes it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        write_all(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self):
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: a waiting run re-checks the name
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


# ----------------------------------------------------------------------------- appending

class Appender:
    """Whole lines appended to ``path`` in batches (one write + fsync per flush)."""

    def __init__(self, path, append, flush_every):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self.path = path
        self.fd = os.open(path, flags, 0o666)
        if append:
            os.lseek(self.fd, 0, os.SEEK_END)
        self.lines: list[str] = []
        self.flush_every = flush_every
        self.last = time.monotonic()

    def add(self, line: str):
        self.lines.append(line + "\n")
        if len(self.lines) >= self.flush_every or time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush(self):
        if self.lines and self.fd is not None:
            data, self.lines = "".join(self.lines).encode("utf-8", "surrogateescape"), []
            try:
                fsync_append(self.fd, data)
            except OSError as exc:  # the lines are dropped: at worst a torn last line, cut off on resume
                if exc.errno in FULL:
                    raise DiskFullError(f"no space left on the device writing {self.path}: free some "
                                        f"space, then rerun with --resume (what was written is kept)") from None
                raise
        self.last = time.monotonic()

    def close(self):
        if self.fd is not None:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = None
