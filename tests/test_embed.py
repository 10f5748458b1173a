"""fastalex.embed, the embed command, and the crash-safe outputs behind --output/--resume.

Small reduced-width models (tests/support/fixture_specs.py) for the Python API; the CLI runs in-process
with --random-weights on the numpy backend. Interruptions are simulated by a result stream that
raises KeyboardInterrupt part-way, and a torn last record by appending half a line.
"""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex import cli
from fastalex.embedding import Embedding, EmbedTask
from fastalex.models import build
from fastalex.outputs import JsonLinesOutput, VectorOutput, paths_file, read_vectors, scan_jsonl

from support import assert_agree, assert_same_results
from support.fixture_specs import reduced_spec

N_GOOD = 7


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(N_GOOD):
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)).save(root / f"p{i}.jpg")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def good_files(root):
    return sorted(str(p) for p in root.glob("*.jpg"))


@pytest.fixture(scope="module")
def small():
    return build(reduced_spec("torchvision"), seed=3, backend="numpy")


# ----------------------------------------------------------------------------- Python API

@pytest.mark.parametrize("variant", ["torchvision", "original"])
@pytest.mark.parametrize("layer", ["fc7", "pool5", "features.4", "logits"])
def test_embeddings_match_extract(photos, variant, layer, backend):
    model = build(reduced_spec(variant), seed=0, backend=backend)
    files = good_files(photos)
    x = fastalex.load_images(files, variant=model)
    expected = model.extract(x, layer)[layer].reshape(len(files), -1)
    results = fastalex.embed(files, model=model, layer=layer, batch_size=3)
    assert [r.path for r in results] == files and all(r.ok for r in results)
    got = np.stack([r.vector for r in results])
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert_agree(got, expected, layer)  # batches of 3 vs 7: BLAS may round differently


def test_normalize_and_errors(photos, small):
    results = fastalex.embed([photos, photos / "missing.jpg"], model=small, layer="fc6", normalize=True,
                             batch_size=4)
    assert [r.input for r in results] == list(range(N_GOOD + 2))
    bad = {os.path.basename(r.path): r.error for r in results if not r.ok}
    assert set(bad) == {"broken.png", "missing.jpg"} and "not an image" in bad["broken.png"]
    norms = [np.linalg.norm(r.vector) for r in results if r.ok]
    assert len(norms) == N_GOOD and np.allclose(norms, 1, atol=1e-5)


def test_zero_vectors_stay_zero_when_normalized(small):
    task = EmbedTask("fc7", normalize=True)

    class Zeros:
        def extract(self, x, layer):
            return {layer: np.zeros((len(x), 5), np.float32)}

    v = task.compute(Zeros(), np.zeros((2, 3, 8, 8), np.float32))
    assert np.all(v == 0) and np.all(np.isfinite(v))


def test_bad_layer_fails_before_any_image(photos, small):
    with pytest.raises(ValueError, match="unknown layer 'fc9'"):
        fastalex.embed(photos, model=small, layer="fc9")
    assert fastalex.embed([], model=small) == []
    e = Embedding("a.jpg", 0, error="bad")
    assert not e.ok


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("ext", [".npy", ".npz", ".parquet"])
def test_vector_output_journal_resume_and_no_duplicates(tmp_path, ext):
    if ext == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"v{ext}"
    vec = {f"/x/{i}.jpg": np.full(6, i, np.float32) for i in range(10)}
    names = list(vec)
    out = VectorOutput(path, flush_every=2)
    for p in names[:5]:
        out.write(p, vec[p])
    out.close()  # interrupted: only the journal exists
    assert not path.exists() and os.path.exists(str(path) + ".journal")
    with open(str(path) + ".journal", "ab") as f:
        f.write(b'{"path": "/x/torn.jpg", "vec')  # a write cut short
    out = VectorOutput(path, resume=True)
    assert out.done == set(names[:5])
    for p in names[5:8]:
        out.write(p, vec[p])
    out.finish()
    assert not os.path.exists(str(path) + ".journal")
    out = VectorOutput(path, resume=True)  # a second resume on the finished file, with a repeat
    assert out.done == set(names[:8])
    for p in names[8:] + [names[0]]:
        out.write(p, vec[p] if p != names[0] else vec[p] + 100)
    out.finish()
    paths, chunks = read_vectors(path)
    vectors = np.concatenate(list(chunks))
    assert paths == names  # each once, in order; the first copy of a path wins
    np.testing.assert_array_equal(vectors, np.stack([vec[p] for p in names]))
    if ext == ".npy":
        lines = open(paths_file(path)).read().splitlines()  # a header, then one JSON string a line
        assert json.loads(lines[0])["rows"] == len(names) and [json.loads(line) for line in lines[1:]] == names
    with pytest.raises(ValueError, match="same --layer"):
        VectorOutput(path, resume=True).write("/x/new.jpg", np.zeros(3, np.float32))


def test_vector_output_formats_by_extension(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"\.npy, \.npz, \.parquet"):
        VectorOutput(tmp_path / "v.csv")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'fastalex\[parquet\]'"):
        VectorOutput(tmp_path / "v.parquet")


def test_jsonl_output_repairs_a_torn_tail(tmp_path):
    path = tmp_path / "out.jsonl"
    out = JsonLinesOutput(path, flush_every=100)
    out.write(json.dumps({"path": "a"}))
    out.write(json.dumps({"path": "b"}))
    out.close()
    with open(path, "ab") as f:
        f.write(b'{"path": "c", "to')
    out = JsonLinesOutput(path, resume=True)
    assert out.done == {"a", "b"}
    out.write(json.dumps({"path": "c"}))
    out.finish()
    assert [r["path"] for r in scan_jsonl(path)] == ["a", "b", "c"]
    JsonLinesOutput(path).finish()  # without resume: a new file
    assert path.read_text() == ""


# ----------------------------------------------------------------------------- CLI

def _interrupt_after(monkeypatch, module, name, n):
    """Make ``module.name`` (a result generator) raise KeyboardInterrupt after ``n`` results."""
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        for i, r in enumerate(real(*args, **kwargs)):
            if i == n:
                raise KeyboardInterrupt
            yield r
    monkeypatch.setattr(module, name, interrupted)


@pytest.fixture()
def numpy_backend(monkeypatch):
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    from fastalex import backends
    monkeypatch.setattr(backends, "_default", None)


ARGS = ["--random-weights", "--batch-size", "3"]


@pytest.mark.parametrize("ext", [".npz", ".npy", ".parquet"])
def test_embed_cli_resume_after_interrupt(photos, tmp_path, monkeypatch, capsys, numpy_backend, ext):
    if ext == ".parquet":
        pytest.importorskip("pyarrow")
    full, part = tmp_path / f"full{ext}", tmp_path / f"part{ext}"
    assert cli.main(["embed", str(photos), "-o", str(full), "--layer", "fc6", "--normalize", *ARGS]) == 1
    err = capsys.readouterr().err
    assert "cannot embed" in err and "broken.png" in err and "1 of 8 inputs could not be embedded" in err
    with monkeypatch.context() as m:
        _interrupt_after(m, sys.modules["fastalex.embedding"], "iter_embed", 4)
        assert cli.main(["embed", str(photos), "-o", str(part), "--layer", "fc6", "--normalize", *ARGS]) == 130
    assert "rerun with --resume" in capsys.readouterr().err
    assert not part.exists()
    journal = [r for r in scan_jsonl(str(part) + ".journal") if "path" in r]  # everything done before the interrupt is kept
    assert [os.path.basename(r["path"]) for r in journal] == ["p0.jpg", "p1.jpg", "p2.jpg"]  # + broken.png
    assert cli.main(["embed", str(photos), "-o", str(part), "--layer", "fc6", "--normalize", "--resume",
                     *ARGS]) == 1
    assert "3 of 8 inputs are already in" in capsys.readouterr().err  # failures are tried again
    p_full, v_full = read_vectors(full)
    p_part, v_part = read_vectors(part)
    assert p_part == p_full == good_files(photos)
    assert_agree(np.concatenate(list(v_part)), np.concatenate(list(v_full)), "resumed vectors")  # other batches
    assert cli.main(["embed", str(photos), "-o", str(part), "--layer", "fc6", "--normalize", "--resume",
                     *ARGS]) == 1
    assert read_vectors(part)[0] == p_full  # nothing new, nothing twice; the broken file is retried
    # other settings are another run: refused, naming the difference
    assert cli.main(["embed", str(photos), "-o", str(part), "--layer", "fc6", "--resume", *ARGS]) == 2
    assert "--normalize: true there, false now" in capsys.readouterr().err


def test_classify_cli_output_and_resume(photos, tmp_path, monkeypatch, capsys, numpy_backend):
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert cli.main(["classify", str(photos), "--output", str(full), *ARGS]) == 1
    assert capsys.readouterr().out == ""  # the records go to the file
    with monkeypatch.context() as m:
        _interrupt_after(m, sys.modules["fastalex.classify"], "iter_classify", 5)
        assert cli.main(["classify", str(photos), "--output", str(part), *ARGS]) == 130
    with open(part, "ab") as f:
        f.write(b'{"path": "/torn')  # as if killed in the middle of a write
    # 0: the broken file's error record came before the interrupt and is skipped like the rest
    assert cli.main(["classify", str(photos), "--output", str(part), "--resume", *ARGS]) == 0
    want, got = scan_jsonl(full), scan_jsonl(part)
    assert len(want) == N_GOOD + 1
    assert_same_results(got, want)  # same records, same order, none twice (batches differ)
    assert part.read_bytes().endswith(b"\n")


def test_embed_cli_usage_errors(photos, tmp_path, monkeypatch, capsys, numpy_backend):
    assert cli.main(["embed", str(photos), "-o", str(tmp_path / "v.csv"), *ARGS]) == 2
    assert cli.main(["embed", str(photos), "-o", str(tmp_path / "v.npy"), "--layer", "fc9", *ARGS]) == 2
    assert cli.main(["classify", str(photos), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "must end in .npy, .npz, .parquet" in err and "unknown layer 'fc9'" in err
    assert "--resume needs --output" in err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert cli.main(["embed", str(photos), "-o", str(tmp_path / "v.parquet"), *ARGS]) == 2
    monkeypatch.setitem(sys.modules, "distributed", None)
    for command in (["embed", "-o", str(tmp_path / "v.npy")], ["classify"]):
        for option in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]):
            assert cli.main([command[0], str(photos), *command[1:], *option, *ARGS]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and "pip install 'fastalex[parquet]'" in err[0]
    assert all(line.startswith("fastalex: error: ") and "pip install 'fastalex[dask]'" in line
               for line in err[1:])
    assert not list(tmp_path.iterdir())  # no output was started


# ----------------------------------------------------------------------------- URLs

def test_url_inputs_are_read_like_paths(photos, small):
    """``file://`` URLs through fsspec (a folder URL is listed; without fsspec, an error naming
    the install command), ``http://`` through urllib."""
    import functools
    import importlib.util
    import http.server
    import threading
    files = good_files(photos)
    local = fastalex.embed(files, model=small, layer="fc7")
    by_folder = fastalex.embed([f"file://{photos}/"], model=small, layer="fc7")
    have_fsspec = importlib.util.find_spec("fsspec") is not None  # it comes with the dask extra
    if have_fsspec:
        assert [r.path for r in by_folder] == [f"file://{photos}/broken.png"] + [f"file://{f}" for f in files]
        assert "not an image" in by_folder[0].error
    else:
        assert [r.path for r in by_folder] == [f"file://{photos}/"]
        assert "pip install 'fastalex[dask]'" in by_folder[0].error
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photos))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        names = [os.path.basename(f) for f in files]
        by_http = fastalex.embed([f"{base}/{n}" for n in names] + [f"{base}/gone.jpg"], model=small)
    finally:
        server.shutdown()
        server.server_close()
    for got in (by_folder[1:], by_http[:-1]) if have_fsspec else (by_http[:-1],):
        np.testing.assert_array_equal(np.stack([r.vector for r in got]), np.stack([r.vector for r in local]))
    assert "cannot read" in by_http[-1].error and "404" in by_http[-1].error


def test_weights_from_a_url_are_fetched_once_and_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "home"))
    model = fastalex.alexnet("torchvision", num_classes=3, seed=4, backend="numpy")
    fastalex.save_weights(model, tmp_path / "three.npz")
    url = f"file://{tmp_path}/three.npz"
    again = fastalex.alexnet("torchvision", num_classes=3, weights=url)
    assert again.recipe["weights"] == url  # what a Dask worker will load
    np.testing.assert_array_equal(again.state_dict()["classifier.6.weight"], model.state_dict()["classifier.6.weight"])
    (tmp_path / "three.npz").unlink()  # the cached copy is used from now on
    fastalex.alexnet("torchvision", num_classes=3, weights=url)
    local = fastalex.alexnet("torchvision", num_classes=3, weights=again.state_dict())
    assert local.recipe is None  # arrays: nothing another process could load
