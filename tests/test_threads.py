"""The fast backend under Python threads and under a restricted Numba thread count.

* Four Python threads calling conv / pooling / LRN at once get the serial results.
* The same in a subprocess forced onto Numba's ``workqueue`` threading layer, which aborts
  the whole process on concurrent parallel launches (the backend's launches take turns).
* ``NUMBA_NUM_THREADS=1`` in the environment is what the kernels see.
* ``fork()`` while another thread runs a kernel: the child runs kernels, it does not deadlock.
* The threading layer: the first fast op (or :func:`fastalex.configure_threads`, or the
  ``fastalex`` command) picks ``tbb`` where TBB loads (a dependency on x86-64, loaded from the
  venv by its path), else ``workqueue``, unless the user chose; no warning either way.

This process runs on that layer (``conftest.py`` calls ``configure_threads()``, as the command
does), so the fork tests here fork under it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastalex
from fastalex import functional as F

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]
#: the layer configure_threads() picks on this machine
DEFAULT_LAYER = "tbb" if fastalex.backends.tbb_available() else "workqueue"
N_THREADS = 4
ROUNDS = 5


def _jobs():
    """Small AlexNet-like calls, each a zero-argument function of the fast backend."""
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((2, 3, 67, 67), dtype=np.float32)
    w1 = rng.standard_normal((16, 3, 11, 11), dtype=np.float32) * np.float32(0.05)
    x2 = np.abs(rng.standard_normal((2, 16, 15, 15), dtype=np.float32))
    w2 = rng.standard_normal((32, 8, 5, 5), dtype=np.float32) * np.float32(0.05)
    b2 = rng.standard_normal(32, dtype=np.float32)
    x3 = rng.standard_normal((2, 32, 13, 13), dtype=np.float32)
    w3 = rng.standard_normal((32, 32, 3, 3), dtype=np.float32) * np.float32(0.05)
    plan3 = F.prepare_conv2d(w3, b2, 1, backend="numba")  # Winograd at batch 2, shared by the threads
    xd, wd = rng.standard_normal((5, 300), dtype=np.float32), rng.standard_normal((32, 300), dtype=np.float32)
    return {
        "winograd": lambda: F.conv2d(x3, w3, b2, 1, 1, activation="relu", backend="numba", plan=plan3),
        "dense": lambda: F.linear(xd, wd, b2, "relu", backend="numba"),  # the tiled kernel (batch 5)
        "conv1": lambda: F.conv2d(x1, w1, None, 4, 0, activation="relu", backend="numba"),
        "conv2": lambda: F.conv2d(x2, w2, b2, 1, 2, groups=2, backend="numba"),
        "lrn": lambda: F.local_response_norm(x2, 5, 1e-4, 0.75, 2.0, backend="numba"),
        "maxpool": lambda: F.max_pool2d(x2, 3, 2, backend="numba"),
        "avgpool": lambda: F.avg_pool2d(x2, 3, 2, 1, True, False, backend="numba"),
        "relu": lambda: F.relu(x2 - np.float32(0.5), backend="numba"),
    }


def run_concurrently(jobs, n_threads=N_THREADS, rounds=ROUNDS):
    """Every thread runs every job ``rounds`` times (in a thread-specific order); returns
    ``{name: [results]}``."""
    names = list(jobs)
    barrier = threading.Barrier(n_threads)

    def worker(t):
        barrier.wait()  # start together
        out = []
        for r in range(rounds):
            order = names[t % len(names):] + names[:t % len(names)]
            for name in order:
                out.append((name, jobs[name]()))
        return out

    with ThreadPoolExecutor(n_threads) as pool:
        per_thread = list(pool.map(worker, range(n_threads)))
    results = {name: [] for name in names}
    for out in per_thread:
        for name, y in out:
            results[name].append(y)
    return results


def test_four_threads_match_serial():
    jobs = _jobs()
    serial = {name: job() for name, job in jobs.items()}
    results = run_concurrently(jobs)
    for name, ys in results.items():
        assert len(ys) == N_THREADS * ROUNDS
        for y in ys:
            np.testing.assert_array_equal(y, serial[name], err_msg=name)


def _python(code, env_extra, base_env=None):
    env = dict(os.environ if base_env is None else base_env, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_four_threads_on_workqueue_layer():
    """The layer that is not thread-safe: the backend must not abort under it."""
    code = """
        import numba, numpy as np
        from test_threads import _jobs, run_concurrently
        jobs = _jobs()
        serial = {name: job() for name, job in jobs.items()}
        for name, ys in run_concurrently(jobs).items():
            for y in ys:
                np.testing.assert_array_equal(y, serial[name], err_msg=name)
        print("ok")
    """
    proc = _python(code, {"NUMBA_THREADING_LAYER": "workqueue"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout


def test_numba_num_threads_is_respected():
    """With ``NUMBA_NUM_THREADS=1`` the kernels run on one thread (on the layer that
    ``configure_threads()`` picks when nothing else was asked for)."""
    code = """
        import numba, numpy as np
        from numba import njit, prange
        import fastalex
        fastalex.configure_threads()
        from fastalex import functional as F
        x = np.ones((1, 4, 9, 9), np.float32)
        F.max_pool2d(x, 3, 2, backend="numba")
        F.conv2d(x, np.ones((2, 4, 3, 3), np.float32), backend="numba")
        F.local_response_norm(np.ones((1, 64, 64, 64), np.float32), 5, backend="numba")

        @njit(parallel=True)
        def thread_ids(n):
            out = np.zeros(n, np.int64)
            for i in prange(n):
                out[i] = numba.get_thread_id()
            return out

        print("threads", numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        print("distinct", len(set(thread_ids(1000).tolist())))
        print("layer", numba.threading_layer())
    """
    env = {"NUMBA_NUM_THREADS": "1"}
    env.pop("NUMBA_THREADING_LAYER", None)
    proc = _python(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads 1 1" in proc.stdout
    assert "distinct 1" in proc.stdout
    assert f"layer {DEFAULT_LAYER}" in proc.stdout


def test_set_num_threads_is_respected():
    """After ``numba.set_num_threads(1)`` the kernels still agree (the split of the work may
    change the rounding, not the values)."""
    import numba
    from conftest import assert_agree

    jobs = _jobs()
    expected = {name: job() for name, job in jobs.items()}
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for name, job in jobs.items():
            assert_agree(job(), expected[name], name)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_usable_in_a_forked_child():
    """The worker threads do not survive a fork: the child must start its own, not hang."""
    import multiprocessing

    jobs = _jobs()
    expected = jobs["conv1"]()  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_conv1_in_child).get(timeout=120)
    np.testing.assert_array_equal(result, expected)


def _conv1_in_child():
    return _jobs()["conv1"]()


# ----------------------------------------------------------------------------- fork

FORK_WHILE_BUSY = """
    import os, signal, threading, time
    import numpy as np
    import fastalex
    fastalex.configure_threads()
    from fastalex import functional as F
    from fastalex.backends import fast

    x = np.abs(np.random.default_rng(0).standard_normal((4, 64, 48, 48), dtype=np.float32))
    # Kernels loaded and Numba's threads started first: a fork while another thread loads a
    # kernel (under Numba's own compiler lock) is Numba's business, not this test's.
    F.local_response_norm(x, 5, backend="numba")
    F.max_pool2d(x, 3, 2, backend="numba")
    F.relu(x, backend="numba")

    def fork_and_wait():
        pid = os.fork()
        if pid == 0:  # the child: one kernel, then out; a deadlocked child is killed by the alarm
            signal.alarm(10)
            y = F.relu(np.full((2, 3, 4, 4), -1.0, np.float32), backend="numba")
            os._exit(0 if (y == 0).all() else 3)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    # Another thread is in the middle of a launch for 0.3 s: the fork waits for it to end.
    held = threading.Event()
    def hold(seconds):
        with fast._LAUNCH:
            held.set()
            time.sleep(seconds)
    t = threading.Thread(target=hold, args=(0.3,))
    t.start()
    held.wait()
    start = time.perf_counter()
    codes = [fork_and_wait()]
    print("waited", time.perf_counter() - start >= 0.25)
    t.join()

    # ... longer than FORK_WAIT: the fork goes ahead, and the child gets a free lock.
    fast.FORK_WAIT = 0.1
    held.clear()
    t = threading.Thread(target=hold, args=(1.0,))
    t.start()
    held.wait()
    codes.append(fork_and_wait())
    t.join()

    # Another thread busy running kernels while this one forks.
    stop = threading.Event()
    def busy():
        while not stop.is_set():
            F.local_response_norm(x, 5, backend="numba")
            F.max_pool2d(x, 3, 2, backend="numba")
    t = threading.Thread(target=busy)
    t.start()
    for _ in range(10):
        time.sleep(0.005)
        codes.append(fork_and_wait())
        if codes[-1]:
            break
    stop.set()
    t.join()
    print("exit codes", codes)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_runs_a_kernel():
    """On the workqueue layer (under TBB, a fork after kernels ran in several Python threads
    may hang the child: TBB cannot stop its workers for the fork; see the README's "Threads").
    ``os.fork()`` waits for a launch in flight in another thread (up to ``fast.FORK_WAIT``),
    so the threading layer forks with idle workers (TBB's child could hang otherwise); past
    that wait, the child inherits the launch lock held by a thread that does not exist in the
    child, and must get a free one. Every child exits 0 (a deadlocked one dies by SIGALRM)."""
    proc = _python(FORK_WHILE_BUSY, {"NUMBA_THREADING_LAYER": "workqueue"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "waited True" in proc.stdout, proc.stdout
    assert "exit codes [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr[-2000:]


FORK_AFTER_KERNELS = """
    import os, signal
    import numpy as np
    import fastalex
    layer = fastalex.configure_threads()
    from fastalex import functional as F
    x = np.abs(np.random.default_rng(0).standard_normal((4, 64, 48, 48), dtype=np.float32))
    w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)
    plan = F.prepare_conv2d(w, None, 1, backend="numba")
    want = F.conv2d(x, w, None, 1, 1, backend="numba", plan=plan)
    codes = []
    for _ in range(10):
        F.local_response_norm(x, 5, backend="numba")
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            y = F.conv2d(x, w, None, 1, 1, backend="numba", plan=plan)
            os._exit(0 if np.array_equal(y, want) else 3)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print("layer", layer, "exit codes", codes)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_kernels_on_the_default_layer():
    """multiprocessing's fork start method, on the layer configure_threads() picks: the parent
    ran kernels (one Python thread), each child runs them too and gets the same result."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = _python(FORK_AFTER_KERNELS, {}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"layer {DEFAULT_LAYER} exit codes [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in proc.stdout, proc.stdout
    assert "Unable to join" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- threading layer

def test_the_first_fast_op_chooses_a_fork_safe_layer_without_a_warning():
    """A Python user who never calls configure_threads(): the fast backend picks TBB (loaded
    from the venv by its path) or workqueue on first use, prints no warning, leaves the
    environment as it was; and a ``multiprocessing`` fork child after a forward pass works."""
    code = """
        import os, warnings, multiprocessing as mp
        env = dict(os.environ)
        warnings.simplefilter("always")
        import numba, numpy as np
        import fastalex
        from test_threads import _jobs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = fastalex.alexnet("torchvision", seed=0)
            numba.set_num_threads(2)
            x = np.ones((1, 3, 224, 224), np.float32)
            want = model(x)
            for job in _jobs().values():
                job()
        def child(i):
            return float(np.abs(model(x) - want).max())
        with mp.get_context("fork").Pool(2) as pool:
            print("children", pool.map(child, range(2), chunksize=1))
        print("env unchanged", dict(os.environ) == env)
        print("layer", numba.threading_layer())
        print("warnings", len([w for w in caught if "thread" in str(w.message).lower()]))
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "FASTALEX_THREADING_LAYER", "LD_LIBRARY_PATH")}
    proc = _python(code, {}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"layer {DEFAULT_LAYER}" in proc.stdout, proc.stdout
    assert "children [0.0, 0.0]" in proc.stdout and "env unchanged True" in proc.stdout
    assert "warnings 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_tbb_loads_from_the_venv_the_wheel_installed_it_in():
    """The tbb wheel puts libtbb.so.12 in <prefix>/lib, off the loader's path: fastalex loads it
    by the path the wheel's file list gives."""
    from importlib import metadata
    try:
        metadata.distribution("tbb")
    except metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed here (no wheel for this platform)")
    paths = fastalex.backends._tbb_library_paths()
    assert paths and all(os.path.isfile(p) for p in paths), paths
    code = "import fastalex.backends as b; print('tbb', b.tbb_available())"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = _python(code, {}, env)
    assert "tbb True" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("setting, expected", [({"FASTALEX_THREADING_LAYER": "workqueue"}, "workqueue"),
                                               ({"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue"),
                                               ({"FASTALEX_THREADING_LAYER": "numba"}, None)])
def test_an_explicit_choice_wins(setting, expected):
    """NUMBA_THREADING_LAYER, or FASTALEX_THREADING_LAYER (a layer, or ``numba``: Numba's own
    choice, as a plain Numba program gets), or a layer set in numba.config by the program."""
    plain = """
        import numpy as np, numba
        from numba import njit, prange
        @njit(parallel=True)
        def f(a):
            for i in prange(a.size):
                a[i] += 1
        f(np.zeros(100))
        print("layer", numba.threading_layer())
    """
    code = """
        import numba, numpy as np
        from fastalex import functional as F
        F.relu(np.ones(10, np.float32), backend="numba")
        print("layer", numba.threading_layer())
    """
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "FASTALEX_THREADING_LAYER")}
    proc = _python(code, setting, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if expected is None:
        expected = _python(plain, {}, env).stdout.split("layer ")[1].strip()
    assert f"layer {expected}" in proc.stdout, proc.stdout
    in_program = _python("""
        import numba, numpy as np
        numba.config.THREADING_LAYER = "workqueue"
        from fastalex import functional as F
        F.relu(np.ones(10, np.float32), backend="numba")
        print("layer", numba.threading_layer())
    """, {}, env)
    assert "layer workqueue" in in_program.stdout, in_program.stdout + in_program.stderr[-2000:]


def test_a_bad_fastalex_threading_layer_is_named():
    proc = _python("""
        import numpy as np
        from fastalex import functional as F
        try:
            F.relu(np.ones(10, np.float32), backend="numba")
        except ValueError as exc:
            print("error", exc)
    """, {"FASTALEX_THREADING_LAYER": "gpu"})
    assert "error FASTALEX_THREADING_LAYER='gpu' is not a threading layer" in proc.stdout, proc.stdout + proc.stderr


def test_command_line_picks_the_default_layer():
    code = """
        import contextlib, io, numba
        from fastalex.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["bench", "--backend", "numba", "--peers", "none", "--batch-size", "1",
                           "--repeat", "1", "--warmup", "0"])
        print("status", status, "layer", numba.threading_layer())
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = _python(code, {}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"status 0 layer {DEFAULT_LAYER}" in proc.stdout


def test_without_tbb_the_default_is_workqueue():
    """Where TBB cannot be loaded (no wheel for the platform), configure_threads() falls back
    to Numba's fork-safe workqueue layer."""
    code = """
        import numba, numpy as np
        import fastalex.backends as B
        B.tbb_available = lambda: False
        print("chosen", B.configure_threads())
        from fastalex import functional as F
        F.relu(np.ones(10, np.float32), backend="numba")
        print("layer", numba.threading_layer())
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = _python(code, {}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chosen workqueue" in proc.stdout and "layer workqueue" in proc.stdout


def test_command_line_leaves_an_explicit_numba_threading_layer_alone():
    code = """
        import numba
        from fastalex.backends import configure_threads
        print("chosen", configure_threads())
        import numpy as np
        from fastalex import functional as F
        F.relu(np.ones(10, np.float32), backend="numba")
        print("layer", numba.threading_layer())
    """
    proc = _python(code, {"NUMBA_THREADING_LAYER": "workqueue"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chosen workqueue" in proc.stdout and "layer workqueue" in proc.stdout


def test_configure_threads_too_late_raises():
    """Once Numba's threads run, another layer cannot be chosen: an error, not a silent no-op."""
    code = """
        import numpy as np, numba
        from numba import njit, prange
        import fastalex
        @njit(parallel=True)
        def f(a):
            for i in prange(a.size):
                a[i] += 1
        f(np.zeros(100))
        active = numba.threading_layer()
        other = "omp" if active == "workqueue" else "workqueue"
        print("same", fastalex.configure_threads(active))
        try:
            fastalex.configure_threads(other)
        except RuntimeError as exc:
            print("error", exc)
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = _python(code, {}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same " in proc.stdout
    assert "error configure_threads: Numba's threads already run on the" in proc.stdout


def test_configure_threads_rejects_unknown_layers():
    with pytest.raises(ValueError, match=r"configure_threads: unknown threading layer 'gpu'; valid layers are 'workqueue'"):
        fastalex.configure_threads("gpu")
