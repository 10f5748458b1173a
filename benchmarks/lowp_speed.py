"""The whole AlexNet on the numba backend with float32, bfloat16 and int8 dense weights, and
ONNX Runtime (float32, the same weights) as the yardstick: median and min per row, its ratio to
ONNX Runtime's median, and its relative logit error against fastalex float32.

    python benchmarks/lowp_speed.py [VARIANT] [BATCHES] [ROUNDS]     # torchvision 1,16 15

Threads: ``NUMBA_NUM_THREADS`` (ONNX Runtime gets as many). Needs onnxruntime and onnx. Not
collected by pytest (no ``test_`` prefix). Weights: He-normal, seed 0.

ONNX Runtime's intra-op threads keep spinning for a while after each run, so interleaving it
with fastalex would time fastalex against busy cores: the fastalex rows are interleaved among
themselves, and ONNX Runtime is timed after them.
"""

from __future__ import annotations

import sys
import time

import numba
import numpy as np

import fastalex
from fastalex.peers import onnx_session


def _time(fn, times):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def main(variant="torchvision", batches=(1, 16), rounds=15):
    base = fastalex.alexnet(variant, seed=0)
    state = base.state_dict()
    models = {dtype: fastalex.alexnet(variant, weights=state, weight_dtype=dtype)
              for dtype in ("bfloat16", "int8")}
    models = {"float32": base, **models}
    threads = numba.get_num_threads()
    session = onnx_session(base, threads, base.input_shape)
    for n in batches:
        x = np.random.default_rng(0).standard_normal((n,) + base.input_shape, dtype=np.float32)
        runs = {f"numba {dtype}": (lambda m=m: m(x)) for dtype, m in models.items()}
        runs["onnxruntime float32"] = lambda: session(x)
        ref = base(x)
        errors = {name: np.abs(run() - ref).max() / np.abs(ref).max() for name, run in runs.items()}
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for dtype in models:
                _time(runs[f"numba {dtype}"], times[f"numba {dtype}"])
        for _ in range(rounds):
            _time(runs["onnxruntime float32"], times["onnxruntime float32"])
        yardstick = np.median(times["onnxruntime float32"])
        for name, ts in times.items():
            print(f"{variant} batch {n:<3} {name:<20} median {np.median(ts) * 1e3:8.2f} ms  "
                  f"min {min(ts) * 1e3:8.2f} ms  x{np.median(ts) / yardstick:5.2f}  "
                  f"rel logit err {errors[name]:.1e}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "torchvision",
         tuple(int(b) for b in args[1].split(",")) if len(args) > 1 else (1, 16),
         int(args[2]) if len(args) > 2 else 15)
