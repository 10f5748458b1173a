"""Weights: ``.npz`` save/load, PyTorch ``.pth`` reading without torch, download and cache.

* :func:`save_weights` / :func:`load_weights`: a state dict (``{"features.0.weight": array, ...}``,
  torch's key names and layouts) to and from a file. ``.npz`` is the native format (no pickle);
  PyTorch files written by ``torch.save`` (zip or legacy format) are read by
  :mod:`fastalex._torch_pickle` with a whitelisting unpickler, so a malicious file cannot run
  code. The format is detected from the content, not the extension.
* :class:`PublishedWeights` / :data:`IMAGENET1K_V1` (and :func:`download_imagenet`):
  torchvision's published AlexNet weights and their facts (url, hash, variant, classes,
  preprocessing), downloaded once, verified, converted to ``.npz`` and cached in
  :func:`cache_dir` with a digest that is checked on every use.
* :func:`resolve_weights`: what ``alexnet(weights=...)`` accepts, turned into a state dict.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import math
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _files
from ._home import cache_home
from ._files import FileProblem, open_regular
from ._torch_pickle import (LazyTensor, UnsafePickleError, WeightsFileError, check_member, read_exactly,
                            read_torch_legacy, read_torch_zip)

__all__ = ["save_weights", "load_weights", "resolve_weights", "download_imagenet", "cache_dir",
           "PublishedWeights", "IMAGENET1K_V1", "published_weights", "IMAGENET_URL", "HASH_REGEX",
           "WeightsFileError", "WeightsFileNotFoundError", "UnsafePickleError",
           "CachedWeightsError", "WeightsUnavailableError"]

#: torchvision's ImageNet weights for its AlexNet (legacy torch format, 233 MB)
IMAGENET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

#: as in ``torch.hub``: the hex digits after a '-' and before the extension are a prefix of the
#: file's SHA-256 (``alexnet-owt-7be5be79.pth``). A name without them is not verified.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

#: keys under which training checkpoints commonly nest the state dict
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")

_CHUNK = 1 << 20


from .errors import CachedWeightsError, WeightsFileNotFoundError, WeightsUnavailableError  # noqa: E402


# ----------------------------------------------------------------------------- save / load

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


def _atomic_write(path: Path, write):
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


def save_weights(model_or_state_dict, path) -> Path:
    """Write a model's parameters (or a state dict) to ``path`` as an uncompressed ``.npz``.

    Floating-point arrays are stored as float32. The file is written to a temporary name and
    renamed, so ``path`` is never left half-written. Returns ``path`` as a :class:`Path`
    (exactly as given: no ``.npz`` suffix is appended).
    """
    stored = getattr(model_or_state_dict, "weight_dtype", "float32")
    if hasattr(model_or_state_dict, "state_dict") and stored != "float32":
        raise ValueError(f"save_weights: the model's dense weights are stored as {stored}, so its state_dict() "
                         f"holds their rounded values; call model.set_weight_dtype('float32') first (it restores "
                         f"the float32 weights a conversion kept), or pass model.state_dict() to save the "
                         f"rounded values on purpose")
    sd = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"save_weights: expected a model or a state dict, got {type(sd).__name__}")
    arrays = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"save_weights: state dict keys must be non-empty strings, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        elif arr.dtype.kind not in "iub":
            raise TypeError(f"save_weights: {key} has dtype {arr.dtype}; only numeric arrays can be saved")
        arrays[key] = arr
    path = Path(os.fspath(path))
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_weights(path) -> dict[str, np.ndarray]:
    """A state dict ``{name: array}`` from an ``.npz`` or a PyTorch ``.pth``/``.pt`` file.

    Floating-point tensors (float16, bfloat16, float64) come back as C-contiguous float32;
    integer and bool tensors (e.g. ``num_batches_tracked``) keep their dtype. Checkpoints that
    nest the state dict (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    DataParallel ``module.`` prefix is stripped. PyTorch files are read without torch and
    without running their pickles: anything other than tensors and plain containers is refused.

    Only regular files are read (a FIFO or device is refused, never waited on). Nothing larger
    than the file can hold is allocated: sizes, counts and zip headers that claim more are
    refused before any allocation (an expanded, zero-stride tensor may repeat its storage up
    to :data:`fastalex._torch_pickle.MAX_EXPANDED` elements).

    Every failure raises :class:`WeightsFileError` (a ``ValueError``) whose message names the
    file and what is wrong with it; for a missing file it is a :class:`WeightsFileNotFoundError`,
    which is also a ``FileNotFoundError``.
    """
    path = Path(os.fspath(path))
    source = f"weights file '{path}'"
    try:
        f, size = open_regular(path, _files.MAX_WEIGHTS_BYTES)
    except FileProblem as problem:
        raise (WeightsFileNotFoundError if problem.missing else WeightsFileError)(
            f"{source} {problem.reason}") from None
    try:
        with f:
            state = _read(f, size, source)
    except WeightsFileError as exc:
        if source in str(exc):
            raise
        raise type(exc)(f"{source}: {exc}") from None
    except MemoryError:
        raise WeightsFileError(f"{source} cannot be read: it needs more memory than is available") from None
    except Exception as exc:  # zipfile's RuntimeError/NotImplementedError, numpy's header errors, ...
        raise WeightsFileError(f"{source} cannot be read ({type(exc).__name__}: {exc})") from None
    state = _strip_prefix(state)
    if not state:
        raise WeightsFileError(f"{source} holds no tensors")
    return state


def _read(f, size, source):
    head = f.read(512)
    f.seek(0)
    if not head:
        raise WeightsFileError(f"{source} is empty")
    if head[:2] == b"PK":
        return _load_zip(f, source)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return read_torch_legacy(f, source, lambda obj: _select(obj, source), size)
    if head[:6] == b"\x93NUMPY":
        raise WeightsFileError(f"{source} is a single .npy array, not a set of weights; "
                               "use save_weights() to write an .npz")
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsFileError(f"{source} is a tar archive (PyTorch < 0.4 format?), which is not "
                               "supported; re-save it with a current torch.save")
    raise WeightsFileError(f"{source} is not an .npz or a PyTorch file "
                           f"(it starts with {head[:8]!r})")


def _load_zip(f, source):
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise WeightsFileError(f"{source} is a corrupt or truncated zip archive ({exc})") from None
    with archive:
        names = archive.namelist()
        try:
            if any(n.endswith("/data.pkl") for n in names):
                return read_torch_zip(archive, source, lambda obj: _select(obj, source))
            if names and all(n.endswith(".npy") for n in names):
                return _load_npz(archive, source)
        except WeightsFileError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
            raise WeightsFileError(f"{source} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    raise WeightsFileError(f"{source} is a zip archive but neither an .npz nor a PyTorch file")


def _load_npz(archive, source):
    """The arrays of an ``.npz``, each header checked against its zip member before allocating."""
    out = {}
    for info in archive.infolist():
        key = info.filename[: -len(".npy")]
        check_member(info, source)
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise WeightsFileError(f"{source}: array {key!r} has .npy format version {version}, "
                                       "which is not supported")
            if dtype.hasobject:  # object arrays need pickle: refused
                raise WeightsFileError(f"{source}: array {key!r} holds Python objects, which are "
                                       "not loaded (no pickle)")
            if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
                raise WeightsFileError(f"{source}: array {key!r} has dtype {dtype}, not numbers")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            if nbytes > info.file_size:  # checked before allocating: the header may lie
                raise WeightsFileError(f"{source}: array {key!r} claims shape {shape} ({nbytes:,} "
                                       f"bytes) but its entry holds {info.file_size:,} bytes")
            arr = read_exactly(member, dtype, count, f"array {key!r}", source)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        out[key] = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))
    return out


def _tensors_of(obj):
    if not isinstance(obj, Mapping):
        return {}
    return {k: v for k, v in obj.items() if isinstance(v, LazyTensor)}


def _select(obj, source) -> dict:
    """The ``{name: LazyTensor}`` state dict inside what a torch file unpickled to."""
    tensors = _tensors_of(obj)
    if not tensors and isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            tensors = _tensors_of(obj.get(key))
            if tensors:
                break
    if not tensors:
        what = (f"a dict with keys {', '.join(map(repr, list(obj)[:8]))}" if isinstance(obj, Mapping)
                else f"a {type(obj).__name__}")
        raise WeightsFileError(f"{source} holds {what}, not a state dict of tensors")
    bad = [k for k in tensors if not isinstance(k, str)]
    if bad:
        raise WeightsFileError(f"{source}: state dict keys must be strings, got {bad[0]!r}")
    return tensors


def _strip_prefix(state, prefix="module."):
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


# ----------------------------------------------------------------------------- cache + download

def cache_dir() -> Path:
    """Where downloads are kept: ``$FASTALEX_HOME``, else ``$XDG_CACHE_HOME/fastalex``,
    else ``~/.cache/fastalex``. Not created here."""
    return cache_home()


def _hash_prefix(filename: str):
    """torch.hub's rule: the hex digits after the last '-' before the extension
    (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``), or None."""
    match = HASH_REGEX.search(filename)
    return match.group(1) if match and match.group(1) else None


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


#: the advice ending every WeightsUnavailableError: in words that fit Python and the command line,
#: which prints these messages as they are
_HOW_TO = ("To use a local copy instead, pass its path as the weights (weights=PATH in Python, "
           "--weights FILE on the command line), or fill the cache from it with `fastalex weights download "
           "--url file:///path/to/alexnet-owt-7be5be79.pth`; FASTALEX_WEIGHTS_URL names a mirror, "
           "and --random-weights tests the pipeline without weights.")


@dataclass(frozen=True)
class PublishedWeights:
    """Published weights and their facts, in the spirit of torchvision's ``AlexNet_Weights``.

    ``url`` and ``file_name`` say where they come from and how they are cached; every download
    is checked against ``hash_prefix`` (the start of the file's SHA-256, torch.hub's rule),
    whatever the URL it came from is called. ``variant`` and ``num_classes`` say which model
    they fit; :attr:`preprocess` (alias :attr:`transforms`) and :attr:`categories` are what
    inputs and outputs mean.

    The cache (:func:`cache_dir`) holds ``<stem>.npz`` (converted) and ``<stem>.npz.sha256``
    (its digest, ``sha256sum -c`` format), where ``<stem>`` is ``file_name`` without its
    extension. A ``<stem>.pth`` found there (an interrupted conversion, or the official file
    copied in by hand) is used if its hash checks out.
    """

    name: str
    url: str
    file_name: str
    hash_prefix: str
    variant: str = "torchvision"
    num_classes: int = 1000
    description: str = ""

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem

    @property
    def preprocess(self) -> dict:
        """``{"resize", "crop", "mean", "std"}``: the evaluation transform these weights expect."""
        from .images import get_preprocess
        return get_preprocess(self.variant)

    transforms = preprocess

    @property
    def categories(self) -> tuple:
        """The class names, in the weights' class order."""
        from .labels import imagenet_labels
        return imagenet_labels()

    def paths(self) -> dict[str, Path]:
        """Where the cache keeps these weights: ``npz``, ``digest``, ``raw`` (a ``.pth`` to
        convert) and ``lock``."""
        d = cache_dir()
        return {"npz": d / f"{self.stem}.npz", "digest": d / f"{self.stem}.npz.sha256",
                "raw": d / f"{self.stem}.pth", "lock": d / f".{self.stem}.lock"}

    def cached(self) -> Path | None:
        """The cached, verified ``.npz``, or None if there is none yet (an ``.npz`` without its
        digest, e.g. from an older fastalex, cannot be verified and counts as none: the next
        download replaces it). A cache entry whose content no longer matches its recorded
        digest raises :class:`CachedWeightsError`, which says how to clear it (about 0.15 s
        per check for the ImageNet weights)."""
        p = self.paths()
        if not p["npz"].is_file() or not p["digest"].is_file():
            return None  # no digest (an older fastalex, or interrupted): unverifiable, fetched again
        try:
            recorded = p["digest"].read_text().split()[0]
        except (OSError, IndexError, UnicodeError):
            recorded = None
        if recorded is None or _sha256(p["npz"]) != recorded:
            raise CachedWeightsError(
                f"the cached weights {p['npz']} are damaged or were replaced: their SHA-256 does "
                f"not match the one recorded in {p['digest'].name} when they were made. Delete "
                f"them (rm '{p['npz']}' '{p['digest']}') or run `fastalex weights download --force`.")
        return p["npz"]

    def raw_problem(self) -> str | None:
        """What is wrong with the ``<stem>.pth`` in the cache (one copied there by hand): None
        if there is none or its SHA-256 starts with :attr:`hash_prefix`, else a sentence saying
        it failed its hash check, where it is and what to do."""
        raw = self.paths()["raw"]
        try:
            if not raw.is_file():
                return None
            digest = _sha256(raw)
        except OSError as exc:
            return f"{raw} cannot be read ({exc.strerror or exc}); delete it or fix its permissions"
        if digest.startswith(self.hash_prefix):
            return None
        return (f"{raw} failed its hash check: its SHA-256 is {digest[:16]}..., but the official "
                f"{self.file_name}'s starts with {self.hash_prefix}, so it is damaged (a partial "
                f"copy?) or another file. Delete it (rm '{raw}') and copy the official "
                f"{self.file_name} there again, or download it")

    def download(self, url=None, progress=None, force=False) -> Path:
        """The cached ``.npz`` of these weights, downloading and converting them if needed.

        ``url``: where to get them (default ``$FASTALEX_WEIGHTS_URL``, else :attr:`url`;
        ``http(s)://`` or ``file://``). ``progress``: a progress bar on stderr (None: only when
        stderr is a terminal). ``force``: download again even if cached.

        The download goes to a ``.part`` file in :func:`cache_dir`, must be complete and have
        a SHA-256 starting with :attr:`hash_prefix`, is renamed to ``<stem>.pth``, converted
        to ``<stem>.npz`` with its digest next to it (each written atomically), and the
        ``.pth`` is deleted. Processes take turns through a lock file, so two downloads at
        once both end with the same good cache; ``.part`` files left by a killed download
        are removed by the next one. Failures raise :class:`WeightsUnavailableError` and
        leave nothing that looks complete.
        """
        url = url or os.environ.get("FASTALEX_WEIGHTS_URL") or self.url
        scheme = urllib.parse.urlparse(url).scheme
        if scheme not in ("http", "https", "file"):
            raise WeightsUnavailableError(f"cannot download {url!r}: only http(s):// and file:// URLs "
                                          f"are supported. {_HOW_TO}")
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if not force:
            found = self.cached()
            if found is not None:
                return found
        directory = cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsUnavailableError(f"cannot create the cache directory {directory} ({exc}); "
                                          "set FASTALEX_HOME to a writable directory") from None
        p = self.paths()
        with _cache_lock(p["lock"], progress):
            _remove_stale_parts(directory, self.stem)  # ours are gone; others' writers are dead
            if not force:  # another process may have finished while we waited
                found = self.cached()
                if found is not None:
                    return found
            raw = p["raw"]
            problem = None if force else self.raw_problem()
            if force or problem is not None or not raw.is_file():
                try:
                    _fetch(url, raw, progress, self.hash_prefix)
                except WeightsUnavailableError as exc:
                    if problem is None:
                        raise
                    raise WeightsUnavailableError(f"{problem}. (Downloading them instead failed: "
                                                  f"{str(exc).replace(_HOW_TO, '').strip()})") from None
            try:
                state = load_weights(raw)
            except WeightsFileError as exc:
                raw.unlink(missing_ok=True)
                raise WeightsUnavailableError(f"the file downloaded from {url} is not usable weights: {exc}") from None
            p["digest"].unlink(missing_ok=True)  # readers see "not cached" (and wait) meanwhile
            save_weights(state, p["npz"])
            digest = _sha256(p["npz"])
            _atomic_write(p["digest"], lambda f: f.write(f"{digest}  {p['npz'].name}\n".encode()))
            raw.unlink(missing_ok=True)
            return p["npz"]

    def get_state_dict(self, url=None, progress=None) -> dict[str, np.ndarray]:
        """The state dict, from the cache (downloaded first if needed; see :meth:`download`)."""
        return load_weights(self.download(url=url, progress=progress))


#: torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` (top-1 56.5%, top-5 79.1% on ImageNet-1k)
IMAGENET1K_V1 = PublishedWeights(
    name="IMAGENET1K_V1", url=IMAGENET_URL, file_name="alexnet-owt-7be5be79.pth",
    hash_prefix=_hash_prefix("alexnet-owt-7be5be79.pth"), variant="torchvision", num_classes=1000,
    description="torchvision's AlexNet trained on ImageNet-1k")

#: the names ``weights=`` accepts for published weights (case-insensitive)
PUBLISHED = {"imagenet": IMAGENET1K_V1, "imagenet1k_v1": IMAGENET1K_V1}


def published_weights(weights) -> PublishedWeights | None:
    """The :class:`PublishedWeights` that ``weights`` names (``"imagenet"``, ``"IMAGENET1K_V1"``
    or the object itself), or None for anything else."""
    if isinstance(weights, PublishedWeights):
        return weights
    if isinstance(weights, str):
        return PUBLISHED.get(weights.lower())
    return None


@contextlib.contextmanager
def _cache_lock(path: Path, progress=False):
    """An exclusive lock on ``path`` (``flock``: released by the kernel if the holder dies);
    a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot create the lock file {path} ({exc}); "
                                      "set FASTALEX_HOME to a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"fastalex: waiting for another process downloading into {path.parent}",
                      file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_parts(directory: Path, stem: str):
    """Delete the ``.part`` files of earlier downloads/conversions of ``stem`` (call with the
    lock held: their writers are gone)."""
    for part in directory.glob(f".{glob.escape(stem)}.*.part"):
        try:
            part.unlink()
        except OSError:
            pass


def _fetch(url: str, dest: Path, progress: bool, expected: str | None):
    """Download ``url`` to ``dest`` through :func:`_atomic_write` (a ``.part`` file renamed into
    place only when complete, deleted otherwise), verifying the length and that the SHA-256
    starts with ``expected``. The download goes through :func:`fastalex._files.open_bounded`:
    at most :data:`~fastalex._files.MAX_WEIGHTS_BYTES`, within
    :data:`~fastalex._files.WEIGHTS_DEADLINE` seconds, and a ``file://`` URL must name a
    regular file (a FIFO or ``/dev/zero`` is refused at once)."""

    def download(out):
        sha = hashlib.sha256()
        with _files.open_bounded(url, _files.MAX_WEIGHTS_BYTES, _files.WEIGHTS_DEADLINE) as reader:
            total = reader.size
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      disable=not progress, desc=dest.name, leave=True) as bar:
                done = 0
                for chunk in reader:
                    out.write(chunk)
                    sha.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        if total is not None and done != total:
            raise WeightsUnavailableError(
                f"download of {url} was interrupted: got {done} of {total} bytes. {_HOW_TO}")
        digest = sha.hexdigest()
        if expected is not None and not digest.startswith(expected):
            raise WeightsUnavailableError(
                f"download of {url} is not the expected file: its SHA-256 is {digest}, but the "
                f"weights' SHA-256 starts with {expected} (a corrupt download, or a mirror serving "
                f"other weights). The download was deleted. {_HOW_TO}")

    try:
        _atomic_write(dest, download)
    except WeightsUnavailableError:
        raise
    except FileProblem as problem:
        if _files.is_url(url) and _files.scheme_of(url) == "file":
            where = f"the local file {_file_url_path(url)}"
            if problem.missing:
                raise WeightsUnavailableError(f"cannot copy {url}: {where} does not exist. {_HOW_TO}") from None
            raise WeightsUnavailableError(f"cannot copy {url}: {where} {problem.reason}. {_HOW_TO}") from None
        raise WeightsUnavailableError(f"cannot download {url}: it {problem.reason} (the partial "
                                      f"download was deleted). {_HOW_TO}") from None
    except urllib.error.HTTPError as exc:
        raise WeightsUnavailableError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. {_HOW_TO}") from None
    except urllib.error.URLError as exc:  # refused, DNS, no route: most likely offline
        raise WeightsUnavailableError(f"cannot download {url} ({exc.reason}); are you offline? "
                                      f"{_HOW_TO}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise WeightsUnavailableError(f"download of {url} was interrupted ({type(exc).__name__}: "
                                      f"{exc}). {_HOW_TO}") from None
    except OSError as exc:  # the cache side: disk full, permissions
        raise WeightsUnavailableError(f"cannot save the download of {url} in {dest.parent} ({exc}); "
                                      "set FASTALEX_HOME to a writable directory with room") from None
    except ValueError as exc:
        raise WeightsUnavailableError(f"cannot download {url!r}: {exc}. {_HOW_TO}") from None


def _file_url_path(url):
    try:
        return _files.local_path(url)
    except FileProblem:
        return url


def download_imagenet(url=None, progress=None, force=False) -> Path:
    """The cached ``.npz`` of torchvision's ImageNet AlexNet weights (:data:`IMAGENET1K_V1`),
    downloading it if needed; see :meth:`PublishedWeights.download`. Whatever ``url`` (or
    ``$FASTALEX_WEIGHTS_URL``) is called, its content must have the official SHA-256 prefix
    ``7be5be79``."""
    return IMAGENET1K_V1.download(url=url, progress=progress, force=force)


def resolve_weights(weights, variant=None) -> dict[str, np.ndarray]:
    """A state dict from what ``alexnet(weights=...)`` accepts.

    A mapping is returned as is; published weights (``"imagenet"``, ``"IMAGENET1K_V1"`` or a
    :class:`PublishedWeights`) come from the cache, downloaded once (only for their variant,
    ``"torchvision"``); a URL (``https://``, ``s3://``, ...) is fetched once into
    :func:`cache_dir` (see :func:`fastalex.distributed.fetch_weights`); a ``str`` or path-like
    is read with :func:`load_weights`.
    """
    if isinstance(weights, Mapping):
        return weights
    meta = published_weights(weights)
    if meta is not None:
        if variant is not None and variant != meta.variant:
            raise ValueError(
                f"no published ImageNet weights exist for the {variant!r} AlexNet (the 2012 "
                f"paper's network with LRN and grouped convolutions); use variant={meta.variant!r} "
                "for weights='imagenet', or pass a weights file you trained")
        return meta.get_state_dict()
    if isinstance(weights, str) and "://" in weights:  # a URL: fetched once into the cache
        from .distributed import fetch_weights
        return load_weights(fetch_weights(weights))
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(weights)
    raise TypeError(f"weights must be None, 'imagenet', a path to an .npz/.pth file or a state dict, "
                    f"got {type(weights).__name__}")
