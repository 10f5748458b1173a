"""The command line with an ``.onnx`` model as ``--weights``: classify, summary, bench,
``--preprocess``, and the errors (``--variant`` with a model that brings its own, unreadable
files, onnx not installed), each one line on stderr and exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastalex import cli
from support.fixture_specs import FIXTURES

pytest.importorskip("onnx")

CAFFE = FIXTURES / "onnx" / "caffe_alexnet.onnx"
VGG = FIXTURES / "onnx" / "vgg_bn_op9.onnx"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, FASTALEX_HOME=str(tmp_path_factory.mktemp("home")), FASTALEX_BACKEND="numpy")
    e["PYTHONPATH"] = os.pathsep.join([str(FIXTURES.parent.parent), e.get("PYTHONPATH", "")])
    return e


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[:, :160] = (250, 20, 10)  # red and blue halves: RGB and BGR orders see different images
    pixels[:, 160:] = (10, 30, 240)
    Image.fromarray(pixels).save(path)
    return path


def run(env, *args):
    proc = subprocess.run([sys.executable, "-m", "fastalex", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def test_classify_with_an_onnx_model_and_presets(env, photo):
    out = {}
    for preset in ("caffe", "torchvision"):
        proc = run(env, "classify", photo, "--weights", CAFFE, "--preprocess", preset, "--json", "--top", "10")
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)
        assert record["path"] == str(photo) and len(record["top"]) == 10
        assert record["top"][0]["label"] is None  # 10 classes: no ImageNet names
        assert abs(sum(t["probability"] for t in record["top"]) - 1) < 1e-4  # the graph's Softmax, once
        out[preset] = [t["probability"] for t in record["top"]]
    assert out["caffe"] != out["torchvision"]


def test_summary_and_bench_on_an_onnx_model(env):
    proc = run(env, "summary", "--weights", VGG)
    assert proc.returncode == 0 and "ONNX model vgg_bn_op9.onnx (opset 9)" in proc.stdout
    assert "AvgPool2D" in proc.stdout and "Total params: 5,170" in proc.stdout
    proc = run(env, "bench", "--weights", CAFFE, "--backend", "numpy", "--repeat", "1", "--warmup", "0",
               "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "caffe_alexnet.onnx, batch 2 x (3, 224, 224)" in proc.stdout
    # ONNX Runtime, when installed, runs the same file (a fixed batch of 1: twice per batch of 2)
    assert ("onnxruntime  not installed" in proc.stdout
            or "agreement: max |onnxruntime - numpy|" in proc.stdout), proc.stdout
    assert "torch" not in proc.stdout  # the peers built from layers are not the file


@pytest.mark.parametrize("args, message", [
    (["classify", "PHOTO", "--weights", CAFFE, "--variant", "original"], "the variant 'original' cannot be combined"),
    (["summary", "--weights", CAFFE, "--variant", "torchvision"], "brings its own architecture"),
    (["classify", "PHOTO", "--weights", "missing.onnx"], "missing.onnx: no such file"),
    (["classify", "PHOTO", "--weights", CAFFE, "--num-classes", "5"], "has 10 classes"),
    (["summary", "--weights", "w.npz"], "takes an .onnx model"),
    (["classify", "PHOTO", "--weights", CAFFE, "--preprocess", "opencv"], "invalid choice"),
])
def test_usage_errors(env, photo, args, message):
    proc = run(env, *[photo if a == "PHOTO" else a for a in args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    if "invalid choice" not in message:  # argparse's own errors come with its usage lines
        assert len(proc.stderr.strip().splitlines()) == 1


def test_truncated_model_is_one_line(env, photo, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(CAFFE.read_bytes()[:3000])
    proc = run(env, "classify", photo, "--weights", cut)
    assert proc.returncode == 2 and proc.stderr.startswith(f"fastalex: error: cannot use ONNX model {cut}: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_onnx_package_is_exit_2(monkeypatch, capsys, photo):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert cli.main(["summary", "--weights", str(CAFFE)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fastalex[onnx]'" in err and len(err.strip().splitlines()) == 1


def test_bad_numbers_and_names_are_exit_2_without_warnings(env, tmp_path):
    """Issue 19 item 14 on the command line: one line naming the file, exit 2, no RuntimeWarning."""
    from support.onnx_graphs import bad_number_graphs
    for case, (path, message) in bad_number_graphs(tmp_path).items():
        proc = run(env, "summary", "--weights", path)
        assert proc.returncode == 2, (case, proc.stderr)
        assert proc.stderr.startswith(f"fastalex: error: cannot use ONNX model {path}: "), (case, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Warning" not in proc.stderr, (case, proc.stderr)
