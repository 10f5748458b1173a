"""``fastalex serve``: the API against a real server (a subprocess on a free port), hostile
requests, SIGTERM, the command's errors, and the dynamic batcher itself.

The server runs torchvision's AlexNet with seeded random weights on the Numba backend; the
answers are checked against the library's own functions on the same model and image.
"""

import asyncio
import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex import viz
from fastalex.serve.batcher import Batcher, QueueFullError
from fastalex.serve.command import host_warning, is_loopback

from serve_support import (ServerProcess, as_json, metric, multipart, path_with, post_image, raw_exchange,
                           request, server_env)

needs_serve = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("starlette", "uvicorn", "multipart")),
    reason="needs the serve extra: pip install 'fastalex[serve]'")

MAX_BODY_MB = 2
MAX_MEGAPIXELS = 30
BODY_TIMEOUT = 2


def _jpeg(seed=0, size=(300, 240)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(a).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG whose header declares ``width x height`` grey pixels, with one tiny IDAT: what a
    decompression bomb looks like before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _png_bomb(side):
    """A real, complete PNG of ``side x side`` black grey pixels: tiny compressed, huge decoded."""
    row = b"\0" * (side + 1)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def server(home):
    s = ServerProcess(["--random-weights", "--max-batch", "8", "--max-wait-ms", "20", "--max-body-mb", MAX_BODY_MB,
                       "--max-megapixels", MAX_MEGAPIXELS, "--body-timeout", BODY_TIMEOUT], server_env(home))
    yield s
    s.kill()


@pytest.fixture(scope="module")
def model():
    """The server's model, built here the same way: torchvision's AlexNet, random weights, seed 0."""
    return fastalex.alexnet("torchvision", seed=0, backend="numba")


@pytest.fixture(scope="module")
def photo():
    return _jpeg(1)


# ----------------------------------------------------------------------------- the command

def test_missing_extra_says_how_to_install(tmp_path):
    code = ("import sys\n"
            "for m in ('starlette', 'uvicorn', 'multipart'): sys.modules[m] = None\n"
            "from fastalex import cli\n"
            "sys.exit(cli.main(['serve', '--random-weights', '--port', '0']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=server_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'fastalex[serve]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # nothing was bound, no URL printed


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.org"))
    assert host_warning("127.0.0.1") is None
    assert "no authentication" in host_warning("0.0.0.0")


@needs_serve
def test_other_host_warns_and_missing_weights_fail_before_binding(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastalex", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--weights", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True, timeout=120, env=server_env(tmp_path))
    assert proc.returncode == 2
    assert "WARNING: listening on 0.0.0.0: the API has no authentication" in proc.stderr
    assert "missing.npz does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@needs_serve
def test_port_taken_is_a_usage_error(tmp_path):
    taken = __import__("socket").socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        proc = subprocess.run([sys.executable, "-m", "fastalex", "serve", "--random-weights",
                               "--port", str(taken.getsockname()[1])],
                              capture_output=True, text=True, timeout=120, env=server_env(tmp_path))
    finally:
        taken.close()
    assert proc.returncode == 2
    assert "cannot listen on 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


@needs_serve
def test_bad_weights_file_exits_2_after_printing_the_url(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a weights file")
    s = ServerProcess(["--weights", bad], server_env(tmp_path), wait_ready=False)
    try:
        assert s.proc.wait(300) == 2
    finally:
        s.kill()
    assert "error:" in s.stderr and "Traceback" not in s.stderr


# ----------------------------------------------------------------------------- the API

@needs_serve
def test_health_and_model(server, model):
    status, _, body = request(server, "GET", "/healthz")
    assert (status, as_json(body)) == (200, {"status": "ok"})
    status, _, body = request(server, "GET", "/v1/model")
    info = as_json(body)
    assert status == 200
    assert info["variant"] == "torchvision" and info["num_classes"] == 1000
    assert info["backend"] == "numba" and info["precision"] == "float32" and info["random_weights"] is True
    assert info["threading_layer"] in ("tbb", "omp", "workqueue")
    table = model.layer_table()
    assert [l["name"] for l in info["layers"]] == [r["name"] for r in table]
    assert [tuple(l["output_shape"]) for l in info["layers"]] == [tuple(r["output_shape"]) for r in table]
    assert info["params"] == model.num_params
    assert info["macs"] == sum(r["macs"] for r in table)
    assert info["batching"] == {"max_batch": 8, "max_wait_ms": 20.0}


@needs_serve
def test_classify_raw_and_multipart_match_the_library(server, model, photo, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    (expected,) = fastalex.classify([str(path)], model=model, top=5)
    for body, ctype in [(photo, "image/jpeg"), (photo, "application/octet-stream"),
                        multipart([("file", "photo.jpg", "image/jpeg", photo)]),
                        multipart([("note", None, None, b"hello"), ("file", "p.jpg", None, photo)])]:
        status, headers, answer = post_image(server, "/v1/classify", body, ctype)
        assert status == 200, answer
        assert headers["content-type"] == "application/json"
        top = as_json(answer)["top"]
        assert [t["index"] for t in top] == expected.indices
        assert [t["label"] for t in top] == expected.labels
        np.testing.assert_allclose([t["probability"] for t in top], expected.probabilities, rtol=1e-4)
    status, _, answer = post_image(server, "/v1/classify?top=2", photo)
    assert status == 200 and [t["index"] for t in as_json(answer)["top"]] == expected.indices[:2]


@needs_serve
@pytest.mark.parametrize("query", ["top=0", "top=1001", "top=five"])
def test_classify_bad_top(server, photo, query):
    status, _, body = post_image(server, f"/v1/classify?{query}", photo)
    assert status == 400 and "top must be" in as_json(body)["error"]


@needs_serve
def test_embed_matches_the_library(server, model, photo, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    for layer, normalize in [("fc7", False), ("pool5", True)]:
        (expected,) = fastalex.embed([str(path)], model=model, layer=layer, normalize=normalize)
        status, _, body = post_image(server, path_with("/v1/embed", layer=layer, normalize=int(normalize)), photo)
        answer = as_json(body)
        assert status == 200 and answer["layer"] == layer
        vector = np.array(answer["vector"], dtype=np.float32)
        assert vector.shape == expected.vector.shape
        np.testing.assert_allclose(vector, expected.vector, rtol=1e-4, atol=1e-5 * np.abs(expected.vector).max())
    status, _, body = post_image(server, "/v1/embed?layer=conv9", photo)
    assert status == 400 and "unknown layer 'conv9'" in as_json(body)["error"]
    status, _, body = post_image(server, "/v1/embed?normalize=maybe", photo)
    assert status == 400


@needs_serve
def test_explain_matches_viz_occlusion(server, model, photo):
    status, _, body = post_image(server, "/v1/explain?class=7&stride=56", photo)
    assert status == 200, body
    answer = as_json(body)
    x, _ = viz.prepare(model, Image.open(io.BytesIO(photo)))
    occ = viz.occlusion(model, x, target=7, stride=56)
    assert answer["class"] == 7 and answer["label"] == "cock (class 7)"
    assert answer["ys"] == list(occ.ys) and answer["xs"] == list(occ.xs)
    np.testing.assert_allclose(answer["drops"], occ.drops, rtol=1e-3, atol=1e-6)
    assert answer["probability"] == pytest.approx(occ.probability, rel=1e-4)
    assert answer["overlay_png"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(__import__("base64").b64decode(answer["overlay_png"].split(",", 1)[1])))
    assert overlay.size == (224, 224)
    status, headers, body = post_image(server, "/v1/explain?format=png&stride=56", photo)
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(body)).format == "PNG"
    for query in ["class=1000", "class=-1", "stride=2", "patch=500", "format=gif"]:
        status, _, body = post_image(server, f"/v1/explain?{query}", photo)
        assert status == 400, (query, body)


@needs_serve
def test_pictures_and_profile_come_from_the_library(server, model, photo):
    status, headers, body = request(server, "GET", "/v1/filters")
    assert status == 200 and headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(viz.filters(model)))
    status, _, body = request(server, "GET", "/v1/filters?layer=features.1")
    assert status == 400 and "not a convolution" in as_json(body)["error"]
    status, headers, body = post_image(server, "/v1/activations?layer=features.4&cmap=gray", photo)
    assert status == 200 and headers["content-type"] == "image/png"
    expected = viz.activations(model, Image.open(io.BytesIO(photo)), "features.4", cmap="gray")
    assert Image.open(io.BytesIO(body)).size == expected.size
    status, _, body = request(server, "GET", "/v1/profile?backend=numba")
    answer = as_json(body)
    assert status == 200 and answer["backend"] == "numba"
    x = np.zeros((1, 3, 224, 224), np.float32)
    assert [r["name"] for r in answer["rows"]] == [r["name"] for r in model.profile(x, repeat=1, warmup=0)]
    assert all(r["ms"] > 0 for r in answer["rows"])
    status, _, body = request(server, "GET", "/v1/profile?backend=cuda")
    assert status == 400


@needs_serve
def test_page_and_static_files(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert 'src="/static/app.js"' in page and "http://" not in page and "https://" not in page
    assert "default-src 'self'" in headers["content-security-policy"]
    for path in ("/static/app.js", "/static/style.css", "/static/samples/cat.jpg",
                 "/static/samples/LICENSES.txt"):
        status, _, body = request(server, "GET", path)
        assert status == 200 and body, path
    assert b"CC0" in request(server, "GET", "/static/samples/LICENSES.txt")[2]


@needs_serve
@pytest.mark.parametrize("method,path,status", [("GET", "/nope", 404), ("GET", "/v1/classify", 405),
                                                ("POST", "/v1/model", 405), ("GET", "/static/nope.js", 404),
                                                ("DELETE", "/healthz", 405)])
def test_not_found_and_not_allowed_are_json(server, method, path, status):
    got, headers, body = request(server, method, path)
    assert got == status and "error" in as_json(body)


@needs_serve
def test_concurrent_requests_all_answered_alike(server, photo):
    images = [_jpeg(seed) for seed in range(4)]
    expected = [as_json(post_image(server, "/v1/classify", img)[2])["top"] for img in images]
    before = request(server, "GET", "/metrics")[2].decode()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda k: post_image(server, "/v1/classify", images[k % 4]), range(32)))
    for k, (status, _, body) in enumerate(answers):
        assert status == 200
        got = as_json(body)["top"]
        assert [t["index"] for t in got] == [t["index"] for t in expected[k % 4]]
        np.testing.assert_allclose([t["probability"] for t in got],
                                   [t["probability"] for t in expected[k % 4]], rtol=1e-4)
    after = request(server, "GET", "/metrics")[2].decode()
    images_run = metric(after, "fastalex_batch_size_sum") - metric(before, "fastalex_batch_size_sum")
    passes = metric(after, "fastalex_batch_size_count") - metric(before, "fastalex_batch_size_count")
    assert images_run == 32 and 1 <= passes <= 32  # every image ran once, in batches of at most 8
    assert passes >= 4


@needs_serve
def test_metrics(server, photo):
    post_image(server, "/v1/classify", photo)
    post_image(server, "/v1/classify", b"garbage", "image/png")
    status, headers, body = request(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metric(text, "fastalex_requests_total", {"endpoint": "/v1/classify", "status": "200"}) >= 1
    assert metric(text, "fastalex_requests_total", {"endpoint": "/v1/classify", "status": "415"}) >= 1
    for name in ("fastalex_batch_size", "fastalex_queue_wait_seconds", "fastalex_forward_seconds"):
        assert metric(text, f"{name}_count") >= 1
        assert metric(text, f"{name}_bucket", {"le": "+Inf"}) == metric(text, f"{name}_count")
    assert metric(text, "fastalex_model_ready") == 1
    assert metric(text, "process_resident_memory_bytes") > 0


# ----------------------------------------------------------------------------- hostile requests

def _head(path, headers, method="POST"):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _hostile_cases(photo):
    truncated = photo[: len(photo) // 3]
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    small_png = _png(Image.new("RGB", (40, 30), (200, 10, 10)))
    body_mp_text, ct_mp = multipart([("file", None, None, b"just text")])
    body_mp_type, ct_mp2 = multipart([("file", "a.txt", "text/plain", photo)])
    body_mp_two, ct_mp3 = multipart([("file", "a.jpg", "image/jpeg", photo), ("file", "b.jpg", "image/jpeg", photo)])
    bomb = _png_bomb(6000)  # 36 Mpx > the 30 Mpx limit, a complete image ~35 kB
    cases = {
        "garbage body": (415, {"Content-Type": "image/jpeg"}, noise),
        "text as image/png": (415, {"Content-Type": "image/png"}, b"hello, I am not a PNG"),
        "truncated jpeg": (422, {"Content-Type": "image/jpeg"}, truncated),
        "truncated png": (422, {"Content-Type": "image/png"}, small_png[: len(small_png) - 30]),
        "decompression bomb": (422, {"Content-Type": "image/png"}, bomb),
        "huge declared header": (422, {"Content-Type": "image/png"}, _png_header_only(100_000, 100_000)),
        "absurd aspect ratio": (422, {"Content-Type": "image/png"}, _png_header_only(20, 100_000)),
        "empty body": (400, {"Content-Type": "image/jpeg"}, b""),
        "text/plain": (415, {"Content-Type": "text/plain"}, photo),
        "application/json": (415, {"Content-Type": "application/json"}, b'{"image": "cat.jpg"}'),
        "no content type": (415, {}, photo),
        "form-urlencoded": (415, {"Content-Type": "application/x-www-form-urlencoded"}, b"file=abc"),
        "multipart without boundary": (400, {"Content-Type": "multipart/form-data"}, photo),
        "multipart garbage": (400, {"Content-Type": "multipart/form-data; boundary=xyz"}, noise),
        "multipart text field": (400, {"Content-Type": ct_mp}, body_mp_text),
        "multipart non-image part": (415, {"Content-Type": ct_mp2}, body_mp_type),
        "multipart two files": (400, {"Content-Type": ct_mp3}, body_mp_two),
        "multipart no file field": (400, {"Content-Type": multipart([("x", None, None, b"1")])[1]},
                                    multipart([("x", None, None, b"1")])[0]),
        "bad query": (400, {"Content-Type": "image/jpeg", "_path": "/v1/classify?top=-3"}, photo),
        "bad layer": (400, {"Content-Type": "image/jpeg", "_path": "/v1/embed?layer=../../etc"}, photo),
    }
    return cases


@needs_serve
def test_hostile_requests_get_4xx_and_the_server_stays_healthy(server, photo):
    failures = []
    for name, (expected, headers, body) in _hostile_cases(photo).items():
        headers = dict(headers)
        path = headers.pop("_path", "/v1/classify")
        status, _, answer = request(server, "POST", path, body, headers)
        if status != expected:
            failures.append(f"{name}: {status} {answer[:200]!r} (expected {expected})")
        elif "error" not in as_json(answer):
            failures.append(f"{name}: no error message")
    # at the socket level: a huge declared length, a body over the limit with no length, a stall
    limit = MAX_BODY_MB << 20
    status = raw_exchange(server, _head("/v1/classify", {"Content-Type": "image/jpeg",
                                                          "Content-Length": str(10**12)}))
    if status != 413:
        failures.append(f"huge Content-Length: {status}")
    chunk = b"\0" * 65536
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (limit // len(chunk) + 8)
    status = raw_exchange(server, _head("/v1/classify", {"Content-Type": "image/jpeg",
                                                          "Transfer-Encoding": "chunked"}), chunks)
    if status != 413:
        failures.append(f"chunked body over the limit: {status}")
    t0 = time.monotonic()
    status = raw_exchange(server, _head("/v1/classify", {"Content-Type": "image/jpeg", "Content-Length": "100000"})
                          + photo[:1000])
    if status != 408 or time.monotonic() - t0 > BODY_TIMEOUT + 20:
        failures.append(f"stalled body: {status}")
    status = raw_exchange(server, _head("/v1/classify", {"Content-Type": "image/jpeg", "Content-Length": "12abc"}))
    if status != 400:
        failures.append(f"malformed Content-Length: {status}")
    status = raw_exchange(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
    if status not in (400, None):
        failures.append(f"not HTTP at all: {status}")
    assert not failures, "\n".join(failures)
    # healthy afterwards, and no 5xx ever
    assert request(server, "GET", "/healthz")[0] == 200
    assert post_image(server, "/v1/classify", photo)[0] == 200
    text = request(server, "GET", "/metrics")[2].decode()
    assert not [line for line in text.splitlines() if line.startswith("fastalex_requests_total")
                and 'status="5' in line and 'endpoint="/healthz"' not in line]  # 503 while loading
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------- SIGTERM

@needs_serve
def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path, photo):
    s = ServerProcess(["--random-weights", "--max-batch", "16"], server_env(tmp_path))
    try:
        answer = {}

        def slow():  # stride 8: 484 occluded copies, seconds of work
            answer["reply"] = post_image(s, "/v1/explain?stride=8&patch=56", photo, timeout=300)

        worker = threading.Thread(target=slow)
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the request is being answered
            text = request(s, "GET", "/metrics")[2].decode()
            if metric(text, "fastalex_requests_in_flight") >= 1:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the explain request never was in flight")
        assert s.terminate(timeout=300) == 0, s.stderr
        worker.join(60)
        status, _, body = answer["reply"]
        assert status == 200 and as_json(body)["xs"] == list(range(0, 169, 8))
        assert "Traceback" not in s.stderr
    finally:
        s.kill()


# ----------------------------------------------------------------------------- the batcher

def _run_batcher(items, max_batch=4, max_wait_ms=200, run=None, max_queue=1024):
    """Submit ``items`` ((key, x) pairs) all at once; ``(results or exceptions, batch sizes)``."""
    sizes = []

    def default_run(key, x):
        sizes.append(len(x))
        return [float(row.sum()) + (1000 if key == "b" else 0) for row in x]

    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(run or default_run, pool, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          max_queue=max_queue)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(k, x) for k, x in items), return_exceptions=True)
        finally:
            await batcher.stop()
            pool.shutdown()

    return asyncio.run(main()), sizes


def test_batcher_groups_requests_up_to_max_batch():
    items = [("a", np.full((2, 2), i, np.float32)) for i in range(10)]
    results, sizes = _run_batcher(items, max_batch=4)
    assert results == [4.0 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_batcher_keeps_keys_apart():
    items = [("a" if i % 2 else "b", np.full((1,), i, np.float32)) for i in range(6)]
    results, sizes = _run_batcher(items, max_batch=8)
    assert results == [float(i) + (0 if i % 2 else 1000) for i in range(6)]
    assert sorted(sizes) == [3, 3]


def test_batcher_does_not_wait_past_max_wait():
    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(lambda key, x: list(x[:, 0]), pool, max_batch=16, max_wait_ms=0)
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit("a", np.ones(1, np.float32)), 30)
        finally:
            await batcher.stop()
            pool.shutdown()

    assert asyncio.run(main()) == 1.0


def test_one_broken_request_does_not_fail_its_batch():
    def run(key, x):
        if np.isnan(x).any():
            raise ValueError("a NaN in the batch")
        return list(x.sum(axis=1))

    items = [("a", np.array([1.0, 2.0])), ("a", np.array([np.nan, 0.0])), ("a", np.array([3.0, 4.0]))]
    results, _ = _run_batcher(items, max_batch=8, run=run)
    assert results[0] == 3.0 and results[2] == 7.0
    assert isinstance(results[1], ValueError)


def test_batcher_refuses_beyond_max_queue():
    items = [("a", np.ones(1, np.float32)) for _ in range(5)]
    results, _ = _run_batcher(items, max_batch=1, max_queue=2)
    assert any(isinstance(r, QueueFullError) for r in results)
    assert all(r == 1.0 for r in results if not isinstance(r, Exception))


def test_batcher_skips_requests_whose_client_left():
    seen = []

    def run(key, x):
        seen.append(len(x))
        return list(x[:, 0])

    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(run, pool, max_batch=8, max_wait_ms=100)
        batcher.start()
        try:
            gone = asyncio.ensure_future(batcher.submit("a", np.zeros(1, np.float32)))
            kept = asyncio.ensure_future(batcher.submit("a", np.ones(1, np.float32)))
            await asyncio.sleep(0)
            gone.cancel()
            return await kept
        finally:
            await batcher.stop()
            pool.shutdown()

    assert asyncio.run(main()) == 1.0
    assert seen == [1]


@needs_serve
def test_long_jobs_are_bounded():
    from fastalex.serve.app import ApiError, Server, ServeOptions
    release = threading.Event()

    async def main():
        server = Server(lambda: None, ServeOptions(max_heavy=2))
        server.model_pool = ThreadPoolExecutor(1)
        try:
            jobs = [asyncio.ensure_future(server._heavy(lambda k=k: release.wait(30) and k)) for k in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(ApiError) as refused:
                await server._heavy(lambda: "third")
            release.set()
            return refused.value.status, await asyncio.gather(*jobs), await server._heavy(lambda: "after")
        finally:
            release.set()
            server.model_pool.shutdown()

    status, done, after = asyncio.run(main())
    assert status == 503 and done == [0, 1] and after == "after"


@pytest.mark.parametrize("option,value,message", [("--max-wait-ms", "-1", "expected a number 0 or more"),
                                                   ("--max-body-mb", "0", "expected a positive number"),
                                                   ("--port", "-5", "expected an integer 0 or more"),
                                                   ("--max-batch", "0", "expected a positive integer")])
def test_bad_options_are_usage_errors(capsys, option, value, message):
    from fastalex import cli
    assert cli.main(["serve", "--random-weights", option, value]) == 2
    assert message in capsys.readouterr().err


@needs_serve
def test_the_precision_option_reaches_the_model(home):
    """``--precision bfloat16`` (the model options of ``classify``): /v1/model says so, and
    /v1/classify answers from the bfloat16 model."""
    s = ServerProcess(["--random-weights", "--precision", "bfloat16"], server_env(home))
    try:
        status, _, body = request(s, "GET", "/v1/model")
        assert status == 200 and as_json(body)["precision"] == "bfloat16"
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(3).integers(0, 255, (240, 300, 3), dtype=np.uint8)).save(buf, "PNG")
        status, _, body = post_image(s, "/v1/classify?top=3", buf.getvalue(), "image/png")
        assert status == 200, body
        top = as_json(body)["top"]
        assert len(top) == 3 and all(0.0 <= t["probability"] <= 1.0 for t in top)
    finally:
        s.kill()
