"""classify/embed on a Dask LocalCluster (127.0.0.1, worker processes): same results as one
process, the model built once per worker, every path exactly once when a worker dies, and the
CLI's --workers with --resume. Small reduced-width models on the numpy backend keep it fast;
skipped without dask.distributed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

import fastalex  # noqa: E402
from fastalex.classify import iter_classify  # noqa: E402
from fastalex.distributed import ModelLoadError, local_cluster, loads, recipe_of  # noqa: E402
from fastalex.embedding import iter_embed  # noqa: E402
from fastalex.models import build  # noqa: E402
from fastalex.outputs import read_vectors, scan_jsonl  # noqa: E402

from support import assert_agree, assert_same_results  # noqa: E402
from support.fixture_specs import reduced_spec  # noqa: E402

N = 24


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (50 + i, 70, 3), dtype=np.uint8)).save(root / f"p{i:02d}.jpg")
    (root / "broken.jpg").write_text("not a jpeg")
    return root


@pytest.fixture(scope="module")
def model():
    return build(reduced_spec("torchvision"), seed=5, backend="numpy")


@pytest.fixture(scope="module")
def client():
    with local_cluster(2, threads_per_worker=1) as c:
        yield c


def _worker_loads(client):
    return client.run(loads)


def test_classify_and_embed_on_workers_equal_one_process(photos, model, client):
    local = fastalex.classify(photos, model=model, top=3, batch_size=4)
    remote = fastalex.classify(photos, model=model, top=3, batch_size=4, client=client)
    assert_same_results([r.to_dict() for r in remote], [r.to_dict() for r in local])
    assert sum(not r.ok for r in remote) == 1

    files = sorted(str(p) for p in photos.glob("p*.jpg"))
    x = fastalex.load_images(files, variant=model)
    expected = model.extract(x, "fc7")["fc7"]
    got = fastalex.embed(files, model=model, layer="fc7", batch_size=5, client=client)
    assert [e.path for e in got] == files
    assert_agree(np.stack([e.vector for e in got]), expected, "fc7 on workers")


def test_model_is_built_once_per_worker_process(photos, model, client):
    for _ in range(2):
        list(iter_classify(photos, model=model, batch_size=2, client=client))
    counts = _worker_loads(client)
    assert len(counts) == 2
    # random weights (key "None"): built once in each worker that ran a batch, never again
    assert all(c in ({"None": 1}, {}) for c in counts.values()) and {"None": 1} in counts.values(), counts


def test_weights_from_a_file_are_read_by_the_workers(photos, model, client, tmp_path):
    path = tmp_path / "small.npz"
    fastalex.save_weights(model, path)
    recipe = {"spec": model.spec, "weights": str(path), "backend": "numpy"}
    remote = list(iter_embed(photos, model=recipe, layer="pool5", batch_size=8, client=client))
    local = list(iter_embed(photos, model=model, layer="pool5", batch_size=8))
    for a, b in zip(remote, local):
        assert a.path == b.path and a.error == b.error
        if a.ok:
            assert_agree(a.vector, b.vector, f"pool5 of {a.path} on a worker")  # BLAS threads differ
    assert all(c.get(str(path), 1) == 1 for c in _worker_loads(client).values())
    with pytest.raises(ModelLoadError, match="cannot load the model on worker"):
        list(iter_embed(photos, model={**recipe, "weights": str(tmp_path / "gone.npz")}, client=client))


def test_local_cluster_threads_and_numba_threads_match(client):
    assert list(client.nthreads().values()) == [1, 1]
    env = client.run(lambda: {k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MALLOC_TRIM_THRESHOLD_")})
    assert all(e == {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None}
               for e in env.values()), env
    assert all(client.run(lambda: __import__("signal").getsignal(__import__("signal").SIGINT)
                          == __import__("signal").SIG_IGN).values())  # Ctrl-C is the client's


def test_the_model_cache_reads_a_replaced_weights_file_again(tmp_path, model):
    from fastalex import distributed as D
    path = tmp_path / "w.npz"
    fastalex.save_weights(model, path)
    recipe = {"spec": model.spec, "weights": str(path), "seed": None, "backend": "numpy"}
    first = D.load_model(recipe)
    assert D.load_model(recipe) is first
    other = build(model.spec, seed=9)
    fastalex.save_weights(other, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    second = D.load_model(recipe)
    assert second is not first
    np.testing.assert_array_equal(second.state_dict()["classifier.6.weight"], other.state_dict()["classifier.6.weight"])


def test_preprocessing_travels_with_the_recipe(photos, model, client):
    from fastalex.images import preprocess_preset
    caffe = build(model.spec, seed=5, backend="numpy")
    caffe.preprocess = preprocess_preset("caffe", crop=224)
    files = sorted(str(p) for p in photos.glob("p*.jpg"))[:4]
    local = np.stack([e.vector for e in fastalex.embed(files, model=caffe, layer="fc6")])
    remote = np.stack([e.vector for e in fastalex.embed(files, model=caffe, layer="fc6", client=client)])
    assert_agree(remote, local, "caffe preprocessing on workers")
    default = np.stack([e.vector for e in fastalex.embed(files, model=model, layer="fc6")])
    assert not np.allclose(default, local)  # the preset made a difference


def test_dense_weight_dtype_travels_with_the_recipe(photos, model, client):
    low = build(model.spec, seed=5, backend="numpy").set_weight_dtype("bfloat16")
    assert recipe_of(low)["weight_dtype"] == "bfloat16"
    files = sorted(str(p) for p in photos.glob("p*.jpg"))[:4]
    local = [e.vector for e in fastalex.embed(files, model=low, layer="fc7")]
    remote = [e.vector for e in fastalex.embed(files, model=low, layer="fc7", client=client)]
    assert_agree(np.stack(remote), np.stack(local), "bfloat16 dense weights on workers")


def test_recipes_and_inputs_the_workers_cannot_use(model, client):
    assert recipe_of(model)["spec"] is model.spec and recipe_of(model)["weights"] is None
    loaded = build(reduced_spec("torchvision"), seed=None)
    loaded.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="weights were given as arrays"):
        recipe_of(loaded)
    assert recipe_of(None)["weights"] == "imagenet"
    with pytest.raises(TypeError, match="paths or URLs"):
        fastalex.classify([np.zeros((30, 30, 3), np.uint8)], model=model, client=client)


def test_a_killed_worker_loses_nothing_and_repeats_nothing(photos, model):
    """One worker process is SIGKILLed while batches are in flight; its batches (running, and
    finished but not yet collected) are run again by Dask, and every path comes back once."""
    local = [r.to_dict() for r in fastalex.classify(photos, model=model, top=2, batch_size=1)]
    with local_cluster(2, threads_per_worker=1) as c:
        results = iter_classify(photos, model=model, top=2, batch_size=1, client=c)
        got = [next(results).to_dict()]
        pids = c.run(os.getpid)
        os.kill(sorted(pids.values())[0], signal.SIGKILL)
        got += [r.to_dict() for r in results]
        assert sorted(pids.values())[0] not in c.run(os.getpid).values()
    assert_same_results(got, local)  # every path exactly once, in order, with the same answers


def test_cli_scheduler_address_runs_on_that_cluster(photos, client, capsys, monkeypatch):
    """``--scheduler ADDRESS`` (in-process, on the module's cluster) prints what one process prints."""
    from fastalex import backends, cli
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    monkeypatch.setattr(backends, "_default", None)
    files = sorted(str(p) for p in photos.glob("p0*.jpg"))[:3]
    args = ["classify", *files, "--random-weights", "--json", "--top", "2"]
    assert cli.main(args) == 0
    want = capsys.readouterr().out
    assert cli.main(args + ["--scheduler", client.scheduler.address]) == 0
    got = capsys.readouterr().out
    assert want.count("\n") == 3 and got.count("\n") == 3
    assert_same_results([json.loads(line) for line in got.splitlines()],
                        [json.loads(line) for line in want.splitlines()])
    monkeypatch.setattr(sys.modules["fastalex.distributed"], "CONNECT_TIMEOUT", 1)
    assert cli.main(args + ["--scheduler", "tcp://127.0.0.1:1"]) == 2  # nobody there: a usage error
    assert "fastalex: error: cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI, in subprocesses

def _cli(*args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "fastalex", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=240, **kwargs)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, FASTALEX_BACKEND="numpy", FASTALEX_HOME=str(tmp_path_factory.mktemp("home")))
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastalex.__file__)))
    e["PYTHONPATH"] = os.pathsep.join([root, e.get("PYTHONPATH", "")])
    return e


def _records(journal):
    """The vector records in an embed journal (not its header)."""
    return len([r for r in scan_jsonl(journal) if "path" in r])


def _interrupt(args, env, journal, records, sig):
    """Run ``fastalex *args`` until ``journal`` holds ``records`` records, then send ``sig`` to
    its whole process group (the client and its workers, as Ctrl-C in a terminal does)."""
    p = subprocess.Popen([sys.executable, "-m", "fastalex", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and p.poll() is None:
            if os.path.exists(journal) and _records(journal) >= records:
                break
            time.sleep(0.02)
        os.killpg(p.pid, sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, err


def test_cli_workers_and_resume_after_interruptions(tmp_path, env):
    """``embed --workers 2`` killed (SIGKILL: no clean-up at all) part-way, resumed and
    interrupted again with SIGINT (Ctrl-C: exit 130), then resumed to the end: the result
    equals a one-process run. ``classify --workers 2`` prints what one process prints.
    (The full-size AlexNet with random weights: a few small images only.)"""
    n = 32  # enough that the run is still going when the signal arrives, even on an idle machine
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 50 + i, 3), dtype=np.uint8)).save(photos / f"q{i:02d}.png")
    (photos / "broken.jpg").write_text("not a jpeg")
    common = ["--random-weights", "--batch-size", "1", "--layer", "fc6"]
    one = tmp_path / "one.npy"
    proc = _cli("embed", photos, "-o", one, *common, env=env)
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr, proc.stderr

    out = tmp_path / "dist.npy"
    journal = str(out) + ".journal"
    run = ["embed", photos, "-o", out, *common, "--workers", "2"]
    _interrupt(run, env, journal, 2, signal.SIGKILL)
    first = _records(journal)
    assert not out.exists() and 2 <= first < n
    status, err = _interrupt(run + ["--resume"], env, journal, first + 2, signal.SIGINT)
    assert status == 130 and "rerun with --resume" in err and "Traceback" not in err, err
    second = _records(journal)
    assert not out.exists() and first < second < n
    proc = _cli(*run, "--resume", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{second} of {n + 1} inputs are already in" in proc.stderr
    (p1, v1), (p2, v2) = read_vectors(one), read_vectors(out)
    assert p1 == p2 and len(p1) == n and len(set(p2)) == n and not os.path.exists(journal)
    assert_agree(np.concatenate(list(v2)), np.concatenate(list(v1)), "resumed on workers")

    proc = _cli("classify", photos, "--json", "--random-weights", "--top", "3", env=env)
    proc2 = _cli("classify", photos, "--json", "--random-weights", "--top", "3", "--workers", "2", env=env)
    assert proc2.returncode == proc.returncode == 1, proc2.stderr
    assert proc2.stdout == proc.stdout and proc.stdout.count("\n") == n + 1


def test_cli_local_cluster_shows_only_critical_worker_logs(monkeypatch):
    """``--workers N``: the workers' logs below CRITICAL stay quiet (the command reports failed
    images itself; Dask's teardown can log an ERROR with a traceback for a heartbeat cut off
    by the shutdown, and the command never prints a traceback)."""
    import argparse
    import logging

    import fastalex.distributed as D
    from fastalex.cli import run

    seen = {}
    monkeypatch.setattr(D, "local_cluster", lambda workers, **kwargs: seen.update(workers=workers, **kwargs))
    run._cluster(argparse.Namespace(workers=2, scheduler=None))
    assert seen == {"workers": 2, "silence_logs": logging.CRITICAL}
