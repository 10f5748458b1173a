"""Prometheus text-format metrics, without a client library: counters by label, histograms
with fixed buckets, and the process's resident memory.

Only the server's event loop and its batcher update these (one thread each at a time, and
every update is one dict operation under a lock), so ``render()`` may be called any time.
"""

from __future__ import annotations

import os
import threading

__all__ = ["Metrics", "Histogram", "resident_memory_bytes"]

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def resident_memory_bytes() -> int | None:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """A Prometheus histogram: cumulative ``le`` buckets, ``_sum`` and ``_count``."""

    def __init__(self, name, help, buckets):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value):
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
                    break
            else:
                self.counts[-1] += 1
            self.sum += value
            self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            running = 0
            for bound, n in zip(self.buckets, self.counts):
                running += n
                lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
            lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"{self.name}_sum {self.sum!r}")
            lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    """The server's metrics (see ``render`` for the names)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = {}  # (endpoint, status) -> count
        self.in_flight = 0
        self.queue_depth = 0
        self.batch_size = Histogram("fastalex_batch_size", "Images per forward pass of the dynamic batcher.",
                                    SIZE_BUCKETS)
        self.queue_wait = Histogram("fastalex_queue_wait_seconds",
                                    "Seconds a decoded image waited in the queue for its forward pass.",
                                    SECONDS_BUCKETS)
        self.forward = Histogram("fastalex_forward_seconds", "Seconds per batched forward pass.",
                                 SECONDS_BUCKETS)
        self.decode = Histogram("fastalex_decode_seconds", "Seconds to decode and preprocess one image.",
                                SECONDS_BUCKETS)
        self.latency = Histogram("fastalex_request_seconds",
                                 "Seconds from a request's start to its response (API endpoints).",
                                 SECONDS_BUCKETS)

    def count_request(self, endpoint, status):
        with self._lock:
            key = (endpoint, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def add_in_flight(self, delta):
        with self._lock:
            self.in_flight += delta

    def render(self, ready: bool) -> str:
        lines = ["# HELP fastalex_requests_total Requests answered, by endpoint and HTTP status.",
                 "# TYPE fastalex_requests_total counter"]
        with self._lock:
            requests = sorted(self.requests.items())
            in_flight, depth = self.in_flight, self.queue_depth
        for (endpoint, status), n in requests:
            lines.append(f'fastalex_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {n}')
        lines += ["# HELP fastalex_requests_in_flight API requests being answered now.",
                  "# TYPE fastalex_requests_in_flight gauge", f"fastalex_requests_in_flight {in_flight}",
                  "# HELP fastalex_queue_depth Decoded images waiting for a forward pass.",
                  "# TYPE fastalex_queue_depth gauge", f"fastalex_queue_depth {depth}",
                  "# HELP fastalex_model_ready 1 once the model is loaded and warmed up.",
                  "# TYPE fastalex_model_ready gauge", f"fastalex_model_ready {int(bool(ready))}"]
        for h in (self.batch_size, self.queue_wait, self.forward, self.decode, self.latency):
            lines += h.render()
        rss = resident_memory_bytes()
        if rss is not None:
            lines += ["# HELP process_resident_memory_bytes Resident memory size in bytes.",
                      "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss}"]
        return "\n".join(lines) + "\n"
