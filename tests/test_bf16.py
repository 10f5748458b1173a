"""precision="bfloat16": every bf16 path against a NumPy bfloat16 reference, and the API around it.

The reference rounds inputs and weights to bfloat16 (nearest, ties to even) exactly as the
paths must, then sums the products in float64. A path's float32 sums may differ from it by
at most ``(K + 2) * 2**-23 * sum|x*w|`` per output (``K`` products summed in float32, any
order); a path that did not round its inputs (or rounded them another way) misses that bound
by orders of magnitude (bfloat16 keeps 8 significant bits: 2**-9 relative error per input).

The emulation runs on every CPU; the AVX512-BF16 and AMX paths run where this CPU has them
and are skipped, saying so, where it does not.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastalex
from fastalex import functional as F
from fastalex.backends import _bf16, _target
from fastalex.layers import Conv2D, Dense
from fastalex.lowp import from_bfloat16, to_bfloat16

AVAILABLE = _bf16.cpu_paths()


@pytest.fixture(params=_bf16.PATHS)
def path(request):
    if request.param not in AVAILABLE:
        pytest.skip(f"this CPU (or OS) cannot run the {request.param!r} bfloat16 path "
                    f"(available: {', '.join(AVAILABLE)})")
    return request.param


def _launch(kernel, *args):
    kernel(*args)


def rb(a):
    """bfloat16-rounded values as float64."""
    return from_bfloat16(to_bfloat16(np.asarray(a, np.float32))).astype(np.float64)


def ref_conv(x, w, b, stride, padding, dilation, groups):
    """float64 cross-correlation (im2col by strides), NCHW: ``(y, sum|x*w|)``."""
    N, C, H, W = x.shape
    O, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((N, C, kh, kw, ho, wo))
    for u in range(kh):
        for v in range(kw):
            cols[:, :, u, v] = xp[:, :, u * dh:u * dh + sh * (ho - 1) + 1:sh, v * dw:v * dw + sw * (wo - 1) + 1:sw]
    og = O // groups
    y, mag = np.empty((N, O, ho, wo)), np.empty((N, O, ho, wo))
    for g in range(groups):
        cg_cols = cols[:, g * cg:(g + 1) * cg].reshape(N, cg * kh * kw, ho * wo)
        wg = w[g * og:(g + 1) * og].reshape(og, -1)
        y[:, g * og:(g + 1) * og] = np.einsum("ok,nkp->nop", wg, cg_cols).reshape(N, og, ho, wo)
        mag[:, g * og:(g + 1) * og] = np.einsum("ok,nkp->nop", np.abs(wg), np.abs(cg_cols)).reshape(N, og, ho, wo)
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
        mag += np.abs(np.asarray(b, np.float64))[None, :, None, None]
    return y, mag


def assert_bf16_close(y, ref, mag, depth, what):
    assert y.shape == ref.shape, f"{what}: shape {y.shape} != {ref.shape}"
    assert y.dtype == np.float32
    bound = (depth + 2) * 2.0 ** -23 * mag + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    worst = float((err / bound).max())
    assert worst <= 1.0, f"{what}: error {err.max():.3g} exceeds the float32-accumulation bound ({worst:.2f}x)"


CONV_GRID = [
    # N, C, H, W, O, k, stride, padding, dilation, groups
    (1, 3, 23, 23, 8, 11, 4, 2, 1, 1),     # a small conv1
    (2, 8, 9, 11, 12, 3, 1, 1, 1, 2),      # groups, non-square input
    (3, 16, 13, 13, 40, 3, 1, 1, 1, 2),    # batch > 1, channels not multiples of 32
    (1, 6, 12, 12, 64, 5, 2, 2, 1, 1),     # stride 2, padding 2
    (2, 4, 10, 10, 33, 1, 1, 0, 1, 1),     # 1x1, 33 output channels (one past a block)
    (1, 9, 11, 11, 6, 3, 2, 0, 2, 3),      # dilation, 3 groups, no padding
    (5, 32, 7, 7, 96, 3, 1, 1, 1, 1),      # several panels and row blocks
]


@pytest.mark.parametrize("shape", CONV_GRID, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True])
def test_conv_paths_match_the_bf16_reference(path, shape, relu):
    N, C, H, W, O, k, s, p, d, g = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((O, C // g, k, k), dtype=np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    plan = _bf16.plan_conv(w, b, (s, s), (d, d), g)
    y = _bf16.conv2d(x, plan, (p, p), relu, _launch, path)
    ref, mag = ref_conv(rb(x), rb(w), b, (s, s), (p, p), (d, d), g)
    if relu:
        ref = np.maximum(ref, 0.0)
    assert_bf16_close(y, ref, mag, C // g * k * k, f"{path} conv {shape}")


DENSE_SHAPES = [(1, 7, 10), (1, 300, 100), (5, 64, 33), (17, 96, 64), (33, 40, 3), (2, 1000, 70)]


@pytest.mark.parametrize("n,k,o", DENSE_SHAPES)
def test_dense_paths_match_the_bf16_reference(path, n, k, o):
    rng = np.random.default_rng(n * k + o)
    x = rng.standard_normal((n, k), dtype=np.float32)
    w = rng.standard_normal((o, k), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    for relu in (False, True):
        y = _bf16.linear(x, _bf16.plan_dense(w, b), relu, _launch, path)
        ref = rb(x) @ rb(w).T + b
        mag = np.abs(rb(x)) @ np.abs(rb(w)).T + np.abs(b)
        assert_bf16_close(y, np.maximum(ref, 0) if relu else ref, mag, k, f"{path} dense {n}x{k}->{o}")


@pytest.mark.parametrize("groups,m,k,n", [(1, 40, 70, 50), (3, 32, 64, 17), (2, 5, 33, 1)])
def test_unfused_products_match(path, groups, m, k, n):
    """``_bf16.gemm`` (a whole ``C``, for a tuner timing products alone) on each path."""
    rng = np.random.default_rng(m + k + n)
    w = rng.standard_normal((groups, m, k), dtype=np.float32)
    b = rng.standard_normal((groups, k, n), dtype=np.float32)
    a = _bf16.pack_weight(w)
    NP = -(-n // _bf16.NR)
    bp = np.zeros((groups, NP, a.shape[2] // 2, _bf16.NR, 2), np.uint16)
    for g in range(groups):  # B[g][k, col] -> panel col // 32, pair k // 2, lane col % 32, k % 2
        padded = np.zeros((a.shape[2], NP * _bf16.NR), np.float32)
        padded[:k, :n] = b[g]
        bp[g] = to_bfloat16(padded).reshape(a.shape[2] // 2, 2, NP, _bf16.NR).transpose(2, 0, 3, 1)
    c = np.zeros((groups, a.shape[1], NP * _bf16.NR), np.float32)
    _bf16.gemm(path, a, bp, c, m, n)
    ref = np.einsum("gmk,gkn->gmn", rb(w), rb(b))
    mag = np.einsum("gmk,gkn->gmn", np.abs(rb(w)), np.abs(rb(b)))
    assert_bf16_close(c[:, :m, :n], ref, mag, k, f"{path} gemm")


# The schedules a tuned bfloat16 layer may run besides the bf16 units' products (fast.conv2d_bf16,
# fast.linear_bf16): float32 Winograd on the rounded operands, and the streaming dense kernel on
# the rounded samples against the bfloat16 weight. Their products are those of the rounded values
# (exact in float32); the sums are float32, Winograd's with its own error, so they are held to
# the project's agreement tolerance around the bfloat16 reference, 5x or more tighter than the distance
# from it of a product of unrounded inputs (checked too).
TUNED_CONV_GRID = [
    # N, C, H, W, O, k, stride, padding, groups
    (1, 3, 27, 27, 32, 11, 4, 2, 1),      # conv1-like: space-to-depth, then F(4 or 6, 3)
    (2, 16, 13, 13, 32, 3, 1, 1, 1),      # F(4 or 5, 3)
    (1, 32, 11, 11, 64, 5, 1, 2, 2),      # F(4, 5), groups
    (3, 20, 9, 10, 24, 3, 1, 0, 1),       # output channels not a multiple of 32: chunked on sgemm
]


def _agrees(y, ref, what):
    scale = np.abs(ref).max()
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= 1e-4 * scale + 1e-5, f"{what}: error {err:.3g} of max {scale:.3g}"


@pytest.mark.parametrize("shape", TUNED_CONV_GRID, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("schedule", ["winograd-fused-4x4", "winograd-chunked-4x4", "winograd-chunked-small-4x4"])
def test_tuned_winograd_schedules_compute_the_rounded_convolution(monkeypatch, shape, schedule):
    from fastalex.backends import _tune, _winograd
    N, C, H, W, O, k, s, p, g = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((O, C // g, k, k), dtype=np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    plan = F.prepare_conv2d(w, b, s, groups=g, backend="numba", precision="bfloat16")
    packed = (O // g) % 32 == 0
    if schedule.startswith("winograd-fused") and not packed:
        pytest.skip("the fused schedule needs output channels in multiples of 32")
    monkeypatch.setitem(_tune.FORCE, "conv2d_bf16", schedule)
    y = F.conv2d(x, w, b, s, p, groups=g, activation="relu", backend="numba", precision="bfloat16", plan=plan)
    assert isinstance(plan.data.extra["winograd"], _winograd.Plan)
    assert plan.data.chosen[N] == (schedule, "forced")
    ref, _ = ref_conv(rb(x), rb(w), b, (s, s), (p, p), (1, 1), g)
    _agrees(y, np.maximum(ref, 0), f"{schedule} {shape}")
    unrounded, _ = ref_conv(x.astype(np.float64), w.astype(np.float64), b, (s, s), (p, p), (1, 1), g)
    assert np.abs(np.maximum(unrounded, 0) - np.maximum(ref, 0)).max() > 5 * (1e-4 * np.abs(ref).max() + 1e-5)


@pytest.mark.parametrize("n,k,o", DENSE_SHAPES)
def test_tuned_stream_dense_computes_the_rounded_product(monkeypatch, n, k, o):
    from fastalex.backends import _tune
    monkeypatch.setitem(_tune.FORCE, "linear_bf16", "stream")
    rng = np.random.default_rng(n * k + o + 1)
    x = rng.standard_normal((n, k), dtype=np.float32)
    w = rng.standard_normal((o, k), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    plan = F.prepare_linear(w, b, backend="numba", precision="bfloat16")
    y = F.linear(x, w, b, activation="relu", backend="numba", precision="bfloat16", plan=plan)
    ref = rb(x) @ rb(w).T + b
    mag = np.abs(rb(x)) @ np.abs(rb(w)).T + np.abs(b)
    assert_bf16_close(y, np.maximum(ref, 0), mag, k, f"stream dense {n}x{k}->{o}")
    assert plan.data.chosen[n] == ("stream", "forced")


def test_rounding_through_bfloat16_keeps_the_shape_and_rounds_every_value():
    x = np.random.default_rng(9).standard_normal((3, 5, 7), dtype=np.float32) * 1e3
    # NaN, infinities, overflow to infinity, zeros, and two ties (to the even neighbour: down, up)
    special = np.array([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 0.0, -0.0], np.float32)
    ties = np.array([0x3F808000, 0x3F818000], np.uint32).view(np.float32)
    x.reshape(-1)[:9] = np.concatenate([special, ties])
    r = _bf16.rounded(x)
    assert r.shape == x.shape and r.dtype == np.float32
    assert np.array_equal(r.view(np.uint32), from_bfloat16(to_bfloat16(x)).reshape(x.shape).view(np.uint32))
    assert r.reshape(-1)[7] == 1.0 and r.reshape(-1)[8] == 1.015625


def test_a_chosen_path_runs_alone_and_the_summary_names_each_layers_product(monkeypatch):
    """With a path set, every layer multiplies on it; tuned, the summary says what each layer
    ran per batch size (here the measured choice is forced, the tuner being off in tests)."""
    from fastalex.backends import _tune
    model = fastalex.alexnet("torchvision", backend="numba", precision="bfloat16")
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
    monkeypatch.setitem(_tune.FORCE, "conv2d_bf16", "winograd-chunked-4x4")
    monkeypatch.setitem(_tune.FORCE, "linear_bf16", "stream")
    model(x)
    text = model.summary()
    assert "batch 1: winograd-chunked-4x4 on float32 units (forced)" in text
    fastalex.set_bf16_path("emulation")
    try:
        fresh = fastalex.alexnet("torchvision", backend="numba", precision="bfloat16")
        fresh(x)  # FORCE names schedules this path does not offer: only the chosen path runs
        assert "winograd" not in fresh.summary()
    finally:
        fastalex.set_bf16_path(None)


def test_the_bound_catches_unrounded_inputs():
    """The tolerance is tight enough to tell bfloat16 products from float32 ones."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64), dtype=np.float32)
    w = rng.standard_normal((16, 64), dtype=np.float32)
    exact32 = x.astype(np.float64) @ w.astype(np.float64).T
    ref = rb(x) @ rb(w).T
    mag = np.abs(rb(x)) @ np.abs(rb(w)).T
    with pytest.raises(AssertionError):
        assert_bf16_close(exact32.astype(np.float32), ref, mag, 64, "float32 products")


def test_round_kernel_is_round_to_nearest_even():
    specials = np.array([0.0, -0.0, 1.0, 1.00390625, 1.005859375, 1.0 + 2 ** -8 + 2 ** -9,
                         3.0e38, -3.4e38, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 65504.0],
                        np.float32)
    # ties: 1 + 2**-8 is half-way between 1 and 1 + 2**-7 (keeps the even 1); 1 + 3*2**-8 rounds up
    ties = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float32)
    rand = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 1e3
    for a in (specials, ties, rand):
        got = _bf16.to_bf16(a)
        want = to_bfloat16(a)
        nan = np.isnan(a)
        assert np.array_equal(got[~nan], want[~nan])
        assert np.isnan(from_bfloat16(got[nan])).all()
    assert from_bfloat16(_bf16.to_bf16(ties)).tolist() == [1.0, 1 + 2 ** -6]


# ----------------------------------------------------------------------------- API

def test_paths_are_listed_best_first_with_the_emulation_last():
    paths = fastalex.bf16_paths()
    assert paths[-1] == "emulation"
    assert paths == [p for p in _bf16.PATHS if p in paths]
    assert fastalex.precision.active_bf16_path() == paths[0]


def test_the_cpu_is_asked_for_its_features_once(monkeypatch):
    """Each bf16 layer call lists the paths; asking LLVM every time cost ~0.2 ms a call."""
    import llvmlite.binding as llvm
    asked = []
    real = llvm.get_host_cpu_features
    monkeypatch.setattr(llvm, "get_host_cpu_features", lambda: asked.append(1) or real())
    _target.host_features.cache_clear()
    try:
        first = _bf16.cpu_paths()
        assert all(_bf16.cpu_paths() == first for _ in range(5))
        assert asked == [1]
    finally:
        _target.host_features.cache_clear()


@pytest.mark.skipif("avx512_bf16" not in AVAILABLE, reason="this CPU has no AVX512-BF16: nothing to hide")
def test_a_build_for_an_older_cpu_offers_no_bf16_unit_it_lacks():
    """With NUMBA_CPU_NAME=haswell (a portable build) on an AVX512-BF16 machine, the bf16 kernels
    cannot be compiled (LLVM aborted the process): only the emulation is offered, and a bf16
    model runs on it."""
    code = ("import numpy as np, fastalex; from fastalex.backends import _bf16; "
            "m = fastalex.alexnet('torchvision', precision='bfloat16', backend='numba'); "
            "x = np.ones((1, 3, 224, 224), np.float32); m(x); print(_bf16.cpu_paths(), m.bf16_path)")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "FASTALEX_TUNE": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "('emulation',) emulation"


def test_set_bf16_path_and_environment(monkeypatch):
    try:
        fastalex.set_bf16_path("emulation")
        assert fastalex.precision.active_bf16_path() == "emulation"
        assert fastalex.alexnet("torchvision", precision="bfloat16", backend="numba").bf16_path == "emulation"
    finally:
        fastalex.set_bf16_path(None)
    with pytest.raises(ValueError, match="unknown bfloat16 path 'tpu'"):
        fastalex.set_bf16_path("tpu")
    monkeypatch.setenv("FASTALEX_BF16_PATH", "emulation")
    assert _bf16.active_path() == "emulation"
    monkeypatch.setenv("FASTALEX_BF16_PATH", "bogus")
    with pytest.raises(ValueError, match="FASTALEX_BF16_PATH"):
        _bf16.active_path()


@pytest.mark.skipif("amx" in AVAILABLE, reason="this CPU runs AMX: nothing to refuse")
def test_a_path_the_cpu_lacks_is_refused():
    with pytest.raises(ValueError, match="cannot run"):
        fastalex.set_bf16_path("amx")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_functional_ops_in_bfloat16(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 9, 9), dtype=np.float32)
    w = rng.standard_normal((10, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(10, dtype=np.float32)
    y = F.conv2d(x, w, b, 2, 1, groups=2, activation="relu", backend=backend, precision="bfloat16")
    ref, mag = ref_conv(rb(x), rb(w), b, (2, 2), (1, 1), (1, 1), 2)
    assert_bf16_close(y, np.maximum(ref, 0), mag, 27, f"{backend} conv2d")
    plan = F.prepare_conv2d(w, b, 2, groups=2, backend=backend, precision="bfloat16")
    assert np.array_equal(F.conv2d(x, w, b, 2, 1, groups=2, activation="relu", backend=backend,
                                   precision="bfloat16", plan=plan), y)
    with pytest.raises(ValueError, match="precision"):
        F.conv2d(x, w, b, 2, 1, groups=2, backend=backend, plan=plan)  # a bf16 plan, float32 call
    single = F.conv2d(x[0], w, b, 2, 1, groups=2, backend=backend, precision="bfloat16")
    assert single.shape == y.shape[1:]

    xd = rng.standard_normal((3, 20), dtype=np.float32)
    wd = rng.standard_normal((7, 20), dtype=np.float32)
    bd = b[:7].copy()
    yd = F.linear(xd, wd, bd, backend=backend, precision="bfloat16")
    assert_bf16_close(yd, rb(xd) @ rb(wd).T + bd, np.abs(rb(xd)) @ np.abs(rb(wd)).T + np.abs(bd), 20,
                      f"{backend} linear")
    lp = F.prepare_linear(wd, bd, backend=backend)
    assert np.array_equal(F.linear(xd, wd, bd, backend=backend, precision="bfloat16", plan=lp), yd)
    assert F.linear(xd[0], wd, bd, backend=backend, precision="bfloat16").shape == (7,)
    with pytest.raises(ValueError, match="another weight"):
        F.linear(xd, wd.copy(), bd, backend=backend, precision="bfloat16", plan=lp)
    for call in (lambda: F.conv2d(x, w, precision="float16"), lambda: F.linear(xd, wd, precision="bf16")):
        with pytest.raises(ValueError, match="unknown precision"):
            call()


def test_layers_plan_once_and_replan_when_weights_change():
    rng = np.random.default_rng(4)
    conv = Conv2D(4, 8, 3, padding=1, precision="bfloat16")
    conv.backend = "numba"
    x = rng.standard_normal((1, 4, 6, 6), dtype=np.float32)
    y1 = conv(x)
    assert conv.plan() is conv.plan() and conv.plan().precision == "bfloat16"
    conv.weight = rng.standard_normal(conv.weight_shape, dtype=np.float32)
    y2 = conv(x)
    ref, mag = ref_conv(rb(x), rb(conv.weight), conv.bias, (1, 1), (1, 1), (1, 1), 1)
    assert_bf16_close(y2, ref, mag, 36, "conv after a new weight")
    assert not np.array_equal(y1, y2)
    assert "precision='bfloat16'" in repr(conv)

    dense = Dense(12, 5, precision="bfloat16")
    dense.backend = "numba"
    xd = rng.standard_normal((2, 12), dtype=np.float32)
    d1 = dense(xd)
    plan = dense.plan()
    assert dense.plan() is plan
    with pytest.raises(ValueError):  # planned parameters are read-only: no change behind the plan
        dense.stored_weight[0, 0] = 1.0
    dense.weight = rng.standard_normal((5, 12), dtype=np.float32)
    assert dense.plan() is not plan
    d2 = dense(xd)
    assert_bf16_close(d2, rb(xd) @ rb(dense.weight).T, np.abs(rb(xd)) @ np.abs(rb(dense.weight)).T, 12, "dense")
    assert not np.array_equal(d1, d2)
    assert dense.set_precision("float32").plan() is None


def test_precision_and_weight_dtype_go_together():
    with pytest.raises(ValueError, match="weight_dtype='int8'"):
        fastalex.alexnet("torchvision", precision="bfloat16", weight_dtype="int8")
    with pytest.raises(ValueError, match="weight_dtype='int8'"):
        Dense(4, 3, precision="bfloat16", weight_dtype="int8")
    model = fastalex.alexnet("torchvision", precision="bfloat16", weight_dtype="bfloat16")
    assert (model.precision, model.weight_dtype) == ("bfloat16", "bfloat16")
    with pytest.raises(ValueError, match="int8"):
        model.set_weight_dtype("int8")
    assert model.precision == "bfloat16" and model.weight_dtype == "bfloat16"  # nothing changed
    with pytest.raises(ValueError, match="unknown precision"):
        fastalex.alexnet(precision="double")


def test_model_in_bfloat16_numpy_and_numba_agree_and_summary_names_the_path():
    x = np.random.default_rng(5).standard_normal((2, 3, 224, 224), dtype=np.float32)
    ref = fastalex.alexnet("torchvision", backend="numpy", precision="bfloat16")
    fast = fastalex.alexnet("torchvision", backend="numba", precision="bfloat16")
    f32 = fastalex.alexnet("torchvision", backend="numba")
    y_ref, y_fast, y32 = ref(x), fast(x), f32(x)
    scale = np.abs(y_ref).max()
    # layer by layer the two agree to float32 sums (the op tests above); through 8 layers a
    # last-bit difference can flip the bfloat16 rounding of a later input, so the logits of
    # two bfloat16 runs differ about as much as bfloat16 from float32 (both well within 2%)
    assert np.abs(y_fast - y_ref).max() <= 2e-2 * scale
    assert 1e-4 * scale < np.abs(y_fast - y32).max() <= 2e-2 * scale  # bfloat16, not float32
    text = fast.summary()
    assert f"Precision: bfloat16 products, float32 sums; path: {fast.bf16_path}" in text
    assert f"bfloat16 {fast.bf16_path}:" in text
    assert ref.bf16_path == "emulation" and f32.bf16_path is None
    assert "Precision" not in f32.summary()
    assert fast.set_precision("float32").precision == "float32"
    assert np.array_equal(fast(x), y32)


def test_load_onnx_precision(tmp_path):
    pytest.importorskip("onnx")
    from fastalex.onnx_import import load_onnx
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
    files = sorted(f for f in os.listdir(fixture) if f.endswith(".onnx")) if os.path.isdir(fixture) else []
    if not files:
        pytest.skip("no .onnx fixture")
    for name in files:
        try:
            model = load_onnx(os.path.join(fixture, name), precision="bfloat16")
        except Exception:  # noqa: BLE001 - fixtures that are deliberately broken
            continue
        assert model.precision in ("bfloat16", "float32")  # float32: a graph without conv/dense
        break
    with pytest.raises(ValueError, match="unknown precision"):
        load_onnx(os.path.join(fixture, files[0]), precision="int4")


# ----------------------------------------------------------------------------- command line

def _cli(*args):
    env = dict(os.environ, FASTALEX_HOME=os.devnull)
    proc = subprocess.run([sys.executable, "-m", "fastalex", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_precision(tmp_path):
    from PIL import Image
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    proc = _cli("classify", photo, "--random-weights", "--precision", "bfloat16", "--json", "--top", "1")
    assert proc.returncode == 0, proc.stderr
    assert '"top"' in proc.stdout or "class" in proc.stdout
    proc = _cli("bench", "--backend", "numba", "--batch-size", "1", "--repeat", "1", "--warmup", "0",
                "--peers", "none", "--precision", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert f"bfloat16 precision, bfloat16 products on {_bf16.cpu_paths()[0]} (numba)" in proc.stdout
    proc = _cli("classify", photo, "--random-weights", "--precision", "bfloat16", "--weight-dtype", "int8")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--weight-dtype int8" in proc.stderr
