"""Bounded inputs (issue 19, items 8-11, 13, 18, 22, 24): image and weights URLs have a size cap
and an overall deadline, ``file://`` URLs and labels follow the regular-file rule, a scheduler
that does not speak Dask is given up on, and the build configuration is current.

Every server here listens on 127.0.0.1 only. The limits are lowered for the tests (they are
module attributes of :mod:`fastalex._files`), so each case ends in a few seconds. A case
that would hang without its fix runs under :func:`finishes` (a thread joined with a bound),
so a regression fails instead of hanging the suite."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex import _files, cli
from fastalex import hub as W
from fastalex.images import ImageError, load_image
from fastalex.labels import LabelsError, load_labels
from fastalex.models import build
from support.fixture_specs import reduced_spec

ROOT = Path(__file__).resolve().parents[1]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")

#: an endless body stops here anyway (so a regression reads this much, then fails its
#: assertion, instead of filling the machine's memory)
SAFETY_VALVE = 64 << 20


def finishes(fn, bound=60):
    """``fn()``'s result; fails if it has not returned within ``bound`` seconds (a hang)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still running after {bound} s (no deadline?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def png_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Hostile:
    """An HTTP server on 127.0.0.1: ``/endless`` (no length, zeros forever), ``/huge`` (announces
    a terabyte), ``/drip`` (headers, then one byte a second), ``/drip-headers`` (the status line
    a byte at a time), ``/ok/NAME`` (``files[NAME]``)."""

    def __init__(self):
        self.files = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    self._serve()
                except OSError:  # the client hung up: expected
                    pass

            def _serve(self):
                route = "/" + self.path.split("/")[1]  # /endless/w.pth is /endless
                if route == "/drip-headers":
                    for byte in b"HTTP/1.1 200 OK\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1)
                    return
                if self.path.startswith("/ok/"):
                    body = server.files[self.path[4:]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                if route == "/huge":
                    self.send_header("Content-Length", str(10 ** 12))
                self.end_headers()
                if route in ("/endless", "/huge"):
                    block = b"\0" * 65536
                    for _ in range(SAFETY_VALVE // len(block)):
                        self.wfile.write(block)
                elif route == "/drip":
                    for _ in range(120):
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                        time.sleep(1)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    server = Hostile()
    yield server
    server.close()


@pytest.fixture
def limits(monkeypatch):
    """Small limits and short deadlines, for every reader."""
    monkeypatch.setattr(_files, "MAX_IMAGE_BYTES", 1 << 20)
    monkeypatch.setattr(_files, "MAX_WEIGHTS_BYTES", 1 << 20)
    monkeypatch.setattr(_files, "IMAGE_DEADLINE", 1.5)
    monkeypatch.setattr(_files, "WEIGHTS_DEADLINE", 1.5)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("FASTALEX_HOME", str(home))
    monkeypatch.delenv("FASTALEX_WEIGHTS_URL", raising=False)
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    return home


@pytest.fixture(scope="module")
def small():
    return build(reduced_spec("torchvision"), seed=3, backend="numpy")


def leftovers(directory: Path):
    """Files and folders under ``directory`` but the lock files downloads take turns with."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.name.endswith(".lock"))


# ----------------------------------------------------------------------------- the one reader

def test_is_url_is_one_helper():
    from fastalex._files import is_url
    assert is_url is _files.is_url
    assert is_url("https://x/a.jpg") and is_url("file:///tmp/a.jpg") and is_url("s3://b/k")
    assert not is_url("/tmp/a.jpg") and not is_url("a:b.jpg") and not is_url(Path("x"))


def test_file_urls_name_local_paths():
    assert _files.local_path("file:///tmp/a%20b.jpg") == "/tmp/a b.jpg"
    assert _files.local_path("file://localhost/tmp/x") == "/tmp/x"
    with pytest.raises(_files.FileProblem, match="names the host 'elsewhere'"):
        _files.local_path("file://elsewhere/tmp/x")


def test_a_file_over_the_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 2000)
    assert _files.read_bounded(path, 2000) == b"x" * 2000
    with pytest.raises(_files.TooLarge, match=r"2.0 KiB \(2,000 bytes\), more than the limit of 1000 bytes"):
        _files.read_bounded(path, 1000)
    with pytest.raises(_files.TooLarge):
        _files.read_bounded(f"file://{path}", 1000)


def test_a_download_over_the_cap_stops_there(hostile):
    with pytest.raises(_files.TooLarge, match="more than the limit of 1 MiB arrived"):
        finishes(lambda: _files.read_bounded(hostile.url("/endless"), 1 << 20, 30))
    with pytest.raises(_files.TooLarge, match=r"the server announces 931.3 GiB \(1,000,000,000,000 bytes\)"):
        finishes(lambda: _files.read_bounded(hostile.url("/huge"), 1 << 20, 30))


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_a_download_has_one_deadline_not_one_per_read(hostile, path):
    t0 = time.monotonic()
    with pytest.raises(_files.DeadlineExceeded, match="took longer than the 1.5 s"):
        finishes(lambda: _files.read_bounded(hostile.url(path), 1 << 20, 1.5))
    assert time.monotonic() - t0 < 30  # bounded by the deadline, not by the drip's 120 s


# ----------------------------------------------------------------------------- item 8: image URLs

def test_image_urls_are_capped_and_have_a_deadline(hostile, limits, small):
    hostile.files["a.png"] = png_bytes()
    urls = [hostile.url(p) for p in ("/endless", "/huge", "/drip", "/ok/a.png")]
    results = finishes(lambda: fastalex.classify(urls, model=small, top=1))
    errors = [r.error for r in results]
    assert "is too large" in errors[0] and "1 MiB" in errors[0]
    assert "is too large" in errors[1]
    assert "took longer than the 1.5 s a download may take in all" in errors[2]
    assert errors[3] is None  # a normal image still arrives
    local = fastalex.classify([Image.open(io.BytesIO(hostile.files["a.png"]))], model=small, top=1)
    assert results[3].indices == local[0].indices


def test_a_local_image_over_the_cap_is_refused(tmp_path, limits, monkeypatch):
    path = tmp_path / "big.bmp"
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(path)  # 1.03 MiB
    with pytest.raises(ImageError, match=r"too large: 1.0 MiB \(1,080,054 bytes\), more than the limit of 1 MiB"):
        load_image(path)
    monkeypatch.setattr(_files, "MAX_IMAGE_BYTES", 2 << 20)
    assert load_image(path).shape == (3, 224, 224)


# ----------------------------------------------------------------------------- item 9: file:// URLs

@needs_fifo
def test_file_urls_follow_the_regular_file_rule(tmp_path, small):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    image = tmp_path / "a b.png"
    image.write_bytes(png_bytes())
    urls = [f"file://{fifo}", f"file://{tmp_path}/a%20b.png", f"file://{tmp_path}/missing.png"]
    if os.path.exists("/dev/zero"):
        urls.append("file:///dev/zero")
    results = finishes(lambda: fastalex.classify(urls, model=small, top=1))
    assert "FIFO (named pipe), not a regular file" in results[0].error
    assert results[1].error is None
    assert results[1].indices == fastalex.classify([image], model=small, top=1)[0].indices
    assert results[2].error == "no such file"
    if len(urls) > 3:
        assert "character device, not a regular file" in results[3].error


# ----------------------------------------------------------------------------- item 10: weights

def _image(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    return str(path)


@needs_fifo
@needs_dev_zero
def test_weights_from_special_files_are_refused_at_once(tmp_path, capsys, isolated_cache):
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    img = _image(tmp_path)
    for weights, what in ((f"file://{fifo}", "FIFO"), ("file:///dev/zero", "character device"),
                          (str(fifo), "FIFO"), ("/dev/zero", "character device")):
        assert finishes(lambda: cli.main(["classify", img, "--weights", weights])) == 2, weights
        err = capsys.readouterr().err
        assert what in err and "Traceback" not in err and err.count("\n") == 1, err
    assert leftovers(isolated_cache) == []


def test_weights_downloads_are_capped_and_leave_nothing(hostile, limits, tmp_path, capsys, isolated_cache):
    img = _image(tmp_path)
    for path, what in (("/endless", "is too large"), ("/huge", "is too large"), ("/drip", "took longer than the 1.5 s")):
        status = finishes(lambda: cli.main(["classify", img, "--weights", hostile.url(path) + "/w.pth"]))
        err = capsys.readouterr().err
        assert status == 2 and what in err and "partial download was deleted" in err, err
        assert leftovers(isolated_cache) == [], path
    # the published weights' download too
    tiny = W.PublishedWeights(name="T", url=hostile.url("/endless"), file_name="t-0123abcd.pth", hash_prefix="0123abcd")
    with pytest.raises(W.WeightsUnavailableError, match="is too large"):
        finishes(lambda: tiny.download())
    assert leftovers(isolated_cache) == []


def test_a_weights_file_over_the_cap_is_refused(tmp_path, monkeypatch):
    model = build(reduced_spec("torchvision"), seed=1, backend="numpy")
    path = fastalex.save_weights(model, tmp_path / "w.npz")
    assert W.load_weights(path)
    monkeypatch.setattr(_files, "MAX_WEIGHTS_BYTES", path.stat().st_size - 1)
    with pytest.raises(W.WeightsFileError, match="is too large: .* more than the limit of"):
        W.load_weights(path)
    with pytest.raises(W.WeightsUnavailableError, match="is too large"):
        fastalex.alexnet("torchvision", weights=f"file://{path}")


# ----------------------------------------------------------------------------- item 11: labels

@needs_fifo
@needs_dev_zero
def test_labels_from_special_files_are_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    img = _image(tmp_path)
    for labels, what in ((str(fifo), "is a FIFO (named pipe), not a regular file"),
                         ("/dev/zero", "is a character device, not a regular file")):
        status = finishes(lambda: cli.main(["classify", img, "--random-weights", "--labels", labels]))
        err = capsys.readouterr().err
        assert status == 2 and f"fastalex: error: labels file {labels} {what}" in err and "Traceback" not in err, err


def test_a_labels_file_over_the_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n")
    assert load_labels(f"file://{path}") == ("cat", "dog")
    monkeypatch.setattr(_files, "MAX_LABELS_BYTES", 5)
    with pytest.raises(LabelsError, match="is too large: 8 bytes, more than the limit of 5 bytes"):
        load_labels(path)
    with pytest.raises(LabelsError, match="must be local"):
        load_labels("https://127.0.0.1:9/labels.txt")


# ----------------------------------------------------------------------------- items 13, 18: --scheduler

@pytest.fixture
def silent_port():
    """A TCP port on 127.0.0.1 that accepts connections and never says anything."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_scheduler_that_does_not_speak_dask_is_given_up_on(silent_port, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    import fastalex.distributed as D
    monkeypatch.setattr(D, "CONNECT_TIMEOUT", 1)
    address = f"tcp://127.0.0.1:{silent_port}"
    status = finishes(lambda: cli.main(["classify", _image(tmp_path), "--random-weights", "--scheduler", address]))
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"fastalex: error: no Dask scheduler answered at {address} within 1 s" in err and "Traceback" not in err


@pytest.mark.parametrize("address, what", [("garbage", "'garbage' is not a Dask scheduler address"),
                                           ("", "the scheduler address is empty"),
                                           ("   ", "the scheduler address is empty"),
                                           ("foo://x", "'foo://x' is not a Dask scheduler address")])
def test_a_bad_scheduler_address_is_a_usage_error(address, what, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from fastalex.cli import run as C  # where classify finds them
    for name in ("load_model", "model_recipe"):
        monkeypatch.setattr(C, name, lambda args: pytest.fail("loaded the model before checking --scheduler"))
    status = cli.main(["classify", _image(tmp_path), "--random-weights", "--scheduler", address])
    err = capsys.readouterr().err
    assert status == 2 and what in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- item 22: messages

def test_a_hand_copied_pth_that_fails_its_hash_check_is_named(isolated_cache, tmp_path, capsys, monkeypatch):
    isolated_cache.mkdir(parents=True)
    raw = isolated_cache / "alexnet-owt-7be5be79.pth"
    raw.write_bytes(b"not the official file")
    assert cli.main(["weights", "path"]) == 2
    err = capsys.readouterr().err
    assert f"{raw} failed its hash check" in err and "7be5be79" in err and f"rm '{raw}'" in err, err
    assert "converted on first use" not in err
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", "http://127.0.0.1:9/alexnet-owt-7be5be79.pth")  # nobody there
    assert cli.main(["classify", _image(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{raw} failed its hash check" in err and "copy the official alexnet-owt-7be5be79.pth" in err, err
    assert raw.read_bytes() == b"not the official file"  # the user's file is theirs to delete


def test_a_good_hand_copied_pth_is_still_converted(isolated_cache, capsys, monkeypatch):
    payload = (ROOT / "tests" / "fixtures" / "torchvision_reduced_legacy.pth").read_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    tiny = W.PublishedWeights(name="T", url="http://127.0.0.1:9/x.pth", file_name=f"t-{prefix}.pth", hash_prefix=prefix)
    isolated_cache.mkdir(parents=True)
    (isolated_cache / f"t-{prefix}.pth").write_bytes(payload)
    assert tiny.raw_problem() is None
    assert tiny.download() == isolated_cache / f"t-{prefix}.npz"  # no network needed


def test_a_missing_local_file_is_not_called_offline(capsys, tmp_path):
    missing = tmp_path / "alexnet-owt-7be5be79.pth"
    assert cli.main(["weights", "download", "--url", f"file://{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"the local file {missing} does not exist" in err and "offline" not in err, err


# ----------------------------------------------------------------------------- item 24: the build

def test_the_build_configuration_is_current():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(config["project"]["license"], str)  # an SPDX expression, not the deprecated table
    setuptools_req = [r for r in config["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools_req and int(setuptools_req[0].split(">=")[1].split(".")[0]) >= 77  # SPDX strings
    listed = set(config["tool"]["setuptools"]["packages"])
    shipped = {str(d.relative_to(ROOT)).replace(os.sep, ".") for d in (ROOT / "fastalex").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())}
    shipped.add("fastalex")
    assert shipped <= listed, f"packages missing from pyproject.toml: {sorted(shipped - listed)}"
