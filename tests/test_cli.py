"""The ``fastalex`` command end to end, in subprocesses, on files made here with Pillow.

No network and no real cache: ``FASTALEX_HOME`` is a temporary directory and
``FASTALEX_WEIGHTS_URL`` points at a closed port. Weights come from ``--random-weights`` or a
small saved file. Each subprocess pays the interpreter and import start-up, so each one
checks many things.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastalex import cli

N_GOOD = 10
BAD = ["truncated.jpg", "text.jpg", "empty.png"]


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    e = dict(os.environ)
    e.update(FASTALEX_HOME=str(home), FASTALEX_BACKEND="numpy",
             FASTALEX_WEIGHTS_URL=f"http://127.0.0.1:{_closed_port()}/alexnet-owt-7be5be79.pth")
    e.pop("XDG_CACHE_HOME", None)
    return e


def run(env, *args, stdin=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "fastalex", *map(str, args)], env=env, capture_output=True,
                          text=True, errors="surrogateescape", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout
    return proc


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder mixing every kind of image with broken files and a non-image."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)

    def noise(h, w, c=3):
        return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise(60, 90)).save(root / "exif.jpg", exif=exif)
    Image.fromarray(noise(50, 70, 4), "RGBA").save(root / "alpha.png")
    Image.fromarray(noise(64, 64, 0), "L").save(root / "gray.png")
    pal = Image.fromarray(noise(40, 40, 0) % 8, "L").convert("P")
    pal.save(root / "palette.png", transparency=0)
    Image.fromarray((rng.integers(0, 65536, (30, 40))).astype(np.uint16)).save(root / "deep.png")
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(noise(10, 10)).save(root / "tiny.png")
    Image.fromarray(noise(40, 30)).save(root / "UPPER.JPEG")
    (root / "nested").mkdir()
    Image.fromarray(noise(20, 30)).save(root / "nested" / "inner.bmp")
    try:  # a file name that is not valid UTF-8 (possible on Linux filesystems)
        Image.fromarray(noise(20, 30)).save(os.fsdecode(bytes(root / "nested") + b"/caf\xe9.png"))
    except (OSError, UnicodeError):
        Image.fromarray(noise(20, 30)).save(root / "nested" / "café.png")
    (root / "broken").mkdir()
    import io
    buf = io.BytesIO()
    Image.fromarray(noise(100, 100)).save(buf, "JPEG")
    (root / "broken" / "truncated.jpg").write_bytes(buf.getvalue()[:800])
    (root / "broken" / "text.jpg").write_text("definitely not a JPEG\n")
    (root / "broken" / "empty.png").write_bytes(b"")
    (root / "readme.txt").write_text("ignored: not an image extension")
    (root / "no-images").mkdir()
    (root / "no-images" / "notes.txt").write_text("x")
    return root


@pytest.fixture(scope="session")
def weights7(tmp_path_factory):
    """A 'fine-tuned' torchvision AlexNet with 7 classes, saved as .npz, and a labels file for it."""
    from fastalex import alexnet, save_weights
    d = tmp_path_factory.mktemp("weights")
    save_weights(alexnet("torchvision", num_classes=7, seed=1), d / "seven.npz")
    (d / "labels7.txt").write_text("\n".join(f"kind-{i}" for i in range(7)) + "\n")
    (d / "labels3.txt").write_text("a\nb\nc\n")
    return d


ROW = re.compile(r"^  \d\. +\d+\.\d\d%  \S")


def test_classify_folder_text_output(env, photos):
    proc = run(env, "classify", photos, "--random-weights", "--top", "3", "--batch-size", "4")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    headers = [l for l in lines if not l.startswith("  ")]
    assert len(headers) == N_GOOD and all(h.startswith(str(photos)) for h in headers)
    assert not any(h.endswith(("readme.txt", "notes.txt")) for h in headers)
    assert any(h.endswith("nested/inner.bmp") for h in headers)
    assert any(h.endswith("UPPER.JPEG") for h in headers)
    rows = [l for l in lines if l.startswith("  ")]
    assert len(rows) == 3 * N_GOOD and all(ROW.match(r) for r in rows), rows
    err = proc.stderr
    assert "random weights" in err and "MEANINGLESS" in err
    for name in BAD:
        assert sum(name in l for l in err.splitlines()) == 1, err
    assert "truncated" in err and "not an image" in err and "empty file" in err
    assert f"3 of {N_GOOD + 3} inputs could not be classified" in err
    assert "img/s" not in err  # no progress bar when stderr is not a terminal


def test_classify_json_lines(env, photos):
    proc = run(env, "classify", photos, "--random-weights", "--json", "--top", "2")
    assert proc.returncode == 1
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(objs) == N_GOOD + len(BAD)
    ok = [o for o in objs if "top" in o]
    bad = [o for o in objs if "error" in o]
    assert len(ok) == N_GOOD
    assert sum(os.fsencode(o["path"]).endswith((b"caf\xe9.png", "café.png".encode())) for o in ok) == 1
    assert sorted(os.path.basename(o["path"]) for o in bad) == sorted(BAD)
    for o in ok:
        assert len(o["top"]) == 2
        for t in o["top"]:
            assert set(t) == {"index", "label", "probability"}
            assert 0 <= t["index"] < 1000 and isinstance(t["label"], str) and 0 <= t["probability"] <= 1


def test_weights_file_with_other_num_classes(env, photos, weights7):
    w = weights7 / "seven.npz"
    proc = run(env, "classify", photos / "gray.png", photos / "tiny.png", "--weights", w, "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(re.findall(r"%  class [0-6]$", proc.stdout, re.M)) == 6
    assert "MEANINGLESS" not in proc.stderr

    proc = run(env, "classify", photos / "exif.jpg", "--weights", w, "--labels", weights7 / "labels7.txt",
               "--json", "--top", "10")
    assert proc.returncode == 0, proc.stderr
    (obj,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(obj["top"]) == 7  # top is clamped to the number of classes
    assert all(t["label"] == f"kind-{t['index']}" for t in obj["top"])
    assert abs(sum(t["probability"] for t in obj["top"]) - 1) < 1e-5

    proc = run(env, "classify", photos / "gray.png", "--weights", w, "--labels", weights7 / "labels3.txt")
    assert proc.returncode == 2 and "3 labels but the model has 7 classes" in proc.stderr
    proc = run(env, "classify", photos / "gray.png", "--weights", w, "--num-classes", "5")
    assert proc.returncode == 2 and "7 classes" in proc.stderr


def test_usage_errors_exit_2(env, photos, tmp_path):
    proc = run(env, "classify", photos / "gray.png")  # default: ImageNet weights, not cached, offline
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fastalex: error:") and "cannot be downloaded" in line
    assert "fastalex weights download" in line and "--weights FILE" in line and "--random-weights" in line

    checks = [
        (["classify"], "required: PATH"),
        (["classify", photos, "--bogus"], "unrecognized arguments"),
        (["classify", photos, "--top", "0"], "positive integer"),
        (["classify", photos, "--weights", tmp_path / "nope.npz"], "nope.npz' not found"),
        (["classify", photos, "--weights", photos / "readme.txt"], "readme.txt' is not an .npz or a PyTorch file"),
        (["classify", photos, "--weights", "x.npz", "--random-weights"], "not allowed with"),
        (["classify", photos / "no-images", "--random-weights"], "no images found"),
        (["classify", photos / "gray.png", "--variant", "original"], "no published ImageNet weights"),
        (["frobnicate"], "invalid choice"),
        (["weights"], "required"),
    ]
    for args, message in checks:
        proc = run(env, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""


def test_summary_bench_weights_version(env):
    proc = run(env, "summary", "--variant", "original")
    assert proc.returncode == 0 and "Total params: 60,965,224" in proc.stdout

    proc = run(env, "summary", "--num-classes", "10")
    assert proc.returncode == 0 and "(10)" in proc.stdout

    proc = run(env, "bench", "--backend", "numpy", "--repeat", "2", "--warmup", "0", "--batch-size", "1",
               "--peers", "none")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^numpy +\d+\.\d+ s +\d+\.\d+ s +\d+\.\d ms +\d+\.\d *$", proc.stdout, re.M), proc.stdout
    assert not re.search(r"^(torch|onnxruntime) ", proc.stdout, re.M)

    # peers: timed on the same model when installed, otherwise named with the install command
    proc = run(env, "bench", "--backend", "numba", "--repeat", "1", "--warmup", "0", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    for peer in ("torch", "onnxruntime"):
        timed = rf"^{peer} +\d+\.\d+ s +\d+\.\d+ s .* +\d+\.\d\dx$"
        missing = rf"^{peer} +not installed \(pip install {peer}"
        assert re.search(timed, proc.stdout, re.M) or re.search(missing, proc.stdout, re.M), proc.stdout
        if re.search(timed, proc.stdout, re.M):
            assert re.search(rf"^agreement: max \|{peer} - numba\| / max \|numba\| = \d", proc.stdout, re.M)

    proc = run(env, "weights", "path")
    assert proc.returncode == 0 and env["FASTALEX_HOME"] in proc.stdout and "none" in proc.stdout

    proc = run(env, "weights", "download")  # the same missing weights as classify's: exit 2
    assert proc.returncode == 2 and proc.stderr.startswith("fastalex: error: cannot download")
    assert proc.stderr.count("\n") == 1 and "weights='" not in proc.stderr

    proc = run(env, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("fastalex ")


def test_bad_backend_variable_is_a_usage_error_reported_first(env, photos):
    proc = run({**env, "FASTALEX_BACKEND": "cuda"}, "classify", photos / "gray.png", "--random-weights")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()  # before the --random-weights warning, and only that line
    assert line.startswith("fastalex: error:") and "FASTALEX_BACKEND" in line and "'numba'" in line


def test_messages_are_sentences_in_command_line_terms(env, photos):
    proc = run(env, "classify", photos / "gray.png")  # ImageNet weights: not cached, offline
    assert proc.returncode == 2
    assert "weights='" not in proc.stderr and "variant='" not in proc.stderr
    assert not re.search(r"[a-z] To get them", proc.stderr), proc.stderr  # "...directory. To get them"


def test_symlink_loop_and_fifo_as_weights(env, photos, tmp_path):
    loop = tmp_path / "loop.pth"
    os.symlink(loop, loop)
    proc = run(env, "classify", photos / "gray.png", "--weights", loop)
    assert proc.returncode == 2 and "symlink loop" in proc.stderr and "not found" not in proc.stderr
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    proc = run(env, "classify", photos / "gray.png", "--weights", fifo, timeout=60)
    assert proc.returncode == 2 and "FIFO" in proc.stderr and "not a regular file" in proc.stderr


def test_newline_in_a_file_name_stays_on_one_line(env, tmp_path):
    odd = tmp_path / "two\nlines.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(odd)
    broken = tmp_path / "bad\nname.png"
    broken.write_bytes(b"not a png")
    proc = run(env, "classify", odd, broken, "--random-weights", "--top", "1")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("two\\nlines.png") and lines[1].startswith("  1.") and len(lines) == 2
    err = [l for l in proc.stderr.splitlines() if "cannot classify" in l]
    assert len(err) == 1 and err[0].count("bad\\nname.png") >= 1


def test_broken_pipe_is_quiet(env, photos):
    p = subprocess.Popen([sys.executable, "-m", "fastalex", "classify", photos, "--random-weights", "--json",
                          "--batch-size", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="surrogateescape")
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


# ----------------------------------------------------------------------------- in-process

def test_help_and_version_in_process(capsys):
    assert cli.main(["--help"]) == 0
    assert "classify" in capsys.readouterr().out
    for sub in (["classify"], ["summary"], ["bench"], ["weights"], ["weights", "download"]):
        assert cli.main([*sub, "--help"]) == 0
        assert cli.main([*sub, "--version"]) == 0
    out = capsys.readouterr().out
    assert "--random-weights" in out and "--repeat" in out and "--force" in out
    assert cli.main([]) == 2


def test_interrupt_and_unexpected_errors_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def boom(args):
        raise RuntimeError("something odd")

    from fastalex.cli import model as commands
    monkeypatch.setattr(commands, "cmd_summary", interrupted)
    assert cli.main(["summary"]) == 130
    monkeypatch.setattr(commands, "cmd_summary", boom)
    assert cli.main(["summary"]) == 1
    err = capsys.readouterr().err
    assert "fastalex: interrupted" in err and "fastalex: error: RuntimeError: something odd" in err


def test_variant_is_inferred_from_the_weights():
    from fastalex import detect_variant
    from fastalex.models import param_shapes
    for variant in ("original", "torchvision"):
        state = {k: np.zeros(shape, np.float32) for k, shape in param_shapes(variant, 10).items()}
        assert detect_variant(state) == (variant, 10)
    assert detect_variant({"fc.weight": np.zeros((2, 2))}) is None


def test_weight_dtype_on_classify_and_bench(env, photos, weights7):
    w = weights7 / "seven.npz"
    probs = {}
    for dtype in ("float32", "bfloat16", "int8"):
        proc = run(env, "classify", photos / "exif.jpg", photos / "gray.png", "--weights", w, "--json",
                   "--top", "7", "--weight-dtype", dtype)
        assert proc.returncode == 0, proc.stderr
        objs = [json.loads(line) for line in proc.stdout.splitlines()]
        probs[dtype] = np.array([[t["probability"] for t in sorted(o["top"], key=lambda t: t["index"])]
                                 for o in objs])
    for dtype in ("bfloat16", "int8"):  # same model, lighter dense weights: nearly the same answer
        assert np.abs(probs[dtype] - probs["float32"]).max() < 0.02, (dtype, probs)

    proc = run(env, "classify", photos / "gray.png", "--random-weights", "--weight-dtype", "fp16")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "invalid choice: 'fp16'" in proc.stderr and "'float32', 'bfloat16', 'int8'" in proc.stderr

    proc = run(env, "bench", "--backend", "numpy", "--repeat", "1", "--warmup", "0", "--batch-size", "1",
               "--peers", "none", "--weight-dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert "bfloat16 dense weights" in proc.stdout
    assert re.search(r"^numpy +\d+\.\d+ s", proc.stdout, re.M), proc.stdout
    proc = run(env, "bench", "--weight-dtype", "int4")
    assert proc.returncode == 2 and "invalid choice: 'int4'" in proc.stderr


def test_weight_dtype_with_an_onnx_model(env, photos):
    pytest.importorskip("onnx")
    from support.fixture_specs import FIXTURES
    caffe = FIXTURES / "onnx" / "caffe_alexnet.onnx"
    probs = {}
    for dtype in ("float32", "int8"):
        proc = run(env, "classify", photos / "exif.jpg", "--weights", caffe, "--json", "--top", "3",
                   "--weight-dtype", dtype)
        assert proc.returncode == 0, proc.stderr
        probs[dtype] = {t["index"]: t["probability"] for t in json.loads(proc.stdout)["top"]}
    assert probs["int8"].keys() == probs["float32"].keys()
    proc = run(env, "bench", "--weights", caffe, "--backend", "numpy", "--repeat", "1", "--warmup", "0",
               "--batch-size", "1", "--weight-dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert "caffe_alexnet.onnx, batch 1 x (3, 224, 224), bfloat16 dense weights" in proc.stdout
