"""Low-precision storage for dense weights: bfloat16 and int8 with per-output-channel scales.

At batch 1 a dense layer is limited by how fast its weight streams from memory (AlexNet's
fc6-fc8 read 234 MB per image in float32). Storing the weight in fewer bytes and widening it
inside the product halves (bfloat16) or quarters (int8) that traffic. Only the storage
changes: inputs, outputs, biases and the accumulation stay float32.

* ``"bfloat16"``: the upper 16 bits of a float32 (same exponent range, 8 significand bits),
  rounded to nearest, ties to even, from the float32 weight. Stored as ``uint16`` bit patterns;
  widening is exact (``bits << 16``). Relative error per weight <= 2**-9.
* ``"int8"``: symmetric per-output-channel quantization: ``scale[o] = max|W[o, :]| / 127``,
  ``q[o, i] = round(W[o, i] / scale[o])`` in ``[-127, 127]`` (ties to even), and
  ``W ~= scale[:, None] * q``. A row of zeros gets scale 1 (and q = 0).

:class:`LowpWeight` holds such a weight; :func:`fastalex.functional.linear` accepts one where
it accepts a float32 ``(out, in)`` weight. :func:`pack` makes one from a float32 weight.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRECISIONS", "check_precision", "check_precision_and_weights", "WEIGHT_DTYPES", "check_weight_dtype", "to_bfloat16", "from_bfloat16", "quantize_int8",
           "dequantize_int8", "LowpWeight", "pack"]

#: storage dtypes a dense weight can have; float32 is the default (no conversion)
WEIGHT_DTYPES = ("float32", "bfloat16", "int8")


#: how convolutions and dense layers compute (``precision=``): ``"float32"`` (default, exact
#: float32 products) or ``"bfloat16"`` (inputs and weights rounded to bfloat16, nearest even;
#: products summed in float32, on the CPU's AMX or AVX512-BF16 units where it has them)
PRECISIONS = ("float32", "bfloat16")


def check_precision(name, op="precision"):
    """``name`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` (prefixed with ``op``)."""
    if not isinstance(name, str) or name not in PRECISIONS:
        valid = ", ".join(repr(n) for n in PRECISIONS)
        raise ValueError(f"{op}: unknown precision {name!r}; valid precisions are {valid}")
    return name


def check_precision_and_weights(precision, weight_dtype, op):
    """Both checked, and compatible: ``precision="bfloat16"`` rounds every weight to bfloat16
    itself, so it goes with ``weight_dtype`` ``"float32"`` (the default) or ``"bfloat16"`` (the
    same numbers), not with ``"int8"``."""
    check_precision(precision, op)
    check_weight_dtype(weight_dtype, op)
    if precision == "bfloat16" and weight_dtype == "int8":
        raise ValueError(f"{op}: precision='bfloat16' computes with bfloat16 weights; it cannot use "
                         f"weight_dtype='int8' (use weight_dtype='float32' or 'bfloat16')")
    return precision, weight_dtype


def check_weight_dtype(name, op="weight_dtype"):
    """``name`` if it is one of :data:`WEIGHT_DTYPES`, else a ``ValueError`` (prefixed with
    ``op``) listing them."""
    if not isinstance(name, str) or name not in WEIGHT_DTYPES:
        valid = ", ".join(repr(n) for n in WEIGHT_DTYPES)
        raise ValueError(f"{op}: unknown weight_dtype {name!r}; valid weight dtypes are {valid}")
    return name


def to_bfloat16(a) -> np.ndarray:
    """bfloat16 bit patterns (``uint16``) of float32 ``a``, rounded to nearest, ties to even.

    Adding ``0x7FFF + (lsb of the kept half)`` to the float32 bits carries into the kept half
    exactly when the dropped half is above one half, or equal to it with an odd kept half.
    NaN stays a (quiet) NaN; values beyond bfloat16's largest finite round to infinity, as in
    IEEE rounding.
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + (np.uint32(0x7FFF) + lsb)) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(bits.view(np.float32))
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def from_bfloat16(bits) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: the bits become a float32's upper half)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize_int8(weight) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)``: symmetric per-row int8 quantization of a 2-D float32 ``(out, in)`` weight.

    ``scale = max|row| / 127`` (1 for a row of zeros), ``q = round(row / scale)``, so
    ``|W - scale * q| <= scale / 2`` elementwise.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8: weight must be (out_features, in_features), got shape {w.shape}")
    peak = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q, scale) -> np.ndarray:
    """float32 ``scale[:, None] * q``."""
    return (np.asarray(q, np.float32) * np.asarray(scale, np.float32)[:, None]).astype(np.float32)


class LowpWeight:
    """A dense ``(out, in)`` weight stored as bfloat16 bits or int8 + per-row scales.

    ``dtype``: ``"bfloat16"`` or ``"int8"``; ``data``: C-contiguous ``uint16`` or ``int8``
    array of ``shape``; ``scale``: float32 ``(out,)`` for int8, else None. Immutable by
    convention (made once, when a model's weights are loaded).
    """

    __slots__ = ("dtype", "data", "scale")

    def __init__(self, dtype, data, scale=None):
        check_weight_dtype(dtype, "LowpWeight")
        if dtype == "float32":
            raise ValueError("LowpWeight: float32 weights are plain arrays; use 'bfloat16' or 'int8'")
        want = np.uint16 if dtype == "bfloat16" else np.int8
        data = np.asarray(data)
        if data.dtype != want or data.ndim != 2:
            raise TypeError(f"LowpWeight: {dtype} data must be a 2-D {np.dtype(want).name} array, "
                            f"got {data.ndim}-D {data.dtype}")
        if dtype == "int8":
            scale = np.ascontiguousarray(scale, dtype=np.float32) if scale is not None else None
            if scale is None or scale.shape != (data.shape[0],):
                raise ValueError(f"LowpWeight: int8 data of shape {data.shape} needs a scale of shape "
                                 f"({data.shape[0]},), got {None if scale is None else scale.shape}")
        elif scale is not None:
            raise ValueError("LowpWeight: only int8 weights have a scale")
        self.dtype, self.data, self.scale = dtype, np.ascontiguousarray(data), scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def to_float32(self) -> np.ndarray:
        """The weight as float32 (bfloat16 widened exactly; int8 dequantized)."""
        if self.dtype == "bfloat16":
            return from_bfloat16(self.data)
        return dequantize_int8(self.data, self.scale)

    def __repr__(self):
        return f"LowpWeight({self.dtype!r}, shape={self.shape})"


def pack(weight, dtype):
    """``weight`` (float32 ``(out, in)``) stored as ``dtype``: the array itself for float32,
    else a :class:`LowpWeight`."""
    check_weight_dtype(dtype, "pack")
    if dtype == "float32":
        return np.ascontiguousarray(weight, dtype=np.float32)
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"pack: weight must be (out_features, in_features), got shape {w.shape}")
    if dtype == "bfloat16":
        return LowpWeight("bfloat16", to_bfloat16(w))
    return LowpWeight("int8", *quantize_int8(w))
