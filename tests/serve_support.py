"""Helpers for the ``fastalex serve`` tests: start a real server (a subprocess, as a user
starts it) and talk HTTP to it with the standard library only."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

STARTUP_TIMEOUT = 600  # seconds: a cold Numba cache compiles the kernels first


def server_env(home):
    env = dict(os.environ)
    env.update(FASTALEX_HOME=str(home), FASTALEX_BACKEND="numba", PYTHONUNBUFFERED="1")
    env.pop("XDG_CACHE_HOME", None)
    return env


class ServerProcess:
    """``fastalex serve --port 0 ...`` in a subprocess: ``url``, ``host``, ``port``, ``proc``."""

    def __init__(self, args, env, wait_ready=True):
        self.proc = subprocess.Popen([sys.executable, "-m", "fastalex", "serve", "--port", "0", *map(str, args)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr_lines = []
        self._stderr = threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines), daemon=True)
        self._stderr.start()
        self.first_line = self._first_line()
        match = re.fullmatch(r"http://(127\.0\.0\.1):(\d+)/", self.first_line.strip())
        assert match, f"first stdout line is not the URL: {self.first_line!r}; stderr: {self.stderr}"
        self.url = self.first_line.strip()
        self.host, self.port = match.group(1), int(match.group(2))
        self.stdout_rest = []
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout_rest), daemon=True).start()
        if wait_ready:
            self.wait_ready()

    @staticmethod
    def _drain(stream, lines):
        for line in stream:
            lines.append(line)

    def _first_line(self):
        box = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        if not box or not box[0]:
            self.kill()
            raise AssertionError(f"the server printed no URL; stderr: {self.stderr}")
        return box[0]

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    def wait_ready(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.stderr}")
            try:
                status, _, _ = request(self, "GET", "/healthz", timeout=5)
                if status == 200:
                    return
                assert status == 503, status
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"the server was not ready within {STARTUP_TIMEOUT} s: {self.stderr}")

    def terminate(self, timeout=120):
        """SIGTERM, then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def request(server, method, path, body=None, headers=None, timeout=120):
    """``(status, headers, body bytes)`` of one request on a fresh connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post_image(server, path, data, content_type="image/jpeg", timeout=120):
    status, headers, body = request(server, "POST", path, data, {"Content-Type": content_type}, timeout)
    return status, headers, body


def as_json(body):
    return json.loads(body.decode("utf-8"))


def multipart(fields, boundary="fastalexBoundary7MA4YWxk"):
    """``(body, content type)`` of a multipart/form-data form: fields are ``(name, filename or
    None, content type or None, bytes)``."""
    parts = []
    for name, filename, ctype, data in fields:
        head = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            head += f'; filename="{filename}"'
        head += "\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        parts.append(f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_exchange(server, head: bytes, body_parts=(), pause=0.0, read_timeout=30):
    """Send raw bytes (``head`` then each of ``body_parts``, ``pause`` seconds apart) on a new
    connection and return the status code of the answer (None if the server closed without
    one). Sending may fail once the server has answered and closed: that is fine."""
    sock = socket.create_connection((server.host, server.port), timeout=read_timeout)
    try:
        try:
            sock.sendall(head)
            for part in body_parts:
                if pause:
                    time.sleep(pause)
                sock.sendall(part)
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(match.group(1)) if match else None
    finally:
        sock.close()


def metric(text, name, labels=None):
    """The value of one sample of Prometheus text ``text`` (None if absent)."""
    want = name
    if labels:
        want += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return None


def path_with(path, **params):
    return path + ("?" + urllib.parse.urlencode(params) if params else "")
