"""Reading inputs safely (regular files only, a size cap, and an overall deadline for
downloads), the URL rule, and writing a file atomically.

Weights, images and labels are read only from regular files (symlinks followed). A FIFO,
socket, device or directory is refused before anything is read: reading a FIFO would wait
forever for a writer, ``/dev/zero`` never ends. The file is opened non-blocking, then
checked with ``fstat`` on the open descriptor, so even a FIFO swapped in between a check and
the open cannot hang. ``file://`` URLs name local files and follow the same rule.

:func:`open_bounded` is the one reader for local paths and URLs (``file://``, ``http(s)://``,
and through fsspec ``s3://``, ``gs://``, ...): it refuses more than ``max_bytes`` (at once when
the size is known up front, else as soon as the count passes it), and an ``http(s)`` download
must finish within ``deadline`` seconds in all (connecting, headers and body: a server that
sends a byte a second is cut off at the deadline, not kept alive by each byte). Downloads
time out after :data:`READ_TIMEOUT` seconds without data (DNS lookups are the system's).

The limits are the module attributes below; they are read at each call, so a program (or a
test) may change them.
"""

from __future__ import annotations

import errno
import os
import tempfile
import socket
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from ._optional import require
from .errors import FastalexError

__all__ = ["FileProblem", "TooLarge", "DeadlineExceeded", "open_regular", "is_url", "scheme_of", "local_path",
           "fsspec_for", "open_bounded", "read_bounded", "describe_size", "atomic_write",
           "MAX_IMAGE_BYTES", "MAX_WEIGHTS_BYTES", "MAX_LABELS_BYTES", "IMAGE_DEADLINE",
           "WEIGHTS_DEADLINE", "READ_TIMEOUT"]

#: an image file or download larger than this is refused (twice the bytes of an 8-bit RGB
#: image at Pillow's decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``)
MAX_IMAGE_BYTES = 512 << 20
#: a weights file or download larger than this is refused (torchvision's AlexNet is 233 MiB;
#: a float64 checkpoint with its optimizer state fits)
MAX_WEIGHTS_BYTES = 2 << 30
#: a labels file larger than this is refused (1000 ImageNet names are 21 KiB)
MAX_LABELS_BYTES = 16 << 20
#: seconds one image download may take in all
IMAGE_DEADLINE = 60.0
#: seconds one weights download may take in all (233 MiB at 70 KB/s)
WEIGHTS_DEADLINE = 3600.0
#: seconds a download may wait for the connection or for the next bytes
READ_TIMEOUT = 30.0

_CHUNK = 1 << 20


class FileProblem(FastalexError):
    """Why a path or URL cannot be read: ``reason`` completes "<path> ..."
    (``"is a FIFO (named pipe), not a regular file"``); ``missing`` for a file that does
    not exist (or a dangling symlink)."""

    def __init__(self, reason, missing=False):
        super().__init__(reason)
        self.reason, self.missing = reason, missing


class TooLarge(FileProblem):
    """More bytes than the limit (``limit``)."""

    def __init__(self, reason, limit):
        super().__init__(reason)
        self.limit = limit


class DeadlineExceeded(FileProblem, TimeoutError):
    """A download that did not finish within its deadline (``deadline`` seconds)."""

    def __init__(self, reason, deadline):
        FileProblem.__init__(self, reason)
        self.deadline = deadline


def describe_size(n) -> str:
    """``512 MiB``, ``16 KiB``, ``100 bytes``, ``2.0 KiB (2,000 bytes)``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            if n % (1 << shift) == 0:
                return f"{n >> shift} {unit}"
            return f"{n / (1 << shift):.1f} {unit} ({n:,} bytes)"
    return f"{n} bytes"


def _kind(mode) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path, max_bytes=None):
    """``(binary file object, size in bytes)`` for ``path`` if it is a regular file (of at
    most ``max_bytes``, if given), else :class:`FileProblem` (:class:`TooLarge`)."""
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
        if max_bytes is not None and info.st_size > max_bytes:
            raise TooLarge(f"is too large: {describe_size(info.st_size)}, more than the limit of "
                           f"{describe_size(max_bytes)}", max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


# ----------------------------------------------------------------------------- URLs

def is_url(path) -> bool:
    """Whether ``path`` is a URL (``s3://...``, ``https://...``, ``file:///...``) rather than a
    local path."""
    return isinstance(path, str) and "://" in path[:32] and path.split("://", 1)[0].isidentifier()


def scheme_of(url) -> str:
    return url.split("://", 1)[0].lower()


def fsspec_for(url):
    """The ``fsspec`` module, to read ``url`` (``s3://``, ``gs://``, ...); ImportError naming
    the extra that installs it when it is missing."""
    return require("fsspec", extra="dask", purpose=f"reading {url}", alternative="pip install fsspec")


def local_path(url) -> str:
    """The local path a ``file://`` URL names (``file:///tmp/a%20b.jpg`` -> ``/tmp/a b.jpg``);
    :class:`FileProblem` for a ``file://`` URL naming another host."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FileProblem(f"names the host {parts.netloc!r}; a file:// URL must name a local file "
                          "(file:///path or file://localhost/path)")
    if not parts.path:
        raise FileProblem("names no file (file:///path expected)")
    return urllib.request.url2pathname(parts.path)


class _Watchdog:
    """Shuts down every socket of one download when its deadline passes, which wakes a read
    blocked on it whatever phase (TLS handshake, headers, body) it is in. It keeps a ``dup`` of
    each socket: shutting that down shuts the connection down, even after ``ssl`` has taken
    over the original descriptor."""

    def __init__(self, deadline):
        self.expired = False
        self._socks = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock):
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            expired = self.expired
        if expired:
            self._shutdown(dup)

    @staticmethod
    def _shutdown(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _expire(self):
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            self._shutdown(sock)

    def close(self):
        self._timer.cancel()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()


def _watched(connection_class, watchdog):
    """``connection_class`` (an ``http.client`` connection) whose sockets ``watchdog`` watches."""
    if watchdog is None:
        return connection_class

    class Watched(connection_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_and_watch(*a, **k):
                sock = create(*a, **k)
                watchdog.watch(sock)
                return sock

            self._create_connection = create_and_watch

    return Watched


def _opener(watchdog):
    """A urllib opener for http(s) only (a redirect elsewhere is refused), every connection
    watched by ``watchdog``."""

    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(_watched(http_class, watchdog), req, **kwargs)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(_watched(http_class, watchdog), req, **kwargs)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HTTP(), HTTPS(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class BoundedReader:
    """The bytes of a path or URL, in chunks (iterate), at most ``max_bytes`` of them, a
    download within ``deadline`` seconds; ``size`` is the length announced up front (a file's
    size, an HTTP ``Content-Length``) or None. Use :func:`open_bounded` (a context manager)."""

    def __init__(self, source, max_bytes, deadline=None):
        self.source, self.max_bytes, self.deadline = source, max_bytes, deadline
        self.size = None
        self._file = self._response = self._watchdog = None
        scheme = scheme_of(source) if is_url(source) else None
        if scheme is None or scheme == "file":
            path = os.fspath(source) if scheme is None else local_path(source)
            self._file, self.size = open_regular(path, max_bytes)
        elif scheme in ("http", "https"):
            self._open_http()
        else:
            self._open_fsspec()

    def _too_large(self, what):
        return TooLarge(f"is too large: {what}, more than the limit of {describe_size(self.max_bytes)}",
                        self.max_bytes)

    def _expired(self):
        return DeadlineExceeded(f"took longer than the {self.deadline:g} s a download may take in all; "
                                "stopped", self.deadline)

    def _open_http(self):
        if self.deadline is not None:
            self._watchdog = _Watchdog(self.deadline)
        timeout = READ_TIMEOUT if self.deadline is None else min(READ_TIMEOUT, self.deadline)
        request = urllib.request.Request(self.source, headers={"User-Agent": "fastalex"})
        try:
            self._response = _opener(self._watchdog).open(request, timeout=timeout)
            length = self._response.headers.get("Content-Length")
            self.size = int(length) if length and length.strip().isdigit() else None
            if self.size is not None and self.size > self.max_bytes:
                raise self._too_large(f"the server announces {describe_size(self.size)}")
        except BaseException as exc:
            expired = self._watchdog is not None and self._watchdog.expired
            self.close()
            if expired and not isinstance(exc, FileProblem):
                raise self._expired() from None
            raise

    def _open_fsspec(self):
        self._file = fsspec_for(self.source).open(self.source, "rb").open()

    def __iter__(self):
        source = self._response if self._response is not None else self._file
        done = 0
        try:
            while True:
                if self._watchdog is not None and self._watchdog.expired:
                    raise self._expired()
                chunk = source.read(min(_CHUNK, self.max_bytes + 1 - done))
                if not chunk:
                    break
                done += len(chunk)
                if done > self.max_bytes:
                    raise TooLarge(f"is too large: more than the limit of {describe_size(self.max_bytes)} "
                                   f"{'arrived' if self._response is not None else 'read'}; stopped", self.max_bytes)
                yield chunk
        except FileProblem:
            raise
        except Exception:
            if self._watchdog is not None and self._watchdog.expired:
                raise self._expired() from None
            raise
        if self._watchdog is not None and self._watchdog.expired:  # a shut-down socket reads as EOF
            raise self._expired()
        if self._response is not None and self.size is not None and done != self.size:
            import http.client
            raise http.client.IncompleteRead(b"", self.size - done)

    def read(self) -> bytes:
        """All of it (within the limits)."""
        return b"".join(self)

    def close(self):
        for thing in (self._response, self._file):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        if self._watchdog is not None:
            self._watchdog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_bounded(source, max_bytes, deadline=None) -> BoundedReader:
    """A :class:`BoundedReader` of ``source`` (a local path or a URL). Raises
    :class:`FileProblem` for a path or ``file://`` URL that is not a regular file, or is
    larger than ``max_bytes``; :class:`TooLarge` / :class:`DeadlineExceeded` while reading
    past ``max_bytes`` / ``deadline``; urllib's errors for HTTP errors and network failures."""
    return BoundedReader(source, max_bytes, deadline)


def read_bounded(source, max_bytes, deadline=None) -> bytes:
    """All the bytes of ``source``, read through :func:`open_bounded`."""
    with open_bounded(source, max_bytes, deadline) as reader:
        return reader.read()


# ----------------------------------------------------------------------------- writing

def _umask() -> int:
    """The process's umask (read from /proc where possible: ``os.umask`` can only be read by
    setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write):
    """Run ``write(fileobj)`` on a temp file next to ``path`` and move it into place. The file
    gets the permissions of any new file (``0o666`` minus the umask), not the temp file's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
