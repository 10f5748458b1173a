"""Whole-model forward passes: both AlexNet variants, batch 1 and 16, both backends and peers.

Every benchmark first checks that its implementation agrees with the NumPy reference on the
same input and weights, then times. Peers (PyTorch, ONNX Runtime) run the same model with the
same weights on the same number of threads, and skip when not installed.

    pytest benchmarks/test_bench_models.py --benchmark-group-by=group --benchmark-columns=median,min,rounds
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

import fastalex
from fastalex.peers import onnx_session, torch_model

VARIANTS = ("original", "torchvision")
BATCHES = (1, 16)
# numba-<dtype>: the fast path with its dense layers' weights stored in that dtype (widened /
# dequantized inside the product); its logits must stay within 1e-2 (bfloat16) or 5e-2 (int8)
# of max|logit| of the float32 reference, instead of the float32 agreement tolerance.
IMPLS = ("numba", "numba-bfloat16", "numba-int8", "numpy", "torch", "onnxruntime")
LOWP_CLOSENESS = {"bfloat16": 1e-2, "int8": 5e-2}


@functools.lru_cache(maxsize=None)
def model(variant):
    return fastalex.alexnet(variant, seed=0)


@functools.lru_cache(maxsize=None)
def batch(variant, n):
    shape = model(variant).input_shape
    return np.random.default_rng(n).standard_normal((n, *shape), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def reference(variant, n):
    m = model(variant)
    m.backend = "numpy"
    try:
        return m(batch(variant, n))
    finally:
        m.backend = None


def _threads():
    import numba

    return numba.get_num_threads()


@functools.lru_cache(maxsize=None)
def lowp_model(variant, dtype):
    m = fastalex.alexnet(variant, seed=0, weight_dtype=dtype)
    m.backend = "numba"
    return m


@functools.lru_cache(maxsize=None)
def implementation(variant, impl):
    if impl.startswith("numba-"):
        return lowp_model(variant, impl.split("-", 1)[1])
    m = model(variant)
    if impl in ("numba", "numpy"):
        def run(x):
            m.backend = impl
            try:
                return m(x)
            finally:
                m.backend = None
        return run
    if impl == "torch":
        return torch_model(m, _threads())
    return onnx_session(m, _threads(), m.input_shape)


def checked(assert_agree, variant, n, impl):
    """``implementation(variant, impl)`` after checking its output on ``batch(variant, n)``
    against the NumPy reference: the float32 tolerance, or for ``numba-<dtype>`` closeness
    to the float32 logits (:data:`LOWP_CLOSENESS`)."""
    run = implementation(variant, impl)
    x = batch(variant, n)
    if impl.startswith("numba-"):
        ref = reference(variant, n)
        err = float(np.abs(run(x) - ref).max() / np.abs(ref).max())
        assert err <= LOWP_CLOSENESS[impl.split("-", 1)[1]], f"{variant} batch={n} {impl}: {err:.2e} of max|logit|"
    else:
        assert_agree(run(x), reference(variant, n), f"{variant} batch={n} {impl} vs numpy")
    return run


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, assert_agree, variant, n, impl, settle):
    if impl in ("torch", "onnxruntime"):
        pytest.importorskip(impl)
        if impl == "onnxruntime":
            pytest.importorskip("onnx")
    run = checked(assert_agree, variant, n, impl)
    x = batch(variant, n)
    benchmark.group = f"model {variant} batch={n}"
    benchmark.extra_info.update(variant=variant, batch=n, impl=impl)
    settle()
    if impl == "numpy" and n > 1:
        benchmark.pedantic(run, args=(x,), rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(run, args=(x,), rounds=30 if n == 1 else 10, iterations=1, warmup_rounds=1)


#: seconds of rest after each call of a pair: the engine that just ran keeps its threads
#: spinning for a while (ONNX Runtime's intra-op pool, TBB's workers), on the cores the other
#: engine's next call needs; back to back, each pair measured that interference, not speed
PAIR_REST = 0.05


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ("numba", "numba-bfloat16"))
def test_paired_with_onnxruntime(benchmark, assert_agree, variant, n, impl, settle):
    """fastalex and ONNX Runtime called alternately, each round one forward pass of each on
    the same input: the ratio of each pair's times, whose median the machine's slow and fast
    phases (which move whole rows of the other tables by 10-50%) affect alike on both sides.
    Both sides first pass the same agreement checks as in :func:`test_forward`. The timed
    unit is the pair; ``extra_info`` holds the median and quartiles of the ratio."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ours, peer = checked(assert_agree, variant, n, impl), checked(assert_agree, variant, n, "onnxruntime")
    x = batch(variant, n)
    ratios = []

    def pair():
        t0 = time.perf_counter()
        ours(x)
        t1 = time.perf_counter()
        time.sleep(PAIR_REST)
        t2 = time.perf_counter()
        peer(x)
        ratios.append((t1 - t0) / (time.perf_counter() - t2))
        time.sleep(PAIR_REST)

    benchmark.group = "paired with onnxruntime"
    settle()
    benchmark.pedantic(pair, rounds=40 if n == 1 else 12, iterations=1, warmup_rounds=1)
    kept = ratios[1:] if len(ratios) > 1 else ratios  # the warm-up round's pair is not kept
    q1, med, q3 = (float(v) for v in np.percentile(kept, [25, 50, 75]))
    benchmark.extra_info.update(variant=variant, batch=n, impl=impl, paired="onnxruntime",
                                ratio_median=med, ratio_q1=q1, ratio_q3=q3, pairs=len(kept))
