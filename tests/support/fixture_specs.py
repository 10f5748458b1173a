"""Shared by ``tests/tools/make_fixtures.py`` (run by hand, with torch) and the tests (run without torch).

* :func:`reduced_spec`: a narrow AlexNet of either variant, derived from the real spec in
  :mod:`fastalex.specs` (same kernels, strides, padding, groups, LRN and pooling; channels and
  the classifier shrunk) so the committed fixtures stay small.
* :func:`write_torch_file`: writes files in ``torch.save``'s zip and legacy formats from numpy
  arrays, without torch, so tests can craft edge cases (and malicious pickles) of their own.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from fastalex.specs import VARIANTS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: variant -> (channel divisor, hidden units, classes, input shapes (C, H, W) checked)
REDUCED = {
    "original": dict(div=16, hidden=64, num_classes=10, inputs=[(3, 227, 227)]),
    "torchvision": dict(div=16, hidden=64, num_classes=10, inputs=[(3, 224, 224), (3, 112, 112)]),
}
BATCH = 2
#: inputs are stored as uint8 ``q``; the float input is exactly ``q * X_SCALE + X_OFFSET``
X_SCALE, X_OFFSET = 1.0 / 32.0, -4.0


def reduced_spec(variant: str, **overrides) -> dict:
    """The ``variant`` spec with conv channels divided by ``div`` and a small classifier
    (``overrides``: other ``div``/``hidden``/``num_classes`` than :data:`REDUCED`'s)."""
    cfg = {**REDUCED[variant], **overrides}
    div, hidden, classes = cfg["div"], cfg["hidden"], cfg["num_classes"]
    spec = VARIANTS[variant](classes)
    last_conv, dense_seen, layers = None, 0, []
    for name, body in spec["layers"]:
        entries = body if isinstance(body, list) else [body]
        new = []
        for kind, kwargs in entries:
            kwargs = dict(kwargs)
            if kind == "Conv2D":
                if kwargs["in_channels"] != 3:
                    kwargs["in_channels"] //= div
                kwargs["out_channels"] //= div
                last_conv = kwargs["out_channels"]
            elif kind == "Dense":
                if dense_seen == 0:
                    kwargs["in_features"] = last_conv * 6 * 6
                else:
                    kwargs["in_features"] = hidden
                if kwargs["out_features"] != classes:
                    kwargs["out_features"] = hidden
                dense_seen += 1
            new.append((kind, kwargs))
        layers.append((name, new if isinstance(body, list) else new[0]))
    return {**spec, "variant": f"{variant}-reduced", "layers": layers}


def fixture_input(q: np.ndarray) -> np.ndarray:
    """The float32 input a stored uint8 array stands for (exact in float32)."""
    return q.astype(np.float32) * np.float32(X_SCALE) + np.float32(X_OFFSET)


# ----------------------------------------------------------------------------- torch files without torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_OF = {"float32": "FloatStorage", "float16": "HalfStorage", "float64": "DoubleStorage",
               "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
               "uint8": "ByteStorage", "bool": "BoolStorage"}


class Global:
    """Pickled as ``GLOBAL module name`` (a reference to, e.g., ``torch._utils._rebuild_tensor_v2``)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # never called; pickle only checks that it is callable
        raise NotImplementedError


class Storage:
    """A flat storage; ``data`` a 1-D numpy array (``bfloat16`` given as its uint16 bits)."""

    def __init__(self, data, dtype=None):
        self.data = np.ascontiguousarray(data).ravel()
        self.dtype = dtype or self.data.dtype.name


class StorageSlice:
    """Part of another storage, as torch < 1.0 pickled views: only legacy files have these."""

    def __init__(self, root, offset, size):
        self.root, self.offset, self.size = root, offset, size
        self.dtype = root.dtype


class Tensor:
    """A tensor as torch pickles it: storage, offset, size and stride in elements."""

    def __init__(self, storage, offset=0, size=None, stride=None, parameter=False):
        if not isinstance(storage, (Storage, StorageSlice)):
            arr = np.asarray(storage)
            storage, size = Storage(arr), arr.shape if size is None else size
            stride = stride if stride is not None else tuple(
                int(np.prod(arr.shape[i + 1:], dtype=np.int64)) for i in range(arr.ndim))
        self.storage, self.offset = storage, offset
        self.size, self.stride, self.parameter = tuple(size), tuple(stride), parameter

    def __reduce__(self):
        rebuilt = (Global("torch._utils", "_rebuild_tensor_v2"),
                   (self.storage, self.offset, self.size, self.stride, False,
                    collections.OrderedDict()))
        if self.parameter:
            return Global("torch._utils", "_rebuild_parameter"), (_Reduced(*rebuilt), True,
                                                                    collections.OrderedDict())
        return rebuilt


class _Reduced:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pickler(pickle._Pickler):  # the pure-Python pickler, so Global can be dispatched
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, storages, legacy=False):
        super().__init__(file, protocol=2)
        self.storages, self.legacy = storages, legacy

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[Global] = save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, StorageSlice) and self.legacy:
            pid = self.persistent_id(obj.root)
            return pid[:5] + ((f"view{id(obj)}", obj.offset, obj.size),)
        if isinstance(obj, Storage):
            key = self.storages.setdefault(id(obj), (str(len(self.storages)), obj))[0]
            pid = ("storage", Global("torch", _STORAGE_OF[obj.dtype]), key, "cpu", obj.data.size)
            return pid + (None,) if self.legacy else pid  # legacy ids end with a view (None)
        return None


def torch_pickle(obj, legacy=False) -> tuple[bytes, list]:
    """``(pickle bytes, [(key, Storage), ...])`` as torch would write them."""
    buf, storages = io.BytesIO(), {}
    _Pickler(buf, storages, legacy).dump(obj)
    return buf.getvalue(), list(storages.values())


def write_torch_file(path, obj, fmt="zip", pickle_bytes=None):
    """Write ``obj`` (dicts/lists/Tensors) like ``torch.save`` in ``fmt`` ``"zip"`` or ``"legacy"``.

    ``pickle_bytes`` replaces the main pickle (for crafted files).
    """
    data, storages = torch_pickle(obj, legacy=fmt == "legacy")
    if pickle_bytes is not None:
        data = pickle_bytes
    path = Path(path)
    if fmt == "zip":
        prefix = path.stem or "archive"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{prefix}/data.pkl", data)
            z.writestr(f"{prefix}/byteorder", "little")
            for key, storage in storages:
                z.writestr(f"{prefix}/data/{key}", storage.data.tobytes())
            z.writestr(f"{prefix}/version", "3\n")
    elif fmt == "legacy":
        with open(path, "wb") as f:
            for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                                "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(data)
            pickle.dump(sorted(key for key, _ in storages), f, protocol=2)
            for key, storage in sorted(storages, key=lambda ks: ks[0]):
                f.write(struct.pack("<q", storage.data.size))
                f.write(storage.data.tobytes())
    else:
        raise ValueError(fmt)
    return path
