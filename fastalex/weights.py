"""Weights files: a state dict to and from ``.npz``, and PyTorch ``.pth`` read without torch.

* :func:`save_weights` / :func:`load_weights`: a state dict (``{"features.0.weight": array, ...}``,
  torch's key names and layouts) to and from a file. ``.npz`` is the native format (no pickle);
  PyTorch files written by ``torch.save`` (zip or legacy format) are read by
  :mod:`fastalex._torch_pickle` with a whitelisting unpickler, so a malicious file cannot run
  code. The format is detected from the content, not the extension.

Where weights come from (the published ones, URLs, the cache) is :mod:`fastalex.hub`'s business.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import _files
from ._files import FileProblem, open_regular
from ._moved import moved
from ._torch_pickle import (LazyTensor, UnsafePickleError, WeightsFileError, check_member, read_exactly,
                            read_torch_legacy, read_torch_zip)

__all__ = ["save_weights", "load_weights", "WeightsFileError", "WeightsFileNotFoundError", "UnsafePickleError",
           "CachedWeightsError", "WeightsUnavailableError"]

#: keys under which training checkpoints commonly nest the state dict
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


from .errors import CachedWeightsError, WeightsFileNotFoundError, WeightsUnavailableError  # noqa: E402,F401


# ----------------------------------------------------------------------------- save / load

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
    _files.atomic_write(path, lambda f: np.savez(f, **arrays))
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


#: moved in 0.2: the published weights, the cache and downloads are fastalex.hub's
__getattr__ = moved("fastalex.weights", {name: "fastalex.hub" for name in (
    "cache_dir", "PublishedWeights", "IMAGENET1K_V1", "PUBLISHED", "published_weights", "download_imagenet",
    "resolve_weights", "IMAGENET_URL", "HASH_REGEX")})
