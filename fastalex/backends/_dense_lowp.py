"""The fast path's dense product, with a float32 weight or a low-precision one (bfloat16 bits or
int8). For batches it beats OpenBLAS's ``x @ W.T`` (the weight is read once per 4 samples,
never packed); for one sample it streams the weight as fast as OpenBLAS's sgemv.

``y[n, o] = scale[o] * sum_k widen(w[o, k]) * x[n, k] + bias[o]`` (then ReLU if asked), with
``widen`` exact: a bfloat16 pattern becomes the upper half of a float32 (``bits << 16``
reinterpreted), an int8 becomes a float32. The weight is widened in registers inside the
product, never into a float32 copy, so a batch-1 product streams 2 (bfloat16) or 1 (int8)
byte(s) per weight from memory instead of 4. Accumulation is float32.

One task (``prange``) computes a block of 4 output rows for every sample: a register tile of
4 rows x 4 samples (16 accumulators, each widened weight used 4 times, each input value 4
times), then 4 rows x 1 sample for the samples left over. The inner loops run over the input
features, have no branches and vectorize (LLVM may reassociate the float32 sums, so the order
of additions differs from the reference's; packed ``vfmadd231ps`` on ``zmm``/``ymm``
registers). Rows left over (``out % 4``) get one dot product each.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

ROWS = 4      # output rows per task
SAMPLES = 4   # samples per register tile

# reassociation is what lets LLVM vectorize a float sum; no other "fast" liberties
_FM = {"reassoc", "contract"}
_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=_FM)
_SER = dict(cache=True, nogil=True, error_model="numpy", fastmath=_FM)


@intrinsic
def _bf16_bits_to_float32(typingctx, bits):
    """The float32 whose bit pattern is ``bits << 16`` (a bfloat16 widened, exactly)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


def widen(v):  # pragma: no cover - replaced by the overload inside compiled code
    """One stored weight as float32 (compiled code only)."""
    raise NotImplementedError


@overload(widen, inline="always")
def _widen_impl(v):
    if v == types.uint16:
        return lambda v: _bf16_bits_to_float32(v)
    if v == types.int8:
        return lambda v: np.float32(v)
    if v == types.float32:
        return lambda v: v
    return None


@njit(**_SER)
def _tile_4x4(w, x, r0, n0, y):
    """Raw sums ``y[n0:n0+4, r0:r0+4]``: 4 weight rows times 4 samples."""
    K = x.shape[1]
    w0, w1, w2, w3 = w[r0], w[r0 + 1], w[r0 + 2], w[r0 + 3]
    x0, x1, x2, x3 = x[n0], x[n0 + 1], x[n0 + 2], x[n0 + 3]
    z = np.float32(0.0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = z
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for k in range(K):
        v0, v1, v2, v3 = widen(w0[k]), widen(w1[k]), widen(w2[k]), widen(w3[k])
        u0, u1, u2, u3 = x0[k], x1[k], x2[k], x3[k]
        a00 += v0 * u0
        a01 += v0 * u1
        a02 += v0 * u2
        a03 += v0 * u3
        a10 += v1 * u0
        a11 += v1 * u1
        a12 += v1 * u2
        a13 += v1 * u3
        a20 += v2 * u0
        a21 += v2 * u1
        a22 += v2 * u2
        a23 += v2 * u3
        a30 += v3 * u0
        a31 += v3 * u1
        a32 += v3 * u2
        a33 += v3 * u3
    y[n0, r0], y[n0 + 1, r0], y[n0 + 2, r0], y[n0 + 3, r0] = a00, a01, a02, a03
    y[n0, r0 + 1], y[n0 + 1, r0 + 1], y[n0 + 2, r0 + 1], y[n0 + 3, r0 + 1] = a10, a11, a12, a13
    y[n0, r0 + 2], y[n0 + 1, r0 + 2], y[n0 + 2, r0 + 2], y[n0 + 3, r0 + 2] = a20, a21, a22, a23
    y[n0, r0 + 3], y[n0 + 1, r0 + 3], y[n0 + 2, r0 + 3], y[n0 + 3, r0 + 3] = a30, a31, a32, a33


@njit(**_SER)
def _tile_4x1(w, x, r0, n, y):
    """Raw sums ``y[n, r0:r0+4]``: 4 weight rows times one sample (each input value used 4 times)."""
    K = x.shape[1]
    w0, w1, w2, w3 = w[r0], w[r0 + 1], w[r0 + 2], w[r0 + 3]
    xn = x[n]
    z = np.float32(0.0)
    a0 = a1 = a2 = a3 = z
    for k in range(K):
        u = xn[k]
        a0 += widen(w0[k]) * u
        a1 += widen(w1[k]) * u
        a2 += widen(w2[k]) * u
        a3 += widen(w3[k]) * u
    y[n, r0], y[n, r0 + 1], y[n, r0 + 2], y[n, r0 + 3] = a0, a1, a2, a3


@njit(**_SER)
def _dot(w, x, r, n, y):
    """Raw sum ``y[n, r]``: one weight row times one sample."""
    wr, xn = w[r], x[n]
    a = np.float32(0.0)
    for k in range(x.shape[1]):
        a += widen(wr[k]) * xn[k]
    y[n, r] = a


@njit(**_PAR)
def linear_lowp_kernel(x, w, scale, bias, relu, y):
    """``y = relu?(scale * (x @ widen(w).T) + bias)``; ``x`` ``(N, K)`` float32, ``w`` ``(O, K)``
    uint16 (bfloat16 bits), int8 or float32, ``scale`` and ``bias`` float32 ``(O,)`` (either may be
    empty: all ones, no bias), ``y`` float32 ``(N, O)``. One task per block of :data:`ROWS` rows."""
    N = x.shape[0]
    O = w.shape[0]
    for b in prange((O + ROWS - 1) // ROWS):
        r0 = b * ROWS
        r1 = min(r0 + ROWS, O)
        if r1 - r0 == ROWS:
            n = np.int64(0)  # not the literal 0: one compiled _tile_4x4, not two
            while n + SAMPLES <= N:
                _tile_4x4(w, x, r0, n, y)
                n += SAMPLES
            while n < N:
                _tile_4x1(w, x, r0, n, y)
                n += 1
        else:
            for r in range(r0, r1):
                for n in range(N):
                    _dot(w, x, r, n, y)
        for r in range(r0, r1):  # scale, bias, ReLU as the block is finished
            s = scale[r] if scale.size else np.float32(1.0)
            b_r = bias[r] if bias.size else np.float32(0.0)
            for n in range(N):
                v = y[n, r] * s + b_r
                y[n, r] = np.float32(0.0) if relu and v < 0.0 else v
