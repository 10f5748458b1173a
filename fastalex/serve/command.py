"""The ``fastalex serve`` command: options, the listening socket, uvicorn, and a clean exit.

This module imports without the ``serve`` extra (the CLI builds its parser from it); the
command itself says ``pip install 'fastalex[serve]'`` when Starlette, uvicorn or
python-multipart is missing.

The socket is bound before anything slow, and the URL is the first line on stdout (with
``--port 0`` the port the system picked), so a script can start the server and read where it
is. The model loads in the background: ``/healthz`` answers 503 until it is ready. SIGTERM
(or Ctrl-C) stops accepting connections, lets the requests in flight finish, then exits 0
(130 after Ctrl-C).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket

from ..cli import common
from ..errors import WeightsFileError
from . import SERVE_INSTALL, require_serve  # noqa: F401  (SERVE_INSTALL: importable here, as before)

EPILOG = """\
API (JSON; errors are {"error": "..."} with a 4xx status):
  POST /v1/classify?top=K        the image as the body (image/*, application/octet-stream) or
                                 as the 'file' field of a multipart form -> {"top": [...]}
  POST /v1/embed?layer=fc7&normalize=0|1   -> {"layer": ..., "vector": [...]}
  POST /v1/explain?class=N[&format=png]    occlusion heat map (JSON with a PNG, or the PNG)
  GET  /v1/model, /healthz, /metrics (Prometheus)
  GET  /   the page: top-5, heat map, feature maps, filters, per-layer timings

weights as for `fastalex classify`. There is no authentication: the default host 127.0.0.1
is reachable from this machine only.

exit status: 0 stopped by SIGTERM (requests in flight answered first), 2 usage error
(bad options, weights missing or unusable, port taken), 130 interrupted."""


_non_negative_int = common.number_type(int, lambda v: v >= 0, "an integer 0 or more")
# finite numbers only: NaN fails both comparisons
_positive_float = common.number_type(float, lambda v: 0 < v < float("inf"), "a positive number")
_non_negative_float = common.number_type(float, lambda v: 0 <= v < float("inf"), "a number 0 or more")


def add_command(sub):
    """Add ``serve`` to the ``fastalex`` subcommands ``sub``."""
    p = sub.add_parser("serve", help="an HTTP API with dynamic batching, and a page to look inside AlexNet",
                       description="Serve the model over HTTP: a JSON API whose concurrent requests are "
                                   "grouped into batched forward passes, health, Prometheus metrics, and a "
                                   "page at / to try a photo. Needs fastalex[serve].",
                       epilog=EPILOG)
    common.add_model_choice(p)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (for non-ImageNet weights)")
    p.add_argument("--backend", choices=common.backends(), default=None,
                   help="compute backend (default: numba, or $FASTALEX_BACKEND)")
    common.add_weight_dtype(p)
    common.add_preprocess(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other host "
                        "prints a warning: the API has no authentication)")
    p.add_argument("--port", type=_non_negative_int, default=8000,
                   help="port (default 8000; 0 picks a free one). The URL is the first line on stdout")
    p.add_argument("--max-batch", type=common.positive_int, default=16, metavar="N",
                   help="images per forward pass at most (default 16)")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=5.0, metavar="MS",
                   help="how long a request may wait for others to share its forward pass (default 5)")
    p.add_argument("--max-body-mb", type=_positive_float, default=20.0, metavar="MB",
                   help="largest request body in MiB (default 20; larger ones get 413 unread)")
    p.add_argument("--max-megapixels", type=_positive_float, default=50.0, metavar="MP",
                   help="largest image in millions of pixels (default 50; larger ones get 422 "
                        "before they are decoded)")
    p.add_argument("--body-timeout", type=_positive_float, default=30.0, metavar="S",
                   help="seconds to receive a request body (default 30; a body that stalls gets 408)")
    p.add_argument("--max-connections", type=common.positive_int, default=256, metavar="N",
                   help="concurrent connections and requests (default 256; more get 503)")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    p.set_defaults(func=cmd_serve)


def is_loopback(host) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host) -> str | None:
    if is_loopback(host):
        return None
    return (f"WARNING: listening on {host}: the API has no authentication; anyone who can reach this "
            f"port can use it (and the CPU). Put it behind an authenticating proxy, or use "
            f"--host 127.0.0.1")


def bind(host, port) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (UsageError if that fails)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise common.UsageError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise common.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _check_weights(args):
    """Fail now (exit 2), not after binding, on a weights file that is not there."""
    if args.random_weights or args.weights == "imagenet":
        return
    from .._files import is_url
    if not is_url(args.weights) and not os.path.exists(args.weights):
        raise common.UsageError(f"weights file {args.weights} does not exist (give a .npz/.pth/.onnx file, "
                             f"'imagenet', or use --random-weights)")


def cmd_serve(args):
    try:
        require_serve()
    except ImportError as exc:
        raise common.UsageError(str(exc)) from None
    warning = host_warning(args.host)
    if warning:
        common.err(warning)
    _check_weights(args)
    if args.labels:
        if not os.path.exists(args.labels):
            raise common.UsageError(f"labels file {args.labels} does not exist")

    import uvicorn

    from .app import MIB, ServeOptions, create_app

    sock = bind(args.host, args.port)
    print(url_of(sock), flush=True)  # the first line on stdout
    common.compile_note(args.backend)
    status = {"code": 0}

    def load():
        model = common.load_model(args)
        if args.labels:
            from ..labels import LabelsError, load_labels
            try:
                options.labels = load_labels(args.labels, model.num_classes)
            except LabelsError as exc:
                raise common.UsageError(str(exc)) from None
        return model

    def failed(exc):
        message = str(exc) or type(exc).__name__
        if isinstance(exc, (common.UsageError, WeightsFileError)):
            common.err(f"error: {common.printable(message)}")
            status["code"] = 2
        else:
            common.err(f"error: cannot load the model: {common.printable(message)}")
            status["code"] = 1
        server.should_exit = True

    options = ServeOptions(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_body_bytes=int(args.max_body_mb * MIB), body_timeout=args.body_timeout,
        max_pixels=int(args.max_megapixels * 1e6),
        info={"random_weights": bool(args.random_weights),
              "weights": None if args.random_weights else args.weights},
        on_load_error=failed)
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = max(int(Image.MAX_IMAGE_PIXELS or 0), options.max_pixels)
    app = create_app(load, options)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=args.access_log,
                            limit_concurrency=args.max_connections, timeout_keep_alive=5,
                            server_header=False)
    server = _graceful_server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.signal == signal.SIGINT and status["code"] == 0:
        raise KeyboardInterrupt
    return status["code"]


def _graceful_server(config):
    """uvicorn's server, with SIGTERM/SIGINT ending it gracefully and then returning (uvicorn
    itself raises the signal again after shutting down, which would end the process with
    status 143 instead of 0). ``server.signal`` is the signal that stopped it, if any."""
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        signal = None

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig, frame):
                if self.signal is None:
                    self.signal = sig
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: do not wait
                self.should_exit = True

            previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    return Server(config)
