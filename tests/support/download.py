"""A local HTTP server standing in for download.pytorch.org, and the small published weights
it serves (the reduced torchvision fixture): shared by the download and cache tests. Nothing
here touches any address but 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import fastalex.hub as W
from fastalex.weights import load_weights

from .fixture_specs import FIXTURES

PAYLOAD = (FIXTURES / "torchvision_reduced_legacy.pth").read_bytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()
GOOD_NAME = f"alexnet-tiny-{SHA[:8]}.pth"
#: published weights whose content is the small fixture (the real ones are 233 MB)
TINY = W.PublishedWeights(name="TINY", url="http://127.0.0.1:9/unused.pth", file_name=GOOD_NAME,
                          hash_prefix=SHA[:8])


class Server:
    """Serves ``routes[path] = (behaviour, body)``; counts requests."""

    def __init__(self):
        self.routes, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                behaviour, body = server.routes.get(self.path, ("404", b""))
                if behaviour == "404":
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                if behaviour == "no-length":  # close-delimited body, cut short
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body) + (1000 if behaviour == "short" else 0)))
                self.end_headers()
                if behaviour == "short":  # promises more than it sends, then hangs up
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                elif behaviour == "abort":  # dies halfway through
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def serve(self, name, body=PAYLOAD, behaviour="ok"):
        self.routes[f"/{name}"] = (behaviour, body)
        return self.url(name)

    def close(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


def cache_files(directory: Path):
    """The cache's files, but for the (empty) lock files downloads take turns with."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock")) if directory.exists() else []


def expected_weights():
    return load_weights(FIXTURES / "torchvision_reduced_legacy.pth")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
