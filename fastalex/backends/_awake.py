"""Keep the cores awake between the kernels of a forward pass (Linux): idle-priority threads
that yield the CPU in a loop while a pass runs, and sleep otherwise.

Why: a forward pass is 10-25 parallel kernels with a little Python between them. In those gaps
Numba's worker threads go to sleep, and their cores halt. On a bare machine a halted core
wakes in microseconds. In a virtual machine (the cloud machines fastalex is benchmarked on) a
halted virtual CPU is descheduled by the hypervisor, and after an idle pause the hypervisor
wakes it slowly: measured here (2 vCPUs), a two-thread kernel of 100 us took 160-270 us for its
first ~40 launches after 50 ms of idleness, and torchvision's AlexNet at batch 1 took 14-17 ms
instead of 11, while back-to-back passes were unaffected. ONNX Runtime does not see this: its
worker threads spin while a run is in progress (and ~40 ms after it).

What: while a pass is in progress (:func:`keep_awake`, entered by ``Sequential.forward`` on
this backend), ``numba.get_num_threads() - 1`` threads run a loop that only calls
``sched_yield()``. They run at ``SCHED_IDLE`` priority, so a core runs them only when it has
nothing else to run: any woken thread (Numba's workers, other processes) takes the core back
at once. A core running them does not halt, so Numba's workers wake in microseconds. Between
passes the threads wait on a condition (no CPU at all). The kernels release the GIL
(``nogil=True``), so the threads start spinning as soon as the first kernel runs.

Off with ``FASTALEX_SPIN=0`` in the environment, or ``fastalex.backends._awake.ENABLED =
False``; never on where ``SCHED_IDLE`` does not exist (it would compete with the workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from . import tunables

#: whether :func:`keep_awake` starts its threads (``FASTALEX_SPIN=0`` turns it off)
ENABLED = tunables.SPIN


def _can_yield_at_idle_priority() -> bool:
    """``SCHED_IDLE`` exists and the C library has ``sched_yield`` (Linux)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "sched_yield")
    except OSError:
        return False


SUPPORTED = _can_yield_at_idle_priority()


@intrinsic
def _sched_yield(typingctx):
    """``sched_yield()``, called by its C name: the symbol is resolved when the compiled code is
    linked into the process, so the kernel can be cached (a ctypes function pointer would be an
    address baked into the code, and Numba refuses to cache that)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(fn, [])

    return types.int32(), codegen


@intrinsic
def _load_acquire(typingctx, arr):
    """``arr[0]`` read with acquire ordering: reread on every iteration of a loop (a plain load
    may be hoisted out of it), and seeing what another thread stored before."""
    if arr != types.Array(types.int64, 1, "C"):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)

    return types.int64(arr), codegen


if SUPPORTED:
    @njit(nogil=True, cache=True)
    def _yield_until(stop):
        """Yield the CPU until ``stop[0]`` is nonzero (without the GIL)."""
        while _load_acquire(stop) == 0:
            _sched_yield()


def _prepare():
    """Compile (or load from the cache) :func:`_yield_until` in the calling thread, once, before
    any thread runs it: otherwise the first pass's thread compiles it, holding the GIL against
    the pass, and keeps a core busy after the pass ended."""
    if not _yield_until.signatures:
        _yield_until.compile((types.Array(types.int64, 1, "C"),))


class _State:
    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.depth = 0                       # passes in progress in this process
        self.stop = np.ones(1, np.int64)     # 0 while a pass is in progress
        self.threads: list[threading.Thread] = []
        self.refused = False                 # SCHED_IDLE refused here: no threads, ever


_state = _State()


def _reset_after_fork():
    """In a child process: no thread of the parent exists, no pass is in progress."""
    global _state
    _state = _State()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _loop(state):
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):  # not allowed here: spinning at normal priority would hurt
        with state.cond:
            state.refused = True  # and no new thread on every pass, to be refused again
        return
    while True:
        with state.cond:
            while state.depth == 0:
                state.cond.wait()
        _yield_until(state.stop)


def _start_threads(state):
    """Enough threads for the other cores of a kernel (called with ``state.cond`` held)."""
    if state.refused:
        return
    state.threads = [t for t in state.threads if t.is_alive()]
    for _ in range(numba.get_num_threads() - 1 - len(state.threads)):
        t = threading.Thread(target=_loop, args=(state,), name="fastalex-keep-awake", daemon=True)
        t.start()
        state.threads.append(t)


@contextlib.contextmanager
def keep_awake():
    """While the block runs, keep the other cores from halting between kernels (see the module).
    Re-entrant and thread-safe; a no-op when disabled or unsupported."""
    if not (ENABLED and SUPPORTED):
        yield
        return
    _prepare()
    state = _state
    with state.cond:
        state.depth += 1
        if state.depth == 1:
            _start_threads(state)
            state.stop[0] = 0
            state.cond.notify_all()
    try:
        yield
    finally:
        with state.cond:
            state.depth -= 1
            if state.depth == 0:
                state.stop[0] = 1
