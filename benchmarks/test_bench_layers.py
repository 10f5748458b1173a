"""One benchmark per (AlexNet layer, batch size, implementation).

Layers: both variants' convolutions (with their fused ReLU) and pools (the 2012 network's
without prefix, torchvision's as ``tv-*``), the LRNs and the dense layers.
Implementations: the two fastalex backends (``numba``, ``numpy``) and the peers
(``torch``, skipped when not installed); see ``benchmarks/conftest.py``. After a timed run
a table gives every conv/dense row's GFLOP/s and its fraction of the sgemm rate measured in
the same run (``test_sgemm_rate``). ``benchmark.group``
is ``"<layer> batch=<n>"`` so they sit side by side under ``--benchmark-group-by=group``::

    pytest benchmarks/test_bench_layers.py --benchmark-group-by=group \\
        --benchmark-columns=median,min,rounds --benchmark-sort=name

Every benchmark first checks that the two backends agree on its input (and that a peer
agrees with them), then times. ``--benchmark-disable`` runs just the checks (once each).
"""

from __future__ import annotations

import numpy as np

SGEMM_GROUP = "sgemm"  # the group conftest's GFLOP/s report takes the sgemm rate from

LAYER_BATCHES = (1, 16)

# The NumPy path is slow at batch 16: a few rounds are enough there.
SLOW_ROUNDS = 3


def test_layer(benchmark, checked_layer, alexnet_layer, settle):
    name, batch, impl = alexnet_layer
    case, fn = checked_layer(name, batch, impl)
    benchmark.group = f"{name} batch={batch}"
    benchmark.extra_info.update(layer=name, batch=batch, impl=impl, op=case.spec.op,
                                input_shape=list(case.x.shape), flops=case.flops)
    settle()
    if impl == "numpy" and batch > 1:
        benchmark.pedantic(fn, rounds=SLOW_ROUNDS, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)


def test_sgemm_rate(benchmark):
    """NumPy's sgemm on a large square product: the rate the GFLOP/s report compares with."""
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    ref = a[:8].astype(np.float64) @ b.astype(np.float64)
    np.matmul(a, b, out=out)
    np.testing.assert_allclose(out[:8], ref, rtol=1e-3, atol=1e-2 * np.sqrt(n))
    benchmark.group = SGEMM_GROUP
    benchmark.extra_info.update(flops=2 * n ** 3)
    benchmark.pedantic(np.matmul, args=(a, b), kwargs=dict(out=out), rounds=10, iterations=1,
                       warmup_rounds=1)
