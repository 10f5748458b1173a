"""One benchmark per (AlexNet layer, batch size, implementation).

Implementations: the two fastalex backends (``numba``, ``numpy``) and the peers
(``torch``, skipped when not installed); see ``benchmarks/conftest.py``. ``benchmark.group``
is ``"<layer> batch=<n>"`` so they sit side by side under ``--benchmark-group-by=group``::

    pytest benchmarks/test_bench_layers.py --benchmark-group-by=group \\
        --benchmark-columns=median,min,rounds --benchmark-sort=name

Every benchmark first checks that the two backends agree on its input (and that a peer
agrees with them), then times. ``--benchmark-disable`` runs just the checks (once each).
"""

from __future__ import annotations

LAYER_BATCHES = (1, 16)

# The NumPy path is slow at batch 16: a few rounds are enough there.
SLOW_ROUNDS = 3


def test_layer(benchmark, checked_layer, alexnet_layer):
    name, batch, impl = alexnet_layer
    case, fn = checked_layer(name, batch, impl)
    benchmark.group = f"{name} batch={batch}"
    benchmark.extra_info.update(layer=name, batch=batch, impl=impl, op=case.spec.op,
                                input_shape=list(case.x.shape))
    if impl == "numpy" and batch > 1:
        benchmark.pedantic(fn, rounds=SLOW_ROUNDS, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)
