"""``fastalex show filters|activations`` and ``fastalex explain`` on both variants, with
random weights (no network, no cache), in-process through ``cli.main``; one subprocess run
checks the installed entry point end to end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastalex import cli, viz

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["original", "torchvision"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    a[100:200, 150:250] = (220, 30, 30)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", "http://127.0.0.1:9/alexnet-owt-7be5be79.pth")


def run(capsys, *args):
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


@pytest.mark.parametrize("variant", VARIANTS)
def test_show_filters(variant, tmp_path, capsys):
    out = tmp_path / "f.png"
    status, _, err = run(capsys, "show", "filters", "--variant", variant, "--random-weights", "-o", out)
    assert status == 0, err
    n = 96 if variant == "original" else 64
    rows, cols = viz.grid_shape(n)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.height == rows * 45 + 1 + viz.caption_height(1)   # 11 px kernels x 4, 1 px gutters
        assert img.width >= cols * 45 + 1
    deep = tmp_path / "deep.png"
    status, _, err = run(capsys, "show", "filters", "--variant", variant, "--layer", "features.8", "--per-input",
                         "--random-weights", "-o", deep)
    assert status == 0, err
    assert deep.stat().st_size > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_show_activations(variant, photo, tmp_path, capsys):
    out = tmp_path / "a.png"
    status, _, err = run(capsys, "show", "activations", photo, "--variant", variant, "--layer", "pool5",
                         "--cmap", "viridis", "--random-weights", "--backend", "numpy", "-o", out)
    assert status == 0, err
    rows, cols = viz.grid_shape(256 + 4)
    with Image.open(out) as img:  # pool5: 256 maps of 6x6, upscaled 8x to 48 px
        assert img.size[1] == rows * 49 + 1 + viz.caption_height(1)
        assert img.size[0] == cols * 49 + 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_explain(variant, photo, tmp_path, capsys):
    out = tmp_path / "e.jpg"
    status, stdout, err = run(capsys, "explain", photo, "--variant", variant, "--random-weights", "--class", "7",
                              "--patch", "112", "--stride", "112", "-o", out)
    assert status == 0, err
    assert stdout.startswith("cock (class 7): p = ")
    side = 224 if variant == "torchvision" else 227
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.height == 2 * side + viz.caption_height(3)


def test_errors_are_one_line_and_an_exit_code(photo, tmp_path, capsys, monkeypatch):
    from fastalex.models import alexnet
    from fastalex.cli import common
    real_load_model = common.load_model

    def fast_load_model(args):  # zero weights: the same model without a second of random numbers
        if args.random_weights:
            return alexnet(args.variant or "torchvision", seed=None)
        return real_load_model(args)

    monkeypatch.setattr(common, "load_model", fast_load_model)
    out = tmp_path / "x.png"
    cases = [
        (2, ["show", "filters", "--layer", "features.1", "--random-weights", "-o", out],
         "is a ReLU, not a convolution"),
        (2, ["show", "activations", photo, "--layer", "conv9", "--random-weights", "-o", out], "unknown layer 'conv9'"),
        (2, ["show", "activations", tmp_path / "missing.jpg", "--random-weights", "-o", out], "no such file"),
        (2, ["explain", photo, "--random-weights", "-o", tmp_path / "x.txt"], "unknown image file extension"),
        (2, ["explain", photo, "--random-weights", "-o", tmp_path / "no" / "x.png"], "does not exist"),
        (2, ["explain", photo, "--random-weights", "--class", "1000", "-o", out], "classes 0 to 999"),
        (2, ["explain", photo, "--random-weights", "--patch", "300", "-o", out], "larger than the model's"),
        (2, ["show", "filters", "-o", out], "IMAGENET1K_V1 weights are not cached"),
        (2, ["show", "filters", "--random-weights"], "required: -o"),
    ]
    for code, args, message in cases:
        status, _, err = run(capsys, *args)
        assert status == code, (args, err)
        assert message in err, (args, err)
        assert not out.exists()


def test_entry_point_end_to_end(photo, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTALEX_HOME=str(tmp_path / "home"))
    out = tmp_path / "e.png"
    proc = subprocess.run([sys.executable, "-m", "fastalex", "explain", str(photo), "--random-weights",
                           "--patch", "112", "--stride", "112", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "p = " in proc.stdout and "Traceback" not in proc.stderr
    with Image.open(out) as img:
        assert img.size[1] == 448 + viz.caption_height(3)
