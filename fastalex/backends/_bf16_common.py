"""What the bfloat16 modules share: the block sizes, the AMX permission and the block writer.

``_bf16`` (packing, paths, emulation) and its kernel modules ``_bf16_amx`` and ``_bf16_avx512``
all import from here, so that ``_bf16`` can import its kernels without an import cycle.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

_SER = dict(cache=True, nogil=True, error_model="numpy")

#: columns of a packed panel of ``B``
NR = 32
#: rows of ``A`` (and ``C``) per block; ``Mp`` is a multiple of it
MB = 32
#: depth step: ``Kp`` is a multiple of it (one AMX tile of ``A`` holds 32 bf16 per row)
KB = 32

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_arch_prctl = 158  # x86-64
_amx_lock = threading.Lock()
_amx_state: bool | None = None


def amx_permitted() -> bool:
    """Ask Linux, once per process, for the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``); True if granted. Without it the first tile instruction kills the
    process (SIGILL), so the AMX path is offered only when this succeeds."""
    global _amx_state
    with _amx_lock:
        if _amx_state is None:
            _amx_state = False
            if os.uname().machine == "x86_64" and os.uname().sysname == "Linux":
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    libc.syscall.restype = ctypes.c_long
                    rc = libc.syscall(ctypes.c_long(_SYS_arch_prctl), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                                      ctypes.c_long(_XFEATURE_XTILEDATA))
                    _amx_state = rc == 0
                except (OSError, AttributeError):
                    _amx_state = False
        return _amx_state


@njit(**_SER)
def write_block(buf, y3, n0, P, o0, rows, c0, ncol, bias, relu):
    """A block of ``C`` (``buf``: rows of 32 float32) to the output: ``y3[n0 + s, o0 + r, p] =
    act(buf[r, jj] + bias[o0 + r])`` for ``r < rows``, ``jj < ncol``, where column ``c0 + jj``
    is pixel ``p`` of sample ``s`` (``P`` pixels per sample; a dense layer: ``P = 1``)."""
    has_bias = bias.shape[0] > 0
    s0 = c0 // P
    p0 = c0 - s0 * P
    for r in range(rows):
        o = o0 + r
        b = bias[o] if has_bias else np.float32(0.0)
        s, p = s0, p0
        row = r * NR
        for jj in range(ncol):
            v = buf[row + jj] + b
            if relu and v < 0.0:
                v = np.float32(0.0)
            y3[n0 + s, o, p] = v
            p += 1
            if p == P:
                p = 0
                s += 1


@intrinsic
def round_bf16(typingctx, v):
    """``v`` (float32) rounded to bfloat16, nearest with ties to even, still a float32 (its low
    16 bits zero); NaN stays a quiet NaN, overflow goes to infinity. A scalar, branch-free
    function that vectorizes inside a loop (what ``_bf16.round_to_bf16`` does, without the
    ``uint16`` array in between)."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        b = builder.bitcast(args[0], i32)
        c = lambda n: ir.Constant(i32, n)  # noqa: E731
        lsb = builder.and_(builder.lshr(b, c(16)), c(1))
        near = builder.and_(builder.add(builder.add(b, c(0x7FFF)), lsb), c(0xFFFF0000))
        nan = builder.icmp_unsigned(">", builder.and_(b, c(0x7FFFFFFF)), c(0x7F800000))
        quiet = builder.and_(builder.or_(b, c(0x00400000)), c(0xFFFF0000))
        return builder.bitcast(builder.select(nan, quiet, near), ir.FloatType())

    return types.float32(types.float32), codegen
