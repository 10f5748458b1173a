"""Load test of ``fastalex serve``: images/s, latency and batch sizes under concurrent clients,
then hostile requests. Only ever talks to this machine (127.0.0.1 / localhost).

    python benchmarks/serve_load.py                       # starts its own server (random weights)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/ --clients 1,8,32 --requests 20

Each of C clients keeps one HTTP/1.1 connection and sends ``--requests`` classify requests one
after the other (a bounded asyncio client on plain streams: no extra package). Reported per C:
images/s, p50/p99 latency, errors and the mean batch size the server formed (from the
difference of its /metrics before and after). Then ``--hostile`` bad requests (garbage,
truncated, bombs, wrong types, huge or stalled bodies, odd multipart): how many got a 5xx or
no answer, and the server's resident memory before and after. Ends with the issue's targets:
32 clients x 20 requests with 0 errors, throughput >= 2x one client's sequential rate, p99 <=
500 ms; hostile requests with 0 server errors and memory within 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.parse
import zlib

import numpy as np

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "fastalex", "serve", "static", "samples", "cat.jpg")
LOOPBACK = {"127.0.0.1", "localhost"}


# ----------------------------------------------------------------------------- HTTP on asyncio streams

class Connection:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def request(self, method, path, body=b"", headers=None, timeout=60.0):
        """``(status, body)``; reconnects once if the server closed the kept-alive connection."""
        for attempt in (0, 1):
            if self.writer is None:
                await self.open()
            try:
                return await asyncio.wait_for(self._exchange(method, path, body, headers or {}), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise

    async def _exchange(self, method, path, body, headers):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        data = await self.reader.readexactly(int(length.group(1))) if length else b""
        if re.search(rb"(?im)^connection:\s*close", head):
            await self.close()
        return status, data


async def get(host, port, path):
    conn = Connection(host, port)
    try:
        return await conn.request("GET", path)
    finally:
        await conn.close()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def metrics(host, port):
    status, body = await get(host, port, "/metrics")
    return body.decode()


# ----------------------------------------------------------------------------- the load

async def load(host, port, image, clients, requests):
    latencies, errors = [], []

    async def client():
        conn = Connection(host, port)
        try:
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request("POST", "/v1/classify", image,
                                                      {"Content-Type": "image/jpeg"})
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:100]!r}")
                else:
                    latencies.append(time.perf_counter() - t0)
        finally:
            await conn.close()

    before = await metrics(host, port)
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    after = await metrics(host, port)
    images = metric(after, "fastalex_batch_size_sum") - metric(before, "fastalex_batch_size_sum")
    passes = metric(after, "fastalex_batch_size_count") - metric(before, "fastalex_batch_size_count")
    lat = np.array(latencies) * 1e3
    return {"clients": clients, "requests": clients * requests, "ok": len(latencies), "errors": len(errors),
            "error_examples": errors[:3], "seconds": elapsed, "images_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "mean_batch": images / passes if passes else None}


# ----------------------------------------------------------------------------- hostile requests

def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width, height, idat=b""):
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _bomb(side):
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    return _png_header(side, side, b"".join(comp.compress(row) for _ in range(side)) + comp.flush())


def hostile_cases(image):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    boundary = "b0undary"

    def form(name, ctype, data):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        return (head + "\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()

    mp = f"multipart/form-data; boundary={boundary}"
    return [  # (name, raw request bytes or (head, body, pause)), the request itself
        ("garbage", {"Content-Type": "image/jpeg"}, noise),
        ("truncated", {"Content-Type": "image/jpeg"}, image[: len(image) // 2]),
        ("bomb 70 Mpx", {"Content-Type": "image/png"}, _bomb(8400)),
        ("declared 10 Gpx", {"Content-Type": "image/png"}, _png_header(100_000, 100_000)),
        ("text/plain", {"Content-Type": "text/plain"}, image),
        ("no type", {}, image),
        ("multipart no boundary", {"Content-Type": "multipart/form-data"}, image),
        ("multipart garbage", {"Content-Type": mp}, noise),
        ("multipart text part", {"Content-Type": mp}, form("file", "text/plain", image)),
        ("multipart wrong field", {"Content-Type": mp}, form("photo", "image/jpeg", image)),
        ("huge Content-Length", {"Content-Type": "image/jpeg", "Content-Length": str(10**12)}, None),
        ("stalled body", {"Content-Type": "image/jpeg", "Content-Length": "100000"}, image[:500]),
    ]


async def hostile(host, port, image, count):
    """``count`` hostile requests, 8 at a time: ``{status: n}`` (None: no answer)."""
    cases = hostile_cases(image)
    statuses = {}
    semaphore = asyncio.Semaphore(8)

    async def one(k):
        name, headers, body = cases[k % len(cases)]
        async with semaphore:
            status = None
            try:
                reader, writer = await asyncio.open_connection(host, port)
                head = ["POST /v1/classify HTTP/1.1", f"Host: {host}"]
                if "Content-Length" not in headers:
                    headers = {**headers, "Content-Length": str(len(body))}
                head += [f"{k}: {v}" for k, v in headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
                try:
                    await writer.drain()
                except ConnectionError:
                    pass
                line = await asyncio.wait_for(reader.readline(), 120)
                match = re.match(rb"HTTP/1\.[01] (\d{3})", line)
                status = int(match.group(1)) if match else None
                writer.close()
            except (OSError, asyncio.TimeoutError):
                pass
            statuses.setdefault(name, {}).setdefault(status, 0)
            statuses[name][status] += 1

    await asyncio.gather(*(one(k) for k in range(count)))
    return statuses


# ----------------------------------------------------------------------------- the server

def start_server(extra):
    cmd = [sys.executable, "-m", "fastalex", "serve", "--random-weights", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the server did not print its URL: {url!r}")
    return proc, url


async def wait_ready(host, port, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = await get(host, port, "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("the server did not become ready")


async def main_async(args):
    image = open(args.image, "rb").read()
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_server(["--variant", "torchvision", "--backend", "numba", "--max-batch",
                                  str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                  "--body-timeout", "2"])
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"serve_load only talks to this machine (127.0.0.1), not {parts.hostname}")
    host, port = parts.hostname, parts.port or 80
    try:
        await wait_ready(host, port)
        status, body = await get(host, port, "/v1/model")
        info = json.loads(body)
        print(f"server {url}: AlexNet ({info['variant']}), {info['backend']}, {info['precision']}, "
              f"{info['threads']} threads ({info['threading_layer']}), max batch "
              f"{info['batching']['max_batch']}, max wait {info['batching']['max_wait_ms']} ms; "
              f"image {os.path.basename(args.image)} ({len(image):,} bytes); {os.cpu_count()} CPUs")
        await load(host, port, image, 4, 5)  # warm-up
        rows = []
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'mean batch':>10}")
        for clients in args.clients:
            r = await load(host, port, image, clients, args.requests)
            rows.append(r)
            print(f"{r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['images_per_s']:>9.1f} "
                  f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['mean_batch']:>10.2f}", flush=True)
            for e in r["error_examples"]:
                print(f"        error: {e}")
        result = {"load": rows}
        if args.hostile:
            rss_before = metric(await metrics(host, port), "process_resident_memory_bytes")
            statuses = await hostile(host, port, image, args.hostile)
            rss_after = metric(await metrics(host, port), "process_resident_memory_bytes")
            health, _ = await get(host, port, "/healthz")
            server_errors = sum(n for s in statuses.values() for code, n in s.items() if code and code >= 500)
            unanswered = sum(s.get(None, 0) for s in statuses.values())
            print(f"hostile: {args.hostile} requests: " + "; ".join(
                f"{name} {dict(sorted(s.items(), key=str))}" for name, s in statuses.items()))
            print(f"hostile: {server_errors} server errors (5xx), {unanswered} unanswered, healthz {health}, "
                  f"RSS {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after "
                  f"({rss_after / rss_before:.2f}x)")
            result["hostile"] = {"count": args.hostile, "statuses": {k: {str(c): n for c, n in v.items()}
                                                                     for k, v in statuses.items()},
                                 "server_errors": server_errors, "unanswered": unanswered, "healthz": health,
                                 "rss_before": rss_before, "rss_after": rss_after}
        check_targets(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(120)


def check_targets(result):
    rows = {r["clients"]: r for r in result["load"]}
    lines = []
    if 32 in rows and 1 in rows:
        r32, r1 = rows[32], rows[1]
        lines.append(("32 clients: 0 errors", r32["errors"] == 0, f"{r32['errors']} errors"))
        ratio = r32["images_per_s"] / r1["images_per_s"]
        lines.append(("32 clients: throughput >= 2x one client's", ratio >= 2, f"{ratio:.2f}x"))
        lines.append(("32 clients: p99 <= 500 ms", r32["p99_ms"] <= 500, f"{r32['p99_ms']:.0f} ms"))
    h = result.get("hostile")
    if h:
        lines.append(("hostile: 0 server errors, all answered, healthy",
                      h["server_errors"] == 0 and h["healthz"] == 200,
                      f"{h['server_errors']} 5xx, {h['unanswered']} unanswered, healthz {h['healthz']}"))
        ratio = h["rss_after"] / h["rss_before"]
        lines.append(("hostile: RSS after within 1.5x", ratio <= 1.5, f"{ratio:.2f}x"))
    for name, ok, value in lines:
        print(f"target {'MET ' if ok else 'MISSED'}  {name}: {value}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server on this machine (default: start one with random weights)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per run (default 1,8,32)")
    p.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    p.add_argument("--image", default=SAMPLE, help="the image to send (default: the cat sample)")
    p.add_argument("--hostile", type=int, default=100, help="hostile requests afterwards (default 100; 0: none)")
    p.add_argument("--max-batch", type=int, default=16, help="for the server it starts (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="for the server it starts (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
