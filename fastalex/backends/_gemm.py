"""A register-blocked sgemm micro-kernel for the fast backend, for products whose right side
is packed once (a convolution's transformed weights).

Numba has no SIMD vector type: a plain loop keeps an accumulator tile in memory, and the
dot-product form that does vectorize (4x4 dot products over ``k``, as the dense kernel)
reached only 30-60 GFLOP/s on these products, its horizontal sums costing as much as the
short sums themselves. So the micro-kernel is written in LLVM IR through a Numba
``@intrinsic``: a ``MR x 32`` tile of ``C`` lives in ``2*MR`` vector registers of 16 floats
(``<16 x float>``: one ``zmm`` each with AVX-512, two ``ymm`` without), and each step ``k``
loads 32 values of the packed ``B`` row, broadcasts ``MR`` values of ``A`` and does ``2*MR``
fused multiply-adds, the scheme of BLIS/OpenBLAS's kernels and of ONNX Runtime's MLAS.
``A`` is read in place (row-major, any row stride); ``B`` is packed in panels of 32 columns
(:func:`pack_b`), so each step reads one contiguous 128-byte row of the panel.

:func:`batched_gemm` runs ``C[e] = A[e] @ B[e]`` for a batch of products (Winograd's 36, 49 or 64,
for every group) in one parallel launch: one task per ``(group, product, panel of 32
columns)``, tiles of ``MR = 6`` rows (12 accumulators + 2 loads + 1 broadcast: 15 of the 32
``zmm`` registers), and smaller tiles for the rows left over. Sums run in ``k`` order, in float32, with FMA.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from . import _target, tunables

_TARGET = _target.target()
#: columns of a packed panel of ``B``: vectors of 16 floats, as many as the target's registers
#: hold (:mod:`._target`: 32 with AVX-512, else 16)
NR = _TARGET.nr
#: rows of ``A`` per register tile (6, or 2 on baseline SSE2)
MR = _TARGET.mr
_NV = NR // 16
#: rows of a packed panel the micro-kernel prefetches ahead (:data:`tunables.GEMM_PREFETCH_BYTES`)
_PREFETCH = max(1, tunables.GEMM_PREFETCH_BYTES // (4 * NR))

_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")


def _micro_kernel(rows, nvec, prefetch):
    """The intrinsic ``mk(a, ao, lda, b, bo, c, co, ldc, K)``: for ``i < rows``, ``j < 16*nvec``,
    ``c[co + i*ldc + j] = sum_k a[ao + i*lda + k] * b[bo + k*16*nvec + j]`` (``K >= 1``), on 1-D
    float32 arrays with element offsets. ``prefetch``: prefetch ``b`` ahead (a convolution's
    weights, from memory at batch 1; not the dense layers' packed samples, which stay in L2)."""
    width = 16 * nvec

    @intrinsic
    def mk(typingctx, a, ao, lda, b, bo, c, co, ldc, K):
        arr = types.Array(types.float32, 1, "C")
        if not (a == arr and b == arr and c == arr):
            return None
        sig = types.void(a, types.intp, types.intp, b, types.intp, c, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_, ao_, lda_, b_, bo_, c_, co_, ldc_, K_ = args
            f32 = ir.FloatType()
            vec = ir.VectorType(f32, 16)
            vptr = vec.as_pointer()
            i64 = ir.IntType(64)
            # a fused multiply-add where the target has one, else a multiply and an add
            name = "llvm.fma.v16f32" if _TARGET.fma else "llvm.fmuladd.v16f32"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), name)
            pa = builder.gep(context.make_array(arr)(context, builder, a_).data, [ao_])
            pb = builder.gep(context.make_array(arr)(context, builder, b_).data, [bo_])
            pc = builder.gep(context.make_array(arr)(context, builder, c_).data, [co_])
            rows_a = [builder.gep(pa, [builder.mul(lda_, ir.Constant(i64, i))]) for i in range(rows)]
            zero = ir.Constant(vec, None)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), 16), None)   # all lanes from lane 0

            entry = builder.basic_block
            loop = builder.append_basic_block("mk.loop")
            done = builder.append_basic_block("mk.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            acc = [builder.phi(vec) for _ in range(nvec * rows)]
            for v in acc:
                v.add_incoming(zero, entry)
            brow = builder.gep(pb, [builder.mul(k, ir.Constant(i64, width))])
            if prefetch:
                # the packed rows a few KB ahead (this panel's, then the next task's: a thread's
                # tasks are consecutive panels; a prefetch never faults, past the array's end
                # either), so that at batch 1, where each weight is used by
                # a few rows only and comes from memory, its loads overlap the multiply-adds
                i8p = ir.IntType(8).as_pointer()
                pf = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3), "llvm.prefetch.p0")
                for line in range(0, width, 16):
                    ahead = builder.gep(brow, [ir.Constant(i64, _PREFETCH * width + line)])
                    builder.call(pf, [builder.bitcast(ahead, i8p), ir.Constant(ir.IntType(32), 0),
                                      ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])
            bv = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, 16 * j)]), vptr), align=4)
                  for j in range(nvec)]
            new = []
            for i in range(rows):
                s = builder.load(builder.gep(rows_a[i], [k]), align=4)
                s = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)),
                                           undef, splat)
                for j in range(nvec):
                    new.append(builder.call(fma, [s, bv[j], acc[nvec * i + j]]))
            k1 = builder.add(k, ir.Constant(i64, 1))
            for v, n in zip(acc, new):
                v.add_incoming(n, loop)
            k.add_incoming(k1, loop)
            builder.cbranch(builder.icmp_signed("<", k1, K_), loop, done)
            builder.position_at_end(done)
            for i in range(rows):
                crow = builder.gep(pc, [builder.mul(ldc_, ir.Constant(i64, i))])
                for j in range(nvec):
                    builder.store(new[nvec * i + j],
                                  builder.bitcast(builder.gep(crow, [ir.Constant(i64, 16 * j)]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


# tiles of 1..6 rows, NR columns (the convolutions' products) and 16 columns (dense layers)
_mk1, _mk2, _mk3, _mk4, _mk5, _mk6 = (_micro_kernel(r, _NV, True) for r in range(1, 7))
_mk1n, _mk2n, _mk3n, _mk4n, _mk5n, _mk6n = (_micro_kernel(r, 1, False) for r in range(1, 7))


@njit(**_SER)
def _tile(rows, a, ao, lda, b, bo, c, co, ldc, K):
    """The ``rows`` x NR micro-kernel (``rows`` <= 6)."""
    if rows == 6:
        _mk6(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 5:
        _mk5(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 4:
        _mk4(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 3:
        _mk3(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 2:
        _mk2(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 1:
        _mk1(a, ao, lda, b, bo, c, co, ldc, K)


@njit(**_SER)
def _tile16(rows, a, ao, lda, b, bo, c, co, ldc, K):
    """The ``rows`` x 16 micro-kernel (``rows`` <= 6)."""
    if rows == 6:
        _mk6n(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 5:
        _mk5n(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 4:
        _mk4n(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 3:
        _mk3n(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 2:
        _mk2n(a, ao, lda, b, bo, c, co, ldc, K)
    elif rows == 1:
        _mk1n(a, ao, lda, b, bo, c, co, ldc, K)


@njit(**_SER)
def _panel(a, ao, lda, b, bo, c, co, ldc, T, K):
    """``C[0:T, panel] = A[0:T, :K] @ B[:K, panel]`` for one packed panel of NR columns, in
    tiles of MR rows and one of the rows left over."""
    t = 0
    while t + MR <= T:
        _tile(np.int64(MR), a, ao + t * lda, lda, b, bo, c, co + t * ldc, ldc, K)  # int64, as below: one compile
        t += MR
    if t < T:
        _tile(T - t, a, ao + t * lda, lda, b, bo, c, co + t * ldc, ldc, K)


def pack_b(b):
    """``B`` (E, K, N) as panels of :data:`NR` columns, zero-padded: (E, ceil(N/32), K, 32)."""
    E, K, N = b.shape
    n_pad = -(-N // NR) * NR
    out = np.zeros((E, K, n_pad), np.float32)
    out[:, :, :N] = b
    return np.ascontiguousarray(out.reshape(E, K, n_pad // NR, NR).transpose(0, 2, 1, 3))


def checked(a, bp, c, T, ak, cn, dk=0, dn=0):
    """The arguments of :func:`batched_gemm`, after checking that every tile it reads and
    writes lies inside the arrays (the micro-kernel addresses memory directly, unchecked even
    under ``NUMBA_BOUNDSCHECK``); ``ValueError`` otherwise. ``bp`` is one :func:`pack_b` (E, P,
    K, 32) or ``G`` of them stacked (G, E, P, K, 32), group ``g`` taking the columns from
    ``ak + g*dk`` of ``a`` and writing those from ``cn + g*dn`` of ``c``."""
    if isinstance(bp, np.ndarray) and bp.ndim == 4:
        bp = bp[None]
    for name, arr, nd in (("a", a, 3), ("bp", bp, 5), ("c", c, 3)):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == nd
                and arr.flags.c_contiguous):
            raise ValueError(f"batched_gemm: {name} must be a C-contiguous float32 array with {nd} dimensions")
    G, E, P, K, nr = bp.shape
    if nr != NR or K < 1 or G < 1 or a.shape[1] != E or c.shape[1] != E:
        raise ValueError(f"batched_gemm: shapes do not match: a {a.shape}, bp {bp.shape}, c {c.shape}")
    last_k, last_n = ak + (G - 1) * dk, cn + (G - 1) * dn   # the last group's first columns
    if not (1 <= T <= min(a.shape[0], c.shape[0]) and min(ak, dk, cn, dn) >= 0
            and last_k + K <= a.shape[2] and last_n + P * NR <= c.shape[2]):
        raise ValueError(f"batched_gemm: rows {T}, columns {ak}+{K} of a {a.shape}, {cn}+{P * NR} of c "
                         f"{c.shape}, {G} groups {dk} / {dn} apart: out of range")
    return a, bp, c, int(T), int(ak), int(cn), int(dk), int(dn)


@njit(**_SER)
def product_task(af, acols, ak, dk, bf, G, E, P, K, cf, ccols, cn, dn, T, task):
    """Task ``task = (g*E + e)*P + p`` of a batch of products, on flat arrays: ``T`` rows of
    ``A[:, e, ak + g*dk : +K]`` (``acols`` columns per vector) times panel ``p`` of the packed
    ``B[g, e]`` into ``C[:, e, cn + g*dn + p*32 : +32]`` (``ccols`` columns per vector). The
    offsets of :func:`batched_gemm` and of the Winograd layers' fused tasks, in one place."""
    g, e, p = task // (E * P), (task // P) % E, task % P
    _panel(af, e * acols + ak + g * dk, E * acols, bf, task * K * NR,
           cf, e * ccols + cn + g * dn + p * NR, E * ccols, T, K)


@njit(**_PAR)
def batched_gemm(a, bp, c, T, ak, cn, dk, dn):
    """``c[:T, e, cn + g*dn : +P*32] = a[:T, e, ak + g*dk : +K] @ B[g, e]`` for every group ``g``
    and product ``e``, where ``bp[g]`` is ``pack_b(B[g])`` (G, E, P, K, 32): ``a`` (rows, E, cols)
    and ``c`` (rows, E, cols) hold each row's ``E`` vectors together (a Winograd tile's 36, 49 or 64
    transformed vectors: the transforms read and write one contiguous block per tile), and the
    products take a column slice of each (a group's channels). One launch for every group, one
    task per ``(g, e, panel)``. Pass the arguments through :func:`checked`."""
    G, E, P, K = bp.shape[0], bp.shape[1], bp.shape[2], bp.shape[3]
    af, bf, cf = a.reshape(-1), bp.reshape(-1), c.reshape(-1)
    for task in prange(G * E * P):
        product_task(af, a.shape[2], ak, dk, bf, G, E, P, K, cf, c.shape[2], cn, dn, T, np.int64(task))


@njit(**_SER)
def bias_relu_row(src, dst, b, relu):
    """``dst[p] = src[p] + b``, then ``max(., 0)`` if ``relu`` (NaN stays NaN, as ``np.maximum``)."""
    if relu:
        for p in range(src.shape[0]):
            v = src[p] + b
            dst[p] = np.float32(0.0) if v < 0.0 else v
    else:
        for p in range(src.shape[0]):
            dst[p] = src[p] + b


# ----------------------------------------------------------------------------- dense layers

#: rows of the weight per task of :func:`dense` (a multiple of MR)
DENSE_ROWS = 8 * MR


def pack_x(x):
    """Samples ``x`` (N, K) as panels of 16 columns of ``x.T``, zero-padded: (ceil(N/16), K, 16)."""
    N, K = x.shape
    P = -(-N // 16)
    out = np.zeros((P * 16, K), np.float32)
    out[:N] = x
    return np.ascontiguousarray(out.reshape(P, 16, K).transpose(0, 2, 1))


def checked_dense(w, xp, bias, relu, y):
    """The arguments of :func:`dense` after checking that every tile it reads and writes lies
    inside the arrays (the micro-kernel addresses memory directly); ``ValueError`` otherwise."""
    for name, arr, nd in (("w", w, 2), ("xp", xp, 3), ("bias", bias, 1), ("y", y, 2)):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == nd
                and arr.flags.c_contiguous):
            raise ValueError(f"dense: {name} must be a C-contiguous float32 array with {nd} dimensions")
    O, K = w.shape
    P = xp.shape[0]
    if not (K >= 1 and xp.shape[1:] == (K, 16) and y.shape[1] == O and 1 <= y.shape[0] <= P * 16
            and bias.shape[0] in (0, O)):
        raise ValueError(f"dense: shapes do not match: w {w.shape}, xp {xp.shape}, bias {bias.shape}, y {y.shape}")
    return w, xp, bias, bool(relu), y


@njit(**_PAR)
def dense(w, xp, bias, relu, y):
    """``y[n, o] = act(sum_k w[o, k] * x[n, k] + bias[o])`` with ``xp = pack_x(x)``: the weight
    ``w`` (O, K) read in place, once for every 16 samples (the micro-kernel computes ``W @ X^T``
    with rows of ``W`` broadcast and 16 samples a vector), ``DENSE_ROWS`` rows of it per task.
    Pass the arguments through :func:`checked_dense`."""
    O, K = w.shape
    P = xp.shape[0]
    N = y.shape[0]
    has_bias = bias.shape[0] > 0
    wf, xf = w.reshape(-1), xp.reshape(-1)
    for task in prange((O + DENSE_ROWS - 1) // DENSE_ROWS):
        r0 = task * DENSE_ROWS
        r1 = min(O, r0 + DENSE_ROWS)
        ct = np.empty((DENSE_ROWS, 16), np.float32)
        cf = ct.reshape(-1)
        for p in range(P):
            i = r0
            while i + MR <= r1:
                _tile16(np.int64(MR), wf, i * K, K, xf, p * K * 16, cf, (i - r0) * 16, 16, K)  # one compile
                i += MR
            if i < r1:
                _tile16(r1 - i, wf, i * K, K, xf, p * K * 16, cf, (i - r0) * 16, 16, K)
            for j in range(min(16, N - p * 16)):
                row = y[p * 16 + j]
                for i in range(r1 - r0):
                    v = ct[i, j] + (bias[r0 + i] if has_bias else np.float32(0.0))
                    row[r0 + i] = np.float32(0.0) if (relu and v < 0.0) else v
