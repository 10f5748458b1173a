"""Outputs that never mis-pair or mix runs (issue 19): exact paths in every format, the run's
settings recorded and checked on --resume, an atomic commit that a rerun completes from any
point of death (SIGKILL at every step, in subprocesses), a full disk, one writer per output,
journal lines that are not records, output folders and missing inputs refused up front.
"""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastalex import cli
from fastalex import outputs as O
from fastalex.outputs import (DiskFullError, JournalError, OutputBusyError, RunMismatchError, VectorOutput,
                              paths_file, read_run, read_vectors, scan_jsonl)

FORMATS = [".npy", ".npz", ".parquet"]
ARGS = ["--random-weights", "--batch-size", "3"]


def _need(ext):
    if ext == ".parquet":
        pytest.importorskip("pyarrow")


def _vec(i, dim=5):
    return np.arange(dim, dtype=np.float32) + 10 * i


def _all(path):
    paths, chunks = read_vectors(path)
    chunks = list(chunks)
    return paths, (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32))


@pytest.fixture()
def numpy_backend(monkeypatch):
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    from fastalex import backends
    monkeypatch.setattr(backends, "_default", None)


def _photo(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path, format="PNG")


# ----------------------------------------------------------------------------- 1, 2: exact paths

ODD = ["/x/plain.jpg", "/x/new\nline.jpg", "/x/\r\ncr.jpg", os.fsdecode(b"/x/caf\xe9.jpg"), "/x/t\tab \u00e9.jpg",
       '/x/"quoted"\\.jpg']


@pytest.mark.parametrize("ext", FORMATS)
def test_paths_round_trip_exactly_in_every_format(tmp_path, ext):
    _need(ext)
    path = tmp_path / f"v{ext}"
    out = VectorOutput(path, flush_every=2)
    for i, p in enumerate(ODD):
        out.write(p, _vec(i))
    out.finish()
    paths, vectors = _all(path)
    assert paths == ODD and [os.fsencode(p) for p in paths] == [os.fsencode(p) for p in ODD]
    np.testing.assert_array_equal(vectors, np.stack([_vec(i) for i in range(len(ODD))]))
    out = VectorOutput(path, resume=True)  # a resume finds every one of them: none is embedded again
    assert out.done == set(ODD)
    out.finish()
    assert _all(path)[0] == ODD
    if ext == ".parquet":  # the bytes are there as they are on disk; `path` is readable text
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        assert table.column("path_bytes").to_pylist()[3] == b"/x/caf\xe9.jpg"
        assert table.column("path").to_pylist()[3] == "/x/caf\ufffd.jpg"


def test_legacy_npy_paths_txt_is_still_read_and_upgraded(tmp_path):
    path = tmp_path / "old.npy"
    np.save(path, np.stack([_vec(0), _vec(1)]))
    (tmp_path / "old.paths.txt").write_text("/x/a.jpg\n/x/b.jpg\n")
    assert read_vectors(path)[0] == ["/x/a.jpg", "/x/b.jpg"] and read_run(path) is None
    out = VectorOutput(path, resume=True, run={"layer": "classifier.5"})
    assert out.done == {"/x/a.jpg", "/x/b.jpg"}
    out.write("/x/c\nd.jpg", _vec(2))
    out.finish()
    assert not (tmp_path / "old.paths.txt").exists() and os.path.exists(paths_file(path))
    paths, vectors = _all(path)
    assert paths == ["/x/a.jpg", "/x/b.jpg", "/x/c\nd.jpg"] and vectors.shape == (3, 5)
    assert read_run(path) == {"layer": "classifier.5"}


def test_cli_newline_and_non_utf8_names(tmp_path, capsys, numpy_backend):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["a.png", "new\nline.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        _photo(os.path.join(str(photos), name), i)
    for ext in FORMATS:
        if ext == ".parquet" and not _has_pyarrow():
            continue
        out = tmp_path / f"v{ext}"
        assert cli.main(["embed", str(photos), "-o", str(out), *ARGS]) == 0
        paths, vectors = _all(out)
        assert sorted(os.path.basename(p) for p in paths) == sorted(names) and len(vectors) == 3
        assert cli.main(["embed", str(photos), "-o", str(out), "--resume", *ARGS]) == 0
        assert "3 of 3 inputs are already in" in capsys.readouterr().err
        assert _all(out)[0] == paths  # nothing embedded twice


def _has_pyarrow():
    try:
        import pyarrow  # noqa: F401
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------- 3: the run's identity

def test_resume_refuses_another_runs_settings(tmp_path):
    path = tmp_path / "v.npy"
    run = {"layer": "classifier.5", "normalize": False, "weights": "sha256:aa", "weights_shown": "a.npz"}
    out = VectorOutput(path, run=run)
    out.write("/x/0.jpg", _vec(0))
    out.finish()
    assert read_run(path) == run
    other = dict(run, normalize=True, weights="sha256:bb", weights_shown="b.npz")
    with pytest.raises(RunMismatchError, match=r'--normalize: false there, true now; --weights: "a.npz" there, '
                                               r'"b.npz" now'):
        VectorOutput(path, resume=True, run=other)
    assert not os.path.exists(str(path) + ".lock")  # a refused run leaves nothing behind
    VectorOutput(path, resume=True, run=run).finish()  # the same settings: fine


def test_cli_resume_continues_only_its_own_run(tmp_path, monkeypatch, capsys, numpy_backend):
    """The issue's case: run 1 plain; run 2 --normalize (a new run of the same file) killed
    midway; run 3 --resume without --normalize must not keep run 1's vectors as "done"."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        _photo(photos / f"p{i}.png", i)
    out = tmp_path / "s.npy"
    assert cli.main(["embed", str(photos), "-o", str(out), *ARGS]) == 0
    plain = _all(out)[1]
    from fastalex import embedding
    real = embedding.iter_embed

    def interrupted(*args, **kwargs):
        for i, r in enumerate(real(*args, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt
            yield r
    with monkeypatch.context() as m:
        m.setattr(embedding, "iter_embed", interrupted)
        assert cli.main(["embed", str(photos), "-o", str(out), "--normalize", *ARGS]) == 130
    capsys.readouterr()
    assert cli.main(["embed", str(photos), "-o", str(out), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "--normalize: true there, false now" in err and "s.npy.journal" in err
    assert cli.main(["embed", str(photos), "-o", str(out), "--resume", "--normalize", *ARGS]) == 0
    assert "4 of 8 inputs are already in" in capsys.readouterr().err  # run 2's, not run 1's 8
    vectors = _all(out)[1]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(vectors, plain / np.linalg.norm(plain, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    for option, shown in ((["--layer", "fc6"], "--layer"), (["--weight-dtype", "bfloat16"], "--weight-dtype"),
                          (["--precision", "bfloat16"], "--precision"),
                          (["--preprocess", "caffe"], "--preprocess"), (["--variant", "original"], "--variant")):
        assert cli.main(["embed", str(photos), "-o", str(out), "--resume", "--normalize", *option, *ARGS]) == 2
        assert f"{shown}: " in capsys.readouterr().err, option


# ----------------------------------------------------------------------------- 4: killed at every step

def _run_until_killed(path, stage, kill_at, armed_from):
    """In a forked child: run ``stage`` with SIGKILL at the ``kill_at``-th file-system call
    (counted from the start, or from ``finish``); returns the child's wait status."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    try:  # the child: never returns into pytest
        calls, armed = [0], [armed_from == "start"]

        def hook(fn):
            def wrapped(*a, **k):
                if armed[0]:
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **k)
            return wrapped
        for name in ("write", "fsync", "replace", "unlink", "ftruncate", "posix_fallocate", "open"):
            if hasattr(os, name):
                setattr(os, name, hook(getattr(os, name)))
        finish = VectorOutput.finish

        def armed_finish(self):
            armed[0] = True
            return finish(self)
        VectorOutput.finish = armed_finish
        names = [f"/x/{i}.jpg" for i in range(12)]
        out = VectorOutput(path, resume=stage == "resume", flush_every=3, run={"layer": "fc7"})
        for i, p in enumerate(names[:6] if stage == "first" else names):
            if p not in out.done:
                out.write(p, _vec(i))
        out.finish()
    except BaseException:
        os._exit(3)
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("ext,stage,armed_from", [(".npy", "first", "start"), (".npy", "resume", "start"),
                                                  (".npz", "resume", "finish"), (".parquet", "resume", "finish")])
def test_killed_at_any_step_a_resume_recovers(tmp_path, ext, stage, armed_from):
    """SIGKILL at the k-th file-system call (every k until the run completes): the next
    ``resume`` ends with every path once, with its vector, and nothing else left behind."""
    _need(ext)
    names = [f"/x/{i}.jpg" for i in range(12)]
    want = np.stack([_vec(i) for i in range(12)])
    kills = 0
    for k in range(1, 200):
        d = tmp_path / str(k)
        d.mkdir()
        path = d / f"v{ext}"
        if stage == "resume":  # an earlier, finished run of the first 6
            out = VectorOutput(path, run={"layer": "fc7"})
            for i in range(6):
                out.write(names[i], _vec(i))
            out.finish()
        status = _run_until_killed(path, stage, k, armed_from)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, k
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        kills += 1
        out = VectorOutput(path, resume=True, run={"layer": "fc7"})
        for i, p in enumerate(names):
            if p not in out.done:
                out.write(p, _vec(i))
        out.finish()
        paths, vectors = _all(path)
        assert paths == names, (k, paths)
        np.testing.assert_array_equal(vectors, want, err_msg=f"killed at step {k}")
        assert sorted(os.listdir(d)) == sorted([path.name] + ([os.path.basename(paths_file(path))]
                                                               if ext == ".npy" else [])), k
    else:
        pytest.fail("the run never completed")
    assert kills >= (12 if armed_from == "start" else 4)  # the sweep went through the commit


def test_commit_line_is_completed_by_the_next_run(tmp_path, monkeypatch):
    """Dying between the two renames of an .npy commit: a reader is told, the next run renames."""
    path = tmp_path / "v.npy"
    out = VectorOutput(path)
    for i in range(3):
        out.write(f"/x/{i}.jpg", _vec(i))
    calls = []
    real = os.replace

    def once(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after the first rename
        return real(a, b)
    monkeypatch.setattr(os, "replace", once)
    with pytest.raises(KeyboardInterrupt):
        out.finish()
    monkeypatch.setattr(os, "replace", real)
    assert scan_jsonl(str(path) + ".journal")[-1]["commit"]
    VectorOutput(path, resume=True).finish()
    assert _all(path)[0] == [f"/x/{i}.jpg" for i in range(3)]


# ----------------------------------------------------------------------------- 12: a full disk

@pytest.mark.parametrize("where", ["posix_fallocate", "write"])
def test_disk_full_is_a_clear_error_and_the_journal_survives(tmp_path, monkeypatch, where):
    path = tmp_path / "x.npy"
    out = VectorOutput(path)
    for i in range(4):
        out.write(f"/x/{i}.jpg", _vec(i))
    out._out.flush()
    real = getattr(os, where, None)
    if real is None:
        pytest.skip(f"no os.{where} here")

    def full(fd, *args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, where, full)
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*x\.npy.*--resume"):
        out.finish()
    monkeypatch.setattr(os, where, real)
    assert sorted(os.listdir(tmp_path)) == ["x.npy.journal"]  # no .part files, no lock
    out = VectorOutput(path, resume=True)
    assert len(out.done) == 4
    out.finish()
    assert len(_all(path)[0]) == 4


def test_disk_full_in_the_cli_exits_1_without_traceback(tmp_path, monkeypatch, capsys, numpy_backend):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        _photo(photos / f"p{i}.png", i)
    out = tmp_path / "out" / "x.npy"
    out.parent.mkdir()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    from fastalex.outputs import vectors  # where the vector files are written
    monkeypatch.setattr(vectors, "write_all", lambda fd, data: full() if len(data) > 1000 else os.write(fd, data))
    assert cli.main(["embed", str(photos), "-o", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "WARNING" in err and "error: no space left on the device writing" in err
    assert sorted(os.listdir(out.parent)) == ["x.npy.journal"]


def test_disk_full_on_a_real_small_file_system(tmp_path, numpy_backend):
    """A 256 KiB tmpfs (where this runs as root with mount namespaces): exit 1, a clear line,
    no SIGBUS, only the journal left."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        _photo(photos / f"p{i}.png", i)
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} && "
              f"{sys.executable} -m fastalex embed {photos} -o {mnt}/x.npy --layer pool5 {' '.join(ARGS)}; "
              f"echo status=$?; ls -a {mnt}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, FASTALEX_BACKEND="numpy"))
    if "status=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert "status=1" in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "no space left on the device" in proc.stderr
    left = set(proc.stdout.split("status=1", 1)[1].split()) - {".", ".."}
    assert left <= {"x.npy.journal"}, left


# ----------------------------------------------------------------------------- 17: journal lines

@pytest.mark.parametrize("line", ["[1, 2]", "null", '{"path": ["x"]}', '{"path": "x"}', '{"path": "x", "vector": "@@"}',
                                  '"text"', "3"])
def test_journal_lines_that_are_not_records(tmp_path, line, capsys, numpy_backend):
    path = tmp_path / "v.npy"
    out = VectorOutput(path)
    out.write("/x/0.jpg", _vec(0))
    out.close()
    with open(str(path) + ".journal", "a") as f:
        f.write(line + "\n")
    with pytest.raises(JournalError, match=r"v\.npy\.journal line 3: .* is not a vector record"):
        VectorOutput(path, resume=True)
    photo = tmp_path / "p.png"
    _photo(photo)
    assert cli.main(["embed", str(photo), "-o", str(path), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "v.npy.journal line 3" in err and "Traceback" not in err
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"path": "a", "top": []}\n' + line + "\n")
    if line in ('{"path": "x"}', '{"path": "x", "vector": "@@"}'):
        return  # a classify record needs no vector
    assert cli.main(["classify", str(photo), "--output", str(jl), "--resume", *ARGS]) == 2
    assert "c.jsonl line 2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 21: one writer

@pytest.mark.parametrize("kind", ["embed", "classify"])
def test_a_second_run_on_the_same_output_is_refused(tmp_path, capsys, kind, numpy_backend):
    photo = tmp_path / "p.png"
    _photo(photo)
    target = tmp_path / ("v.npy" if kind == "embed" else "c.jsonl")
    first = VectorOutput(target) if kind == "embed" else O.JsonLinesOutput(target)
    args = [kind, str(photo), "--output", str(target), *ARGS]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"being written by another fastalex run (pid {os.getpid()}" in err
    with pytest.raises(OutputBusyError):
        VectorOutput(target, resume=True) if kind == "embed" else O.JsonLinesOutput(target, resume=True)
    first.close()
    assert not os.path.exists(str(target) + ".lock")
    assert cli.main(args) == 0


def test_a_second_process_is_refused_while_the_first_writes(tmp_path):
    target = tmp_path / "v.npz"
    code = ("import sys, time; from fastalex.outputs import VectorOutput; o = VectorOutput(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=f"pid {p.pid}"):
            VectorOutput(target)
    finally:
        p.kill()
        p.wait()
    VectorOutput(target).finish()  # a killed writer's lock is gone with it


# ----------------------------------------------------------------------------- 16, 23: refused up front

def test_output_folders_are_refused_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "empty-home"))  # no weights: they are not reached
    photo = tmp_path / "p.png"
    _photo(photo)
    folder = tmp_path / "DIR.npy"
    folder.mkdir()
    (tmp_path / "DIR.png").mkdir()
    for args in (["embed", str(photo), "-o", str(folder)], ["show", "filters", "-o", str(tmp_path / "DIR.png")],
                 ["explain", str(photo), "-o", str(tmp_path / "DIR.png")],
                 ["show", "activations", str(photo), "-o", str(tmp_path / "DIR.png")],
                 ["classify", str(photo), "--output", str(folder)],
                 ["embed", str(photo), "-o", str(tmp_path / "missing" / "v.npy")]):
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is a directory" in err or "does not exist" in err), err
        assert "weights" not in err


def _wrote(path):
    """What show and explain print for a picture they wrote: the file, its pixels and size."""
    from PIL import Image
    with Image.open(path) as img:
        return f"wrote {path} ({img.width}x{img.height} pixels, {path.stat().st_size:,} bytes)"


def test_show_and_explain_say_what_they_wrote(tmp_path, capsys, numpy_backend):
    photo = tmp_path / "p.png"
    _photo(photo)
    assert cli.main(["show", "filters", "--random-weights", "-o", str(tmp_path / "f.png")]) == 0
    assert capsys.readouterr().out == _wrote(tmp_path / "f.png") + "\n"
    assert cli.main(["show", "activations", str(photo), "--random-weights", "--max-channels", "4",
                     "-o", str(tmp_path / "a.jpg")]) == 0
    out = capsys.readouterr().out
    assert out == _wrote(tmp_path / "a.jpg") + "\n" and " pixels, " in out and " bytes)" in out
    assert cli.main(["explain", str(photo), "--random-weights", "--stride", "112", "--patch", "112",
                     "-o", str(tmp_path / "e.png")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == _wrote(tmp_path / "e.png")


@pytest.mark.parametrize("kind", ["classify", "embed"])
def test_missing_inputs_are_a_usage_error_before_the_weights(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "empty-home"))
    photo = tmp_path / "p.png"
    _photo(photo)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["-o", str(tmp_path / "v.npy")] if kind == "embed" else []
    for paths in ([str(tmp_path / "missing")], [str(photo), str(tmp_path / "gone.jpg")]):
        assert cli.main([kind, *paths, *out]) == 2  # default weights, not cached: not reached
        err = capsys.readouterr().err
        assert err.startswith("fastalex: error: no such file or directory: ") and "weights" not in err, err
        assert paths[-1] in err
    assert cli.main([kind, str(empty), *out, "--random-weights"]) == 2  # an empty folder: the same status
    assert "no images found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 19, 20: sizes

@pytest.mark.parametrize("command", [["profile"], ["bench", "--backend", "numpy", "--peers", "none"]])
def test_a_batch_that_cannot_fit_is_refused_up_front(command, monkeypatch, capsys):
    from fastalex import profiling
    model = __import__("fastalex").alexnet("torchvision")
    per_image = profiling.forward_bytes(model, 1)
    assert per_image >= 4 * (3 * 224 * 224 + 64 * 55 * 55)  # at least the input and conv1's output
    assert profiling.forward_bytes(model, 10) == 10 * per_image
    monkeypatch.setattr(profiling, "available_memory", lambda: 50 * per_image)
    assert cli.main([*command, "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastalex: error: --batch-size 100000: a forward pass needs at least") and "below 50" in err
    assert err.count("\n") == 1
    monkeypatch.undo()
    have = profiling.available_memory()
    if have is None or have > profiling.forward_bytes(model, 100000):
        pytest.skip("this machine has the memory for 100000 images")
    assert cli.main([*command, "--batch-size", "100000"]) == 2  # the real estimate, the real machine


def test_empty_batches_give_empty_results(backend):
    import fastalex
    from support.fixture_specs import reduced_spec
    from fastalex.models import build
    for variant in ("torchvision", "original"):
        m = build(reduced_spec(variant), seed=1, backend=backend)
        x = np.zeros((0, *m.input_shape), np.float32)
        y = m(x)
        assert y.shape == (0, m.num_classes) and y.dtype == np.float32
        feats = m.extract(x, ["pool5", "fc7", "features.1", "logits"])
        full = m.extract(np.zeros((1, *m.input_shape), np.float32), ["pool5", "fc7", "features.1", "logits"])
        for name, value in feats.items():
            assert value.shape == (0, *full[name].shape[1:]) and value.dtype == np.float32, name
        probs, idx = m.predict(x, top=3)
        assert probs.shape == idx.shape == (0, 3) and np.issubdtype(idx.dtype, np.integer)
        probs, idx = m.predict(x, top=10**6)  # more than the classes: all of them, as for a real batch
        assert probs.shape == (0, m.num_classes)
    assert m.predict(np.zeros((2, *m.input_shape), np.float32), top=10**6)[0].shape == (2, m.num_classes)
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match=r"predict: top must be a positive int"):
            m.predict(np.zeros((1, *m.input_shape), np.float32), top=bad)
    with pytest.raises(ValueError, match=r"classify: top must be a positive int"):
        fastalex.classify([], model=m, top=0)
