"""The fast backend's Winograd convolution (``backends/_winograd.py``) against the reference.

Winograd runs for convolutions whose weights were prepared (``Conv2D`` layers do it; the
functional API with ``plan=prepare_conv2d(...)``) when the kernel is square, the stride is
folded into channels (space-to-depth) and the effective kernel has 2 to 5 taps. Here the
channel threshold is lowered to 1 so that every such shape, not only AlexNet's wide layers,
runs through it, over a grid of kernels, strides, paddings, groups and sizes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from support import assert_agree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastalex
from fastalex import functional as F
from fastalex import layers as L

fast = pytest.importorskip("fastalex.backends.fast")
from fastalex.backends import _gemm, _tune, _winograd, tunables  # noqa: E402  (after the numba skip)


def _names(*schedules):
    """Every tile size's name of each schedule, the larger tiles first (the first that applies
    runs: the tile of fewest multiplies where it is a candidate, else the smallest)."""
    tiles = sorted({m for ms in _winograd.TILES.values() for m in ms}, reverse=True)
    return tuple(fast.winograd_schedule(s, m) for s in schedules for m in tiles)


#: the schedules of a Winograd plan, each first where it applies
SCHEDULES = {"fused": _names("winograd-fused", "winograd-chunked"), "chunked": _names("winograd-chunked"),
             "chunked-small": _names("winograd-chunked-small")}
#: every (m, r) of the tiles in use
TILE_PAIRS = sorted((m, r) for r, ms in _winograd.TILES.items() for m in ms)


@pytest.fixture(params=list(SCHEDULES))
def every_shape(monkeypatch, request):
    """Every shape on Winograd, through each of the two schedules of the micro-kernel's layers
    (the fused one per tile row, the chunked three launches); the sgemm layers are chunked."""
    monkeypatch.setattr(tunables, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setitem(_tune.FORCE, "conv2d", SCHEDULES[request.param])


def _array(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _planned(x, w, b, stride, padding, groups, relu):
    plan = F.prepare_conv2d(w, b, stride, 1, groups, backend="numba")
    assert isinstance(plan.data, _winograd.Plan), "expected the Winograd path"
    act = "relu" if relu else None
    y = F.conv2d(x, w, b, stride, padding, 1, groups, act, backend="numba", plan=plan)
    ref = F.conv2d(x, w, b, stride, padding, 1, groups, act, backend="numpy")
    return y, ref


@pytest.mark.parametrize("m, r", TILE_PAIRS)
def test_matrices_compute_a_correlation(m, r):
    """``A^T [(G g) * (B^T d)] = correlation(d, g)`` in 1-D, for every F(m, r) in use."""
    AT, G, BT = _winograd.matrices(m, r)
    alpha = m + r - 1
    assert alpha in _winograd.ALPHAS
    assert AT.shape == (m, alpha) and G.shape == (alpha, r) and BT.shape == (alpha, alpha)
    rng = np.random.default_rng(r)
    for _ in range(5):
        d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        want = np.array([d[i:i + r] @ g for i in range(m)])
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m, r", TILE_PAIRS)
def test_transform_kernels_spell_out_the_matrices(m, r):
    """The kernels' hand-written ``B^T`` (``_bt6``/``_bt7``/``_bt8``) and ``A^T`` (``_at``) are
    those of :func:`matrices`, on vectors of channels."""
    AT, _, BT = _winograd.matrices(m, r)
    alpha, C = m + r - 1, 19
    rng = np.random.default_rng(alpha)
    f = rng.standard_normal(alpha * C).astype(np.float32)     # alpha vectors of C channels
    want_b = (BT @ f.reshape(alpha, C).astype(np.float64)).reshape(-1)
    got = np.zeros(alpha * C, np.float32)
    {6: _winograd._bt6, 7: _winograd._bt7, 8: _winograd._bt8}[alpha](f, 0, C, got, 0, C, C)
    np.testing.assert_allclose(got, want_b, rtol=1e-5, atol=1e-4)
    got = np.zeros(m * C, np.float32)
    _winograd._at(alpha, m, f, 0, C, got, 0, C, C)
    np.testing.assert_allclose(got, (AT @ f.reshape(alpha, C).astype(np.float64)).reshape(-1), rtol=1e-5, atol=1e-4)


def test_tile_has_the_fewest_multiplies():
    """13x13 (AlexNet's conv3-5): 9 tiles of F(5, 3), 441 multiplies against 16 x 36 = 576 for
    F(4, 3); 12x12: 4 of F(6, 3) (256); 8x8: 4 of F(4, 3) (144); 27x27: F(4, 3) and F(5, 3)
    tie at 1764, F(6, 3) takes 1600. Ties go to the smaller tile."""
    assert [_winograd.tile_for(3, n, n) for n in (13, 12, 8, 55, 27)] == [5, 6, 4, 5, 6]
    assert _winograd.tile_for(5, 27, 27) == 4 and _winograd.tile_for(2, 9, 9) == 5
    for r, tiles in _winograd.TILES.items():
        for ho, wo in ((1, 1), (7, 30), (13, 13), (55, 55), (16, 9)):
            cost = {m: -(-ho // m) * -(-wo // m) * (m + r - 1) ** 2 for m in tiles}
            best = _winograd.tile_for(r, ho, wo)
            assert cost[best] == min(cost.values()) and best == min(m for m in tiles if cost[m] == cost[best])


#: (m, r, kernel, stride): each tile size on a plain kernel and on one after space-to-depth
TILE_KERNELS = [(m, r, k, s) for m, r in TILE_PAIRS for k, s in ((2, 1), (3, 1), (4, 1), (5, 1), (11, 4), (6, 2))
                if -(-k // s) == r]


@pytest.mark.parametrize("m, r, k, s", TILE_KERNELS)
@pytest.mark.parametrize("schedule", ["fused", "chunked"])
def test_every_tile_size_agrees(monkeypatch, m, r, k, s, schedule):
    """Each tile size of :data:`TILES`, forced, on kernels whose effective size it serves, output
    sizes not multiples of it, groups, padding and both schedules (products by the micro-kernel
    and by sgemm)."""
    monkeypatch.setattr(tunables, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setitem(_winograd.TILES, r, (m,))
    for cout_g, groups in ((32, 2), (5, 1)):
        if schedule == "fused" and cout_g % 32:
            continue
        monkeypatch.setitem(_tune.FORCE, "conv2d", fast.winograd_schedule(f"winograd-{schedule}", m))
        x = _array(m * 7 + k, (2, 3 * groups, 2 * m * s + k + 3, m * s + k + 1))
        w = _array(m * 7 + k + 1, (cout_g * groups, 3, k, k))
        b = _array(k, (cout_g * groups,))
        y, ref = _planned(x, w, b, s, 1, groups, relu=True)
        assert_agree(y, ref, f"F({m}, {r}) k={k} s={s} {schedule} out/g={cout_g}")


# (kernel, stride): effective kernels 2, 3, 4, 5 with and without space-to-depth
KERNELS = [(2, 1), (3, 1), (4, 1), (5, 1), (3, 2), (4, 2), (7, 2), (9, 2), (6, 3), (11, 4), (8, 4), (13, 4)]


@pytest.mark.parametrize("k, s", KERNELS)
@pytest.mark.parametrize("padding, groups", [(0, 1), (1, 2), (2, 1), (3, 3)])
@pytest.mark.parametrize("cout_g", [3, 32])  # products by NumPy's sgemm; by the _gemm kernel
def test_grid_agrees_with_the_reference(every_shape, k, s, padding, groups, cout_g):
    N, cin_g = 2, 2
    H = max(k - 2 * padding, 1) + 9   # output sizes not multiples of the tile
    W = max(k - 2 * padding, 1) + 4
    x = _array(k * 10 + s, (N, cin_g * groups, H, W))
    w = _array(k * 10 + s + 1, (cout_g * groups, cin_g, k, k))
    b = _array(k, (cout_g * groups,))
    y, ref = _planned(x, w, b, s, padding, groups, relu=bool(padding % 2))
    assert_agree(y, ref, f"winograd k={k} s={s} p={padding} g={groups} out/g={cout_g}")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(k=st.integers(2, 13), s=st.integers(1, 4), ph=st.integers(0, 3), pw=st.integers(0, 3),
       groups=st.sampled_from([1, 2, 4]), cin_g=st.integers(1, 5),
       cout_g=st.one_of(st.integers(1, 5), st.sampled_from([32, 64])),
       N=st.sampled_from([1, 3]), extra_h=st.integers(0, 12), extra_w=st.integers(0, 12),
       bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**31))
def test_random_shapes_agree(every_shape, k, s, ph, pw, groups, cin_g, cout_g, N, extra_h, extra_w,
                             bias, relu, seed):
    if not _winograd.supports((1, 1, k, k), (s, s), (1, 1)):
        return
    H, W = max(k - 2 * ph, 1) + extra_h, max(k - 2 * pw, 1) + extra_w
    x = _array(seed, (N, cin_g * groups, H, W))
    w = _array(seed + 1, (cout_g * groups, cin_g, k, k))
    b = _array(seed + 2, (cout_g * groups,)) if bias else None
    y, ref = _planned(x, w, b, s, (ph, pw), groups, relu)
    assert_agree(y, ref, f"winograd k={k} s={s} p={(ph, pw)} g={groups} N={N} {H}x{W}")


ALEXNET = {  # input (C, H, W), weight, stride, padding, groups: both variants' layers
    "orig conv1": ((3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "orig conv2": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "orig conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "orig conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "orig conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
    "tv conv1": ((3, 224, 224), (64, 3, 11, 11), 4, 2, 1),
    "tv conv2": ((64, 27, 27), (192, 64, 5, 5), 1, 2, 1),
    "tv conv3": ((192, 13, 13), (384, 192, 3, 3), 1, 1, 1),
    "tv conv4": ((384, 13, 13), (256, 384, 3, 3), 1, 1, 1),
    "tv conv5": ((256, 13, 13), (256, 256, 3, 3), 1, 1, 1),
}


@pytest.mark.parametrize("name", ALEXNET)
def test_alexnet_layers_run_winograd_and_agree(monkeypatch, name):
    """With the default channel threshold every AlexNet convolution is planned for Winograd,
    with its products on the register-blocked kernel, and runs it at any batch size."""
    xs, ws, stride, padding, groups = ALEXNET[name]
    fan_in = ws[1] * ws[2] * ws[3]
    x = np.abs(_array(1, (2, *xs)))  # post-ReLU-like activations, as in the network
    w = _array(2, ws) * np.float32(np.sqrt(2.0 / fan_in))
    b = _array(3, ws[:1]) * np.float32(0.1)
    y, ref = _planned(x, w, b, stride, padding, groups, relu=True)
    assert_agree(y, ref, name)
    plan = F.prepare_conv2d(w, b, stride, 1, groups, backend="numba")
    assert plan.data.packed
    assert_agree(F.conv2d(x[:1], w, b, stride, padding, 1, groups, "relu", backend="numba", plan=plan),
                 ref[:1], name + " batch 1")


def test_thin_layers_keep_im2col():
    w = _array(0, (4, 3, 3, 3))
    assert F.prepare_conv2d(w, None, 1, backend="numba").data is None  # 3 -> 4 channels: too thin
    assert F.prepare_conv2d(_array(0, (32, 32, 3, 3)), None, 1, 2, backend="numba").data is None  # dilation
    assert F.prepare_conv2d(_array(0, (32, 32, 1, 1)), None, 1, backend="numba").data is None  # 1x1
    assert F.prepare_conv2d(w, None, backend="numpy").data is None  # the reference prepares nothing


def test_plan_must_match_the_call():
    x, w, b = _array(0, (1, 32, 8, 8)), _array(1, (32, 32, 3, 3)), _array(2, (32,))
    plan = F.prepare_conv2d(w, b, 1, backend="numba")
    with pytest.raises(ValueError, match="prepared for other weights"):
        F.conv2d(x, w.copy(), b, 1, 1, backend="numba", plan=plan)
    with pytest.raises(ValueError, match="prepared for other weights"):
        F.conv2d(x, w, None, 1, 1, backend="numba", plan=plan)
    with pytest.raises(ValueError, match="prepared for other weights"):
        F.conv2d(x, w, b, 2, 1, backend="numba", plan=plan)
    with pytest.raises(ValueError, match="prepared for other weights"):
        F.conv2d(x, w, b, 1, 1, backend="numpy", plan=plan)
    with pytest.raises(TypeError, match="prepare_conv2d"):
        F.conv2d(x, w, b, 1, 1, backend="numba", plan="winograd")


def test_layer_plans_once_and_follows_new_weights():
    conv = L.Conv2D(32, 32, 3, padding=1, rng=0)
    conv.backend = "numba"
    x = _array(5, (1, 32, 9, 9))
    y1 = conv(x)
    plan = conv.plan()
    assert conv.plan() is plan and isinstance(plan.data, _winograd.Plan)
    with pytest.raises(ValueError, match="read-only"):
        conv.weight[0, 0, 0, 0] = 1.0  # a planned weight cannot change behind the plan's back
    new = conv.weight * np.float32(2.0)
    conv.weight = new
    assert conv.plan() is not plan
    assert_agree(conv(x), F.conv2d(x, new, conv.bias, 1, 1, backend="numpy"), "after new weights")
    assert_agree(y1, F.conv2d(x, new / 2, conv.bias, 1, 1, backend="numpy"), "before")


def test_layer_copies_the_callers_weights():
    w = _array(0, (32, 32, 3, 3))
    conv = L.Conv2D(32, 32, 3, weight=w)
    conv.backend = "numba"
    conv(_array(1, (1, 32, 5, 5)))
    assert w.flags.writeable and conv.weight is not w
    w[:] = 0.0  # the caller's array is theirs
    assert np.abs(conv.weight).sum() > 0


def test_models_agree_across_backends_with_winograd():
    for variant in ("original", "torchvision"):
        m = fastalex.alexnet(variant, seed=1)
        x = np.abs(_array(7, (2, *m.input_shape)))
        m.backend = "numba"
        y = m(x)
        assert any(isinstance(layer.plan().data, _winograd.Plan)
                   for _, layer in m.named_layers() if isinstance(layer, L.Conv2D))
        m.backend = "numpy"
        assert_agree(y, m(x), variant)


@pytest.mark.parametrize("k, s, groups", [(3, 1, 1), (5, 1, 2), (11, 4, 1)])
@pytest.mark.parametrize("cout_g", [6, 32])
def test_tiles_in_chunks_agree(every_shape, monkeypatch, k, s, groups, cout_g):
    """Tiles go through the transforms and products in cache-sized chunks (the last one partial)."""
    monkeypatch.setattr(tunables, "CHUNK_BYTES", 1)  # the smallest chunk: one row of tiles
    x = _array(k, (3, 4 * groups, 41 * s, 37 * s))
    w, b = _array(k + 1, (cout_g * groups, 4, k, k)), _array(k + 2, (cout_g * groups,))
    y, ref = _planned(x, w, b, s, 1, groups, relu=True)
    assert_agree(y, ref, f"chunks k={k} s={s} g={groups}")


def test_summary_shows_the_plan():
    m = fastalex.alexnet("original", seed=0, backend="numba")
    text = m.summary()
    assert ("features.0   Winograd F(4x4 or 5x5 or 6x6, 3x3) after space-to-depth 4x4 (11x11 stride 4 -> "
            "3x3 over 48 channels)") in text   # no input seen yet: the tiles it may take
    assert "features.4   Winograd F(4x4, 5x5)" in text
    m(np.zeros((1, *m.input_shape), np.float32))
    text = m.summary()  # the tile its 55x55 output took (of fewest multiplies: FASTALEX_TUNE=0 here)
    assert "features.0   Winograd F(5x5, 3x3) after space-to-depth" in text, text
    assert "features.8   Winograd F(5x5, 3x3)" in text and "batch 1: winograd-fused-5x5 (default)" in text
    m.backend = "numpy"
    assert "Winograd" not in m.summary()


@pytest.mark.parametrize("out, winograd_at_1", [(32, True), (40, False)])
def test_batch_size_picks_the_algorithm(monkeypatch, out, winograd_at_1):
    """Without measuring (``FASTALEX_TUNE=0``, as in this suite): products on the _gemm kernel (output channels per group a multiple of 32): Winograd at
    any batch size. Products by NumPy's sgemm: im2col for one image (faster there), Winograd
    from two."""
    calls = []
    monkeypatch.setattr(_winograd, "conv2d", lambda *a, **k: calls.append(a[0].shape[0]) or ref)
    w, b = _array(0, (out, 32, 3, 3)), _array(1, (out,))
    plan = F.prepare_conv2d(w, b, 1, backend="numba")
    assert plan.data.packed == winograd_at_1
    x = _array(2, (2, 32, 7, 7))
    ref = F.conv2d(x, w, b, 1, 1, backend="numpy")
    y1 = F.conv2d(x[:1], w, b, 1, 1, backend="numba", plan=plan)
    assert calls == ([1] if winograd_at_1 else [])
    if not winograd_at_1:
        assert_agree(y1, ref[:1], "batch 1")
    F.conv2d(x, w, b, 1, 1, backend="numba", plan=plan)
    assert calls[-1] == 2


def test_weights_are_transformed_once(monkeypatch):
    """A planned layer transforms its weights on its first call only, whichever schedule runs
    (choosing the default schedule must not transform a tile size it does not run)."""
    calls = []
    real = _winograd._transform
    monkeypatch.setattr(_winograd, "_transform", lambda *a: calls.append(a[3]) or real(*a))
    conv = L.Conv2D(384, 384, 3, padding=1, groups=2, rng=0)   # the 2012 network's conv4
    conv.backend = "numba"
    x = np.abs(_array(6, (1, 384, 13, 13)))
    for schedule in (None, "winograd-chunked-small-4x4", "winograd-chunked-small-4x4"):
        with _tune.forced("conv2d", schedule) if schedule else contextlib.nullcontext():
            conv(x)
    assert calls == [5, 4], calls   # the default F(5x5) once, then F(4x4) once


@pytest.mark.parametrize("batch, fused", [(1, True), (16, True), (64, False)])
def test_schedule_follows_the_weight_traffic(monkeypatch, batch, fused):
    """Without measuring (``FASTALEX_TUNE=0``, as in this suite): fused (one launch) while the tile rows together read at most FUSED_MAX_WEIGHT_TRAFFIC
    bytes of transformed weights (14 MB here, F(5, 3): 3 rows per image), else the chunked three
    launches; the same result either way."""
    w = _array(1, (384, 192, 3, 3)) * np.float32(0.03)   # torchvision's conv3: 14 MB transformed
    b = _array(2, (384,))
    x = np.abs(_array(3, (batch, 192, 13, 13)))
    plan = F.prepare_conv2d(w, b, 1, 1, 1, backend="numba")
    assert plan.data.weight_bytes(5) == plan.data.weights(5).nbytes and plan.data.weight_bytes(4) == 384 * 192 * 36 * 4
    assert fused == (plan.data.weight_bytes(5) * batch * 3 <= tunables.FUSED_MAX_WEIGHT_TRAFFIC)
    launched = []
    real = fast._launch
    monkeypatch.setattr(fast, "_launch", lambda kernel, *args: (launched.append(kernel), real(kernel, *args)))
    y = F.conv2d(x, w, b, 1, 1, 1, 1, "relu", backend="numba", plan=plan)
    assert (launched == [_winograd._fused]) == fused, [k.__name__ for k in launched]
    if not fused:
        assert _winograd._fused not in launched and _gemm.batched_gemm in launched
    assert_agree(y[:2], F.conv2d(x[:2], w, b, 1, 1, 1, 1, "relu", backend="numpy"), f"batch {batch}")


def test_fused_refuses_weights_that_do_not_fit():
    """The fused kernel's products address memory directly: arguments that do not fit are refused."""
    x, y = np.zeros((1, 8, 9, 9), np.float32), np.zeros((1, 64, 9, 9), np.float32)
    bp = np.stack([_gemm.pack_b(_array(0, (36, 8, 32)))])        # 32 output channels, not 64
    with pytest.raises(ValueError, match="do not fit"):
        _winograd.checked_fused(x, bp, y, np.zeros(64, np.float32), True, 4, 1, 1, 1, 3, 3, 14, 8)
