"""Keeping the cores awake during a forward pass (``fastalex/backends/_awake.py``).

On the numba backend a model's forward pass runs inside ``keep_awake()``: idle-priority
threads yield the CPU in a loop while the pass runs (so the other cores do not halt between
kernels), and wait without using any CPU between passes. Checked here: the threads exist and
spin during a pass (they take the idle core's time), stop after it, nested and concurrent
passes keep them on until the last one ends, ``FASTALEX_SPIN=0`` turns them off, the numpy
backend does not use them, and a forked child starts afresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastalex

pytest.importorskip("numba")
from fastalex.backends import _awake  # noqa: E402

pytestmark = pytest.mark.skipif(not _awake.SUPPORTED, reason="needs SCHED_IDLE (Linux)")


@pytest.fixture
def enabled(monkeypatch):
    monkeypatch.setattr(_awake, "ENABLED", True)


def _cpu_while_idle(seconds=0.3):
    """CPU seconds this process uses while the calling thread sleeps."""
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0


def _spinning():
    return _awake._state.depth > 0 and _awake._state.stop[0] == 0


def test_threads_spin_during_the_block_and_rest_after_it(enabled):
    import numba
    with _awake.keep_awake():
        assert _spinning()
        alive = [t for t in _awake._state.threads if t.is_alive()]
        assert len(alive) == numba.get_num_threads() - 1
        busy = _cpu_while_idle()           # the idle core runs the yielding loop
    assert not _spinning()
    time.sleep(0.05)                       # the threads go back to waiting
    rest = _cpu_while_idle()
    if numba.get_num_threads() > 1:
        assert busy > 0.05, f"the threads did not run while the block ran ({busy:.3f} s of CPU)"
    assert rest < 0.05, f"the threads kept running after the block ({rest:.3f} s of CPU in 0.3 s)"


def test_nested_and_concurrent_blocks_keep_them_on_until_the_last_ends(enabled):
    inner_done, release = threading.Event(), threading.Event()

    def other_pass():
        with _awake.keep_awake():
            inner_done.set()
            release.wait(5)

    with _awake.keep_awake():
        with _awake.keep_awake():
            assert _awake._state.depth == 2
        assert _spinning()
        t = threading.Thread(target=other_pass)
        t.start()
        inner_done.wait(5)
    assert _spinning(), "another thread's pass is still running"
    release.set()
    t.join(5)
    assert not _spinning() and _awake._state.depth == 0


def test_an_exception_in_the_block_still_stops_them(enabled):
    with pytest.raises(RuntimeError):
        with _awake.keep_awake():
            raise RuntimeError("boom")
    assert not _spinning() and _awake._state.depth == 0


def test_forward_passes_run_inside_it_on_numba_only(enabled, monkeypatch):
    seen = []
    real = _awake.keep_awake

    def spy():
        seen.append(True)
        return real()

    monkeypatch.setattr(_awake, "keep_awake", spy)
    x = np.random.default_rng(0).standard_normal((1, 3, 67, 67)).astype(np.float32)
    m = fastalex.models.Sequential([fastalex.layers.Conv2D(3, 4, 3), fastalex.layers.ReLU()])
    m.backend = "numba"
    m(x)
    assert seen == [True]
    m.backend = "numpy"
    m.forward(x)
    assert seen == [True], "the numpy backend needs no threads kept awake"
    assert not _spinning()


def _run(code, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_fastalex_spin_0_turns_it_off():
    code = ("import fastalex.backends._awake as a; print(a.ENABLED)\n"
            "with a.keep_awake(): print(a._state.depth, len(a._state.threads))")
    on, off = _run(code, {"FASTALEX_SPIN": "1"}), _run(code, {"FASTALEX_SPIN": "0"})
    assert on.returncode == 0 and off.returncode == 0, (on.stderr, off.stderr)
    assert off.stdout.split() == ["False", "0", "0"]
    assert on.stdout.split()[:2] == ["True", "1"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_afresh(enabled):
    """Forked inside a pass: the child has no spinning threads and no pass in progress, and its
    own passes work (the parent's condition may be held by a thread that does not exist there)."""
    x = np.random.default_rng(0).standard_normal((1, 3, 67, 67)).astype(np.float32)
    m = fastalex.models.Sequential([fastalex.layers.Conv2D(3, 4, 3), fastalex.layers.ReLU()])
    m.backend = "numba"
    want = m.forward(x)
    with _awake.keep_awake():
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 if all is well
            ok = _awake._state.depth == 0 and not _awake._state.threads
            ok = ok and np.array_equal(m.forward(x), want) and _awake._state.depth == 0
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_no_threads_where_sched_idle_is_refused(enabled, monkeypatch):
    """A thread that cannot take SCHED_IDLE exits at once (spinning at normal priority would
    compete with the workers); later passes start no new one to be refused again."""
    import numba
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: no keep-awake threads to start")
    monkeypatch.setattr(_awake, "_state", _awake._State())

    def refuse(*args):
        raise PermissionError("not here")

    monkeypatch.setattr(_awake.os, "sched_setscheduler", refuse)
    with _awake.keep_awake():
        for t in list(_awake._state.threads):
            t.join(5)
    assert _awake._state.refused
    with _awake.keep_awake():
        assert not any(t.is_alive() for t in _awake._state.threads)
    assert _awake._state.depth == 0


def test_the_yield_kernel_is_ready_before_any_thread_runs_it_and_is_cached(enabled):
    """The spinning kernel is compiled (or loaded from Numba's cache) by the thread entering the
    first block, before a spinning thread exists: compiled by that thread instead, it held the
    GIL against the first pass and kept a core busy after it (a cold-cache CI run saw 0.06 s of
    CPU after the block). It calls ``sched_yield`` by name, so it is cached on disk."""
    with _awake.keep_awake():
        assert _awake._yield_until.signatures, "not compiled when the block began"
    assert type(_awake._yield_until._cache).__name__ != "NullCache"
