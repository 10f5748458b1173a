"""AlexNet's dense layers with float32, bfloat16 and int8 weights (the fast path), and torch.

One benchmark per (layer, batch, implementation); ``benchmark.group`` is
``"<layer> batch=<n>"`` as in ``test_bench_layers.py``, so a combined run puts these rows next
to the float32 ones::

    pytest benchmarks/test_bench_dense_lowp.py --benchmark-group-by=group \\
        --benchmark-columns=median,min,rounds --benchmark-sort=name

Implementations: ``numba-float32`` (sgemm/sgemv), ``numba-bfloat16`` and ``numba-int8`` (the
fused widening kernel, ``fastalex/backends/_dense_lowp.py``), ``torch-float32`` (skipped
without torch). Before timing, each low-precision row checks that the kernel agrees with the
reference path on the same stored weight (``|fast - ref| <= 1e-4 max|ref| + 1e-5``) and that
it stays close to float32 (bfloat16 within 1e-2 x max|y|, int8 within 5e-2);
``extra_info`` records that error and the bytes of weight streamed per call.
``--benchmark-disable`` runs just the checks.

Weights are He-scaled normal with a fixed seed (no ImageNet weights needed); fc7/fc8 inputs
are non-negative, as after a ReLU.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fastalex.functional as F
from fastalex.lowp import pack

DENSE = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # (in, out)
BATCHES = (1, 16)
IMPLS = ("numba-float32", "numba-bfloat16", "numba-int8", "torch-float32")
CLOSE_TO_FLOAT32 = {"bfloat16": 1e-2, "int8": 5e-2}


@functools.lru_cache(maxsize=None)
def _weights(name):
    k, o = DENSE[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    w = rng.standard_normal((o, k), dtype=np.float32) * np.float32(np.sqrt(2.0 / k))
    b = rng.standard_normal(o, dtype=np.float32) * np.float32(0.1)
    return w, b


@functools.lru_cache(maxsize=None)
def _stored(name, dtype):
    return pack(_weights(name)[0], dtype)


@functools.lru_cache(maxsize=None)
def _input(name, batch):
    rng = np.random.default_rng(1000 * batch + sum(map(ord, name)))
    x = rng.standard_normal((batch, DENSE[name][0]), dtype=np.float32)
    return x if name == "fc6" else np.maximum(x, 0)


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", tuple(DENSE))
def test_dense_lowp(benchmark, assert_agree, name, batch, impl, settle):
    pytest.importorskip("numba")
    lib, dtype = impl.split("-")
    w, b = _weights(name)
    x = _input(name, batch)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        import numba
        torch.set_num_threads(numba.get_num_threads())
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)

        def fn():
            with torch.inference_mode():
                return torch.nn.functional.linear(tx, tw, tb).numpy()
        assert_agree(fn(), F.linear(x, w, b, backend="numpy"), f"{name} batch={batch} torch vs numpy")
    else:
        stored = w if dtype == "float32" else _stored(name, dtype)
        fn = functools.partial(F.linear, x, stored, b, backend="numba")
        result = fn()
        assert_agree(result, F.linear(x, stored, b, backend="numpy"), f"{name} batch={batch} {impl} vs numpy")
        if dtype != "float32":
            err = _rel(result, F.linear(x, w, b, backend="numpy"))
            assert err <= CLOSE_TO_FLOAT32[dtype], f"{name} {dtype}: relative error {err:.3g} vs float32"
            benchmark.extra_info["rel_err_vs_float32"] = err
    nbytes = stored.nbytes if lib == "numba" else w.nbytes
    benchmark.group = f"{name} batch={batch}"
    benchmark.extra_info.update(layer=name, batch=batch, impl=impl, weight_bytes=int(nbytes))
    settle()
    benchmark(fn)
