"""Model.profile, the profile chart and ``fastalex profile``: rows cover every layer, add up to
about one forward pass (generous bounds, no absolute timings), and the CLI's outputs parse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastalex import cli
from fastalex.models import alexnet, build
from fastalex.profiling import plot_profile, step_name, time_forward

sys.path.insert(0, str(Path(__file__).parent))
from support.fixture_specs import reduced_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_step_names():
    assert step_name(("features.0", "features.1")) == "features.0+1"
    assert step_name(("classifier.4", "classifier.5")) == "classifier.4+5"
    assert step_name(("avgpool",)) == "avgpool"
    assert step_name(("a", "b")) == "a+b"


@pytest.mark.parametrize("variant", ["original", "torchvision"])
def test_rows_cover_every_layer_once_in_order(variant, backend):
    model = build(reduced_spec(variant), backend=backend)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    rows = model.profile(x, repeat=2, warmup=1)
    covered = [name for r in rows for name in r["layers"]]
    assert covered == [name for name, _ in model.named_layers()]
    table = {r["name"]: r for r in model.layer_table()}
    for r in rows:
        last = table[r["layers"][-1]]
        assert r["output_shape"] == last["output_shape"]
        assert r["macs"] == sum(table[n]["macs"] for n in r["layers"])
        assert r["type"] == "+".join(table[n]["type"] for n in r["layers"])
        assert r["seconds"] > 0
        assert r["gflops"] == pytest.approx(2 * r["macs"] * 2 / r["seconds"] / 1e9)
    fused = rows[0]
    assert fused["layers"] == ["features.0", "features.1"] and fused["type"] == "Conv2D+ReLU"
    assert fused["name"] == "features.0+1"
    assert sum(r["macs"] for r in rows) == model.macs(model.input_shape)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_rows_add_up_to_about_one_whole_forward():
    """The steps are timed inside real forward passes: their medians add up to about the median
    of whole passes. Bounds are generous (a shared machine); a profile that timed layers alone
    on made-up inputs, skipped steps or double-counted fused ones would still be caught by the
    coverage test above, and one that timed each step many times over would fall outside."""
    model = alexnet("original", seed=None, backend="numpy")
    x = np.zeros((1, *model.input_shape), np.float32)
    rows = model.profile(x, repeat=5, warmup=1)
    total = sum(r["seconds"] for r in rows)
    whole = time_forward(model, x, repeat=5, warmup=0)
    assert 1 / 3 < total / whole < 3, (total, whole)


def test_profile_checks_its_arguments():
    model = build(reduced_spec("torchvision"))
    x = np.zeros((1, *model.input_shape), np.float32)
    with pytest.raises(ValueError, match="repeat must be a positive int"):
        model.profile(x, repeat=0)
    with pytest.raises(ValueError, match="warmup must be a non-negative int"):
        model.profile(x, warmup=-1)
    with pytest.raises(ValueError, match="input must have 3 channels"):
        model.profile(np.zeros((1, 4, 224, 224), np.float32))


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = build(reduced_spec("original"))
    rows = model.profile(np.zeros(model.input_shape, np.float32), repeat=1, warmup=0)
    path = tmp_path / "chart.png"
    plot_profile({"numba": rows, "numpy": rows}, path, title="test")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200


# ----------------------------------------------------------------------------- the CLI

def test_cli_profile_json_both_backends(capsys):
    status = cli.main(["profile", "--variant", "original", "--backend", "all", "--repeat", "1",
                       "--warmup", "0", "--json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    doc = json.loads(out)
    assert doc["variant"] == "original" and doc["batch_size"] == 1 and doc["backends"] == ["numba", "numpy"]
    model = alexnet("original", seed=None)
    assert [n for r in doc["rows"] for n in r["layers"]] == [n for n, _ in model.named_layers()]
    for r in doc["rows"]:
        assert r["numba"]["ms"] > 0 and r["numpy"]["ms"] > 0 and r["speedup"] > 0
    assert set(doc["total"]) == {"numba", "numpy"} and doc["total"]["numba"]["forward_ms"] > 0


def test_cli_profile_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    chart = tmp_path / "p.png"
    status = cli.main(["profile", "--backend", "numpy", "--repeat", "1", "--warmup", "0", "--plot", str(chart)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "features.0+1" in out and "Conv2D+ReLU" in out and "(9216,)" in out
    assert "sum of the rows" in out and "one whole forward pass" in out
    with Image.open(chart) as img:
        assert img.format == "PNG"
    assert cli.main(["profile", "--plot", str(tmp_path / "no" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_plot_without_matplotlib_exits_2(tmp_path):
    """A process in which ``import matplotlib`` fails (a sitecustomize puts None in sys.modules)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "fastalex", "profile", "--plot", str(tmp_path / "p.png")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'fastalex[plot]'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""   # refused before timing anything
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()
