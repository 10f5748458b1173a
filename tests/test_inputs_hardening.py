"""Images and folders (issue 9): absurd aspect ratios, FIFOs, clipping of float/32-bit images,
symlinked folders; and saved files follow the umask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex.images import ImageError, load_image, open_image, to_rgb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- item 6

LOAD_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys, time
    from fastalex.images import ImageError, load_image
    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * resource.getpagesize()
    limit = vsize + (512 << 20)  # half a GiB more than the interpreter already maps
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for path in sys.argv[1:]:
        try:
            out[path] = "shape %s" % (load_image(path).shape,)
        except ImageError as exc:
            out[path] = "ImageError: " + str(exc)
        except BaseException as exc:
            out[path] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_extreme_aspect_ratios_are_bounded(tmp_path):
    paths = {}
    for w, h in [(1, 20000), (100000, 1), (2, 1900), (1200, 3)]:
        p = paths[(w, h)] = tmp_path / f"strip_{w}x{h}.png"
        Image.new("L", (w, h), 128).save(p)
    assert paths[(1, 20000)].stat().st_size < 1000  # a few hundred bytes of PNG
    proc = subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT, *map(str, paths.values())],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for size in [(1, 20000), (100000, 1)]:
        msg = got[str(paths[size])]
        assert msg.startswith("ImageError: ") and "aspect ratio" in msg and str(paths[size]) in msg, msg
    for size in [(2, 1900), (1200, 3)]:  # long but not absurd: only the centre crop is resampled
        assert got[str(paths[size])] == "shape (3, 224, 224)", got[str(paths[size])]


def test_a_long_strip_matches_resize_then_crop_within_one_level():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (3000, 40, 3), dtype=np.uint8))
    from fastalex.images import center_crop_box, resized_size
    w, h = resized_size(*img.size, 256)
    full = np.asarray(img.resize((w, h), Image.BILINEAR).crop(center_crop_box(w, h, 224))).astype(int)
    ours = load_image(img)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    back = (ours.transpose(1, 2, 0) * std + mean) * 255
    assert np.abs(back - full).max() <= 1.01


# ----------------------------------------------------------------------------- item 8

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    code = "import sys; from fastalex.images import open_image; open_image(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1 and "ImageError" in proc.stderr and "FIFO" in proc.stderr
    assert "empty file" not in proc.stderr
    with pytest.raises(ImageError, match="FIFO .named pipe., not a regular file"):
        open_image(fifo)  # safe in-process now: the open does not block


# ----------------------------------------------------------------------------- item 15

def test_one_out_of_range_pixel_does_not_rescale_a_float_image():
    a = np.full((8, 8), 0.5, np.float32)
    a[0, 0] = 2.0
    rgb = np.asarray(to_rgb(Image.fromarray(a, "F")))
    assert rgb[4, 4, 0] == 128 and rgb[0, 0, 0] == 255  # grey stays grey; the outlier is clipped


def test_one_out_of_range_pixel_does_not_rescale_a_32_bit_image():
    a = np.full((8, 8), 32768, np.int32)
    a[0, 0] = 1 << 20
    a[0, 1] = -5
    rgb = np.asarray(to_rgb(Image.fromarray(a, "I")))
    assert rgb[4, 4, 0] == 128 and rgb[0, 0, 0] == 255 and rgb[0, 1, 0] == 0
    a[:] = 200  # below 256 everywhere: still the 16-bit scale, not a data-dependent one
    assert np.asarray(to_rgb(Image.fromarray(a, "I")))[4, 4, 0] == 1


def test_saved_and_cached_files_follow_the_umask(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        path = fastalex.save_weights({"w": np.ones(2, np.float32)}, tmp_path / "w.npz")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o027)
        path = fastalex.save_weights({"w": np.ones(2, np.float32)}, tmp_path / "v.npz")
        assert (path.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- item 18

def test_symlinked_folders_are_followed_and_loops_reported(tmp_path, capsys):
    from fastalex import cli
    from fastalex.classify import SkippedFolderWarning, expand_inputs
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(photos / f"p{i}.png")
    top = tmp_path / "dir"
    top.mkdir()
    Image.new("RGB", (8, 8)).save(top / "own.png")
    (top / "link").symlink_to(Path("..") / "photos")
    (top / "loop").symlink_to(Path(".."))  # back to tmp_path: contains dir/ again
    with pytest.warns(SkippedFolderWarning) as record:
        items = expand_inputs([str(top)])
    assert any("already searched (a symlink loop)" in str(w.message) for w in record)
    names = sorted(os.path.relpath(i.path, top) for i in items)
    assert os.path.join("link", "p0.png") in names and "own.png" in names
    assert all(i.error is None for i in items)
    assert names.count(os.path.join("link", "p1.png")) + names.count(os.path.join("loop", "photos", "p1.png")) == 1

    status = cli.main(["classify", str(top), "--random-weights", "--backend", "numpy", "--top", "1"])
    out, err = capsys.readouterr()
    assert status == 0 and out.count("  1.") == 4  # own.png + the 3 photos behind the link, once each
    assert "fastalex: warning:" in err and "symlink loop" in err


# ----------------------------------------------------------------------------- item 19

DETECT = textwrap.dedent("""
    import numpy as np
    from fastalex import _numba_cache, functional as F
    import fastalex.backends.fast
    before = _numba_cache.kernels_cached()
    F.relu(np.ones((1, 1, 2, 2), np.float32), backend="numba")  # compiles (and caches) one kernel
    print(before, _numba_cache.kernels_cached())
""")


def test_a_cold_numba_cache_is_detected(tmp_path):
    pytest.importorskip("numba")
    env = {**os.environ, "PYTHONPATH": ROOT, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    proc = subprocess.run([sys.executable, "-c", DETECT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_cli_says_it_compiles_only_when_the_cache_is_cold(tmp_path, monkeypatch, capsys):
    pytest.importorskip("numba")
    from fastalex import _numba_cache, cli
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    args = ["classify", str(img), "--random-weights", "--top", "1"]
    monkeypatch.setattr(_numba_cache, "kernels_cached", lambda: False)
    assert cli.main(args + ["--backend", "numba"]) == 0
    assert _numba_cache.COMPILE_NOTE in capsys.readouterr().err
    assert cli.main(args + ["--backend", "numpy"]) == 0
    assert _numba_cache.COMPILE_NOTE not in capsys.readouterr().err
    monkeypatch.setattr(_numba_cache, "kernels_cached", lambda: True)
    assert cli.main(args + ["--backend", "numba"]) == 0
    assert _numba_cache.COMPILE_NOTE not in capsys.readouterr().err
