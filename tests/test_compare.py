"""benchmarks/compare.py, the engine comparison: its table and JSON from tiny runs (one round,
one call, one batch size; no timing is asserted) and from made-up results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("fastalex_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args, hide=()):
    """Run the script; packages in ``hide`` are shadowed by a package whose import fails, as
    when they are not installed."""
    shadow = tmp_path / "shadow"
    for name in hide:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f'raise ImportError("No module named {name} (hidden by the test)")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shadow), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_models_tiny_run_with_a_missing_engine(tmp_path):
    out = tmp_path / "out.json"
    md = tmp_path / "table.md"
    proc = _run(tmp_path, "--engines", "numba,onnxruntime", "--rounds", "1", "--calls", "1", "--warmup", "0",
                "--batches", "1", "--variants", "torchvision", "--threads", "1", "--json", str(out),
                "--markdown", str(md), hide=("onnxruntime",))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    numba, ort = doc["results"]["numba"], doc["results"]["onnxruntime"]
    assert ort["status"] == "skipped" and "onnxruntime" in ort["reason"]
    assert numba["status"] == "ok"
    cell = numba["cells"]["torchvision_b1"]
    assert cell["status"] == "ok" and cell["median_ms"] > 0 and cell["min_ms"] <= cell["median_ms"]
    assert cell["check"]["agree"] and cell["check"]["max_abs_err"] <= cell["check"]["bound"]
    assert numba["numba_threads"] == 1  # --threads reached the fastalex worker
    assert numba["threading_layer"] in ("tbb", "omp", "workqueue")
    assert list(doc["results"]) == ["numba", "onnxruntime"]
    table = proc.stdout
    assert md.read_text().strip() == table.strip() == doc["table"].strip()
    assert "- CPU: " in table and "ISA: " in table and "- threads: 1 per engine" in table
    assert f"threading layer as it ran: {numba['threading_layer']}" in table
    assert "commit: " in table and "date: " in table and "fastalex 0.1.0" in table
    assert "- skipped: ONNX Runtime (" in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0] == "| model | batch | fastalex numba |"  # skipped engine: no column, no ratio
    assert rows[2].startswith("| torchvision | 1 | ") and len(rows) == 3


def test_layers_tiny_run(tmp_path):
    out = tmp_path / "out.json"
    proc = _run(tmp_path, "--layers", "--engines", "numba,torch", "--rounds", "1", "--calls", "1", "--warmup", "0",
                "--batches", "1", "--variants", "torchvision", "--fc-batch", "2", "--json", str(out), hide=("torch",))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    numba = doc["results"]["numba"]
    assert doc["results"]["torch"]["status"] == "skipped"
    assert sorted(numba["cells"]) == sorted([f"torchvision.conv{i}_b1" for i in range(1, 6)] + ["fc6_b2"])
    assert all(c["check"]["agree"] for c in numba["cells"].values())
    assert numba["sgemm_gflops"] > 0
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == "| layer | batch | fastalex numba | fastalex numba GFLOP/s | of sgemm |"
    assert rows[2].startswith("| torchvision conv1 (3->64, 11x11/4) | 1 | ")
    assert rows[-1].startswith("| fc6 (9216->4096, + ReLU) | 2 | ") and rows[-1].endswith("% |")
    assert "NumPy sgemm" in proc.stdout


def test_avx2_build_runs_in_its_own_process_and_cache(tmp_path, compare):
    """``numba-avx2``: fastalex with kernels compiled for an AVX2 CPU (haswell), in a Numba cache
    that starts empty under the run's data folder, on an x86 CPU with AVX2; skipped elsewhere."""
    env = compare.avx2_env(str(tmp_path))
    assert env == {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "",
                   "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache-avx2")}
    from fastalex.backends import _target
    host = _target.host_features()
    out = tmp_path / "out.json"
    proc = _run(tmp_path, "--engines", "numba-avx2", "--rounds", "1", "--calls", "1", "--warmup", "0",
                "--batches", "1", "--variants", "torchvision", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["results"]["numba-avx2"]
    if not (host.get("avx2") and host.get("fma")):
        assert result["status"] == "skipped" and "AVX2" in result["reason"]
        return
    assert result["status"] == "ok", result
    assert result["kernels"].startswith("haswell, avx2, micro-kernel ")
    assert result["cells"]["torchvision_b1"]["check"]["agree"]
    assert "fastalex's kernels compiled for: fastalex AVX2 build: haswell, avx2" in proc.stdout


def test_avx2_engine_skips_unless_the_kernels_compile_for_avx2(monkeypatch, compare):
    from fastalex.backends import _target
    native = _target.make_target("x86_64", "znver4", frozenset({"avx2", "fma", "avx512f"}))
    avx2 = _target.make_target("x86_64", "haswell", frozenset({"avx2", "fma"}))
    monkeypatch.setattr(_target, "host_features", lambda: {"avx2": True, "fma": True})
    monkeypatch.setattr(_target, "target", lambda: native)
    with pytest.raises(compare.Skip, match="not AVX2: set NUMBA_CPU_NAME=haswell"):
        compare._check_avx2_build()
    monkeypatch.setattr(_target, "target", lambda: avx2)
    compare._check_avx2_build()
    monkeypatch.setattr(_target, "host_features", lambda: {"sse2": True})
    with pytest.raises(compare.Skip, match="no AVX2"):
        compare._check_avx2_build()


def test_bad_arguments_are_one_line_errors(tmp_path):
    proc = _run(tmp_path, "--engines", "numba,tensorflow")
    assert proc.returncode == 2 and "unknown engine 'tensorflow'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(tmp_path, "--layers", "--engines", "onnxruntime")
    assert proc.returncode == 2 and "--layers runs the engines" in proc.stderr


def test_rounds_rotate(compare):
    engines = ["a", "b", "c"]
    orders = [compare.rotated(engines, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert [o[0] for o in orders] == engines  # every engine goes first once


def _report(engine, ms, agree=True, rel=1e-6):
    check = {"max_abs_err": 0.5 if not agree else 1e-6, "bound": 1e-3, "max_rel_err": rel, "agree": agree,
             "lowp": engine in ("numba-bf16", "openvino")}
    return {"engine": engine, "status": "ok", "version": f"{engine} 1.0", "cells": {
        name: {"status": "ok", "median_ms": v, "min_ms": v * 0.9, "calls": 5, "check": check}
        for name, v in ms.items()}}


def test_combine_takes_the_median_of_the_rounds(compare):
    rounds = [_report("numba", {"torchvision_b1": v}) for v in (30.0, 10.0, 12.0)]
    rounds[1]["threading_layer"] = "tbb"
    out = compare.combine(rounds)
    cell = out["cells"]["torchvision_b1"]
    assert cell["median_ms"] == 12.0 and cell["min_ms"] == 9.0 and cell["round_medians_ms"] == [30.0, 10.0, 12.0]
    assert out["rounds"] == 3 and out["threading_layer"] == "tbb"


def test_table_from_made_up_results(compare):
    """A fake engine list: ratios, a skipped and a failed engine, a disagreement mark, bf16 errors."""
    meta = {"cpu": {"model": "Test CPU", "isa": ["avx2"], "cpus": 2}, "threads": 2, "date": "today",
            "commit": "abc1234+dirty", "rounds": 3, "calls": 5, "warmup": 1, "seed": 0, "batches": [1, 16],
            "variants": ["torchvision", "original"]}
    cells = {f"{v}_b{b}" for v in meta["variants"] for b in meta["batches"]}
    results = {
        "numba": _report("numba", {c: 10.0 for c in cells}),
        "numba-bf16": _report("numba-bf16", {c: 4.0 for c in cells}, rel=4e-3),
        "numba-avx2": dict(_report("numba-avx2", {c: 11.0 for c in cells}), kernels="haswell, avx2, micro-kernel 6x16"),
        "onnxruntime": _report("onnxruntime", {c: 20.0 for c in cells}),
        "openvino": _report("openvino", {c: 5.0 for c in cells}, rel=6e-3),
        "torch": {"engine": "torch", "status": "skipped", "reason": "torch is not installed"},
        "openvino-f32": {"engine": "openvino-f32", "status": "error", "error": "RuntimeError: boom"},
        "numpy": _report("numpy", {c: 50.0 for c in cells}),
    }
    results["numpy"]["cells"]["original_b16"]["check"] = dict(results["numpy"]["cells"]["original_b16"]["check"],
                                                               agree=False, max_abs_err=0.5)
    results["numba"]["stderr"] = "/x/y.py:494: RuntimeWarning: fastalex: threads spin\n  warnings.warn(message)"
    table = compare.model_table(meta, results)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0] == ("| model | batch | fastalex numba | fastalex bf16 | fastalex AVX2 build | fastalex numpy | "
                       "ONNX Runtime | OpenVINO default | fastalex/ORT | fastalex-bf16/OV-default | AVX2/native |")
    assert rows[2] == "| torchvision | 1 | 10.0 | 4.00 | 11.0 | 50.0 | 20.0 | 5.00 | 0.50x | 0.80x | 1.10x |"
    assert rows[5] == "| 2012 | 16 | 10.0 | 4.00 | 11.0 | 50.0 ! | 20.0 | 5.00 | 0.50x | 0.80x | 1.10x |"
    assert "- fastalex's kernels compiled for: fastalex AVX2 build: haswell, avx2, micro-kernel 6x16" in table
    assert "- skipped: PyTorch (torch is not installed)" in table
    assert "- FAILED: OpenVINO f32 (RuntimeError: boom)" in table
    assert "fastalex numpy disagrees with the reference: 2012 / 16 (0.5 > 0.001)" in table
    assert "fastalex bf16: max |out - ref| / max|ref| = 0.004" in table
    assert "OpenVINO default: max |out - ref| / max|ref| = 0.006" in table
    assert "Test CPU (2 logical CPUs); ISA: avx2" in table and "commit: abc1234+dirty" in table
    assert "- printed on stderr (whole text in the JSON): fastalex numba: `fastalex: threads spin`" in table
