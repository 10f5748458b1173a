"""The ``"amx"`` product of :mod:`._bf16`: Intel AMX tiles (``tdpbf16ps``).

An AMX tile register holds up to 16 rows of 64 bytes; ``tdpbf16ps C, A, B`` adds
``A (16 x 32 bf16) @ B (32 x 16 bf16, as 16 rows of k pairs)`` to ``C (16 x 16 float32)``:
8192 multiply-adds in one instruction. A block of 32 x 32 of ``C`` lives in four tiles
(``0..3``) over the whole depth; per 32 ``k`` it loads two ``A`` tiles (4, 5: rows of the packed
weight, stride ``2*Kp`` bytes) and two ``B`` tiles (6, 7: 16 steps of a packed panel, stride 128
bytes; the second starts 64 bytes in) and does four ``tdpbf16ps``. Blocks whose panel has at
most 16 columns that matter use tiles 0 and 2 only.

Written in LLVM IR from Numba ``@intrinsic``s (``llvm.x86.ldtilecfg``, ``tilezero``,
``tileloadd64``, ``tdpbf16ps``, ``tilestored64``, ``tilerelease``; tile numbers are immediates).
Each task configures the tiles of the thread it runs on (the configuration is per thread; the
process asked Linux for the tile state once, ``_bf16.amx_permitted``) and releases them at its
end. Imported only where ``_bf16.cpu_paths()`` offers ``"amx"``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from ._bf16_common import MB, NR, amx_permitted, write_block

if not amx_permitted():  # a tile instruction without Linux's permission kills the process (SIGILL)
    raise ImportError("fastalex: Linux did not grant this process the AMX tile state "
                      "(arch_prctl ARCH_REQ_XCOMP_PERM); the 'amx' bfloat16 path cannot run")

_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")


def tile_config() -> np.ndarray:
    """The 64-byte ``ldtilecfg`` block: palette 1, all 8 tiles 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:8] = 64
    cfg[48:56] = 16
    return cfg


_CFG = tile_config()

_i8, _i64 = ir.IntType(8), ir.IntType(64)
_p8 = _i8.as_pointer()


def _fn(builder, name, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), args), name)


@intrinsic
def _configure(typingctx, cfg):
    """``ldtilecfg`` from the 64-byte uint8 array ``cfg``."""
    arr = types.Array(types.uint8, 1, "C")
    if cfg != arr:
        return None

    def codegen(context, builder, signature, args):
        p = builder.bitcast(context.make_array(arr)(context, builder, args[0]).data, _p8)
        builder.call(_fn(builder, "llvm.x86.ldtilecfg", [_p8]), [p])
        return context.get_dummy_value()

    return types.void(cfg), codegen


@intrinsic
def _release(typingctx):
    """``tilerelease``: the thread's tiles back to their initial state."""

    def codegen(context, builder, signature, args):
        builder.call(_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.void(), codegen


def _block_kernel(full, tiled=False, accumulate=False):
    """``blk(a, ao, lda, b, bo, c, co, ldc, KS)``: ``C[32 rows, 32 (full) or 16 columns]`` at
    ``c[co]`` (row stride ``ldc`` floats) = ``A[32 rows at a[ao], stride lda] @ panel at b[bo]``,
    ``KS`` steps of 32 ``k``. ``tiled``: ``A`` is in tile order from ``a[ao]`` instead (see
    :func:`tile_weight`: per step, two 16 x 32 tiles of 1 KB; ``lda`` unused). ``accumulate``:
    the tiles of ``C`` start from ``c`` (loaded) instead of zero, for a depth run in chunks."""

    @intrinsic
    def blk(typingctx, a, ao, lda, b, bo, c, co, ldc, KS):
        u16 = types.Array(types.uint16, 1, "C")
        f32a = types.Array(types.float32, 1, "C")
        if not (a == u16 and b == u16 and c == f32a):
            return None
        sig = types.void(a, types.intp, types.intp, b, types.intp, c, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_, ao_, lda_, b_, bo_, c_, co_, ldc_, K_ = args
            load = _fn(builder, "llvm.x86.tileloadd64", [_i8, _p8, _i64])
            store = _fn(builder, "llvm.x86.tilestored64", [_i8, _p8, _i64])
            zero = _fn(builder, "llvm.x86.tilezero", [_i8])
            dp = _fn(builder, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
            t = lambda n: ir.Constant(_i8, n)  # noqa: E731
            c64 = lambda n: ir.Constant(_i64, n)  # noqa: E731
            pa = builder.gep(context.make_array(u16)(context, builder, a_).data, [ao_])
            pb = builder.gep(context.make_array(u16)(context, builder, b_).data, [bo_])
            pc = builder.gep(context.make_array(f32a)(context, builder, c_).data, [co_])
            if tiled:
                pa1 = builder.gep(pa, [c64(512)])
                sa = c64(64)
            else:
                pa1 = builder.gep(pa, [builder.mul(lda_, c64(16))])
                sa = builder.mul(lda_, c64(2))        # bytes per row of A
            accs = (0, 1, 2, 3) if full else (0, 2)
            sc = builder.mul(ldc_, c64(4))        # bytes per row of C
            pc1 = builder.gep(pc, [builder.mul(ldc_, c64(16))])
            cptr = {0: pc, 1: builder.gep(pc, [c64(16)]), 2: pc1, 3: builder.gep(pc1, [c64(16)])}
            for n in accs:
                if accumulate:
                    builder.call(load, [t(n), builder.bitcast(cptr[n], _p8), sc])
                else:
                    builder.call(zero, [t(n)])
            entry = builder.basic_block
            loop = builder.append_basic_block("amx.loop")
            done = builder.append_basic_block("amx.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            s = builder.phi(_i64)
            s.add_incoming(c64(0), entry)
            ka = builder.mul(s, c64(1024 if tiled else 32))
            builder.call(load, [t(4), builder.bitcast(builder.gep(pa, [ka]), _p8), sa])
            builder.call(load, [t(5), builder.bitcast(builder.gep(pa1, [ka]), _p8), sa])
            pbs = builder.gep(pb, [builder.mul(s, c64(16 * 2 * NR))])
            builder.call(load, [t(6), builder.bitcast(pbs, _p8), c64(4 * NR)])
            if full:
                builder.call(load, [t(7), builder.bitcast(builder.gep(pbs, [c64(32)]), _p8), c64(4 * NR)])
            builder.call(dp, [t(0), t(4), t(6)])
            builder.call(dp, [t(2), t(5), t(6)])
            if full:
                builder.call(dp, [t(1), t(4), t(7)])
                builder.call(dp, [t(3), t(5), t(7)])
            s1 = builder.add(s, c64(1))
            s.add_incoming(s1, loop)
            builder.cbranch(builder.icmp_signed("<", s1, K_), loop, done)
            builder.position_at_end(done)
            for n in accs:
                builder.call(store, [t(n), builder.bitcast(cptr[n], _p8), sc])
            return context.get_dummy_value()

        return sig, codegen

    return blk


_full = _block_kernel(True)
_half = _block_kernel(False)
_full_t = _block_kernel(True, True, True)
_half_t = _block_kernel(False, True, True)

#: steps of 32 ``k`` per chunk of the depth: a chunk of a panel (KC * 2 KB) stays in L1 while
#: every row block of the task uses it, and those blocks' chunks of ``A`` stay in L2
KC = 12


def tile_weight(a):
    """The packed weight ``a`` (G, Mp, Kp) in tile order (G, Mp/32, Kp/32, 2, 16, 32): a block of
    32 rows is contiguous over the whole depth, each step two 1 KB tiles (rows 0-15, 16-31) read
    at stride 64 bytes: streamed from memory in order rather than from 32 rows ``2*Kp`` bytes
    apart."""
    G, Mp, Kp = a.shape
    t = a.reshape(G, Mp // 32, 2, 16, Kp // 32, 32).transpose(0, 1, 4, 2, 3, 5)
    return np.ascontiguousarray(t)


#: at least this many tasks per launch (row blocks are split among tasks to get them)
MIN_TASKS = 16


@njit(**_PAR)
def _gemm(a, bp, c, m, n, cfg):
    G, Mp, Kp = a.shape
    NP, KP2 = bp.shape[1], bp.shape[2]
    ldc = c.shape[2]
    nblk = (m + MB - 1) // MB
    chunks = min(nblk, max(1, (MIN_TASKS + G * NP - 1) // (G * NP)))
    per = (nblk + chunks - 1) // chunks
    af, bf, cf = a.reshape(-1), bp.reshape(-1), c.reshape(-1)
    KS = Kp // 32
    for t in prange(G * NP * chunks):
        g, q, ch = t // (NP * chunks), (t // chunks) % NP, t % chunks
        _configure(cfg)
        bo = (g * NP + q) * KP2 * 2 * NR
        half = n - q * NR <= 16
        for blk in range(ch * per, min(nblk, (ch + 1) * per)):
            r0 = blk * MB
            ao = (g * Mp + r0) * Kp
            co = (g * Mp + r0) * ldc + q * NR
            if half:
                _half(af, ao, Kp, bf, bo, cf, co, ldc, KS)
            else:
                _full(af, ao, Kp, bf, bo, cf, co, ldc, KS)
        _release()


def gemm(a, bp, c, m, n):
    """``C[g, :m, :n'] = A[g, :m] @ B[g]`` (whole blocks of 32 rows; ``n'``: ``n`` rounded up to
    16) for bf16 ``a`` (G, Mp, Kp), panels ``bp`` (G, NP, Kp/2, 32, 2), float32 ``c``
    (G, Mp, NP*32). One task per (group, panel, run of row blocks)."""
    _gemm(a, bp, c, m, n, _CFG)


@njit(**_PAR)
def _fused(at, bp, y3, n0, P, og, bias, relu, n, cfg):
    G, MBS, KS = at.shape[0], at.shape[1], at.shape[2]
    NP, KP2 = bp.shape[1], bp.shape[2]
    nblk = (og + MB - 1) // MB
    chunks = min(nblk, max(1, (MIN_TASKS + G * NP - 1) // (G * NP)))
    per = (nblk + chunks - 1) // chunks
    af, bf = at.reshape(-1), bp.reshape(-1)
    for t in prange(G * NP * chunks):
        g, q, ch = t // (NP * chunks), (t // chunks) % NP, t % chunks
        b0, b1 = ch * per, min(nblk, (ch + 1) * per)
        buf = np.zeros((b1 - b0) * MB * NR, np.float32)
        _configure(cfg)
        bo = (g * NP + q) * KP2 * 2 * NR
        ncol = min(NR, n - q * NR)
        for k0 in range(0, KS, KC):
            ks = min(KC, KS - k0)
            for blk in range(b0, b1):
                ao = ((g * MBS + blk) * KS + k0) * 1024
                co = (blk - b0) * MB * NR
                if ncol <= 16:
                    _half_t(af, ao, 0, bf, bo + k0 * 1024, buf, co, NR, ks)
                else:
                    _full_t(af, ao, 0, bf, bo + k0 * 1024, buf, co, NR, ks)
        _release()
        for blk in range(b0, b1):
            r0 = blk * MB
            write_block(buf[(blk - b0) * MB * NR:], y3, n0, P, g * og + r0, min(MB, og - r0), q * NR, ncol,
                        bias, relu)


def fused(launch, plan, bp, y3, n0, P, bias, relu, n):
    """The product of :func:`gemm` written straight into the output ``y3`` (N, O, P) with bias
    and ReLU (``_bf16.write_block``): block by block from a 4 KB buffer, never a whole ``C``;
    the weight in tile order (:func:`tile_weight`, made once per plan)."""
    at = plan.extra.get("amx")
    if at is None:
        at = plan.extra["amx"] = tile_weight(plan.a)
    launch(_fused, at, bp, y3, n0, P, plan.m, bias, relu, n, _CFG)
