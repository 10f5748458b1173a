"""Argument checks, in one place: the ops of :mod:`fastalex.functional` and the layers'
constructors (:mod:`fastalex.layers`) call these, so a bad layer fails when it is built, with the
message the functional call would give. Each names the operation, the argument and the shapes
involved; an input becomes C-contiguous float32 here (:func:`as_float32`).
"""

from __future__ import annotations

import numbers

import numpy as np

from .shapes import INT64_MAX, padding_sides

__all__ = ["ACTIVATIONS", "shape_str", "as_float32", "image_batch", "check_pair", "check_int", "check_padding",
           "check_activation", "check_bias", "check_conv_args", "check_groups", "check_pool_args",
           "check_output_size", "check_lrn_args", "check_dropout_p", "count_nonfinite"]

ACTIVATIONS = (None, "relu")


# ----------------------------------------------------------------------------- inputs and arguments

def shape_str(a) -> str:
    return "(" + ", ".join(str(d) for d in a.shape) + ")"


def as_float32(x, op, name="input"):
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{op}: {name} cannot be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{op}: {name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{op}: {name} must be real, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def image_batch(x, op):
    """Return ``(batch, squeezed)``: a 4-D float32 array and whether a batch axis was added."""
    x = as_float32(x, op)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be (N, C, H, W) or (C, H, W), got shape {shape_str(x)}")
    return x, False


def check_pair(value, op, name, minimum):
    """Normalize an int or a pair of ints to a pair, checking ``minimum <= v <= 2**63 - 1``."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if minimum <= value[0] <= INT64_MAX and minimum <= value[1] <= INT64_MAX:
            return value  # the common case (layers keep their pairs), without the ABC checks below
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        rule = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be {rule}, got {value!r}")
    if max(pair) > INT64_MAX:
        raise ValueError(f"{op}: {name} must be at most 2**63 - 1, got {value!r}")
    return pair


def check_int(value, op, name, minimum=1):
    """A Python int checked ``minimum <= value <= 2**63 - 1`` (``minimum=None``: no lower bound)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        rule = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{op}: {name} must be {rule}, got {value!r}")
    if value > INT64_MAX:
        raise ValueError(f"{op}: {name} must be at most 2**63 - 1, got {value!r}")
    return int(value)


def check_padding(value, op, name="padding"):
    """An int, an ``(h, w)`` pair or a 4-tuple ``(left, right, top, bottom)`` (:func:`pad`'s
    order), each ``0 <= v <= 2**63 - 1``, normalized to a pair or a 4-tuple of ints."""
    if (isinstance(value, (tuple, list)) and len(value) == 4
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        sides = tuple(int(v) for v in value)
        if min(sides) < 0:
            raise ValueError(f"{op}: {name} must be non-negative, got {value!r}")
        if max(sides) > INT64_MAX:
            raise ValueError(f"{op}: {name} must be at most 2**63 - 1, got {value!r}")
        return sides
    try:
        return check_pair(value, op, name, 0)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, a pair of ints or a 4-tuple "
                        f"(left, right, top, bottom), got {value!r}") from None


def check_activation(activation, op):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def check_bias(bias, out_features, op):
    if bias is None:
        return None
    bias = as_float32(bias, op, "bias")
    if bias.shape != (out_features,):
        raise ValueError(f"{op}: bias must have shape ({out_features},) to match the weight, "
                         f"got {shape_str(bias)}")
    return bias


# ----------------------------------------------------------------------------- hyper-parameters

def check_conv_args(stride=1, padding=0, dilation=1, groups=1, activation=None, op="conv2d"):
    """``(stride, padding, dilation, groups, relu)`` checked and normalized: pairs of ints
    (stride and dilation positive), ``padding`` a non-negative pair or 4-tuple
    ``(left, right, top, bottom)`` (see :func:`check_padding`), ``groups`` a positive int,
    ``activation`` None or ``"relu"`` (``relu`` is a bool)."""
    return (check_pair(stride, op, "stride", 1), check_padding(padding, op),
            check_pair(dilation, op, "dilation", 1), check_int(groups, op, "groups", 1),
            check_activation(activation, op))


def check_groups(groups, in_channels, out_channels, op="conv2d", shapes=""):
    """``groups`` must divide both channel counts (``shapes``: context for the message)."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels ({in_channels}) "
                         f"and the output channels ({out_channels}){shapes}")


def check_pool_args(kernel_size, stride=None, padding=0, op="max_pool2d"):
    """``(kernel, stride, padding)`` of a max/avg pooling (``stride=None``: the kernel): kernel
    and stride as pairs, padding as a pair or a 4-tuple ``(left, right, top, bottom)`` (see
    :func:`check_padding`). An int/pair padding follows torch (at most half the kernel); a
    4-tuple follows ONNX (each side smaller than the kernel)."""
    kernel = check_pair(kernel_size, op, "kernel_size", 1)
    stride = kernel if stride is None else check_pair(stride, op, "stride", 1)
    padding = check_padding(padding, op)
    if len(padding) == 2 and (padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2):
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel}")
    sides = padding_sides(padding)
    if len(padding) == 4 and (max(sides[0]) >= kernel[0] or max(sides[1]) >= kernel[1]):
        raise ValueError(f"{op}: padding {padding} (left, right, top, bottom) must be smaller than "
                         f"the kernel size {kernel} on each side")
    return kernel, stride, padding


def check_output_size(output_size, op="adaptive_avg_pool2d"):
    """An adaptive pooling's ``output_size`` as a pair of positive ints or None (None keeps
    that side of the input)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2 and None in output_size:
        return tuple(None if s is None else check_pair(s, op, "output_size", 1)[0] for s in output_size)
    return check_pair(output_size, op, "output_size", 1)


_FINITE_CHUNK = 1 << 18  # values per step of count_nonfinite: a 256 KB mask, reused from cache


def count_nonfinite(arr) -> int:
    """How many values of the float array ``arr`` are NaN or inf, in steps of
    :data:`_FINITE_CHUNK` values: ``np.isfinite(arr).all()`` on a 38 M-value weight first
    allocates (and page-faults) a 38 MB mask, which made checking AlexNet's weights cost
    more than reading them."""
    flat = np.asarray(arr).reshape(-1)
    mask = np.empty(min(flat.size, _FINITE_CHUNK), bool)
    bad = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start:start + _FINITE_CHUNK]
        m = mask[:part.size]
        np.isfinite(part, out=m)
        bad += part.size - int(np.count_nonzero(m))
    return bad


def check_lrn_args(size, alpha=1e-4, beta=0.75, k=1.0, op="local_response_norm"):
    """``(size, alpha, beta, k)``: a positive int and three finite floats."""
    size = check_int(size, op, "size", 1)
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{op}: {name} must be a number, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    return size, float(alpha), float(beta), float(k)


def check_dropout_p(p, op="dropout"):
    """Dropout's ``p``: a number in ``[0, 1]``."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool):
        raise TypeError(f"{op}: p must be a number between 0 and 1, got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be between 0 and 1, got {p!r}")
    return float(p)
