"""A helper process that compiles kernels beside the main one, on a first run.

Numba compiles one function at a time in a process (a global lock), and the fast path's
kernels take 20-30 s of LLVM work on a cold cache, all of it on one core while the other
idles. So a first run can start a helper process (:func:`start`; the command line does, with
its "compiling" note, running :func:`fastalex._numba_cache.compile_all`) that compiles the
same kernels, with the same signatures, into the same on-disk cache, in the reverse of the
order a forward pass needs them. Numba looks in its cache before compiling a new signature,
so each process loads what the other has finished, and they meet in the middle. The cache is
written through temporary files and renames: two processes writing one entry cost time,
never a broken cache.

No measurement may share the CPU with a compiler: the schedule tuner stops the helper before
it times anything (:func:`stop`; what the helper finished stays in the cache, the main process
compiles the rest as it needs it). Waiting for it instead would hold a first run's tuning
until the helper had compiled kernels the run may never use. The helper runs with one thread
and without tuning, and is stopped when the main process ends. ``FASTALEX_PRECOMPILE=0``
turns it off.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading

from . import _target

__all__ = ["start", "stop", "running", "enabled", "ENV_VARIABLE"]

#: "0" turns the helper off
ENV_VARIABLE = "FASTALEX_PRECOMPILE"

_lock = threading.Lock()
_helper: subprocess.Popen | None = None


def enabled() -> bool:
    return _target.env_flag(ENV_VARIABLE)


def start(args) -> subprocess.Popen | None:
    """Start ``python *args`` as the helper (once per process; not when turned off): the
    process, or None."""
    global _helper
    if not enabled():
        return None
    with _lock:
        if _helper is not None:
            return _helper
        env = dict(os.environ)
        # tiny inputs need no threads; nothing is measured or written to the tuner's file; and
        # the helper starts no helper of its own
        env.update(NUMBA_NUM_THREADS="1", FASTALEX_TUNE="0", **{ENV_VARIABLE: "0"})
        try:
            _helper = subprocess.Popen([sys.executable, *args], env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return None  # no second process: the main one compiles everything, as without it
        atexit.register(stop)
        return _helper


def running() -> bool:
    return _helper is not None and _helper.poll() is None


def stop() -> bool:
    """Stop the helper if it is still compiling: whether it was."""
    helper = _helper
    if helper is None or helper.poll() is not None:
        return False
    helper.kill()
    helper.wait()
    return True
