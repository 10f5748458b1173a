"""Throughput of classify in one process and on a local Dask cluster (a plain script, not a
pytest-benchmark suite: it starts clusters).

    python benchmarks/distributed_throughput.py PHOTOS_DIR --workers 0 1 2 --batch-size 16

For each setting (0 = one process, no Dask): images/s over every photo in the folder after a
warm-up (Numba kernels loaded, the model built in every worker), the peak resident memory of
the process or of each worker, and for clusters the time per batch spent computing on the
workers (Dask's task stream) against the client's wall time per batch, plus the round trip of
an empty task with the same arguments (what the scheduler adds per batch). The model is
torchvision's AlexNet with random weights: the same arithmetic as the ImageNet weights.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastalex  # noqa: E402
from fastalex.classify import ClassifyTask, iter_classify  # noqa: E402
from fastalex.pipeline import expand_inputs  # noqa: E402
from fastalex.distributed import local_cluster  # noqa: E402


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _noop(recipe, task, batch, start):
    return [None] * len(batch)


def one_process(items, batch_size, backend):
    model = fastalex.alexnet("torchvision", seed=0, backend=backend)
    list(iter_classify(items[:batch_size], model=model, batch_size=batch_size))  # warm-up
    t0, c0 = time.perf_counter(), _cpu()
    n = sum(1 for _ in iter_classify(items, model=model, batch_size=batch_size))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    print(f"one process: {n / wall:6.2f} images/s ({n} in {wall:.1f} s), {cpu / n * 1e3:.0f} CPU-ms/image, "
          f"peak RSS {_peak_mib():.0f} MiB", flush=True)


def cluster(items, batch_size, backend, workers):
    from distributed import get_task_stream
    from fastalex.specs import torchvision_spec
    recipe = {"spec": torchvision_spec(1000), "seed": 0, "weights": None, "backend": backend}
    t0 = time.perf_counter()
    with local_cluster(workers) as client:
        started = time.perf_counter() - t0
        # warm-up: every worker builds the model and loads the kernels (a batch per thread)
        threads = sum(client.nthreads().values())
        list(iter_classify(items[:batch_size * threads], model=recipe, batch_size=batch_size, client=client))
        warm = time.perf_counter() - t0
        with get_task_stream(client) as ts:
            t1, c1, w1 = time.perf_counter(), _cpu(), client.run(_cpu)
            n = sum(1 for _ in iter_classify(items, model=recipe, batch_size=batch_size, client=client))
            wall = time.perf_counter() - t1
            client_cpu = _cpu() - c1
            worker_cpu = sum(v - w1[k] for k, v in client.run(_cpu).items())
        compute = [sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
                   for t in ts.data if t["key"].startswith("fastalex-")]
        peaks = client.run(_peak_mib)
        # what the scheduler adds per batch: an empty task with the same arguments, one at a time
        batch = items[:batch_size]
        trips = []
        for k in range(50):
            t2 = time.perf_counter()
            client.submit(_noop, recipe, ClassifyTask(5), batch, 0, pure=False).result()
            trips.append(time.perf_counter() - t2)
        trips.sort()
    batches = len(compute)
    per_batch = sum(compute) / batches
    print(f"--workers {workers} ({threads} threads): {n / wall:6.2f} images/s ({n} in {wall:.1f} s); "
          f"cluster up in {started:.1f} s, warm (model built in each worker) after {warm:.1f} s; "
          f"{worker_cpu / n * 1e3:.0f} CPU-ms/image in workers + {client_cpu / n * 1e3:.1f} in client "
          f"and scheduler; peak RSS per worker {', '.join(f'{v:.0f}' for v in peaks.values())} MiB; "
          f"{batches} batches, compute {per_batch * 1e3:.0f} ms/batch on a worker, client wall "
          f"{wall / batches * threads * 1e3:.0f} ms/batch per thread; empty-task round trip median "
          f"{trips[len(trips) // 2] * 1e3:.1f} ms", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("photos")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", default="numba")
    args = p.parse_args()
    items = expand_inputs(args.photos)
    print(f"{len(items)} images from {args.photos}, batch {args.batch_size}, backend {args.backend}, "
          f"{os.cpu_count()} cores", flush=True)
    for w in args.workers:
        if w == 0:
            one_process(items, args.batch_size, args.backend)
        else:
            cluster(items, args.batch_size, args.backend, w)


if __name__ == "__main__":
    main()
