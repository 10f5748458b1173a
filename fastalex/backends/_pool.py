"""Max pooling in explicit vectors for the fast backend.

Max pooling is separable: a window's input rows are reduced into a row buffer, then each
output cell reduces its ``kw`` columns of that buffer at stride ``sw``. Written as plain Numba
loops, neither pass ran at vector speed on AlexNet's maps: the rows (55, 27 or 13 wide) are
shorter than a vectorized loop's body (16 lanes, unrolled 4x), so they ran in the loop's scalar
remainder, and the column pass (a gather at stride 2) never vectorized; its data-dependent
NaN-aware compare ran as branches that mispredict on real activations (~1 in 3 windows changes
its maximum). Measured on Zen 4: 190 us for AlexNet's first pool (64 maps of 55x55, batch 1,
2 threads) where ONNX Runtime takes 18 us.

So each pass is one call per output row of an ``@intrinsic`` written in LLVM IR (as
:mod:`._gemm`'s micro-kernel): for each block of 16 output lanes (then one of 8, 4, 2 and 1 as
the row's rest needs), load every tap of the window (contiguous; at stride 2 one wide load and
a shuffle; at any other stride lane by lane), take ``llvm.maximum`` (a NaN in either operand
gives NaN: no branches), and store once. 3-tap windows run straight-line. The row buffer is
padded with -inf, so windows over the padding need no special case. Tasks are runs of whole
planes (``tunables.POOL_TASK_VALUES`` input values at least), one row buffer each. Measured on Zen 4
(2 threads): AlexNet's three pools at batch 1 in 0.09-0.12 ms instead of 0.22-0.32, at batch 16
1.2 ms instead of 3.2.

NaN semantics are PyTorch's: a NaN anywhere in a window makes its output NaN.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from . import tunables

_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")

_ARR = types.Array(types.float32, 1, "C")


def _window_max(stride):
    """The intrinsic ``op(dst, do, src, so, st, n, taps, step)``: for ``j < n``,
    ``dst[do + j]`` = the NaN-propagating max over ``t < taps`` (``taps >= 1``) of
    ``src[so + t*step + j*s]``, ``s`` = ``stride`` (or the argument ``st`` when ``stride`` is
    None). Rows of a window: ``s = 1``, ``step`` = the row length; columns: ``s`` = the pooling
    stride, ``step = 1``."""

    @intrinsic
    def op(typingctx, dst, do, src, so, st, n, taps, step):
        if not (dst == _ARR and src == _ARR):
            return None
        sig = types.void(dst, types.intp, src, types.intp, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            dst_, do_, src_, so_, st_, n_, taps_, step_ = args
            f32 = ir.FloatType()
            i32, i64 = ir.IntType(32), ir.IntType(64)
            pd0 = builder.gep(context.make_array(_ARR)(context, builder, dst_).data, [do_])
            ps0 = builder.gep(context.make_array(_ARR)(context, builder, src_).data, [so_])
            s = ir.Constant(i64, stride) if stride is not None else st_

            def c64(v):
                return ir.Constant(i64, v)

            def load(width, p):
                """``width`` values from ``p`` at stride ``s``."""
                vec = ir.VectorType(f32, width)
                if stride == 1:
                    return builder.load(builder.bitcast(p, vec.as_pointer()), align=4)
                if stride == 2 and width > 1:
                    # 2*width - 1 values in one load (never past the last one used), the even
                    # ones picked by a shuffle
                    wide = ir.VectorType(f32, 2 * width - 1)
                    w = builder.load(builder.bitcast(p, wide.as_pointer()), align=4)
                    return builder.shuffle_vector(w, ir.Constant(wide, ir.Undefined),
                                                  ir.Constant(ir.VectorType(i32, width), [2 * l for l in range(width)]))
                v = ir.Constant(vec, ir.Undefined)
                for lane in range(width):
                    q = builder.gep(p, [builder.mul(s, c64(lane))])
                    v = builder.insert_element(v, builder.load(q, align=4), ir.Constant(i32, lane))
                return v

            def emit(width, j):
                """``dst[j : j + width]``: one vector, every tap into it, one store."""
                vec = ir.VectorType(f32, width)
                # llvm.maximum: NaN if either is NaN (torch's rule)
                fmax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec]),
                                                      f"llvm.maximum.v{width}f32")
                base = builder.gep(ps0, [builder.mul(j, s)])
                acc = cgutils.alloca_once(builder, vec)
                with builder.if_else(builder.icmp_signed("==", taps_, c64(3))) as (three, other):
                    with three:  # AlexNet's windows (3x3), straight-line
                        v = [load(width, builder.gep(base, [builder.mul(c64(t), step_)])) for t in range(3)]
                        builder.store(builder.call(fmax, [builder.call(fmax, [v[0], v[1]]), v[2]]), acc)
                    with other:
                        builder.store(load(width, base), acc)
                        with cgutils.for_range_slice(builder, c64(1), taps_, c64(1)) as (t, _):
                            v = load(width, builder.gep(base, [builder.mul(t, step_)]))
                            builder.store(builder.call(fmax, [builder.load(acc), v]), acc)
                builder.store(builder.load(acc), builder.bitcast(builder.gep(pd0, [j]), vec.as_pointer()), align=4)

            # blocks of 16, then one each of 8, 4, 2 and 1 lanes as the rest needs
            with cgutils.for_range(builder, builder.sdiv(n_, c64(16))) as loop:
                emit(16, builder.mul(loop.index, c64(16)))
            done = builder.and_(n_, c64(-16))
            for width in (8, 4, 2, 1):
                with builder.if_then(builder.icmp_signed("!=", builder.and_(n_, c64(width)), c64(0))):
                    emit(width, done)
                done = builder.or_(done, builder.and_(n_, c64(width)))
            return context.get_dummy_value()

        return sig, codegen

    return op


#: windows at stride 1 (rows), 2 (AlexNet's columns) and any (the stride an argument)
_max_1, _max_2, _max_s = _window_max(1), _window_max(2), _window_max(None)


@njit(**_SER)
def _max_pool_planes(x, y, H, W, ho, wo, kh, kw, sh, sw, ph, pw, r0, r1):
    """Image planes ``r0 <= r < r1``: ``y[r*ho*wo:]`` from ``x[r*H*W:]``, both flat."""
    # the window rows' maximum, at offset pw in a row of -inf padding long enough for every
    # window (the ones past the right edge in ceil_mode too): padding never wins a window
    # that has an input cell (every window has one); -inf inputs still come out as -inf
    buf = np.full(max((wo - 1) * sw + kw, pw + W), -np.inf, dtype=np.float32)
    for r in range(r0, r1):
        so, do = r * H * W, r * ho * wo
        for i in range(ho):
            h0 = i * sh - ph
            h1 = min(h0 + kh, H)
            h0 = max(h0, 0)
            _max_1(buf, pw, x, so + h0 * W, 1, W, h1 - h0, W)
            if sw == 1:
                _max_1(y, do + i * wo, buf, 0, 1, wo, kw, 1)
            elif sw == 2:
                _max_2(y, do + i * wo, buf, 0, 2, wo, kw, 1)
            else:
                _max_s(y, do + i * wo, buf, 0, sw, wo, kw, 1)


@njit(**_PAR)
def max_pool(x, y, H, W, ho, wo, kh, kw, sh, sw, ph, pw):
    """``y`` (flat, ``planes * ho * wo``) from ``x`` (flat, ``planes * H * W``): tasks of whole
    planes, at least ``tunables.POOL_TASK_VALUES`` input values each, in parallel."""
    planes = x.size // (H * W)
    per = max(1, min(planes, tunables.POOL_TASK_VALUES // (H * W)))
    tasks = (planes + per - 1) // per
    for t in prange(tasks):
        r0 = np.int64(t) * per  # one signature (prange's index may be unsigned)
        _max_pool_planes(x, y, H, W, ho, wo, kh, kw, sh, sw, ph, pw, r0, min(r0 + per, planes))
