"""Dynamic batching: many concurrent single-image requests, few forward passes.

A request puts its decoded image (a float32 ``(3, H, W)`` array) and a *key* on an asyncio
queue and awaits a future. One collector task takes the first waiting image, then gathers
more for at most ``max_wait_ms`` (or until ``max_batch`` are there); if the model is still
busy with the previous batch, it keeps gathering (up to ``max_batch``) until the model is
free, so batches grow with the load and the model never idles while images wait. A batch
runs on a single worker thread (``executor``), off the event loop; images with different
keys (``classify`` and ``embed fc7``, say) in one gathering run as separate forward passes.

``run(key, x)`` returns one output per row of ``x``. If it raises for a whole batch, each
image of it is run again alone, so only the image that fails gets the error: one broken
request never fails the others. A request whose client went away (its future cancelled)
is simply skipped when the results are handed out.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..errors import FastalexError

__all__ = ["Batcher", "QueueFullError"]


class QueueFullError(FastalexError, RuntimeError):
    """More images are waiting than the batcher accepts (the server answers 503)."""


class Batcher:
    def __init__(self, run, executor, max_batch=16, max_wait_ms=5.0, max_queue=1024, metrics=None):
        if max_batch < 1:
            raise ValueError(f"Batcher: max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"Batcher: max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run = run
        self.executor = executor
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self._queue: asyncio.Queue | None = None
        self._task = None
        self._free: asyncio.Semaphore | None = None
        self._running: set = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(1)  # one forward pass at a time: it uses every core
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="fastalex-batcher")

    async def stop(self):
        """Finish the batches already running, then stop collecting."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ------------------------------------------------------------------ requests

    async def submit(self, key, x: np.ndarray):
        """The output for the image ``x`` under ``key`` (awaits its batch)."""
        if self._queue is None:
            raise RuntimeError("Batcher: start() it first")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"{self._queue.qsize()} images are already waiting")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((key, x, future, time.perf_counter()))
        self._set_depth()
        return await future

    def _set_depth(self):
        if self.metrics is not None:
            self.metrics.queue_depth = self._queue.qsize()

    # ------------------------------------------------------------------ the collector

    async def _collect(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            await self._free.acquire()  # while the model is busy, more images may arrive:
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())  # take them into this batch
            self._set_depth()
            batch = [item for item in batch if not item[2].done()]  # clients that went away
            if not batch:
                self._free.release()
                continue
            task = loop.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch):
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            groups: dict = {}
            for item in batch:
                key, x = item[0], item[1]
                groups.setdefault((key, x.shape), []).append(item)
                if self.metrics is not None:
                    self.metrics.queue_wait.observe(started - item[3])
            for (key, _), items in groups.items():
                x = np.stack([item[1] for item in items])
                t0 = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self.executor, self.run, key, x)
                    if len(outputs) != len(items):
                        raise RuntimeError(f"Batcher: run gave {len(outputs)} outputs for {len(items)} images")
                except Exception as exc:
                    if len(items) == 1:
                        _fail(items[0][2], exc)
                        continue
                    await self._one_by_one(key, items)
                    continue
                finally:
                    if self.metrics is not None:
                        self.metrics.batch_size.observe(len(items))
                        self.metrics.forward.observe(time.perf_counter() - t0)
                for item, out in zip(items, outputs):
                    if not item[2].done():
                        item[2].set_result(out)
        finally:
            self._free.release()

    async def _one_by_one(self, key, items):
        """A batch failed as a whole: run its images alone, so only the bad one gets the error."""
        loop = asyncio.get_running_loop()
        for _, x, future, _ in items:
            try:
                out = await loop.run_in_executor(self.executor, self.run, key, x[None])
            except Exception as exc:
                _fail(future, exc)
            else:
                if not future.done():
                    future.set_result(out[0])


def _fail(future, exc):
    if not future.done():
        future.set_exception(exc)
