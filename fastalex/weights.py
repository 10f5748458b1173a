"""Weights: ``.npz`` save/load, PyTorch ``.pth`` reading without torch, download and cache.

* :func:`save_weights` / :func:`load_weights`: a state dict (``{"features.0.weight": array, ...}``,
  torch's key names and layouts) to and from a file. ``.npz`` is the native format (no pickle);
  PyTorch files written by ``torch.save`` (zip or legacy format) are read by
  :mod:`fastalex._torch_pickle` with a whitelisting unpickler, so a malicious file cannot run
  code. The format is detected from the content, not the extension.
* :func:`download_imagenet`: torchvision's published AlexNet weights, downloaded once,
  verified, converted to ``.npz`` and cached in :func:`cache_dir`.
* :func:`resolve_weights`: what ``alexnet(weights=...)`` accepts, turned into a state dict.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._torch_pickle import LazyTensor, UnsafePickleError, WeightsFileError, read_torch_legacy, read_torch_zip

__all__ = ["save_weights", "load_weights", "resolve_weights", "download_imagenet", "cache_dir",
           "IMAGENET_URL", "HASH_REGEX", "WeightsFileError", "UnsafePickleError",
           "WeightsUnavailableError"]

#: torchvision's ImageNet weights for its AlexNet (legacy torch format, 233 MB)
IMAGENET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

#: as in ``torch.hub``: the hex digits after a '-' and before the extension are a prefix of the
#: file's SHA-256 (``alexnet-owt-7be5be79.pth``). A name without them is not verified.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

#: keys under which training checkpoints commonly nest the state dict
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")

_CHUNK = 1 << 20
_TIMEOUT = 30


class WeightsUnavailableError(RuntimeError):
    """Published weights could not be obtained (offline, HTTP error, interrupted, bad checksum)."""


# ----------------------------------------------------------------------------- save / load

def _atomic_write(path: Path, write):
    """Run ``write(fileobj)`` on a temp file next to ``path`` and move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
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


def _head(path: Path, n=512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def load_weights(path) -> dict[str, np.ndarray]:
    """A state dict ``{name: array}`` from an ``.npz`` or a PyTorch ``.pth``/``.pt`` file.

    Floating-point tensors (float16, bfloat16, float64) come back as C-contiguous float32;
    integer and bool tensors (e.g. ``num_batches_tracked``) keep their dtype. Checkpoints that
    nest the state dict (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    DataParallel ``module.`` prefix is stripped. PyTorch files are read without torch and
    without running their pickles: anything other than tensors and plain containers is refused.

    Raises ``FileNotFoundError`` for a missing file and :class:`WeightsFileError` (a
    ``ValueError``) naming the file for anything unreadable.
    """
    path = Path(os.fspath(path))
    source = f"weights file '{path}'"
    if not path.exists():
        raise FileNotFoundError(f"{source} not found")
    if path.is_dir():
        raise WeightsFileError(f"{source} is a directory, not a file")
    head = _head(path)
    if not head:
        raise WeightsFileError(f"{source} is empty")
    if head[:2] == b"PK":
        state = _load_zip(path, source)
    elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        with open(path, "rb") as f:
            state = read_torch_legacy(f, source, lambda obj: _select(obj, source))
    elif head[:6] == b"\x93NUMPY":
        raise WeightsFileError(f"{source} is a single .npy array, not a set of weights; "
                               "use save_weights() to write an .npz")
    elif len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsFileError(f"{source} is a tar archive (PyTorch < 0.4 format?), which is not "
                               "supported; re-save it with a current torch.save")
    else:
        raise WeightsFileError(f"{source} is not an .npz or a PyTorch file "
                               f"(it starts with {head[:8]!r})")
    state = _strip_prefix(state)
    if not state:
        raise WeightsFileError(f"{source} holds no tensors")
    return state


def _load_zip(path, source):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WeightsFileError(f"{source} is a corrupt or truncated zip archive ({exc})") from None
    with archive:
        names = archive.namelist()
        try:
            if any(n.endswith("/data.pkl") for n in names):
                return read_torch_zip(archive, source, lambda obj: _select(obj, source))
            if names and all(n.endswith(".npy") for n in names):
                return _load_npz(path, source)
        except WeightsFileError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise WeightsFileError(f"{source} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    raise WeightsFileError(f"{source} is a zip archive but neither an .npz nor a PyTorch file")


def _load_npz(path, source):
    out = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            try:
                arr = npz[key]
            except ValueError as exc:  # object arrays need pickle: refused
                raise WeightsFileError(f"{source}: array {key!r} cannot be loaded ({exc})") from None
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32, copy=False)
            elif arr.dtype.kind not in "iub":
                raise WeightsFileError(f"{source}: array {key!r} has dtype {arr.dtype}, not numbers")
            out[key] = arr.astype(arr.dtype.newbyteorder("="), order="C", copy=False)
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
    home = os.environ.get("FASTALEX_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "fastalex"
    return Path.home() / ".cache" / "fastalex"


def _hash_prefix(filename: str):
    match = HASH_REGEX.search(filename)
    return match.group(1) if match and match.group(1) else None


def _verified(path: Path) -> bool:
    expected = _hash_prefix(path.name)
    if expected is None:
        return True
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest().startswith(expected)


def _file_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or "weights.pth"


_HOW_TO = ("To use a local copy instead, pass weights='path/to/alexnet-owt-7be5be79.pth' "
           "(or --weights FILE on the command line), or set FASTALEX_WEIGHTS_URL to a mirror.")


def _fetch(url: str, dest: Path, progress: bool):
    """Download ``url`` to ``dest`` through :func:`_atomic_write` (a ``.part`` file renamed into
    place only when complete), verifying the length and the hash prefix in the file name."""
    expected = _hash_prefix(dest.name)

    def download(out):
        sha = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "fastalex"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      disable=not progress, desc=dest.name, leave=True) as bar:
                done = 0
                while chunk := response.read(_CHUNK):
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
                f"download of {url} is corrupt: its SHA-256 is {digest}, but the file name says it "
                f"starts with {expected}. The download was deleted. {_HOW_TO}")

    try:
        _atomic_write(dest, download)
    except WeightsUnavailableError:
        raise
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


def download_imagenet(url=None, progress=None, force=False) -> Path:
    """The cached ``.npz`` of torchvision's ImageNet AlexNet weights, downloading it if needed.

    ``url``: where to get the ``.pth``; default ``$FASTALEX_WEIGHTS_URL``, else
    :data:`IMAGENET_URL` (``http(s)://`` or ``file://``). ``progress``: show a progress bar on
    stderr (None: only when stderr is a terminal). ``force``: download again even if cached.

    The file is downloaded to a ``.part`` file in :func:`cache_dir`, checked (complete, and,
    when its name carries a hash like ``alexnet-owt-7be5be79.pth``, that the SHA-256 starts
    with it, as ``torch.hub`` does; a mirror's file named without a hash is not verified,
    though it must still parse as weights), renamed into place and converted once to
    ``<stem>.npz`` (written atomically too), after which the ``.pth`` is deleted to save space;
    later calls return the ``.npz`` without touching the network. Failures raise
    :class:`WeightsUnavailableError` and leave nothing that looks complete.
    """
    url = url or os.environ.get("FASTALEX_WEIGHTS_URL") or IMAGENET_URL
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise WeightsUnavailableError(f"cannot download {url!r}: only http(s):// and file:// URLs "
                                      f"are supported. {_HOW_TO}")
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    directory = cache_dir()
    name = _file_name(url)
    npz = directory / (Path(name).stem + ".npz")
    if npz.is_file() and not force:
        return npz
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot create the cache directory {directory} ({exc}); "
                                      "set FASTALEX_HOME to a writable directory") from None
    raw = directory / name  # only left over if an earlier conversion failed: reuse if it checks out
    if force or not raw.is_file() or not _verified(raw):
        _fetch(url, raw, progress)
    try:
        state = load_weights(raw)
    except WeightsFileError as exc:
        raw.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"the file downloaded from {url} is not usable weights: {exc}") from None
    save_weights(state, npz)
    raw.unlink(missing_ok=True)
    return npz


def resolve_weights(weights, variant="torchvision") -> dict[str, np.ndarray]:
    """A state dict from what ``alexnet(weights=...)`` accepts.

    A mapping is returned as is; ``"imagenet"`` gives torchvision's published weights (only for
    ``variant="torchvision"``; downloaded once, see :func:`download_imagenet`); a URL
    (``https://``, ``s3://``, ...) is fetched once into :func:`cache_dir` (see
    :func:`fastalex.distributed.fetch_weights`); a ``str`` or path-like is read with
    :func:`load_weights`.
    """
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if variant != "torchvision":
            raise ValueError(
                f"no published ImageNet weights exist for the {variant!r} AlexNet (the 2012 "
                "paper's network with LRN and grouped convolutions); use variant='torchvision' "
                "for weights='imagenet', or pass a weights file you trained")
        return load_weights(download_imagenet())
    if isinstance(weights, str) and "://" in weights:  # a URL: fetched once into the cache
        from .distributed import fetch_weights
        return load_weights(fetch_weights(weights))
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(weights)
    raise TypeError(f"weights must be None, 'imagenet', a path to an .npz/.pth file or a state dict, "
                    f"got {type(weights).__name__}")
