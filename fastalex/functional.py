"""Stateless operations on float32 NCHW arrays, with ``torch.nn.functional``'s names and semantics.

Each function validates its arguments (with :mod:`fastalex.checks`, which the layers'
constructors use too), converts the input to C-contiguous float32, and hands it to the chosen backend (``backend=None`` is the default one, see :mod:`fastalex.backends`).
This module is the only place that chooses between backends.

A single image ``(C, H, W)`` is accepted wherever a batch ``(N, C, H, W)`` is, and gives a
single result back.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .backends import get_backend, get_backend_name
from .backends.contract import hook
from .checks import (as_float32, check_activation, check_bias, check_conv_args, check_dropout_p, check_groups,
                     check_int, check_lrn_args, check_output_size, check_pool_args, image_batch, shape_str)
from .lowp import LowpWeight, check_precision
from .shapes import check_allocatable, conv_output_size, padding_sides, pool_output_size

__all__ = [
    "pad", "conv2d", "prepare_conv2d", "ConvPlan", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "local_response_norm",
    "linear", "relu", "softmax", "flatten", "dropout",
]


# ----------------------------------------------------------------------------- helpers

def _unbatch(y, squeezed):
    return y[0] if squeezed else y


def _split_padding(padding):
    """``(symmetric pair, extra)``: the part of a padding a backend applies itself (the same on
    both sides of an axis) and what :func:`pad` adds first, as ``(left, right, top, bottom)``."""
    (top, bottom), (left, right) = padding_sides(padding)
    sym = (min(top, bottom), min(left, right))
    extra = (left - sym[1], right - sym[1], top - sym[0], bottom - sym[0])
    return sym, extra


# ----------------------------------------------------------------------------- padding

def pad(x, pad, mode="constant", value=0.0):
    """Constant padding of the last axes, as ``torch.nn.functional.pad``: ``pad`` is
    ``(left, right)`` for the last axis, or ``(left, right, top, bottom)`` for the last two, and
    so on; non-negative ints. Only ``mode="constant"``. The same copy on every backend.
    """
    op = "pad"
    x = as_float32(x, op)
    if mode != "constant":
        raise ValueError(f"{op}: only mode='constant' is supported, got {mode!r}")
    if (not isinstance(pad, (tuple, list)) or len(pad) % 2 or not pad
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pad)):
        raise TypeError(f"{op}: pad must be a tuple of an even number of ints "
                        f"((left, right) or (left, right, top, bottom)), got {pad!r}")
    if len(pad) // 2 > x.ndim:
        raise ValueError(f"{op}: pad {tuple(pad)} pads {len(pad) // 2} axes but the input has shape {shape_str(x)}")
    if min(pad) < 0:
        raise ValueError(f"{op}: pad must be non-negative, got {tuple(pad)}")
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: value must be a number, got {value!r}")
    if not any(pad):
        return x
    before, after = [0] * x.ndim, [0] * x.ndim
    for i in range(len(pad) // 2):  # pairs from the last axis backwards
        before[x.ndim - 1 - i], after[x.ndim - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    shape = [n + b + a for n, b, a in zip(x.shape, before, after)]
    check_allocatable(op, shape)
    out = np.full(shape, value, dtype=np.float32)
    out[tuple(slice(b, b + n) for b, n in zip(before, x.shape))] = x
    return out


# ----------------------------------------------------------------------------- convolution

class ConvPlan(NamedTuple):
    """A convolution's weights prepared once by a backend (see :func:`prepare_conv2d`)."""

    backend: str
    weight: np.ndarray
    bias: object          # np.ndarray or None
    stride: tuple
    dilation: tuple
    groups: int
    data: object          # the backend's own form of the weights (None: nothing to prepare)
    precision: str = "float32"


def prepare_conv2d(weight, bias=None, stride=1, dilation=1, groups=1, backend=None,
                   precision="float32") -> ConvPlan:
    """Prepare a convolution's weights once for many :func:`conv2d` calls (``plan=``).

    The fast backend plans its Winograd algorithm here and transforms the weights (a few ms
    for a large layer) the first time a batch needs them, instead of on every call; the reference backend has nothing to prepare.
    With ``precision="bfloat16"`` the weights are rounded to bfloat16 and packed for the
    bf16 products (see :func:`conv2d`).
    ``Conv2D`` layers do this by themselves. The plan refers to ``weight`` and ``bias``
    (no copy) and is valid while they are unchanged: layers make their parameters read-only
    once planned, so a change is an assignment of new arrays, which makes a new plan.
    """
    op = "prepare_conv2d"
    weight = as_float32(weight, op, "weight")
    if weight.ndim != 4 or min(weight.shape) < 1:
        raise ValueError(f"{op}: weight must be (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {shape_str(weight)}")
    stride, _, dilation, groups, _ = check_conv_args(stride, 0, dilation, groups, op=op)
    if weight.shape[0] % groups:
        raise ValueError(f"{op}: groups={groups} must divide the output channels of weight {shape_str(weight)}")
    bias = check_bias(bias, weight.shape[0], op)
    precision = check_precision(precision, op)
    name = get_backend_name() if backend is None else backend
    impl = get_backend(name)
    if precision == "bfloat16":
        data = impl.prepare_bf16(weight, bias, stride, dilation, groups)
    else:
        prepare = hook(impl, "prepare_conv2d")
        data = None if prepare is None else prepare(weight, bias, stride, dilation, groups)
    return ConvPlan(name, weight, bias, stride, dilation, groups, data, precision)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           backend=None, plan=None, precision="float32"):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``, with an optional fused ReLU.

    ``x`` is ``(N, C, H, W)`` or ``(C, H, W)``; ``weight`` is ``(out, C/groups, kh, kw)``;
    ``bias`` is ``(out,)`` or None; ``stride``, ``padding`` and ``dilation`` are ints or
    ``(h, w)`` pairs; ``padding`` may also be a 4-tuple ``(left, right, top, bottom)`` (as
    :func:`pad`) for different padding on each side, e.g. ONNX's or TensorFlow's "same";
    ``activation`` is None or ``"relu"``. ``plan``: the result of :func:`prepare_conv2d` for
    these very ``weight`` and ``bias`` arrays and arguments (and ``precision``).

    ``precision``: ``"float32"`` (default: float32 products) or ``"bfloat16"``: input and
    weight rounded to bfloat16 (nearest, ties to even) on the way into the products, which are
    summed in float32 (on AMX or AVX512-BF16 units where the CPU has them); bias and ReLU in
    float32.
    """
    op = "conv2d"
    precision = check_precision(precision, op)
    x, squeezed = image_batch(x, op)
    weight = as_float32(weight, op, "weight")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {shape_str(weight)}")
    stride, padding, dilation, groups, relu_ = check_conv_args(stride, padding, dilation, groups, activation)
    N, C, H, W = x.shape
    out_ch, cin_g, kh, kw = weight.shape
    check_groups(groups, C, out_ch, op, f"; input {shape_str(x)}, weight {shape_str(weight)}")
    if cin_g * groups != C:
        raise ValueError(f"{op}: input has {C} channels but weight {shape_str(weight)} with "
                         f"groups={groups} expects {cin_g * groups}")
    if min(out_ch, kh, kw) < 1:
        raise ValueError(f"{op}: weight has an empty dimension: {shape_str(weight)}")
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    sides = padding_sides(padding)
    padded = (H + sum(sides[0]), W + sum(sides[1]))
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(f"{op}: kernel {kh}x{kw} (dilation {dilation}, spanning {span[0]}x{span[1]}) "
                         f"is larger than the padded input {padded[0]}x{padded[1]}; input {shape_str(x)}")
    check_allocatable(op, (N, out_ch) + tuple(conv_output_size(n, k, s, p[0], d, padding_end=p[1])
                                              for n, k, s, p, d in zip((H, W), (kh, kw), stride, sides, dilation)))
    check_allocatable(op, (N, C) + padded, "zero-padded input")  # the reference backend makes it
    bias = check_bias(bias, out_ch, op)
    padding, extra = _split_padding(padding)
    if any(extra):  # uneven padding: pad the difference first, the backend pads the rest
        x = pad(x, extra)
    data = None
    if plan is not None:
        if not isinstance(plan, ConvPlan):
            raise TypeError(f"{op}: plan must come from prepare_conv2d, got {type(plan).__name__}")
        name = get_backend_name() if backend is None else backend
        if (plan.backend != name or plan.weight is not weight or plan.bias is not bias
                or (plan.stride, plan.dilation, plan.groups) != (stride, dilation, groups)
                or plan.precision != precision):
            raise ValueError(f"{op}: the plan was prepared for other weights, arguments, backend or "
                             f"precision (make a new one with prepare_conv2d)")
        data = plan.data
    impl = get_backend(backend)
    if precision == "bfloat16":
        y = impl.conv2d_bf16(x, weight, bias, stride, padding, dilation, groups, relu_, data)
    else:
        y = impl.conv2d(x, weight, bias, stride, padding, dilation, groups, relu_, data)
    return _unbatch(y, squeezed)


# ----------------------------------------------------------------------------- pooling

def _pool_args(x, kernel_size, stride, padding, ceil_mode, op):
    """``(kernel, stride, padding, (H', W'))``, checked (see :func:`check_pool_args`)."""
    kernel, stride, padding = check_pool_args(kernel_size, stride, padding, op)
    sides = padding_sides(padding)
    H, W = x.shape[2:]
    out = tuple(pool_output_size(n, k, s, p[0], ceil_mode, padding_end=p[1])
                for n, k, s, p in zip((H, W), kernel, stride, sides))
    if min(out) < 1:  # torch's rule: ceil_mode may keep one window that overhangs the input
        raise ValueError(f"{op}: kernel_size {kernel} is larger than the padded input "
                         f"{H + sum(sides[0])}x{W + sum(sides[1])}; input {shape_str(x)}")
    check_allocatable(op, x.shape[:2] + out)
    if len(padding) == 4:  # the uneven part is padded first (see max_pool2d, avg_pool2d)
        check_allocatable(op, x.shape[:2] + (H + sum(sides[0]), W + sum(sides[1])), "padded input")
    return kernel, stride, padding, out


def _crop(y, out):
    """``y`` cut to ``out = (H', W')`` (a window the uneven padding's composition adds at the end)."""
    if y.shape[2:] == tuple(out):
        return y
    return np.ascontiguousarray(y[:, :, :out[0], :out[1]])


def _window_counts(size, kernel, stride, before, after, out):
    """Per output index along one axis: ``(cells inside the padded input, cells inside the input)``."""
    start = np.arange(out) * stride - before
    stop = start + kernel
    padded = np.minimum(stop, size + after) - start
    inside = np.minimum(stop, size) - np.maximum(start, 0)
    return padded, inside


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, backend=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d`` (``stride=None`` means the kernel size).

    ``padding`` may also be a 4-tuple ``(left, right, top, bottom)`` (ONNX's uneven pads).
    """
    op = "max_pool2d"
    x, squeezed = image_batch(x, op)
    kernel, stride, padding, out = _pool_args(x, kernel_size, stride, padding, ceil_mode, op)
    padding, extra = _split_padding(padding)
    if any(extra):  # padding never wins a max: pad the difference with -inf, the backend the rest
        x = pad(x, extra, value=-np.inf)
    y = get_backend(backend).max_pool2d(x, kernel, stride, padding, bool(ceil_mode))
    return _unbatch(_crop(y, out), squeezed)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               backend=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``.

    ``padding`` may also be a 4-tuple ``(left, right, top, bottom)`` (ONNX's uneven pads); the
    divisor then counts the window's cells inside the padded input (``count_include_pad``) or
    inside the input, never those of the ``ceil_mode`` overhang, as ONNX Runtime does.
    """
    op = "avg_pool2d"
    x, squeezed = image_batch(x, op)
    kernel, stride, padding, out = _pool_args(x, kernel_size, stride, padding, ceil_mode, op)
    sides = padding_sides(padding)
    H, W = x.shape[2:]
    padding, extra = _split_padding(padding)
    impl = get_backend(backend)
    if not any(extra):
        y = impl.avg_pool2d(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))
        return _unbatch(y, squeezed)
    # Zero-pad the difference; the backend's count_include_pad divisor is then the window's cells
    # inside the whole padded input. Without count_include_pad, rescale to the cells inside the input.
    y = _crop(impl.avg_pool2d(pad(x, extra), kernel, stride, padding, bool(ceil_mode), True), out)
    if not count_include_pad:
        (ph, ih), (pw, iw) = (_window_counts(n, k, s, b, a, o) for n, k, s, (b, a), o
                              in zip((H, W), kernel, stride, sides, out))
        y *= (np.outer(ph, pw) / np.outer(ih, iw)).astype(np.float32)
    return _unbatch(y, squeezed)


def adaptive_avg_pool2d(x, output_size, backend=None):
    """Adaptive average pooling to ``output_size`` (an int or a pair; None keeps that side)."""
    op = "adaptive_avg_pool2d"
    x, squeezed = image_batch(x, op)
    H, W = x.shape[2:]
    size = tuple(n if s is None else s for s, n in zip(check_output_size(output_size, op), (H, W)))
    if H < 1 or W < 1:
        raise ValueError(f"{op}: input must have a non-empty spatial size, got {shape_str(x)}")
    check_allocatable(op, x.shape[:2] + size)
    y = get_backend(backend).adaptive_avg_pool2d(x, size)
    return _unbatch(y, squeezed)


def pool_output_shape(input_hw, kernel_size, stride=None, padding=0, ceil_mode=False):
    """``(H', W')`` of a max/avg pooling of an ``(H, W)`` map (no data needed)."""
    kernel, stride, padding = check_pool_args(kernel_size, stride, padding, "pool")
    return tuple(pool_output_size(s, k, st, p[0], ceil_mode, padding_end=p[1])
                 for s, k, st, p in zip(input_hw, kernel, stride, padding_sides(padding)))


# ----------------------------------------------------------------------------- normalization

def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, backend=None):
    """Local response normalization across channels, as ``torch.nn.functional.local_response_norm``.

    ``b_c = a_c / (k + alpha/size * sum of a_j^2 over j in [c - size//2, c + (size-1)//2])^beta``.
    """
    op = "local_response_norm"
    x, squeezed = image_batch(x, op)
    size, alpha, beta, k = check_lrn_args(size, alpha, beta, k, op)
    y = get_backend(backend).local_response_norm(x, size, alpha, beta, k)
    return _unbatch(y, squeezed)


# ----------------------------------------------------------------------------- dense and friends

class LinearPlan(NamedTuple):
    """A dense layer's weight prepared once for bfloat16 products (see :func:`prepare_linear`)."""

    backend: str
    weight: object        # the float32 array or LowpWeight it was made from
    bias: object
    precision: str
    data: object          # the backend's own form


def prepare_linear(weight, bias=None, precision="bfloat16", backend=None) -> LinearPlan:
    """Prepare a dense weight once for many :func:`linear` calls (``plan=``) in ``precision``
    (for ``"bfloat16"``: rounded and packed for the bf16 products; ``"float32"``: nothing)."""
    op = "prepare_linear"
    precision = check_precision(precision, op)
    w = _dense_weight(weight, op)
    bias = check_bias(bias, w.shape[0], op)
    name = get_backend_name() if backend is None else backend
    data = get_backend(name).prepare_bf16(_float_weight(w), bias, None, None, 1) \
        if precision == "bfloat16" else None
    return LinearPlan(name, weight, bias, precision, data)


def _dense_weight(weight, op):
    w = weight if isinstance(weight, LowpWeight) else as_float32(weight, op, "weight")
    if w.ndim != 2:
        raise ValueError(f"{op}: weight must be (out_features, in_features), got {shape_str(w)}")
    return w


def _float_weight(weight):
    return weight.to_float32() if isinstance(weight, LowpWeight) else weight


def linear(x, weight, bias=None, activation=None, backend=None, precision="float32", plan=None):
    """``x @ weight.T + bias`` with ``weight`` of shape ``(out, in)``; ``x`` is ``(N, in)`` or ``(in,)``.

    ``weight`` is a float32 array, or a :class:`fastalex.lowp.LowpWeight` (bfloat16 or int8
    storage, see :func:`fastalex.lowp.pack`): it is then widened inside the product, which
    accumulates in float32.

    ``precision="bfloat16"``: input and (widened) weight rounded to bfloat16 on the way into
    the products, summed in float32 (AMX / AVX512-BF16 where the CPU has them); ``plan`` from
    :func:`prepare_linear` for this very weight and bias saves rounding and packing the weight
    on every call.
    """
    op = "linear"
    precision = check_precision(precision, op)
    x = as_float32(x, op)
    squeezed = x.ndim == 1
    if squeezed:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{op}: input must be (N, in_features) or (in_features,), got shape "
                         f"{shape_str(x)} (flatten it first)")
    lowp = isinstance(weight, LowpWeight)
    if not lowp:
        weight = as_float32(weight, op, "weight")
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be (out_features, in_features), got {shape_str(weight)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: input has {x.shape[1]} features but weight {shape_str(weight)} "
                         f"expects {weight.shape[1]}; input {shape_str(x)}")
    bias = check_bias(bias, weight.shape[0], op)
    check_allocatable(op, (x.shape[0], weight.shape[0]))
    impl = get_backend(backend)
    if precision == "bfloat16":
        data = None
        if plan is not None:
            if not isinstance(plan, LinearPlan):
                raise TypeError(f"{op}: plan must come from prepare_linear, got {type(plan).__name__}")
            name = get_backend_name() if backend is None else backend
            if (plan.backend != name or plan.weight is not weight or plan.bias is not bias
                    or plan.precision != precision):
                raise ValueError(f"{op}: the plan was prepared for another weight, bias, backend or "
                                 f"precision (make a new one with prepare_linear)")
            data = plan.data
        y = impl.linear_bf16(x, _float_weight(weight), bias, check_activation(activation, op), data)
        return y[0] if squeezed else y
    y = (impl.linear_lowp if lowp else impl.linear)(x, weight, bias, check_activation(activation, op))
    return y[0] if squeezed else y


def relu(x, backend=None):
    """``max(x, 0)`` elementwise."""
    return get_backend(backend).relu(as_float32(x, "relu"))


def softmax(x, axis=-1):
    """Numerically stable softmax along ``axis`` (the max is subtracted before ``exp``)."""
    x = as_float32(x, "softmax")
    if x.ndim == 0:
        raise ValueError("softmax: input must have at least one axis, got a scalar")
    check_int(axis, "softmax", "axis", minimum=None)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"softmax: axis {axis} is out of range for input of shape {shape_str(x)}")
    if x.size == 0:  # nothing to normalize (torch returns the empty tensor)
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32, copy=False)


def flatten(x, start_dim=1):
    """Flatten all axes from ``start_dim`` on (``(N, C, H, W) -> (N, C*H*W)`` by default)."""
    x = as_float32(x, "flatten")
    check_int(start_dim, "flatten", "start_dim", minimum=None)
    if not 0 <= start_dim < max(x.ndim, 1):
        raise ValueError(f"flatten: start_dim {start_dim} is out of range for input of shape {shape_str(x)}")
    return x.reshape(x.shape[:start_dim] + (-1,))


def dropout(x, p=0.5, training=False):
    """Dropout; fastalex is an inference engine, so only ``training=False`` (identity) is supported."""
    check_dropout_p(p)
    if training:
        raise NotImplementedError("dropout: fastalex runs inference only; training=True is not supported")
    return as_float32(x, "dropout")
