"""The ``"avx512_bf16"`` product of :mod:`._bf16`: ``vdpbf16ps`` register tiles.

``vdpbf16ps acc, a, b`` adds ``a[2i]*b[2i] + a[2i+1]*b[2i+1]`` to each of 16 float32 lanes
``acc[i]``: with ``b`` one step of a packed panel (16 columns x one ``k`` pair) and ``a`` one
``k`` pair of a row of ``A`` broadcast to every lane, it is 32 multiply-adds of one row. The
micro-kernel keeps ``R x 32`` of ``C`` (``R <= 6`` rows, 2 vectors per row: 12 of the 32
``zmm`` registers) in registers over the whole depth, written in LLVM IR from a Numba
``@intrinsic`` (``llvm.x86.avx512bf16.dpbf16ps.512``), like :mod:`._gemm`'s float32 one.
Imported only on a CPU with AVX512-BF16 (``_bf16.cpu_paths``): elsewhere LLVM cannot
compile it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from ._bf16_common import MB, NR, write_block

MR = 6
_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite has no such type)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


def _micro_kernel(rows, vecs):
    """``mk(a, ao, lda, b, bo, c, co, ldc, KP2)``: for ``i < rows``, ``j < 16*vecs``:
    ``c[co + i*ldc + j] = sum_kp sum_e a[ao + i*lda + 2kp + e] * b[bo + kp*64 + 2j + e]``
    (``a``, ``b`` bfloat16 bits, ``c`` float32; ``KP2 >= 1``)."""

    @intrinsic
    def mk(typingctx, a, ao, lda, b, bo, c, co, ldc, KP2):
        u16 = types.Array(types.uint16, 1, "C")
        f32a = types.Array(types.float32, 1, "C")
        if not (a == u16 and b == u16 and c == f32a):
            return None
        sig = types.void(a, types.intp, types.intp, b, types.intp, c, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_, ao_, lda_, b_, bo_, c_, co_, ldc_, K_ = args
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vf = ir.VectorType(ir.FloatType(), 16)
            vi = ir.VectorType(i32, 16)
            vb = ir.VectorType(_BFloat(), 32)
            dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vb, vb]),
                                                "llvm.x86.avx512bf16.dpbf16ps.512")
            pa = builder.gep(context.make_array(u16)(context, builder, a_).data, [ao_])
            pb = builder.gep(context.make_array(u16)(context, builder, b_).data, [bo_])
            pc = builder.gep(context.make_array(f32a)(context, builder, c_).data, [co_])
            rows_a = [builder.bitcast(builder.gep(pa, [builder.mul(lda_, ir.Constant(i64, i))]),
                                      i32.as_pointer()) for i in range(rows)]
            zero = ir.Constant(vf, None)
            undef = ir.Constant(vi, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, 16), None)
            entry = builder.basic_block
            loop = builder.append_basic_block("bf.loop")
            done = builder.append_basic_block("bf.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            acc = [builder.phi(vf) for _ in range(vecs * rows)]
            for v in acc:
                v.add_incoming(zero, entry)
            brow = builder.bitcast(builder.gep(pb, [builder.mul(k, ir.Constant(i64, 2 * NR))]), vi.as_pointer())
            bv = [builder.bitcast(builder.load(builder.gep(brow, [ir.Constant(i64, h)]), align=2), vb)
                  for h in range(vecs)]
            new = []
            for i in range(rows):
                s = builder.load(builder.gep(rows_a[i], [k]), align=2)
                s = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, splat)
                s = builder.bitcast(s, vb)
                for h in range(vecs):
                    new.append(builder.call(dp, [acc[vecs * i + h], s, bv[h]]))
            k1 = builder.add(k, ir.Constant(i64, 1))
            for v, n in zip(acc, new):
                v.add_incoming(n, loop)
            k.add_incoming(k1, loop)
            builder.cbranch(builder.icmp_signed("<", k1, K_), loop, done)
            builder.position_at_end(done)
            vfp = vf.as_pointer()
            for i in range(rows):
                crow = builder.gep(pc, [builder.mul(ldc_, ir.Constant(i64, i))])
                for h in range(vecs):
                    builder.store(new[vecs * i + h], builder.bitcast(builder.gep(crow, [ir.Constant(i64, 16 * h)]), vfp),
                                  align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_w1, _w2, _w3, _w4, _w5, _w6 = (_micro_kernel(r, 2) for r in range(1, 7))
_h1, _h2, _h3, _h4, _h5, _h6 = (_micro_kernel(r, 1) for r in range(1, 7))


@njit(**_SER)
def _rows(a, ao, lda, b, bo, c, co, ldc, T, KP2, half):
    """``T`` rows of ``A`` from ``ao`` times one panel into ``C`` from ``co`` (``half``: only
    its first 16 columns)."""
    t = 0
    if half:
        while t + MR <= T:
            _h6(a, ao + t * lda, lda, b, bo, c, co + t * ldc, ldc, KP2)
            t += MR
        r = T - t
        ao, co = ao + t * lda, co + t * ldc
        if r == 5:
            _h5(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 4:
            _h4(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 3:
            _h3(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 2:
            _h2(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 1:
            _h1(a, ao, lda, b, bo, c, co, ldc, KP2)
    else:
        while t + MR <= T:
            _w6(a, ao + t * lda, lda, b, bo, c, co + t * ldc, ldc, KP2)
            t += MR
        r = T - t
        ao, co = ao + t * lda, co + t * ldc
        if r == 5:
            _w5(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 4:
            _w4(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 3:
            _w3(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 2:
            _w2(a, ao, lda, b, bo, c, co, ldc, KP2)
        elif r == 1:
            _w1(a, ao, lda, b, bo, c, co, ldc, KP2)


@njit(**_PAR)
def gemm(a, bp, c, m, n):
    """``C[g, :m, :n'] = A[g, :m] @ B[g]`` (``n'``: ``n`` rounded up to 16) for bf16 ``a``
    (G, Mp, Kp), panels ``bp`` (G, NP, Kp/2, 32, 2), float32 ``c`` (G, Mp, NP*32). One task per
    (group, panel, block of 32 rows)."""
    G, Mp, Kp = a.shape
    NP, KP2 = bp.shape[1], bp.shape[2]
    ldc = c.shape[2]
    nblk = (m + MB - 1) // MB
    af, bf, cf = a.reshape(-1), bp.reshape(-1), c.reshape(-1)
    for t in prange(G * NP * nblk):
        g, q, blk = t // (NP * nblk), (t // nblk) % NP, t % nblk
        r0 = blk * MB
        T = min(MB, m - r0)
        half = n - q * NR <= 16
        _rows(af, (g * Mp + r0) * Kp, Kp, bf, (g * NP + q) * KP2 * 2 * NR,
              cf, (g * Mp + r0) * ldc + q * NR, ldc, T, KP2, half)


@njit(**_PAR)
def _fused(a, bp, y3, n0, P, og, bias, relu, n):
    G, Mp, Kp = a.shape
    NP, KP2 = bp.shape[1], bp.shape[2]
    nblk = (og + MB - 1) // MB
    af, bf = a.reshape(-1), bp.reshape(-1)
    for t in prange(G * NP * nblk):
        g, q, blk = t // (NP * nblk), (t // nblk) % NP, t % nblk
        buf = np.empty(MB * NR, np.float32)
        r0 = blk * MB
        T = min(MB, og - r0)
        ncol = min(NR, n - q * NR)
        _rows(af, (g * Mp + r0) * Kp, Kp, bf, (g * NP + q) * KP2 * 2 * NR, buf, 0, NR, T, KP2, ncol <= 16)
        write_block(buf, y3, n0, P, g * og + r0, T, q * NR, ncol, bias, relu)


def fused(launch, plan, bp, y3, n0, P, bias, relu, n):
    """The product of :func:`gemm` written straight into the output ``y3`` (N, O, P) with bias
    and ReLU (``_bf16.write_block``), block by block from a 4 KB buffer."""
    launch(_fused, plan.a, bp, y3, n0, P, plan.m, bias, relu, n)
