"""The reference backend: every operation in plain, vectorized NumPy.

This is the ground truth the fast backend is tested against, so each function is written
to be read next to its formula. There is no Python loop over output pixels: windows are
gathered with ``sliding_window_view`` and reduced with ``tensordot`` / ``max`` / ``sum``.

Contract (shared with every backend, see ``fastalex.backends``): inputs are validated,
C-contiguous float32 NCHW arrays; tuple arguments are already normalized to pairs.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..shapes import adaptive_bounds, pool_output_size

NAME = "numpy"


def _windows(x, kernel, stride, dilation):
    """All (dilated) kernel windows of an NCHW array: ``(N, C, Ho, Wo, kh, kw)`` (a view)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(x, (span_h, span_w), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _pad(x, before, after, value=0.0):
    """Pad the two spatial axes: ``before=(top, left)``, ``after=(bottom, right)``."""
    if not any(before) and not any(after):
        return x
    widths = ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1]))
    return np.pad(x, widths, mode="constant", constant_values=value)


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu, plan=None):
    """Cross-correlation: ``y[n,o,i,j] = b[o] + sum_{c,u,v} w[o,c,u,v] * x[n, g*C/G + c, i*s + u*d - p, j*s + v*d - p]``.
    (``plan`` is the fast backend's business: the reference has nothing to prepare.)"""
    out_ch, cin_g, kh, kw = weight.shape
    xp = _pad(x, padding, padding)
    win = _windows(xp, (kh, kw), stride, dilation)          # (N, C, Ho, Wo, kh, kw)
    cout_g = out_ch // groups
    parts = []
    for g in range(groups):                                 # a handful of groups, not pixels
        xg = win[:, g * cin_g:(g + 1) * cin_g]              # (N, Cg, Ho, Wo, kh, kw)
        wg = weight[g * cout_g:(g + 1) * cout_g]            # (Og, Cg, kh, kw)
        parts.append(np.tensordot(xg, wg, axes=([1, 4, 5], [1, 2, 3])))  # (N, Ho, Wo, Og)
    y = np.concatenate(parts, axis=-1) if groups > 1 else parts[0]
    if bias is not None:
        y = y + bias
    if relu:
        y = np.maximum(y, 0.0)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32)


def _pool_padding(size, kernel, stride, padding, ceil_mode):
    """Output size and the extra right/bottom padding ``ceil_mode`` needs for the last window."""
    out = pool_output_size(size, kernel, stride, padding, ceil_mode)
    needed = (out - 1) * stride + kernel          # extent of the padded input the windows cover
    extra = max(0, needed - (size + 2 * padding))
    return out, extra


def _pool_geometry(x, kernel, stride, padding, ceil_mode):
    (H, W), (kh, kw), (sh, sw), (ph, pw) = x.shape[2:], kernel, stride, padding
    ho, extra_h = _pool_padding(H, kh, sh, ph, ceil_mode)
    wo, extra_w = _pool_padding(W, kw, sw, pw, ceil_mode)
    return (ho, wo), (ph, pw), (ph + extra_h, pw + extra_w)


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    """``y[n,c,i,j] = max over the window`` of the input padded with ``-inf``."""
    (ho, wo), before, after = _pool_geometry(x, kernel, stride, padding, ceil_mode)
    xp = _pad(x, before, after, value=-np.inf)
    win = _windows(xp, kernel, stride, (1, 1))[:, :, :ho, :wo]
    return np.ascontiguousarray(win.max(axis=(4, 5)), dtype=np.float32)


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    """``y = sum over the window / divisor``.

    The divisor counts the window's cells inside the zero-padded input when
    ``count_include_pad`` is true (cells in the extra ``ceil_mode`` margin never count),
    and only the cells of the real input when it is false, as torch does.
    """
    N, C, H, W = x.shape
    (ho, wo), before, after = _pool_geometry(x, kernel, stride, padding, ceil_mode)
    xp = _pad(x, before, after)
    sums = _windows(xp, kernel, stride, (1, 1))[:, :, :ho, :wo].sum(axis=(4, 5), dtype=np.float32)
    # A mask of the cells that count, pooled with the same windows, gives each divisor.
    if count_include_pad:
        mask = np.ones((1, 1, H + 2 * before[0], W + 2 * before[1]), np.float32)
        mask = _pad(mask, (0, 0), (after[0] - before[0], after[1] - before[1]))
    else:
        mask = _pad(np.ones((1, 1, H, W), np.float32), before, after)
    counts = _windows(mask, kernel, stride, (1, 1))[:, :, :ho, :wo].sum(axis=(4, 5))
    return np.ascontiguousarray(sums / counts, dtype=np.float32)


def _window_sums(a, starts, ends, axis):
    """Sums of ``a`` over the windows ``[starts[i], ends[i])`` along ``axis`` (float64), each
    from its own cells only, so a NaN or inf reaches only the windows that contain it.

    ``np.add.reduceat`` with the indices ``s0, e0, s1, e1, ...`` sums ``a[s_i:e_i]`` at the
    even positions (the odd ones are the gaps or overlaps between windows, dropped); a row of
    zeros appended along ``axis`` makes the last end a valid index.
    """
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, 1)
    bounds = np.stack([starts, ends], axis=1).ravel()
    sums = np.add.reduceat(np.pad(a, pad), bounds, axis=axis, dtype=np.float64)
    return sums.take(np.arange(0, bounds.size, 2), axis=axis)


def adaptive_avg_pool2d(x, output_size):
    """Output cell ``(i, j)`` averages rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` (and columns alike).

    Window sums over the rows, then over the columns of those (the windows of neighbouring
    cells may overlap by one row or column), divided by the windows' areas. The axis whose
    sums leave the smaller intermediate goes first (at most the input's or the output's size).
    """
    N, C, H, W = x.shape
    oh, ow = output_size
    r0, r1 = adaptive_bounds(H, oh, np.arange(oh))
    c0, c1 = adaptive_bounds(W, ow, np.arange(ow))
    if oh * W <= H * ow:
        total = _window_sums(_window_sums(x, r0, r1, axis=2), c0, c1, axis=3)
    else:
        total = _window_sums(_window_sums(x, c0, c1, axis=3), r0, r1, axis=2)
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return np.ascontiguousarray(total / area, dtype=np.float32)


def local_response_norm(x, size, alpha, beta, k):
    """``b_c = a_c / (k + alpha/size * sum_{j in window(c)} a_j^2) ** beta``.

    The window is ``[c - size//2, c + (size-1)//2]`` clipped to the channels (torch's): the
    squares are padded with zero channels and summed over a sliding window. A window reaches
    at most ``C - 1`` channels either side, so the padding (and the window) stops there.
    """
    C = x.shape[1]
    if C == 0:
        return x.copy()
    before, after = min(size // 2, C - 1), min((size - 1) // 2, C - 1)
    sq = np.square(x, dtype=np.float32)
    padded = np.pad(sq, ((0, 0), (before, after), (0, 0), (0, 0)))
    window_sum = sliding_window_view(padded, before + 1 + after, axis=1).sum(axis=-1)
    return np.ascontiguousarray(x / (k + (alpha / size) * window_sum) ** beta, dtype=np.float32)


def linear(x, weight, bias, relu):
    """``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0.0, out=y)
    return np.ascontiguousarray(y, dtype=np.float32)


def linear_lowp(x, weight, bias, relu):
    """:func:`linear` with a bfloat16/int8 weight (:class:`fastalex.lowp.LowpWeight`): widen it
    to float32 (exactly: ``bits << 16``, or ``scale[:, None] * q``), then the float32 product."""
    return linear(x, weight.to_float32(), bias, relu)


def relu(x):
    """``max(x, 0)``."""
    return np.maximum(x, np.float32(0.0))


# ----------------------------------------------------------------------------- bfloat16 (precision="bfloat16")
# The reference of issue 18's bfloat16 products: inputs and weights rounded to bfloat16
# (nearest, ties to even), then the float32 functions above (a product of two bfloat16 values
# is exact in float32; the sums are float32, in NumPy's order).

def bf16_path() -> str:
    return "emulation"


def _round(a):
    from ..lowp import from_bfloat16, to_bfloat16
    return from_bfloat16(to_bfloat16(a))


def prepare_bf16(weight, bias, stride, dilation, groups):
    """The weight rounded to bfloat16 (float32 values), once."""
    return _round(weight)


def describe_bf16(plan) -> str:
    return "bfloat16 emulation: weight rounded once, float32 products of rounded inputs"


def conv2d_bf16(x, weight, bias, stride, padding, dilation, groups, relu, plan=None):
    w = _round(weight) if plan is None else plan
    return conv2d(_round(x), w, bias, stride, padding, dilation, groups, relu)


def linear_bf16(x, weight, bias, relu, plan=None):
    w = _round(weight) if plan is None else plan
    return linear(_round(x), w, bias, relu)
