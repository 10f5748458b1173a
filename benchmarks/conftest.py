"""Shared pieces of the benchmark suites: AlexNet's layer shapes, their inputs, the agreement
check every benchmark runs before it times anything, and the "peers" (other libraries
running the same layer with the same weights).

Everything is reached through fixtures (``tests/`` has a ``conftest.py`` too, so
``from conftest import ...`` would be ambiguous when both directories are collected):

* ``assert_agree(result, reference, what)`` -> the project's tolerance,
  ``|fast - ref| <= 1e-4 * max|ref| + 1e-5``.
* ``layer_case(name, batch)`` -> a cached :class:`LayerCase`: its arrays, ``run(backend)``
  and ``reference()`` (the NumPy backend's output, computed once).
* ``peer_function(peer, case)`` -> a zero-argument callable returning a NumPy array, or a
  clean ``pytest.skip`` when the peer library is not installed.
* ``checked_layer(name, batch, impl)`` -> ``(case, callable)`` after the agreement checks.
* A test taking the argument ``alexnet_layer`` is run for every ``(name, batch, impl)``
  (``name`` in :data:`LAYERS`; the module may narrow the grid with ``LAYER_NAMES``,
  ``LAYER_BATCHES`` and ``LAYER_IMPLEMENTATIONS``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

import fastalex
import fastalex.functional as F

# The threading layer the fastalex command runs on (TBB, else workqueue; the library leaves the choice to Numba).
fastalex.configure_threads()

#: seconds of rest before each timing (see the ``settle`` fixture)
SETTLE_SECONDS = 0.3

BACKENDS = ("numba", "numpy")
PEERS = ("torch",)

# ----------------------------------------------------------------------------- agreement


def agreement_bound(reference) -> float:
    """The largest allowed ``|fast - ref|``: ``1e-4 * max|ref| + 1e-5``."""
    reference = np.asarray(reference)
    return 1e-4 * float(np.abs(reference).max(initial=0.0)) + 1e-5


def assert_agree(result, reference, what: str = "") -> None:
    """Fail unless ``result`` matches ``reference`` in shape and within the project's tolerance."""
    result, reference = np.asarray(result), np.asarray(reference)
    assert result.shape == reference.shape, f"{what}: shape {result.shape} != reference {reference.shape}"
    err = float(np.abs(result.astype(np.float64) - reference).max(initial=0.0))
    bound = agreement_bound(reference)
    assert err <= bound, f"{what}: max |result - reference| = {err:.3g} exceeds {bound:.3g}"


# ----------------------------------------------------------------------------- AlexNet's layers
# The 2012 paper's network (one-tower form: the two GPUs' halves are groups=2).

LRN_ARGS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
POOL_ARGS = dict(kernel_size=3, stride=2)


@dataclass(frozen=True)
class LayerSpec:
    name: str
    op: str                      # "conv2d" | "local_response_norm" | "max_pool2d" | "linear"
    input_shape: tuple           # per sample
    weight_shape: tuple = ()     # conv / dense only
    kwargs: dict = field(default_factory=dict)

    def macs(self) -> int:
        """Multiply-accumulates per sample (conv and dense; 0 for the others)."""
        if self.op == "linear":
            return int(np.prod(self.weight_shape))
        if self.op != "conv2d":
            return 0
        out, cin_g, kh, kw = self.weight_shape
        stride, padding = self.kwargs.get("stride", 1), self.kwargs.get("padding", 0)
        ho = (self.input_shape[1] + 2 * padding - kh) // stride + 1
        wo = (self.input_shape[2] + 2 * padding - kw) // stride + 1
        return out * ho * wo * cin_g * kh * kw


def _convs_and_pools(prefix, channels, conv1, groups):
    """One variant's conv/pool layers; ``conv1`` is (input size, padding), ``groups`` of conv2/4/5."""
    c1, c2, c3, c4, c5 = channels
    size, pad = conv1
    g = groups
    return [
        LayerSpec(f"{prefix}conv1", "conv2d", (3, size, size), (c1, 3, 11, 11), dict(stride=4, padding=pad)),
        LayerSpec(f"{prefix}pool1", "max_pool2d", (c1, 55, 55), kwargs=POOL_ARGS),
        LayerSpec(f"{prefix}conv2", "conv2d", (c1, 27, 27), (c2, c1 // g, 5, 5), dict(padding=2, groups=g)),
        LayerSpec(f"{prefix}pool2", "max_pool2d", (c2, 27, 27), kwargs=POOL_ARGS),
        LayerSpec(f"{prefix}conv3", "conv2d", (c2, 13, 13), (c3, c2, 3, 3), dict(padding=1)),
        LayerSpec(f"{prefix}conv4", "conv2d", (c3, 13, 13), (c4, c3 // g, 3, 3), dict(padding=1, groups=g)),
        LayerSpec(f"{prefix}conv5", "conv2d", (c4, 13, 13), (c5, c4 // g, 3, 3), dict(padding=1, groups=g)),
        LayerSpec(f"{prefix}pool3", "max_pool2d", (c5, 13, 13), kwargs=POOL_ARGS),
    ]


# The 2012 network (names without prefix) and torchvision's (prefix "tv-"); the dense layers
# are the same in both. Convolutions run with their fused ReLU, as in the models.
LAYERS = {spec.name: spec for spec in [
    *_convs_and_pools("", (96, 256, 384, 384, 256), (227, 0), 2),
    LayerSpec("lrn1", "local_response_norm", (96, 55, 55), kwargs=LRN_ARGS),
    LayerSpec("lrn2", "local_response_norm", (256, 27, 27), kwargs=LRN_ARGS),
    *_convs_and_pools("tv-", (64, 192, 384, 256, 256), (224, 2), 1),
    LayerSpec("fc6", "linear", (9216,), (4096, 9216)),
    LayerSpec("fc7", "linear", (4096,), (4096, 4096)),
    LayerSpec("fc8", "linear", (4096,), (1000, 4096)),
]}


@functools.lru_cache(maxsize=None)
def layer_params(name: str):
    """``(weight, bias)`` of a conv/dense layer (He-scaled, fixed seed), ``(None, None)`` otherwise."""
    spec = LAYERS[name]
    if not spec.weight_shape:
        return None, None
    rng = np.random.default_rng(sum(map(ord, name)))
    fan_in = int(np.prod(spec.weight_shape[1:]))
    weight = rng.standard_normal(spec.weight_shape, dtype=np.float32)
    weight *= np.float32(np.sqrt(2.0 / fan_in))
    bias = rng.standard_normal(spec.weight_shape[0], dtype=np.float32) * np.float32(0.1)
    return weight, bias


@dataclass
class LayerCase:
    """One AlexNet layer at one batch size: the arrays and how to run it."""

    spec: LayerSpec
    batch: int
    x: np.ndarray
    weight: np.ndarray | None
    bias: np.ndarray | None

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, backend: str) -> np.ndarray:
        """The layer through ``fastalex.functional`` on ``backend``: a convolution with its fused
        ReLU and its weights prepared once (as ``Conv2D`` layers run it)."""
        spec = self.spec
        op = getattr(F, spec.op)
        if spec.op == "conv2d":
            return op(self.x, self.weight, self.bias, activation="relu", backend=backend,
                      plan=self._plans[backend], **spec.kwargs)
        if spec.op == "linear":
            return op(self.x, self.weight, self.bias, backend=backend, **spec.kwargs)
        return op(self.x, backend=backend, **spec.kwargs)

    @functools.cached_property
    def _plans(self) -> dict:
        kw = self.spec.kwargs
        return {b: F.prepare_conv2d(self.weight, self.bias, kw.get("stride", 1), 1, kw.get("groups", 1),
                                    backend=b) for b in BACKENDS}

    @property
    def flops(self) -> int:
        """Floating-point operations of one call (2 per multiply-accumulate)."""
        return 2 * self.batch * self.spec.macs()

    def function(self, backend: str):
        return functools.partial(self.run, backend)

    @functools.cached_property
    def _reference(self) -> np.ndarray:
        return self.run("numpy")

    def reference(self) -> np.ndarray:
        """The NumPy backend's output (computed once per case)."""
        return self._reference


@functools.lru_cache(maxsize=None)
def get_layer_case(name: str, batch: int) -> LayerCase:
    """The cached :class:`LayerCase` of AlexNet layer ``name`` at ``batch``.

    Inputs of the layers that follow a ReLU (LRN, pooling, fc7/fc8) are non-negative, as in
    the network.
    """
    spec = LAYERS[name]
    rng = np.random.default_rng(1000 * batch + sum(map(ord, name)))
    x = rng.standard_normal((batch, *spec.input_shape), dtype=np.float32)
    if spec.op != "conv2d" and name != "fc6":
        np.maximum(x, 0.0, out=x)
    weight, bias = layer_params(name)
    return LayerCase(spec, batch, x, weight, bias)


# ----------------------------------------------------------------------------- peers


def _num_threads() -> int:
    import numba

    return numba.get_num_threads()


def _torch_function(case: LayerCase):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as TF

    torch.set_num_threads(_num_threads())  # the same number of cores as the Numba kernels
    spec = case.spec
    x = torch.from_numpy(case.x)
    w = None if case.weight is None else torch.from_numpy(case.weight)
    b = None if case.bias is None else torch.from_numpy(case.bias)
    kw = spec.kwargs
    if spec.op == "conv2d":  # conv2d + ReLU, as fastalex's fused convolution
        call = lambda: torch.relu_(TF.conv2d(x, w, b, kw.get("stride", 1), kw.get("padding", 0), 1,
                                             kw.get("groups", 1)))
    elif spec.op == "linear":
        call = lambda: TF.linear(x, w, b)
    elif spec.op == "local_response_norm":
        call = lambda: TF.local_response_norm(x, kw["size"], kw["alpha"], kw["beta"], kw["k"])
    elif spec.op == "max_pool2d":
        call = lambda: TF.max_pool2d(x, kw["kernel_size"], kw["stride"])
    else:  # pragma: no cover - a new op needs its peer spelled out here
        raise NotImplementedError(f"no torch peer for {spec.op}")

    def run():
        with torch.inference_mode():
            return call().numpy()

    return run


_PEER_FACTORIES = {"torch": _torch_function}


def peer_function(peer: str, case: LayerCase):
    """A zero-argument callable running ``case`` with library ``peer`` (skips if not installed)."""
    return _PEER_FACTORIES[peer](case)


def implementation(impl: str, case: LayerCase):
    """A zero-argument callable for a fastalex backend (``numba``/``numpy``) or a peer."""
    if impl in BACKENDS:
        return case.function(impl)
    return peer_function(impl, case)


@pytest.fixture
def checked_layer():
    """``checked_layer(name, batch, impl)`` -> the callable to time, after checking that the
    two backends agree on this input and, for a peer, that the peer agrees too."""

    def make(name: str, batch: int, impl: str):
        case = get_layer_case(name, batch)
        fn = implementation(impl, case)  # skips first if a peer is missing
        reference = case.reference()
        assert_agree(case.run("numba"), reference, f"{name} batch={batch} numba vs numpy")
        if impl not in BACKENDS:
            assert_agree(fn(), reference, f"{name} batch={batch} {impl} vs numpy")
        return case, fn

    return make


@pytest.fixture(name="assert_agree")
def assert_agree_fixture():
    """The agreement check, as a fixture (see :func:`assert_agree`)."""
    return assert_agree


@pytest.fixture(name="layer_case")
def layer_case_fixture():
    """``layer_case(name, batch)`` -> the cached :class:`LayerCase`."""
    return get_layer_case


@pytest.fixture(name="peer_function")
def peer_function_fixture():
    """``peer_function(peer, case)`` -> a callable running the case with a peer library."""
    return peer_function


def pytest_generate_tests(metafunc):
    if "alexnet_layer" not in metafunc.fixturenames:
        return
    names = getattr(metafunc.module, "LAYER_NAMES", tuple(LAYERS))
    batches = getattr(metafunc.module, "LAYER_BATCHES", (1, 16))
    impls = getattr(metafunc.module, "LAYER_IMPLEMENTATIONS", BACKENDS + PEERS)
    grid = [(n, b, i) for n in names for b in batches for i in impls]
    metafunc.parametrize("alexnet_layer", grid, ids=[f"{n}-b{b}-{i}" for n, b, i in grid])


# ----------------------------------------------------------------------------- GFLOP/s report

SGEMM_GROUP = "sgemm"  # the machine's BLAS rate, measured in the same run


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    """After a timed run: GFLOP/s of every conv/dense benchmark and its fraction of the sgemm
    rate measured in the same run (``test_sgemm_rate``)."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    rows = [b for b in session.benchmarks if b.extra_info.get("flops")]
    if not rows:
        return
    sgemm = [b.extra_info["flops"] / b.stats.median for b in rows if b.group == SGEMM_GROUP]
    rate = max(sgemm) if sgemm else None
    tr = terminalreporter
    tr.section("GFLOP/s (median)")
    if rate:
        tr.write_line(f"sgemm rate in this run: {rate / 1e9:.1f} GFLOP/s")
    tr.write_line(f"{'benchmark':<44} {'median ms':>10} {'GFLOP/s':>8} {'of sgemm':>9}")
    for b in sorted(rows, key=lambda b: (b.group, b.name)):
        if b.group == SGEMM_GROUP:
            continue
        gflops = b.extra_info["flops"] / b.stats.median / 1e9
        share = f"{gflops * 1e9 / rate:8.0%}" if rate else "       -"
        tr.write_line(f"{b.name[:44]:<44} {b.stats.median * 1e3:>10.3f} {gflops:>8.1f} {share:>9}")


# ----------------------------------------------------------------------------- fairness


@pytest.fixture(name="settle")
def settle_fixture(request):
    """``settle()``, called right before the timing (after the agreement checks, which run the
    NumPy reference): a short rest. The thread pools used just before keep their threads
    spinning for a while after their last call (OpenBLAS's for ~0.1 s, PyTorch's and ONNX
    Runtime's too), and on 2 cores they would take them from whichever engine is timed next.
    Every engine then starts on idle cores. No rest with ``--benchmark-disable``."""
    disabled = request.config.getoption("benchmark_disable", False)

    def settle():
        if not disabled:
            time.sleep(SETTLE_SECONDS)

    return settle
