"""Downloading published weights: a local HTTP server on 127.0.0.1 stands in for
download.pytorch.org. Nothing here touches any other address."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import fastalex.hub as W
from fastalex.hub import WeightsUnavailableError, cache_dir, download_imagenet, resolve_weights
from fastalex.weights import load_weights
from support.download import GOOD_NAME, PAYLOAD, SHA, TINY, Server
from support.download import cache_files as _files, closed_port as _closed_port, expected_weights as _expected


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no mirror from the environment."""
    home = tmp_path / "cache"
    monkeypatch.setenv("FASTALEX_HOME", str(home))
    monkeypatch.delenv("FASTALEX_WEIGHTS_URL", raising=False)
    return home


# ----------------------------------------------------------------------------- the happy path

def test_download_verifies_converts_and_caches(server, isolated_cache):
    url = server.serve(GOOD_NAME)
    path = TINY.download(url=url, progress=False)
    assert path == isolated_cache / GOOD_NAME.replace(".pth", ".npz")
    # the .pth is converted then removed; the digest is kept next to the .npz; no .part
    assert _files(isolated_cache) == [path.name, path.name + ".sha256"]
    got, want = load_weights(path), _expected()
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert len(server.requests) == 1

    server.close()  # the second call must not need the network
    assert TINY.download(url=url, progress=False) == path
    assert len(server.requests) == 1


def test_url_from_the_environment_and_resolve_weights(server, monkeypatch, isolated_cache):
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", server.serve("anything.pth"))
    state = resolve_weights(TINY, variant="torchvision")
    assert sorted(state) == sorted(_expected())
    assert (isolated_cache / GOOD_NAME.replace(".pth", ".npz")).is_file()


def test_force_downloads_again(server):
    url = server.serve(GOOD_NAME)
    TINY.download(url=url, progress=False)
    TINY.download(url=url, progress=False, force=True)
    assert len(server.requests) == 2


def test_any_url_name_is_verified_and_must_be_weights(server, isolated_cache):
    path = TINY.download(url=server.serve("mirror-copy.pth"), progress=False)
    assert path.name == GOOD_NAME.replace(".pth", ".npz") and sorted(load_weights(path)) == sorted(_expected())
    garbage = b"<html>not here</html>"
    other = W.PublishedWeights(name="G", url="x", file_name="garbage.pth",
                               hash_prefix=hashlib.sha256(garbage).hexdigest()[:8])
    with pytest.raises(WeightsUnavailableError, match="not usable weights"):
        other.download(url=server.serve("garbage.pth", garbage), progress=False)
    assert "garbage.pth" not in _files(isolated_cache) and "garbage.npz" not in _files(isolated_cache)


def test_file_url(tmp_path, isolated_cache):
    source = tmp_path / GOOD_NAME
    source.write_bytes(PAYLOAD)
    path = TINY.download(url=source.as_uri(), progress=False)
    assert path.parent == isolated_cache and path.suffix == ".npz"


def test_progress_bar_goes_to_stderr(server, capfd):
    TINY.download(url=server.serve(GOOD_NAME), progress=True)
    out, err = capfd.readouterr()
    assert out == "" and GOOD_NAME in err and "100%" in err


def test_no_progress_bar_when_stderr_is_not_a_terminal(server, capfd):
    TINY.download(url=server.serve(GOOD_NAME))  # progress=None; pytest's stderr is no TTY
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_default_url(monkeypatch, isolated_cache):
    seen = []

    def fake_fetch(url, dest, progress, expected):  # no network: just record and provide the file
        seen.append((url, dest.name, expected))
        dest.write_bytes(PAYLOAD)

    monkeypatch.setattr(W, "_fetch", fake_fetch)
    path = download_imagenet(progress=False)
    assert seen == [(W.IMAGENET_URL, "alexnet-owt-7be5be79.pth", "7be5be79")]
    assert path == isolated_cache / "alexnet-owt-7be5be79.npz"


def test_hash_regex_like_torch_hub():
    assert W._hash_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert W._hash_prefix(GOOD_NAME) == SHA[:8]
    assert W._hash_prefix("alexnet.pth") is None
    assert W._hash_prefix("my-weights.pth") is None


# ----------------------------------------------------------------------------- failures

def test_hash_mismatch_leaves_nothing(server, isolated_cache):
    other = PAYLOAD + b"\0"
    with pytest.raises(WeightsUnavailableError, match="SHA-256") as info:
        TINY.download(url=server.serve(GOOD_NAME, other), progress=False)
    assert SHA[:8] in str(info.value) and hashlib.sha256(other).hexdigest() in str(info.value)
    assert _files(isolated_cache) == []


@pytest.mark.parametrize("behaviour", ["short", "abort"])
@pytest.mark.parametrize("name", [GOOD_NAME, "unhashed.pth"])
def test_interrupted_download_leaves_nothing(server, isolated_cache, behaviour, name):
    with pytest.raises(WeightsUnavailableError) as info:
        TINY.download(url=server.serve(name, behaviour=behaviour), progress=False)
    assert "interrupted" in str(info.value) and "FASTALEX_WEIGHTS_URL" in str(info.value)
    assert _files(isolated_cache) == []


def test_leftover_download_is_reused_only_if_it_checks_out(server, isolated_cache):
    url = server.serve(GOOD_NAME)
    isolated_cache.mkdir()
    (isolated_cache / GOOD_NAME).write_bytes(b"tampered")  # wrong hash: downloaded again
    TINY.download(url=url, progress=False)
    assert len(server.requests) == 1
    (isolated_cache / GOOD_NAME.replace(".pth", ".npz")).unlink()
    (isolated_cache / GOOD_NAME).write_bytes(PAYLOAD)  # a verified leftover (conversion failed)
    TINY.download(url=url, progress=False)
    assert len(server.requests) == 1


def test_truncated_without_content_length_is_caught_by_the_hash(server, isolated_cache):
    with pytest.raises(WeightsUnavailableError, match="SHA-256"):
        TINY.download(url=server.serve(GOOD_NAME, behaviour="no-length"), progress=False)
    assert _files(isolated_cache) == []


def test_http_error(server, isolated_cache):
    with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
        TINY.download(url=server.url("missing-0123abcd.pth"), progress=False)
    assert _files(isolated_cache) == []


def test_offline_error_says_what_to_do(isolated_cache):
    url = f"http://127.0.0.1:{_closed_port()}/{GOOD_NAME}"
    with pytest.raises(WeightsUnavailableError) as info:
        TINY.download(url=url, progress=False)
    msg = str(info.value)
    assert url in msg and "offline" in msg
    assert "weights=PATH" in msg and "--weights FILE" in msg and "fastalex weights download --url file://" in msg
    assert "FASTALEX_WEIGHTS_URL" in msg
    assert _files(isolated_cache) == []
    assert isinstance(info.value, RuntimeError)


def test_offline_through_alexnet(monkeypatch):
    from fastalex import alexnet
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", f"http://127.0.0.1:{_closed_port()}/{GOOD_NAME}")
    with pytest.raises(WeightsUnavailableError, match="FASTALEX_WEIGHTS_URL"):
        alexnet("torchvision", weights="imagenet")


def test_unsupported_url_scheme():
    with pytest.raises(WeightsUnavailableError, match="only http"):
        download_imagenet(url="ftp://127.0.0.1/x.pth", progress=False)


def test_unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FASTALEX_HOME", str(blocker / "cache"))
    with pytest.raises(WeightsUnavailableError, match="FASTALEX_HOME"):
        download_imagenet(url="http://127.0.0.1:9/x.pth", progress=False)


# ----------------------------------------------------------------------------- cache_dir

def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("FASTALEX_HOME")
    assert cache_dir() == tmp_path / "xdg" / "fastalex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "fastalex"
    assert not (tmp_path / "user").exists()  # asking does not create it
