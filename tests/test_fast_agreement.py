"""The fast (Numba) backend agrees with the NumPy reference, op by op.

Hypothesis draws arguments from a grid far wider than AlexNet's (kernels 1-11, strides 1-4,
padding 0-3, dilation 1-2, groups 1/2/4, batch 1 and 3, odd and non-square inputs, ceil_mode,
count_include_pad, odd and even LRN sizes, beta 0.75 and others); every draw must satisfy
``|fast - ref| <= 1e-4 * max|ref| + 1e-5``. Then the exact shapes of AlexNet's layers.

The draws are derandomized (the same examples every run) and small, so the file's time is
mostly Numba's first compilation (cached on disk for the next run).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_agree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastalex import functional as F

pytest.importorskip("numba")

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def both(op, *args, **kwargs):
    """``(fast, reference)`` outputs of ``functional.<op>``."""
    fn = getattr(F, op)
    return fn(*args, backend="numba", **kwargs), fn(*args, backend="numpy", **kwargs)


def _array(seed, shape, nonneg=False):
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return np.abs(x) if nonneg else x


seeds = st.integers(0, 2**32 - 1)
batches = st.sampled_from([1, 3])


# ----------------------------------------------------------------------------- convolution

@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    H = draw(st.integers(max(1, span_h - 2 * ph), max(1, span_h - 2 * ph) + 12))
    W = draw(st.integers(max(1, span_w - 2 * pw), max(1, span_w - 2 * pw) + 12))
    return dict(N=draw(batches), C=cin_g * groups, O=cout_g * groups, k=(kh, kw), H=H, W=W,
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups,
                bias=draw(st.booleans()), relu=draw(st.booleans()), seed=draw(seeds))


@settings(max_examples=150, **SETTINGS)
@given(conv_cases())
def test_conv2d_agrees(c):
    x = _array(c["seed"], (c["N"], c["C"], c["H"], c["W"]))
    w = _array(c["seed"] + 1, (c["O"], c["C"] // c["groups"], *c["k"]))
    b = _array(c["seed"] + 2, (c["O"],)) if c["bias"] else None
    fast, ref = both("conv2d", x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"],
                     activation="relu" if c["relu"] else None)
    assert_agree(fast, ref, f"conv2d {c}")


def test_conv2d_pointwise_and_single_image():
    """1x1 stride-1 convolutions skip the packing; a (C, H, W) input gives a (O, H', W') output."""
    x, w, b = _array(1, (3, 8, 7, 5)), _array(2, (6, 4, 1, 1)), _array(3, (6,))
    assert_agree(*both("conv2d", x, w, b, groups=2, activation="relu"), "pointwise")
    fast, ref = both("conv2d", x[0], _array(4, (5, 8, 3, 3)), None, 2, 1)
    assert fast.shape == ref.shape == (5, 4, 3)
    assert_agree(fast, ref, "single image")


# ----------------------------------------------------------------------------- pooling

@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    ph, pw = draw(st.integers(0, min(3, kh // 2))), draw(st.integers(0, min(3, kw // 2)))
    H = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + 14))
    W = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + 14))
    return dict(N=draw(batches), C=draw(st.integers(1, 5)), H=H, W=W, kernel=(kh, kw),
                stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))), padding=(ph, pw),
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                seed=draw(seeds))


@settings(max_examples=150, **SETTINGS)
@given(pool_cases())
def test_max_pool2d_agrees(c):
    x = _array(c["seed"], (c["N"], c["C"], c["H"], c["W"]))
    fast, ref = both("max_pool2d", x, c["kernel"], c["stride"], c["padding"], c["ceil_mode"])
    assert_agree(fast, ref, f"max_pool2d {c}")


@settings(max_examples=150, **SETTINGS)
@given(pool_cases())
def test_avg_pool2d_agrees(c):
    x = _array(c["seed"], (c["N"], c["C"], c["H"], c["W"]))
    fast, ref = both("avg_pool2d", x, c["kernel"], c["stride"], c["padding"], c["ceil_mode"],
                     c["count_include_pad"])
    assert_agree(fast, ref, f"avg_pool2d {c}")


@settings(max_examples=80, **SETTINGS)
@given(batches, st.integers(1, 5), st.integers(1, 23), st.integers(1, 23), st.integers(1, 9),
       st.integers(1, 9), seeds)
def test_adaptive_avg_pool2d_agrees(N, C, H, W, oh, ow, seed):
    x = _array(seed, (N, C, H, W))
    assert_agree(*both("adaptive_avg_pool2d", x, (oh, ow)), f"adaptive {x.shape} -> {(oh, ow)}")


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
def test_max_pool2d_every_row_length_is_exact(kernel, stride):
    """The vector kernel (blocks of 16, 8, 4, 2, 1 lanes; 3-tap windows straight-line; stride 2
    by a shuffle) over every row length from 1 to 40 and both ceil modes, with a NaN and a -inf
    in some planes: exactly the reference's values (a maximum is exact)."""
    rng = np.random.default_rng(kernel * 10 + stride)
    for W in range(max(1, kernel - 2 * (kernel // 2)), 41):
        for ceil_mode in (False, True):
            pad = (W % 2) * (kernel // 2)  # some with padding, some without
            if W + 2 * pad < kernel:
                continue
            x = rng.standard_normal((2, 3, kernel + 4, W)).astype(np.float32)
            x[0, 1, rng.integers(kernel + 4), rng.integers(W)] = np.nan
            x[1, 2, rng.integers(kernel + 4), rng.integers(W)] = -np.inf
            fast, ref = both("max_pool2d", x, (kernel, kernel), (stride, stride), (pad, pad), ceil_mode)
            np.testing.assert_array_equal(fast, ref, err_msg=f"W={W} pad={pad} ceil_mode={ceil_mode}")


def test_max_pool2d_tasks_of_several_planes():
    """Small planes go several to a task (POOL_TASK_VALUES): every plane of a batch whose plane
    count is not a multiple of a task's is pooled, none twice or from another plane."""
    from fastalex.backends import tunables
    per = tunables.POOL_TASK_VALUES // (13 * 13)
    x = _array(40, (3, per + 7, 13, 13))
    fast, ref = both("max_pool2d", x, 3, 2)
    np.testing.assert_array_equal(fast, ref)


def test_max_pool2d_propagates_nan():
    x = _array(5, (2, 3, 9, 8))
    x[0, 1, 4, 4] = np.nan
    fast, ref = both("max_pool2d", x, 3, 2, 1, True)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(ref))
    assert np.isnan(fast).any()
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(fast[ok], ref[ok])


# ----------------------------------------------------------------------------- LRN

@settings(max_examples=120, **SETTINGS)
@given(batches, st.integers(1, 24), st.integers(1, 9), st.integers(1, 9), st.integers(1, 8),
       st.floats(1e-4, 1.0), st.one_of(st.just(0.75), st.floats(0.1, 1.5)), st.floats(0.5, 3.0),
       seeds)
def test_local_response_norm_agrees(N, C, H, W, size, alpha, beta, k, seed):
    x = _array(seed, (N, C, H, W)) * np.float32(3.0)
    assert_agree(*both("local_response_norm", x, size, alpha, beta, k),
                 f"lrn {x.shape} size={size} alpha={alpha} beta={beta} k={k}")


def test_local_response_norm_large_plane():
    """More pixels than one of the kernel's pixel blocks, and channels far above the window."""
    x = _array(6, (2, 40, 31, 29), nonneg=True) * np.float32(10.0)
    for size, beta in ((5, 0.75), (6, 0.6), (1, 0.75)):
        assert_agree(*both("local_response_norm", x, size, 1e-3, beta, 1.0), f"lrn size={size}")


# ----------------------------------------------------------------------------- dense and relu

@settings(max_examples=60, **SETTINGS)
@given(batches, st.integers(1, 300), st.integers(1, 50), st.booleans(), st.booleans(), seeds)
def test_linear_agrees(N, fin, fout, bias, relu, seed):
    x, w = _array(seed, (N, fin)), _array(seed + 1, (fout, fin))
    b = _array(seed + 2, (fout,)) if bias else None
    assert_agree(*both("linear", x, w, b, "relu" if relu else None), f"linear {N}x{fin}->{fout}")


def test_relu_agrees_and_keeps_nan():
    x = _array(7, (3, 5, 7, 2))
    x[0, 0, 0, 0] = np.nan
    fast, ref = both("relu", x)
    np.testing.assert_array_equal(fast, ref)  # equal_nan by default for arrays


# ----------------------------------------------------------------------------- AlexNet's shapes

ALEXNET_CONVS = {
    "conv1": ((3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
    "torchvision conv1": ((3, 224, 224), (64, 3, 11, 11), 4, 2, 1),
}


@pytest.mark.parametrize("name", ALEXNET_CONVS)
def test_alexnet_conv(name):
    xs, ws, stride, padding, groups = ALEXNET_CONVS[name]
    x, w, b = _array(10, (2, *xs)), _array(11, ws) * np.float32(0.05), _array(12, ws[:1])
    assert_agree(*both("conv2d", x, w, b, stride, padding, 1, groups, activation="relu"), name)


@pytest.mark.parametrize("shape", [(2, 96, 55, 55), (2, 256, 27, 27)], ids=["lrn1", "lrn2"])
def test_alexnet_lrn(shape):
    x = _array(13, shape, nonneg=True) * np.float32(20.0)
    assert_agree(*both("local_response_norm", x, 5, 1e-4, 0.75, 2.0), f"lrn {shape}")


@pytest.mark.parametrize("shape", [(2, 96, 55, 55), (2, 256, 27, 27), (2, 256, 13, 13)],
                         ids=["pool1", "pool2", "pool3"])
def test_alexnet_max_pool(shape):
    x = _array(14, shape, nonneg=True)
    assert_agree(*both("max_pool2d", x, 3, 2), f"max_pool {shape}")


def test_alexnet_adaptive_pool():
    x = _array(15, (2, 256, 6, 6), nonneg=True)
    assert_agree(*both("adaptive_avg_pool2d", x, 6), "adaptive 6x6 -> 6x6")
    assert_agree(*both("adaptive_avg_pool2d", x[:, :, :5, :5], (6, 6)), "adaptive 5x5 -> 6x6")
    y = F.adaptive_avg_pool2d(x, 6, backend="numba")  # the identity case is a copy, never a view
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("fin, fout", [(9216, 4096), (4096, 4096), (4096, 1000)],
                         ids=["fc6", "fc7", "fc8"])
def test_alexnet_linear(fin, fout):
    x, w, b = _array(16, (2, fin)), _array(17, (fout, fin)) * np.float32(0.01), _array(18, (fout,))
    assert_agree(*both("linear", x, w, b, "relu"), f"linear {fin}->{fout}")
    assert_agree(*both("linear", x[0], w, b), f"linear single {fin}->{fout}")


# ----------------------------------------------------------------------------- compiled versions

def test_one_compiled_version_per_kernel():
    """Read-only inputs, no bias, ReLU on or off, odd sizes: every kernel keeps one signature
    (each extra one would cost a compilation at start-up)."""
    from fastalex.backends import _pool, fast

    x, w, b = _array(20, (2, 4, 9, 10)), _array(21, (6, 2, 3, 3)), _array(22, (6,))
    ro_x, ro_b = x.copy(), b.copy()
    ro_x.flags.writeable = ro_b.flags.writeable = False
    for xx, bb, act in ((x, b, "relu"), (ro_x, ro_b, None), (ro_x, None, "relu")):
        assert_agree(*both("conv2d", xx, w, bb, 1, 1, 1, 2, activation=act), "conv2d")
        assert_agree(*both("max_pool2d", xx, 3, 2, 1, True), "max_pool2d")
        assert_agree(*both("avg_pool2d", xx, 3, 2, 1, False, False), "avg_pool2d")
        assert_agree(*both("adaptive_avg_pool2d", xx, (3, 4)), "adaptive_avg_pool2d")
        assert_agree(*both("local_response_norm", xx, 3, 1e-3, 0.75, 1.0), "lrn")
        assert_agree(*both("local_response_norm", xx, 4, 1e-3, 0.5, 1.0), "lrn")
        assert_agree(*both("relu", xx), "relu")
    kernels = [fast._im2col, fast._bias_relu, fast._scatter_bias_relu, _pool.max_pool, fast._avg_pool,
               fast._adaptive_avg_pool, fast._lrn, fast._relu]
    counts = {k.__name__: len(k.signatures) for k in kernels}
    assert all(n <= 1 for n in counts.values()), counts  # _bias_relu (batch-1 path) may be unused here
    assert counts["_im2col"] == counts["_scatter_bias_relu"] == counts["_lrn"] == counts["max_pool"] == 1


@pytest.mark.parametrize("N", [2, 5, 16])
def test_batched_linear_uses_the_tiled_kernel_and_agrees(N):
    """Batches of 2+ run the register-tiled dense kernel (read-only weights stay with BLAS)."""
    x, w, b = _array(30, (N, 300)), _array(31, (37, 300)), _array(32, (37,))
    assert_agree(*both("linear", x, w, b, "relu"), f"linear batch {N}")
    ro = w.copy()
    ro.flags.writeable = False
    assert_agree(*both("linear", x, ro, None), f"linear batch {N}, read-only weight")
