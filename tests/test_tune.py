"""Schedules chosen by measurement (``backends/_tune.py``) and the compile target's table
(``backends/_target.py``).

The rest of the suite runs with ``FASTALEX_TUNE=0`` (the heuristics, deterministic); these tests
turn the tuner on, each with a wisdom folder of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support import assert_agree

import fastalex
from fastalex import functional as F

pytest.importorskip("numba")
from fastalex.backends import _target, _tune, fast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """The tuner on, with an empty wisdom folder and no choice remembered."""
    monkeypatch.setenv("FASTALEX_TUNE", "1")
    monkeypatch.setenv("FASTALEX_TUNE_DIR", str(tmp_path))
    _tune.forget(memory_only=True)
    yield tmp_path
    _tune.forget(memory_only=True)


def _candidates(calls, slow="slow"):
    def make(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)
            return name
        return run
    return {"slow": make("slow", 0.02 if slow == "slow" else 0.0),
            "fast": make("fast", 0.0 if slow == "slow" else 0.02)}


def test_the_fastest_candidate_wins_and_is_kept_on_disk(tuning):
    calls = []
    key = _tune.make_key("op", (1, 2))
    assert _tune.run("op", key, _candidates(calls), default="slow") == "fast"
    assert set(calls) == {"slow", "fast"} and len(calls) >= 4        # warm-up + timed rounds
    data = json.loads(_tune.wisdom_path().read_text())
    assert data["schedules"][key] == "fast" and data["version"] == _tune.VERSION
    assert _tune.wisdom_path().parent == tuning
    calls.clear()
    assert _tune.run("op", key, _candidates(calls), default="slow") == "fast"
    assert calls == ["fast"]                                           # remembered: no measuring
    _tune.forget(memory_only=True)                                     # a new process reads the file
    calls.clear()
    assert _tune.run("op", key, _candidates(calls, slow="fast"), default="slow") == "fast"
    assert calls == ["fast"]
    assert _tune.lookup(key) == ("fast", "file")


def test_tuning_off_uses_the_default_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTALEX_TUNE", "0")
    monkeypatch.setenv("FASTALEX_TUNE_DIR", str(tmp_path))
    _tune.forget(memory_only=True)
    calls = []
    key = _tune.make_key("op", 3)
    assert _tune.run("op", key, _candidates(calls), default="slow") == "slow"
    assert calls == ["slow"]
    assert not list(tmp_path.iterdir())
    _tune.forget(memory_only=True)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"version": 0, "schedules": {"k": "x"}}',
                                     '{"version": 1, "schedules": [1]}'])
def test_an_unreadable_or_foreign_wisdom_file_is_measured_again_and_rewritten(tuning, content):
    _tune.wisdom_path().write_text(content)
    calls = []
    key = _tune.make_key("op", 4)
    assert _tune.run("op", key, _candidates(calls), default="slow") == "fast"
    assert json.loads(_tune.wisdom_path().read_text())["schedules"] == {key: "fast"}


def test_a_remembered_schedule_that_no_longer_applies_is_measured_again(tuning):
    key = _tune.make_key("op", 5)
    _tune.wisdom_path().write_text(json.dumps({"version": _tune.VERSION, "schedules": {key: "gone"}}))
    calls = []
    assert _tune.run("op", key, _candidates(calls), default="slow") == "fast"
    assert "slow" in calls


def test_forcing_a_schedule_that_does_not_apply_is_an_error(monkeypatch):
    monkeypatch.setitem(_tune.FORCE, "op", "winograd-fused")
    with pytest.raises(ValueError, match="op: schedule 'winograd-fused' does not apply here"):
        _tune.run("op", "k", {"a": lambda: 1}, default="a")


def test_the_key_has_the_thread_count():
    import numba
    assert _tune.make_key("conv2d", (1, 3)).endswith(f"|t{numba.get_num_threads()}")


def test_tuned_convolutions_and_dense_layers_agree_and_say_what_runs(tuning):
    """A model's first pass measures each layer's candidates (every schedule runs on the real
    input), the result agrees with the reference, and summary() names each choice."""
    model = fastalex.alexnet("torchvision", seed=3, backend="numba")
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32))
    y = model(x)
    model.backend = "numpy"
    assert_agree(y, model(x), "tuned torchvision")
    model.backend = "numba"
    text = model.summary()
    assert "batch 2: winograd-" in text and "(measured)" in text, text
    chosen = _tune.choices()
    assert any(k.startswith("linear|") for k in chosen)
    schedules = {name for k, (name, origin) in chosen.items() if k.startswith("conv2d|")}
    assert schedules <= set(fast.CONV_SCHEDULES)
    saved = json.loads(_tune.wisdom_path().read_text())["schedules"]
    assert set(saved) == {k for k, (_, origin) in chosen.items() if origin == "measured"}


def test_the_tuner_times_both_tile_sizes_and_keeps_the_chosen_ones_weights(tuning, monkeypatch):
    """A 3x3 convolution on a 13x13 map has two tile sizes to time (5x5, the fewest multiplies,
    and 4x4); once one is chosen the other's transformed weights are freed, and a later batch
    size that picks the other transforms it again."""
    from fastalex.backends import _winograd
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 32, 3, 3), dtype=np.float32)
    plan = F.prepare_conv2d(w, None, 1, backend="numba")
    ran = []
    real = _winograd.conv2d
    monkeypatch.setattr(_winograd, "conv2d", lambda *a, **k: ran.append(k["tile"]) or real(*a, **k))
    x = rng.standard_normal((2, 32, 13, 13), dtype=np.float32)
    F.conv2d(x, w, None, 1, 1, backend="numba", plan=plan)
    assert set(ran) == {4, 5}
    (name, origin), = plan.data.chosen.values()
    assert origin == "measured" and name.endswith(("-4x4", "-5x5"))
    assert plan.data.held() == (fast.schedule_tile(name),) and fast.schedule_tile("im2col-sgemm") is None
    other = 9 - int(name[-1])
    monkeypatch.setitem(_tune.FORCE, "conv2d", fast.winograd_schedule("winograd-chunked", other))
    y = F.conv2d(x[:1], w, None, 1, 1, backend="numba", plan=plan)
    assert plan.data.held() == (4, 5)   # both batch sizes' tiles kept
    assert_agree(y, F.conv2d(x[:1], w, None, 1, 1, backend="numpy"), f"{other}x{other} after the free")


@pytest.mark.parametrize("schedule", ["tiled", "microkernel"])
@pytest.mark.parametrize("n, out, k", [(2, 40, 300), (16, 96, 1000), (17, 6, 33), (33, 130, 64)])
def test_every_dense_schedule_agrees(monkeypatch, schedule, n, out, k):
    monkeypatch.setitem(_tune.FORCE, "linear", schedule)
    rng = np.random.default_rng(n)
    x, w = rng.standard_normal((n, k), dtype=np.float32), rng.standard_normal((out, k), dtype=np.float32)
    b = rng.standard_normal(out, dtype=np.float32)
    for bias, act in ((b, "relu"), (None, None)):
        assert_agree(F.linear(x, w, bias, act, backend="numba"), F.linear(x, w, bias, act, backend="numpy"),
                     f"{schedule} {n}x{k} -> {out}")


def test_dense_microkernel_refuses_arguments_that_do_not_fit():
    from fastalex.backends import _gemm
    w = np.zeros((8, 10), np.float32)
    with pytest.raises(ValueError, match="dense: shapes do not match"):
        _gemm.checked_dense(w, _gemm.pack_x(np.zeros((3, 11), np.float32)), np.zeros(0, np.float32), True,
                            np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="dense: shapes do not match"):
        _gemm.checked_dense(w, _gemm.pack_x(np.zeros((3, 10), np.float32)), np.zeros(0, np.float32), True,
                            np.zeros((17, 8), np.float32))


# ----------------------------------------------------------------------------- the target table

@pytest.mark.parametrize("machine, features, isa, mr, nr", [
    ("x86_64", {"avx", "avx2", "fma", "avx512f"}, "avx512", 6, 32),
    ("x86_64", {"avx", "avx2", "fma"}, "avx2", 6, 16),
    ("x86_64", {"sse2"}, "sse2", 2, 16),
    ("aarch64", {"neon"}, "neon", 6, 16),
])
def test_the_micro_kernel_tile_follows_the_registers(machine, features, isa, mr, nr):
    t = _target.make_target(machine, "cpu", frozenset(features))
    assert (t.isa, t.mr, t.nr) == (isa, mr, nr)
    # the tile's accumulators, B loads and one broadcast fit in the register file
    per_vector = max(1, 16 * 32 // t.vector_bits)          # registers per <16 x float>
    assert t.mr * (nr // 16) * per_vector + (nr // 16) * per_vector + 1 <= t.vector_registers


def test_an_empty_feature_string_means_the_named_cpus_defaults():
    assert _target._features("haswell", "", "+avx512f") >= {"avx2", "fma"}
    assert "avx512f" not in _target._features("haswell", "", "+avx512f")
    assert _target._features("generic", "", "+avx512f") == frozenset()
    assert "avx512f" in _target._features("haswell", None, "+avx512f,-amx-tile")   # host features
    assert {"amx-bf16", "amx-tile"} <= _target._features("sapphirerapids", "", "")


def _target_in(env):
    code = ("from fastalex.backends import _target, _gemm; t = _target.target(); "
            "print(t.isa, t.mr, t.nr, _gemm.MR, _gemm.NR)")
    full = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_numba_cpu_name_and_features_choose_the_kernels_tile():
    assert _target_in({"NUMBA_CPU_NAME": "generic"}) == ["sse2", "2", "16", "2", "16"]
    assert _target_in({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""})[:3] == ["avx2", "6", "16"]


def test_the_tune_command_measures_ahead_and_keeps_the_choices(tmp_path):
    env = {**os.environ, "FASTALEX_TUNE": "1", "FASTALEX_TUNE_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "fastalex", "tune", "--variant", "torchvision", "--batch-sizes", "1,2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.split()[:3] == ["torchvision", "2", "features.0"] and "measured" in line for line in lines)
    assert any(line.split()[:3] == ["torchvision", "2", "classifier.1"] for line in lines)
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())["schedules"]
    assert any(k.startswith("conv2d|(2, 3, 224, 224)") for k in saved)
    assert lines[-1] == f"kept in {next(tmp_path.glob('*.json'))}"
    off = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FASTALEX_TUNE": "0"}, cwd=ROOT,
                         timeout=120)
    assert off.returncode == 2 and "schedule tuning is off (FASTALEX_TUNE=0" in off.stderr
    bad = subprocess.run(cmd[:-1] + ["1,x"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "expected positive integers" in bad.stderr


def test_a_remembered_choice_costs_no_path_building(tuning, monkeypatch):
    """Every tuned call asks for its choice: once the file is read, asking must not work out
    the wisdom path again (that took ~0.15 ms a call, a small layer's whole kernel time), but a
    changed folder is still seen."""
    key = _tune.make_key("op", (3,))
    _tune.run("op", key, _candidates([]), default="slow")
    built = []
    real_key = _target.key
    monkeypatch.setattr(_target, "key", lambda: built.append(1) or real_key())
    for _ in range(5):
        assert _tune.lookup(key) == ("fast", "measured")
    assert built == []
    other = tuning / "elsewhere"
    monkeypatch.setenv("FASTALEX_TUNE_DIR", str(other))
    assert _tune.wisdom_path().parent == other and built == [1]


def test_a_forward_pass_compiles_each_kernel_once(tmp_path):
    """A kernel called with a literal int at one site and an int64 at another (or with prange's
    unsigned index) is compiled twice: on a cold cache that cost ~2.5 s of a 21 s first run.
    A tuned forward pass of both variants (and of bfloat16), batches 1 and 5 (every schedule is
    timed), must
    leave one compiled signature per kernel and argument dtypes."""
    code = textwrap.dedent(r"""
        import re, sys
        import numpy as np
        from numba.core.registry import CPUDispatcher
        sys.path.insert(0, "tests")
        from support.fixture_specs import reduced_spec
        from fastalex.models import build
        for variant, precision in (("torchvision", "float32"), ("original", "float32"),
                                   ("torchvision", "bfloat16")):
            model = build(reduced_spec(variant), seed=0, backend="numba", precision=precision)
            for n in (1, 5):
                model(np.ones((n, *model.input_shape), np.float32))
        for name, module in sorted(sys.modules.items()):
            if name.startswith("fastalex.backends"):
                for attr, value in sorted(vars(module).items()):
                    if isinstance(value, CPUDispatcher):
                        sigs = [str(s) for s in value.signatures]
                        ints = {re.sub(r"Literal\[int\]\(\d+\)|uint64", "int64", s) for s in sigs}
                        if len(ints) < len(sigs):  # the same types, but for an int's kind
                            print(f"{name}.{attr}: {sigs}")
    """)
    env = {**os.environ, "FASTALEX_TUNE": "1", "FASTALEX_TUNE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "", proc.stdout


def test_fast_shapes_get_more_timed_rounds_than_slow_ones(tuning, monkeypatch):
    """A ~1 ms shape is timed over many rounds (a noisy VM's hiccup cannot pick its schedule);
    a slow one only over the minimum, so tuning stays short."""
    monkeypatch.setattr(_tune, "MAX_REPEATS", 10)
    monkeypatch.setattr(_tune, "REPEATS", 3)
    monkeypatch.setattr(_tune, "TUNE_SETTLE_SECONDS", 0.05)
    quick = []
    _tune.run("op", _tune.make_key("op", (7,)), {"a": lambda: quick.append("a"), "b": lambda: quick.append("b")},
              default="a")
    assert quick.count("a") == 1 + 10
    slow = []
    _tune.run("op", _tune.make_key("op", (8,)), _candidates(slow), default="slow")
    assert slow.count("fast") == 1 + 3  # 3 rounds of 20 ms: past the 50 ms


def test_forced_pins_a_schedule_for_a_block_and_restores_what_was_there(tuning, monkeypatch):
    ran = []
    cands = {"a": lambda: ran.append("a"), "b": lambda: ran.append("b")}
    monkeypatch.setitem(_tune.FORCE, "other", "x")
    with _tune.forced("op", "b"):
        _tune.run("op", _tune.make_key("op", (9,)), cands, default="a")
        with _tune.forced("other", "y"):
            assert _tune.FORCE["other"] == "y"
        assert _tune.FORCE["other"] == "x"
    assert ran == ["b"] and "op" not in _tune.FORCE and _tune.FORCE["other"] == "x"
    with pytest.raises(RuntimeError), _tune.forced("op", "a"):
        raise RuntimeError
    assert "op" not in _tune.FORCE
