"""The ASGI app of ``fastalex serve``: the JSON API, the page, health and metrics.

Everything the answers contain comes from the library: decoding and preprocessing from
:mod:`fastalex.images`, top-K classes from :class:`fastalex.classify.ClassifyTask`, vectors from
:class:`fastalex.embedding.EmbedTask`, pictures from :mod:`fastalex.viz`, layer timings from
:func:`fastalex.profiling.profile`. This module only reads requests, enforces the limits and
routes the work: decoding to a small thread pool, forward passes to the one model thread
(through the :class:`~fastalex.serve.batcher.Batcher` for ``classify`` and ``embed``), so the
event loop never computes.

Errors are ``{"error": "..."}`` with a 4xx status for anything a client sent: 400 bad
parameters or form, 404/405, 408 a body that stalls, 413 a body over the limit (refused from
its declared ``Content-Length`` before reading, or as soon as the bytes read pass the limit),
415 a body that is not an image (by its type, or by its bytes), 422 an image that cannot be
decoded or is a decompression bomb; 503 while the model loads or when the queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..classify import ClassifyTask, Prediction
from ..embedding import EmbedTask
from ..errors import FastalexError
from ..images import ImageError, _bomb_check, _describe, get_preprocess, open_image, preprocess_image
from .batcher import Batcher, QueueFullError
from .metrics import Metrics

__all__ = ["create_app", "ServeOptions", "ApiError", "decode_image", "STATIC"]

STATIC = Path(__file__).parent / "static"

# python-multipart logs each malformed form as a warning: the client gets a 400 saying so instead
logging.getLogger("python_multipart").setLevel(logging.ERROR)
MIB = 1 << 20

#: the paths counted in the metrics under their own name (anything else is "other")
ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/classify", "/v1/embed", "/v1/explain", "/v1/model",
             "/v1/activations", "/v1/filters", "/v1/profile")

#: the page loads only what the package serves: no CDN, no inline script
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

#: per backend: timed runs and warm-up runs of the page's timing chart (the NumPy reference
#: takes seconds per pass, so it runs once)
PROFILE_RUNS = {"numba": (5, 1), "numpy": (1, 0)}


class ApiError(FastalexError):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class ServeOptions:
    """The server's limits and batching (the ``fastalex serve`` options)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = 20 * MIB
    body_timeout: float = 30.0      # seconds to receive a whole request body (408 after)
    max_pixels: int = 50_000_000    # decoded pixels per image (422 above: a decompression bomb)
    max_queue: int = 1024           # images waiting for a forward pass (503 above)
    max_heavy: int = 8              # explain/activations/profile jobs waiting or running (503 above)
    decode_threads: int = 2
    labels: object = None           # class names (default: ImageNet's for 1000 classes)
    info: dict = field(default_factory=dict)  # shown by /v1/model (weights, random_weights, ...)
    on_load_error: object = None    # called with the exception if the model cannot be loaded


# ----------------------------------------------------------------------------- decoding

def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The request body as an 8-bit RGB PIL image (EXIF orientation applied, first frame).

    Raises ApiError: 415 if the bytes are no image format Pillow knows, 422 if the image is
    truncated or corrupt, or has more than ``max_pixels`` pixels (checked from its header,
    before any pixel is decoded)."""
    if not data:
        raise ApiError(400, "the request has no image: send the image as the body, or as the 'file' field "
                            "of a multipart/form-data form")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(415, "the body is not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise ApiError(422, f"too large, refused as a possible decompression bomb ({exc})") from None
    except Exception as exc:
        raise ApiError(422, _describe(exc)) from None
    try:
        with img:
            if img.width * img.height > max_pixels:
                raise ApiError(422, f"too large, refused as a possible decompression bomb ({img.width}x"
                                    f"{img.height} = {img.width * img.height:,} pixels, more than the "
                                    f"server's limit of {max_pixels:,})")
            _bomb_check(img, None)
            img.load()  # an animated image: its first frame (counting frames would read them all)
            return open_image(img)
    except ApiError:
        raise
    except ImageError as exc:
        raise ApiError(422, exc.reason) from None
    except MemoryError:
        raise ApiError(422, "out of memory while decoding the image") from None
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ApiError(422, _describe(exc)) from None


# ----------------------------------------------------------------------------- parameters

def _int_param(request, name, default, lo, hi):
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _bool_param(request, name, default=False):
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.lower())
    if value is None:
        raise ApiError(400, f"{name} must be 0 or 1, got {text!r}")
    return value


def _choice_param(request, name, default, choices):
    text = request.query_params.get(name) or default
    if text not in choices:
        raise ApiError(400, f"{name} must be one of {', '.join(choices)}, got {text!r}")
    return text


def _finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the server state

class Server:
    """The model, its thread, the decode pool and the batcher; the request handlers."""

    def __init__(self, model_or_loader, options: ServeOptions):
        self.options = options
        self._loader = model_or_loader if callable(model_or_loader) and not hasattr(
            model_or_loader, "named_layers") else None
        self.model = None if self._loader else model_or_loader
        self.labels = None
        self.metrics = Metrics()
        self.ready = False
        self.load_error = None
        self.model_pool = None
        self.decode_pool = None
        self.batcher = None
        self._profiles: dict = {}   # backend -> asyncio.Future of the profile
        self._filters: dict = {}    # layer -> PNG bytes
        self._heavy_jobs = 0

    # ------------------------------------------------------------------ lifecycle

    async def startup(self):
        loop = asyncio.get_running_loop()
        # one thread runs the model (a forward pass uses every core), a few decode
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastalex-model")
        self.decode_pool = ThreadPoolExecutor(max_workers=max(1, self.options.decode_threads),
                                              thread_name_prefix="fastalex-decode")
        self.batcher = Batcher(self._run_batch, self.model_pool, max_batch=self.options.max_batch,
                               max_wait_ms=self.options.max_wait_ms, max_queue=self.options.max_queue,
                               metrics=self.metrics)
        self.batcher.start()
        self._loading = loop.run_in_executor(self.model_pool, self._load)
        self._loading.add_done_callback(self._loaded)

    def _load(self):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by decode_image
        model = self._loader() if self._loader else self.model
        x = np.zeros((1, *model.input_shape), dtype=np.float32)
        model(x)  # warm up: compile or load the kernels before the first request
        return model

    def _loaded(self, future):
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.load_error = exc
            if self.options.on_load_error is not None:
                self.options.on_load_error(exc)
            return
        self.model = future.result()
        labels = self.options.labels
        if labels is None and self.model.num_classes == 1000:
            from ..labels import imagenet_labels
            labels = imagenet_labels()
        self.labels = list(labels) if labels else None
        self.preprocess = get_preprocess(self.model)
        self.ready = True

    async def shutdown(self):
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.decode_pool, self.model_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ helpers

    def _require_ready(self):
        if not self.ready:
            raise ApiError(503, "the model failed to load" if self.load_error else "the model is loading",
                           headers={"Retry-After": "1"})

    async def _in_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.model_pool, fn, *args)

    async def _heavy(self, fn):
        """A long job (occlusion, feature maps, timings) in the model thread, where it waits its
        turn with the batches; at most ``max_heavy`` at a time, so they cannot starve the rest."""
        if self._heavy_jobs >= self.options.max_heavy:
            raise ApiError(503, f"the server is busy ({self._heavy_jobs} long jobs queued); try again",
                           headers={"Retry-After": "2"})
        self._heavy_jobs += 1
        try:
            return await self._in_model_thread(fn)
        finally:
            self._heavy_jobs -= 1

    async def _in_decode_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    async def _body(self, request: Request) -> bytes:
        """The request body, at most ``max_body_bytes``, within ``body_timeout`` seconds."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, f"bad Content-Length {declared!r}")
            if int(declared) > limit:
                raise ApiError(413, f"the body of {int(declared):,} bytes is over the server's limit of "
                                    f"{limit:,} bytes (--max-body-mb)")

        async def read():
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the body is over the server's limit of {limit:,} bytes (--max-body-mb)")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.options.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the body did not arrive within {self.options.body_timeout:g} s") from None
        except ClientDisconnect:
            raise ApiError(400, "the client went away before sending the whole body") from None

    async def _image_bytes(self, request: Request) -> bytes:
        """The image of a request: its raw body (``image/*``, ``application/octet-stream``) or
        the ``file`` field of a ``multipart/form-data`` form."""
        ctype = request.headers.get("content-type", "")
        main = ctype.split(";", 1)[0].strip().lower()
        raw = main.startswith("image/") or main == "application/octet-stream"
        if not raw and main != "multipart/form-data":
            got = f"Content-Type {main!r}" if main else "no Content-Type"
            raise ApiError(415, f"{got}: send the image as the body with an image/* or "
                                f"application/octet-stream type, or as the 'file' field of a "
                                f"multipart/form-data form")
        body = await self._body(request)
        if raw:
            return body
        return await self._multipart_file(request, body)

    async def _multipart_file(self, request, body):
        async def stream():
            yield body

        parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                 max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, f"bad multipart form: {exc.message}") from None
        except Exception as exc:  # a malformed form must never become a 500
            raise ApiError(400, f"bad multipart form ({type(exc).__name__}: {exc})") from None
        try:
            upload = form.get("file")
            if upload is None:
                raise ApiError(400, "the multipart form has no 'file' field (the image)")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "the form's 'file' field is text, not a file upload")
            part_type = (upload.content_type or "").split(";", 1)[0].strip().lower()
            if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
                raise ApiError(415, f"the uploaded file is {part_type!r}, not an image")
            return await upload.read()
        finally:
            await form.close()

    async def _decoded(self, request) -> Image.Image:
        data = await self._image_bytes(request)
        t0 = time.perf_counter()
        img = await self._in_decode_pool(decode_image, data, self.options.max_pixels)
        self.metrics.decode.observe(time.perf_counter() - t0)
        return img

    async def _tensor(self, request) -> np.ndarray:
        data = await self._image_bytes(request)

        def decode():
            return preprocess_image(decode_image(data, self.options.max_pixels), self.preprocess)

        t0 = time.perf_counter()
        x = await self._in_decode_pool(decode)
        self.metrics.decode.observe(time.perf_counter() - t0)
        return x

    def _layer(self, request, default):
        name = request.query_params.get("layer") or default
        try:
            self.model.resolve_layer(name)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc).replace("extract: ", "layer: ")) from None
        return name

    async def _submit(self, key, x):
        try:
            return await self.batcher.submit(key, x)
        except QueueFullError as exc:
            raise ApiError(503, f"the server is busy ({exc}); try again", headers={"Retry-After": "1"}) from None

    # ------------------------------------------------------------------ batched work (model thread)

    def _run_batch(self, key, x):
        if key[0] == "classify":
            probs, idx = ClassifyTask(self.model.num_classes).compute(self.model, x)
            return list(zip(probs, idx))
        _, layer, normalize = key
        return list(EmbedTask(layer, normalize).compute(self.model, x))

    # ------------------------------------------------------------------ endpoints

    async def classify(self, request):
        self._require_ready()
        top = _int_param(request, "top", 5, 1, self.model.num_classes)
        x = await self._tensor(request)
        probs, idx = await self._submit(("classify",), x)
        p = Prediction(None, 0)
        ClassifyTask(top).fill(p, (probs[None, :top], idx[None, :top]), 0)
        if self.labels:
            p.labels = [self.labels[i] for i in p.indices]
        return JSONResponse({"top": [{**t, "probability": _finite(t["probability"])} for t in p.top]})

    async def embed(self, request):
        self._require_ready()
        layer = self._layer(request, "fc7")
        normalize = _bool_param(request, "normalize")
        x = await self._tensor(request)
        vector = await self._submit(("embed", layer, normalize), x)
        return JSONResponse({"layer": layer, "normalize": normalize, "size": int(vector.size),
                             "vector": [_finite(v) for v in vector.tolist()]})

    async def explain(self, request):
        from .. import viz
        self._require_ready()
        model = self.model
        size = min(model.input_shape[1:])
        target = request.query_params.get("class")
        target = None if target in (None, "") else _int_param(request, "class", 0, 0, model.num_classes - 1)
        patch = _int_param(request, "patch", viz.DEFAULT_PATCH, 8, size)
        stride = _int_param(request, "stride", viz.DEFAULT_STRIDE, 8, size)
        fmt = _choice_param(request, "format", "json", ("json", "png"))
        photo = await self._decoded(request)

        def run():
            x, seen = viz.prepare(model, photo)
            occ = viz.occlusion(model, x, target=target, patch=patch, stride=stride,
                                batch_size=self.options.max_batch)
            label = viz.class_label(occ.target, self.labels)
            picture = viz.draw_occlusion(seen, occ, label=label, scale=1)
            overlay = picture.crop((0, 0, seen.width, seen.height))  # without the caption
            return occ, label, _png(picture), _png(overlay)

        occ, label, picture, overlay = await self._heavy(run)
        if fmt == "png":
            return Response(picture, media_type="image/png")
        step = max(1, min(occ.heatmap.shape) // 56)
        heat = occ.heatmap[::step, ::step]
        return JSONResponse({
            "class": occ.target, "label": label, "probability": _finite(occ.probability),
            "patch": occ.patch, "stride": occ.stride, "ys": list(occ.ys), "xs": list(occ.xs),
            "drops": [[_finite(v) for v in row] for row in occ.drops.tolist()],
            "heatmap": {"step": step, "values": [[_finite(v) for v in row] for row in heat.tolist()]},
            "overlay_png": "data:image/png;base64," + base64.b64encode(overlay).decode("ascii"),
        })

    async def activations(self, request):
        from .. import viz
        self._require_ready()
        layer = self._layer(request, "features.1")
        normalize = _choice_param(request, "normalize", "layer", ("layer", "channel"))
        cmap = _choice_param(request, "cmap", "viridis", tuple(viz.COLORMAPS))
        photo = await self._decoded(request)

        def run():
            return _png(viz.activations(self.model, photo, layer, normalize=normalize, cmap=cmap))

        return Response(await self._heavy(run), media_type="image/png")

    async def filters(self, request):
        from .. import viz
        self._require_ready()
        name = request.query_params.get("layer") or None
        try:
            key = viz._conv_layer(self.model, name)[0]
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc).replace("filters: ", "layer: ")) from None
        if key not in self._filters:
            self._filters[key] = await self._in_decode_pool(lambda: _png(viz.filters(self.model, key)))
        return Response(self._filters[key], media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    async def profile(self, request):
        from ..backends import BACKENDS, get_backend_name
        self._require_ready()
        backend = _choice_param(request, "backend", get_backend_name(), tuple(BACKENDS))
        future = self._profiles.get(backend)
        if future is None:  # computed once per backend; requests meanwhile share it
            future = asyncio.ensure_future(self._heavy(lambda: self._profile(backend)))
            self._profiles[backend] = future
        try:
            return JSONResponse(await asyncio.shield(future))
        except Exception as exc:
            self._profiles.pop(backend, None)
            raise ApiError(400, f"cannot time the {backend} backend: {exc}") from None

    def _profile(self, backend):
        from ..profiling import profile
        model = self.model
        repeat, warmup = PROFILE_RUNS.get(backend, (3, 1))
        x = np.random.default_rng(0).standard_normal((1, *model.input_shape)).astype(np.float32)
        before = model.backend
        model.backend = backend  # only this thread runs the model, so no request sees the switch
        try:
            t0 = time.perf_counter()
            rows = profile(model, x, repeat=repeat, warmup=warmup)
            elapsed = time.perf_counter() - t0
        finally:
            model.backend = before
        return {"backend": backend, "batch_size": 1, "repeat": repeat, "warmup": warmup,
                "seconds_spent": elapsed,
                "total_ms": sum(r["seconds"] for r in rows) * 1e3,
                "rows": [{"name": r["name"], "type": r["type"], "output_shape": list(r["output_shape"]),
                          "macs": r["macs"], "ms": r["seconds"] * 1e3, "gflops": r["gflops"],
                          "share": r["share"]} for r in rows]}

    async def model_info(self, request):
        self._require_ready()
        return JSONResponse(self.describe())

    def describe(self) -> dict:
        from ..backends import get_backend_name
        model = self.model
        rows = model.layer_table()
        try:
            import numba
            try:
                layer = numba.threading_layer()
            except ValueError:  # no parallel kernel has run yet
                layer = None
            threads = numba.get_num_threads()
        except ImportError:
            layer, threads = None, 1
        return {
            "variant": model.variant, "num_classes": model.num_classes,
            "input_shape": list(model.input_shape),
            "precision": getattr(model, "precision", None) or "float32",
            "weight_dtype": model.weight_dtype,
            "backend": model.backend or get_backend_name(), "threading_layer": layer, "threads": threads,
            "layers": [{"name": r["name"], "type": r["type"], "output_shape": list(r["output_shape"]),
                        "params": int(r["params"]), "macs": int(r["macs"])} for r in rows],
            "aliases": model.aliases,
            "params": int(sum(r["params"] for r in rows)), "macs": int(sum(r["macs"] for r in rows)),
            "labels": self.labels is not None,
            "batching": {"max_batch": self.options.max_batch, "max_wait_ms": self.options.max_wait_ms},
            "limits": {"max_body_bytes": self.options.max_body_bytes, "max_pixels": self.options.max_pixels,
                       "body_timeout_s": self.options.body_timeout},
            "version": __version__,
            **self.options.info,
        }

    async def healthz(self, request):
        if self.ready:
            return JSONResponse({"status": "ok"})
        status = "error" if self.load_error else "loading"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})

    async def metrics_text(self, request):
        return PlainTextResponse(self.metrics.render(self.ready),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def index(self, request):
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


# ----------------------------------------------------------------------------- the ASGI app

async def _api_error(request, exc: ApiError):
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _http_error(request, exc: HTTPException):
    messages = {404: f"no such path {request.url.path}", 405: f"{request.method} is not allowed here"}
    return JSONResponse({"error": messages.get(exc.status_code, exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(request, exc: Exception):
    # a bug, not a bad request: say so without a traceback to the client
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


class _Observe:
    """ASGI middleware: counts requests by endpoint and status, times the API ones, tracks the
    requests in flight, and adds the security headers to every response."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/static" if path.startswith("/static/") else "other")
        api = path.startswith("/v1/")
        status = [500]
        metrics = self.server.metrics
        t0 = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if api:
            metrics.add_in_flight(1)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if api:
                metrics.add_in_flight(-1)
                metrics.latency.observe(time.perf_counter() - t0)
            metrics.count_request(endpoint, status[0])


def create_app(model, options: ServeOptions | None = None) -> Starlette:
    """The ASGI app serving ``model`` (a :class:`~fastalex.Model`, or a function returning one,
    called in the model thread at startup: ``/healthz`` says 503 until it returns)."""
    import contextlib
    server = Server(model, options or ServeOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    routes = [
        Route("/", server.index, methods=["GET"]),
        Route("/healthz", server.healthz, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/v1/model", server.model_info, methods=["GET"]),
        Route("/v1/classify", server.classify, methods=["POST"]),
        Route("/v1/embed", server.embed, methods=["POST"]),
        Route("/v1/explain", server.explain, methods=["POST"]),
        Route("/v1/activations", server.activations, methods=["POST"]),
        Route("/v1/filters", server.filters, methods=["GET"]),
        Route("/v1/profile", server.profile, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                                        Exception: _unexpected})
    app.state.server = server
    return _Observe(app, server)
