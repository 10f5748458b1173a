"""The weights cache (issue 9): one naming rule, content checked against the published hash
whatever the URL is called, a digest checked on use, concurrent downloads, stale parts.
Servers here listen on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastalex
import fastalex.hub as W
from fastalex import cli
from fastalex.weights import CachedWeightsError, WeightsUnavailableError, load_weights, save_weights
from support.download import PAYLOAD, SHA, TINY, Server
from support.download import cache_files as _files, closed_port as _closed_port, expected_weights as _expected

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("FASTALEX_HOME", str(home))
    monkeypatch.delenv("FASTALEX_WEIGHTS_URL", raising=False)
    return home


@pytest.fixture
def tiny_is_imagenet(monkeypatch):
    """Make the small fixture stand in for the published ImageNet weights."""
    monkeypatch.setattr(W, "IMAGENET1K_V1", TINY)
    monkeypatch.setitem(W.PUBLISHED, "imagenet", TINY)


# ----------------------------------------------------------------------------- item 1

def test_a_npz_url_does_not_delete_its_own_result(server, isolated_cache, tmp_path):
    npz_bytes_path = save_weights(_expected(), tmp_path / "served.npz")
    body = npz_bytes_path.read_bytes()
    meta = W.PublishedWeights(name="N", url="unused", file_name="alexnet.npz",
                              hash_prefix=hashlib.sha256(body).hexdigest()[:8])
    path = meta.download(url=server.serve("alexnet.npz", body), progress=False)
    assert path == isolated_cache / "alexnet.npz" and path.is_file()
    got, want = load_weights(path), _expected()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert meta.cached() == path  # and it is found again, verified


# ----------------------------------------------------------------------------- item 5

@pytest.mark.parametrize("name", ["alexnet.pth", "alexnet.npz", "alexnet-owt-7be5be79.pth"])
def test_imagenet_from_a_mirror_serving_other_weights_is_refused(server, isolated_cache, monkeypatch, name):
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", server.serve(name))  # the tiny weights, not ImageNet's
    with pytest.raises(WeightsUnavailableError, match="7be5be79"):
        fastalex.alexnet(weights="imagenet")
    assert not any(n.endswith((".npz", ".pth", ".part")) for n in _files(isolated_cache))


def test_cli_weights_download_from_a_wrong_mirror_exits_2(server, isolated_cache, capsys):
    assert cli.main(["weights", "download", "--url", server.serve("alexnet.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "7be5be79" in err and "weights='" not in err
    assert not any(n.endswith((".npz", ".pth")) for n in _files(isolated_cache))


def test_a_damaged_cache_entry_is_caught_on_use_and_says_how_to_clear_it(server, isolated_cache, tmp_path):
    url = server.serve(TINY.file_name)
    path = TINY.download(url=url, progress=False)
    other = {k: v + 1 for k, v in _expected().items() if v.dtype.kind == "f"}
    save_weights(other, path)  # replaced later by other, perfectly readable weights
    with pytest.raises(CachedWeightsError, match="damaged") as info:
        TINY.download(url=url, progress=False)
    assert str(path) in str(info.value) and "--force" in str(info.value) and "rm " in str(info.value)
    assert isinstance(info.value, fastalex.WeightsFileError)
    assert TINY.download(url=url, progress=False, force=True) == path  # --force repairs it
    assert TINY.cached() == path
    (isolated_cache / (TINY.stem + ".npz.sha256")).unlink()  # an entry from before digests existed
    assert TINY.cached() is None  # unverifiable: not trusted ...
    assert TINY.download(url=url, progress=False) == path == TINY.cached()  # ... but replaced
    assert len(server.requests) == 3


def test_the_official_file_copied_into_the_cache_by_hand_is_found(isolated_cache, tiny_is_imagenet,
                                                                   monkeypatch, capsys):
    assert W.IMAGENET1K_V1.paths()["raw"].name == TINY.file_name
    assert fastalex.hub.PUBLISHED["imagenet1k_v1"].paths()["raw"].name == "alexnet-owt-7be5be79.pth"
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", f"http://127.0.0.1:{_closed_port()}/x.pth")  # offline
    isolated_cache.mkdir()
    (isolated_cache / "someone-elses.npz").write_bytes(b"x")  # not the ImageNet entry
    assert cli.main(["weights", "path"]) == 0
    out = capsys.readouterr().out
    assert "none (run `fastalex weights download`)" in out and "someone-elses" not in out
    (isolated_cache / TINY.file_name).write_bytes(PAYLOAD)  # dropped in by hand
    assert cli.main(["weights", "path"]) == 0
    assert "converted on first use" in capsys.readouterr().out
    state = W.resolve_weights("imagenet")  # found without the network
    assert sorted(state) == sorted(_expected())
    assert cli.main(["weights", "path"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and TINY.stem + ".npz" in out  # `weights path` agrees with classify


def test_published_weights_carry_their_facts():
    meta = fastalex.IMAGENET1K_V1
    assert meta.hash_prefix == "7be5be79" and meta.variant == "torchvision" and meta.num_classes == 1000
    assert meta.url.endswith("/alexnet-owt-7be5be79.pth")
    assert meta.preprocess["crop"] == 224 and meta.transforms == meta.preprocess
    assert len(meta.categories) == 1000 and meta.categories[281] == "tabby"
    assert W.published_weights("IMAGENET1K_V1") is meta and W.published_weights("x.pth") is None


# ----------------------------------------------------------------------------- item 11

class SlowServer:
    """Serves PAYLOAD in small pieces with pauses (so downloads overlap), or stalls halfway."""

    def __init__(self, pause=0.02, stall=False):
        server = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                step = max(1, len(PAYLOAD) // 20)
                try:
                    for i in range(0, len(PAYLOAD), step):
                        if stall and i >= len(PAYLOAD) // 2:
                            time.sleep(30)
                            return
                        self.wfile.write(PAYLOAD[i:i + step])
                        self.wfile.flush()
                        time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.pth"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


DOWNLOAD = textwrap.dedent("""
    import sys
    import fastalex.hub as W
    meta = W.PublishedWeights(name="TINY", url="unused", file_name=sys.argv[2], hash_prefix=sys.argv[3])
    print(meta.download(url=sys.argv[1], progress=False))
""")


def _spawn(url, isolated_cache):
    env = {**os.environ, "FASTALEX_HOME": str(isolated_cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", DOWNLOAD, url, TINY.file_name, SHA[:8]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_downloading_at_once_both_end_with_a_good_cache(isolated_cache):
    server = SlowServer()
    try:
        procs = [_spawn(server.url, isolated_cache) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        server.close()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.strip() == str(isolated_cache / (TINY.stem + ".npz"))
    assert server.requests == 1  # the second waited for the first, then found the cache
    assert _files(isolated_cache) == [TINY.stem + ".npz", TINY.stem + ".npz.sha256"]
    assert TINY.cached() is not None


def test_a_download_killed_by_sigterm_leaves_a_part_that_the_next_one_removes(isolated_cache):
    stalled = SlowServer(stall=True)
    try:
        proc = _spawn(stalled.url, isolated_cache)
        deadline = time.monotonic() + 60
        while not list(isolated_cache.glob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(isolated_cache.glob(".*.part")), "the download never started"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        stalled.close()
    assert proc.returncode == -signal.SIGTERM
    assert list(isolated_cache.glob(".*.part"))  # the killed process could not clean up
    server = SlowServer(pause=0)
    try:
        TINY.download(url=server.url, progress=False)
    finally:
        server.close()
    assert _files(isolated_cache) == [TINY.stem + ".npz", TINY.stem + ".npz.sha256"]  # no .part


# ----------------------------------------------------------------------------- item 16

@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    return save_weights(fastalex.alexnet("torchvision", num_classes=7, seed=1), d / "seven.npz")


def test_alexnet_detects_the_variant_and_classes_from_the_file(seven):
    model = fastalex.alexnet(weights=seven, backend="numpy")
    assert model.variant == "torchvision" and model.num_classes == 7
    assert fastalex.detect_variant(load_weights(seven)) == ("torchvision", 7)
    assert fastalex.detect_variant(fastalex.alexnet("original", num_classes=3).state_dict()) == ("original", 3)
    assert fastalex.detect_variant({"fc.weight": np.zeros((2, 2), np.float32)}) is None


def test_naming_the_wrong_variant_says_which_one_fits(seven):
    with pytest.raises(fastalex.WeightsMismatchError, match="fits the 'torchvision' AlexNet") as info:
        fastalex.alexnet("original", weights=seven)
    assert info.value.fits == ("torchvision", 7) and "seven.npz" in str(info.value)
    with pytest.raises(ValueError, match="has 7 classes, not 5"):
        fastalex.alexnet(num_classes=5, weights=seven)
    with pytest.raises(fastalex.WeightsMismatchError, match="does not fit any AlexNet variant"):
        fastalex.alexnet(weights={"fc.weight": np.zeros((2, 2), np.float32)})


def test_cli_says_which_variant_fits(seven, capsys, tmp_path):
    from PIL import Image
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    assert cli.main(["classify", str(img), "--weights", str(seven), "--variant", "original",
                     "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "fits the 'torchvision' AlexNet (7 classes), not the 'original' one" in err and err.count("\n") == 1
    part = save_weights({"features.0.weight": np.zeros((64, 3, 11, 11), np.float32)}, tmp_path / "part.npz")
    assert cli.main(["classify", str(img), "--weights", str(part), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "does not fit any AlexNet variant (against the torchvision AlexNet" in err and "missing keys" in err
