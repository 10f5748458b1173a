"""The first run's compile helper (``fastalex.backends._precompile``, ``_numba_cache.compile_all``):
it compiles the signatures a forward pass runs, the command line starts it only on a cold
cache and not when turned off, and the tuner never times anything while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("numba")

from fastalex import _numba_cache  # noqa: E402
from fastalex.backends import _precompile, _tune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_helper(monkeypatch):
    """A clean slate: the helper on (conftest turns it off), none started yet in this process;
    any started is stopped after."""
    monkeypatch.setenv("FASTALEX_PRECOMPILE", "1")
    monkeypatch.setattr(_precompile, "_helper", None)
    yield
    _precompile.stop()


SIGNATURES = textwrap.dedent("""
    import numpy as np
    import fastalex
    from fastalex import _numba_cache
    from fastalex.backends import _dense_lowp, _gemm, _winograd, fast

    def signatures():
        out = {}
        for module in (_dense_lowp, _gemm, _winograd, fast):
            for name, value in vars(module).items():
                sigs = getattr(value, "signatures", None)
                if isinstance(sigs, list):
                    out[f"{module.__name__}.{name}"] = {str(s) for s in sigs}
        return out

    _numba_cache.compile_all()
    helper = signatures()
    rng = np.random.default_rng(0)
    for variant, size in (("torchvision", 224), ("original", 227)):
        model = fastalex.alexnet(variant=variant)
        for batch in (1, 5):   # one image, and a batch (the dense micro-kernel from 5)
            model(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    missing = sorted(f"{name} {sig}" for name, sigs in signatures().items()
                     for sig in sigs - helper.get(name, set()))
    print("\\n".join(missing) if missing else "ALL COMPILED BY THE HELPER")
""")


def test_the_helper_compiles_every_signature_a_forward_pass_runs():
    """Both AlexNets at batch 1 and 5, on the default schedules (fused and chunked Winograd,
    the tiled dense kernel and the micro-kernel, pooling, LRN), run no float32 kernel
    signature that compile_all did not compile: with other signatures (a writable bias where
    the model's planned one is read-only, an int where it passes a float) the helper's work
    would be lost."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SIGNATURES], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ALL COMPILED BY THE HELPER", proc.stdout


def test_the_cli_starts_the_helper_on_a_cold_cache_only_and_not_when_turned_off(monkeypatch, no_helper):
    from fastalex.cli import common
    started = []

    class FakePopen:
        def __init__(self, args, env, **kwargs):
            started.append((args, env))

        def poll(self):
            return 0

    monkeypatch.setattr(_precompile.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("FASTALEX_PRECOMPILE", "1")
    monkeypatch.setattr(_numba_cache, "kernels_cached", lambda: True)
    common.compile_note("numba")
    assert started == []                      # a warm cache: nothing to compile
    monkeypatch.setattr(_numba_cache, "kernels_cached", lambda: False)
    common.compile_note("numpy")
    assert started == []                      # the NumPy backend compiles nothing
    common.compile_note("numba")
    common.compile_note("numba")              # once per process
    assert len(started) == 1
    args, env = started[0]
    assert args == [sys.executable, "-m", "fastalex._numba_cache"]
    # one thread, no tuning (nothing measured or written), no helper of its own
    assert (env["NUMBA_NUM_THREADS"], env["FASTALEX_TUNE"], env["FASTALEX_PRECOMPILE"]) == ("1", "0", "0")
    monkeypatch.setattr(_precompile, "_helper", None)
    monkeypatch.setenv("FASTALEX_PRECOMPILE", "0")
    common.compile_note("numba")
    assert len(started) == 1


def test_the_tuner_stops_the_helper_before_it_times_anything(no_helper):
    helper = _precompile.start(["-c", "import time; time.sleep(120)"])
    assert helper is not None and _precompile.running()
    seen = []

    def candidate():
        seen.append(_precompile.running())
        return 0

    _tune._measure({"a": candidate, "b": candidate})
    assert seen[:2] == [True, True]           # the warm-up calls may compile beside it
    assert len(seen) > 2 and not any(seen[2:])  # no timed call runs beside it
    assert helper.poll() is not None


def test_a_helper_still_running_is_stopped_when_the_process_ends(tmp_path):
    """The main process ending first (a short run) leaves no compiler behind."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(f"""
        from fastalex.backends import _precompile
        helper = _precompile.start(["-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(helper.pid))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTALEX_PRECOMPILE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
