"""The tensors of an ONNX graph as numpy arrays: initializers and ``Constant`` values, their sizes
checked against their shapes, external data read only from regular files inside the model's
own folder (no absolute paths, no ``..``, no symlinks leading out). See :mod:`fastalex.onnx_import`."""

from __future__ import annotations

import math
import os
import re

import numpy as np

from .errors import OnnxError

__all__ = ["tensor_to_array", "without_external_data"]

# ONNX TensorProto data types -> numpy (little-endian), for the tensors weights can be stored in
_DTYPES = {1: "<f4", 2: "u1", 3: "i1", 5: "<i2", 6: "<i4", 7: "<i8", 10: "<f2", 11: "<f8"}


_EXTERNAL = 1  # TensorProto.EXTERNAL


def _external_tensors(graph):
    """The graph's tensors that may hold external data: initializers and ``Constant`` values."""
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    return tensors


def without_external_data(onnx, proto):
    """What the checker sees: ``proto``, or a copy whose external tensors (initializers and
    ``Constant`` values) are empty placeholders (the checker would look for their files relative
    to the working directory; we read them ourselves, from the model's folder only, see
    :func:`_read_external`)."""
    if not any(t.data_location == _EXTERNAL for t in _external_tensors(proto.graph)):
        return proto
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    for tensor in _external_tensors(light.graph):
        if tensor.data_location == _EXTERNAL:
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            del tensor.dims[:]
            tensor.dims.append(0)
    return light


def tensor_to_array(path, tensor):
    """An initializer or a ``Constant``'s tensor as a numpy array; external data read safely."""
    from onnx import numpy_helper
    name = tensor.name or "<unnamed>"
    dims = tuple(int(d) for d in tensor.dims)
    if min(dims, default=1) < 0:
        raise OnnxError(path, f"tensor {name!r} has negative dimensions {dims}")
    count = math.prod(dims)  # Python ints: no int64 overflow
    if count >= 2 ** 63:
        raise OnnxError(path, f"tensor {name!r} has dimensions {dims} whose product overflows int64")
    dtype = _DTYPES.get(tensor.data_type)
    expected = None if dtype is None else count * np.dtype(dtype).itemsize
    if tensor.data_location == _EXTERNAL:
        if dtype is None:
            raise OnnxError(path, f"tensor {name!r}: external data of type {tensor.data_type} is not supported")
        return np.frombuffer(_read_external(path, name, tensor, expected), dtype=dtype).reshape(dims)
    if tensor.HasField("raw_data") and expected is not None and len(tensor.raw_data) != expected:
        raise OnnxError(path, f"tensor {name!r} of shape {dims} needs {expected} bytes but holds "
                              f"{len(tensor.raw_data)} (truncated or corrupt file)")
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise OnnxError(path, f"tensor {name!r} of shape {dims} cannot be read ({exc})") from None


def _read_external(path, name, tensor, expected):
    """The bytes of an externally stored tensor, from a regular file inside the model's folder."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor {name!r}: external data {location!r}"
    if "\0" in location:
        raise OnnxError(path, f"{where} contains a NUL byte")
    parts = re.split(r"[\\/]", location)
    if (not location or os.path.isabs(location) or location.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", location) or ".." in parts):
        raise OnnxError(path, f"{where} must be a relative path inside the model's folder")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    target = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([folder, target]) != folder:
        raise OnnxError(path, f"{where} leads outside the model's folder (a symlink?)")
    if not os.path.isfile(target):
        raise OnnxError(path, f"{where} is not a file in the model's folder")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else expected
    except ValueError:
        raise OnnxError(path, f"{where} has a non-integer offset or length") from None
    if offset < 0 or length != expected:
        raise OnnxError(path, f"{where}: length {length} at offset {offset} does not match the "
                              f"tensor's shape {tuple(tensor.dims)} ({expected} bytes)")
    size = os.path.getsize(target)
    if offset + expected > size:
        raise OnnxError(path, f"{where} is {size} bytes, too short for {expected} bytes at offset {offset}")
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read(expected)
    if len(data) != expected:
        raise OnnxError(path, f"{where} could not be read completely")
    return data
