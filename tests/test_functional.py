"""fastalex.functional: hand-worked examples, shape rules, naive-loop property tests, validation."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import naive_ops as naive
from support import assert_agree
from fastalex import functional as F
from fastalex.shapes import conv_output_size, pool_output_size

SEED_IMAGE = np.array([[1, 2, 0, 1], [3, 1, 2, 2], [0, 1, 3, 1], [2, 2, 1, 0]], np.float32)
SEED_KERNEL = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- hand-worked

def test_seed_convolution_example(backend):
    # The course's worked example: 4x4 input, 2x2 kernel, stride 1, no padding -> 3x3.
    y = F.conv2d(SEED_IMAGE[None, None], SEED_KERNEL[None, None], backend=backend)
    expected = np.array([[1.8, 1.3, 1.6], [0.9, 2.0, 1.9], [1.6, 1.7, 0.8]], np.float32)
    assert y.shape == (1, 1, 3, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y[0, 0], expected, atol=1e-6)
    assert y[0, 0, 0, 0] == pytest.approx(1.8)


def test_convolution_with_bias_stride_and_relu(backend):
    w = -SEED_KERNEL[None, None]
    y = F.conv2d(SEED_IMAGE[None], w, bias=[1.5], stride=2, activation="relu", backend=backend)
    # windows at (0,0) and (0,2), (2,0), (2,2): -1.8+1.5, -1.6+1.5 -> relu 0; ...
    sums = np.array([[1.8, 1.6], [1.6, 0.8]])
    np.testing.assert_allclose(y[0], np.maximum(1.5 - sums, 0), atol=1e-6)


def test_max_pool_2x2_stride_2(backend):
    y = F.max_pool2d(SEED_IMAGE[None, None], 2, backend=backend)
    np.testing.assert_array_equal(y[0, 0], [[3, 2], [2, 3]])


def test_avg_pool_2x2_stride_2(backend):
    y = F.avg_pool2d(SEED_IMAGE[None, None], 2, backend=backend)
    np.testing.assert_allclose(y[0, 0], [[7 / 4, 5 / 4], [5 / 4, 5 / 4]])


def test_avg_pool_padding_counts(backend):
    x = np.ones((1, 1, 2, 2), np.float32)
    with_pad = F.avg_pool2d(x, 2, stride=1, padding=1, backend=backend)[0, 0]
    without = F.avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False, backend=backend)[0, 0]
    np.testing.assert_allclose(with_pad, [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])
    np.testing.assert_allclose(without, np.ones((3, 3)))


def test_max_pool_ceil_mode_keeps_partial_window(backend):
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    assert F.max_pool2d(x, 2, backend=backend).shape == (1, 1, 2, 2)
    y = F.max_pool2d(x, 2, ceil_mode=True, backend=backend)
    np.testing.assert_array_equal(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_dense_with_bias_and_relu(backend):
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    w = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], np.float32)
    b = np.array([0.5, 0.5, -3.0], np.float32)
    np.testing.assert_allclose(F.linear(x, w, b, backend=backend), [[1.5, -1.5, -1.0]])
    np.testing.assert_allclose(F.linear(x, w, b, activation="relu", backend=backend), [[1.5, 0, 0]])
    np.testing.assert_allclose(F.linear(x[0], w, backend=backend), [1, -2, 2])  # one sample


def test_lrn_hand_worked(backend):
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    y = F.local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0, backend=backend)
    # channel 0 window {0,1}: 1+4=5 -> 1/(1+5); channel 1 {0,1,2}: 14 -> 2/15; channel 2 {1,2}: 13 -> 3/14
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


def test_lrn_even_size_window_is_asymmetric(backend):
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 4, 1, 1)
    y = F.local_response_norm(x, size=2, alpha=2.0, beta=1.0, k=0.0, backend=backend)
    # window [c-1, c]: c0 {0}: 1 -> 1/1; c1 {0,1}: 5 -> 2/5; c2 {1,2}: 13; c3 {2,3}: 25
    np.testing.assert_allclose(y.ravel(), [1, 2 / 5, 3 / 13, 4 / 25], rtol=1e-6)


def test_adaptive_avg_pool_overlapping_windows(backend):
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    y = F.adaptive_avg_pool2d(x, (1, 3), backend=backend)
    # windows [0,2) [1,4) [3,5)
    np.testing.assert_allclose(y.ravel(), [0.5, 2.0, 3.5])


def test_single_image_in_single_image_out(backend):
    x = np.random.default_rng(0).standard_normal((3, 9, 7)).astype(np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert F.conv2d(x, w, backend=backend).shape == (4, 7, 5)
    assert F.max_pool2d(x, 3, 2, backend=backend).shape == (3, 4, 3)
    assert F.avg_pool2d(x, 2, backend=backend).shape == (3, 4, 3)
    assert F.adaptive_avg_pool2d(x, 2, backend=backend).shape == (3, 2, 2)
    assert F.local_response_norm(x, 5, backend=backend).shape == (3, 9, 7)


def test_other_dtypes_become_float32(backend):
    x = np.arange(16, dtype=np.int64).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 2, 2), np.float64)
    for y in (F.conv2d(x, w, backend=backend), F.max_pool2d(x, 2, backend=backend),
              F.relu(x - 3, backend=backend), F.softmax(x), F.linear(x.reshape(1, -1), w.reshape(1, 4).repeat(4, 1))):
        assert y.dtype == np.float32
    # a non-contiguous view works too
    assert_agree(F.conv2d(x.astype(np.float32)[..., ::-1], w, backend=backend),
                 F.conv2d(np.ascontiguousarray(x[..., ::-1], np.float32), w, backend="numpy"))


def test_softmax_is_stable_and_normalized():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0]], np.float32)
    p = F.softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], np.exp([-2, -1, 0]) / np.exp([-2, -1, 0]).sum(), rtol=1e-5)
    np.testing.assert_allclose(F.softmax(x.T, axis=0), p.T)


def test_relu_flatten_dropout(backend):
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(F.relu(x, backend=backend), [[0, 0, 2]])
    assert F.flatten(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    np.testing.assert_array_equal(F.dropout(x), x)
    with pytest.raises(NotImplementedError, match="inference"):
        F.dropout(x, training=True)


# ----------------------------------------------------------------------------- shape rules

def test_output_size_rule():
    assert conv_output_size(227, 11, 4) == 55
    assert conv_output_size(224, 11, 4, 2) == 55
    assert conv_output_size(7, 3, 1, 0, dilation=2) == 3
    assert pool_output_size(55, 3, 2) == 27
    assert pool_output_size(5, 2, 2, ceil_mode=True) == 3
    assert pool_output_size(5, 2, 2) == 2
    # ceil_mode never starts a window in the right padding
    assert pool_output_size(4, 2, 2, padding=1, ceil_mode=True) == 3


def test_alexnet_shape_chain(backend):
    """227 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6, run for real on a thin AlexNet."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 227, 227)).astype(np.float32)
    sizes = [227]
    x = F.conv2d(x, rng.standard_normal((4, 3, 11, 11)).astype(np.float32), stride=4, backend=backend)
    sizes.append(x.shape[-1])
    x = F.max_pool2d(x, 3, 2, backend=backend); sizes.append(x.shape[-1])
    x = F.conv2d(x, rng.standard_normal((4, 2, 5, 5)).astype(np.float32), padding=2, groups=2, backend=backend)
    sizes.append(x.shape[-1])
    x = F.max_pool2d(x, 3, 2, backend=backend); sizes.append(x.shape[-1])
    for _ in range(3):
        x = F.conv2d(x, rng.standard_normal((4, 4, 3, 3)).astype(np.float32), padding=1, backend=backend)
        sizes.append(x.shape[-1])
    x = F.max_pool2d(x, 3, 2, backend=backend); sizes.append(x.shape[-1])
    assert sizes == [227, 55, 27, 27, 13, 13, 13, 13, 6]


# ----------------------------------------------------------------------------- property tests vs naive loops

@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, dil[0] * (kh - 1) + 1 - 2 * pad[0]), 9))
    w = draw(st.integers(max(1, dil[1] * (kw - 1) + 1 - 2 * pad[1]), 9))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    return n, cin, cout, h, w, (kh, kw), stride, pad, dil, groups, draw(st.booleans()), seed


@PROPERTY
@given(case=conv_cases())
def test_conv2d_matches_naive_loops(case):
    n, cin, cout, h, w, k, stride, pad, dil, groups, relu, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin // groups, *k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    ref = naive.conv2d(x, wt, b, stride, pad, dil, groups, relu)
    for name in _backends():
        y = F.conv2d(x, wt, b, stride, pad, dil, groups, "relu" if relu else None, backend=name)
        assert_agree(y, ref, f"conv2d[{name}] {case}")


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pad = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ceil_mode = draw(st.booleans())
    h = draw(st.integers(max(1, kh - 2 * pad[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * pad[1]), 9))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w, (kh, kw), stride, pad, ceil_mode,
            draw(st.booleans()), draw(st.integers(0, 2**16)))


@PROPERTY
@given(case=pool_cases())
def test_pooling_matches_naive_loops(case):
    n, c, h, w, k, stride, pad, ceil_mode, count_include_pad, seed = case
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    ref_max = naive.max_pool2d(x, k, stride, pad, ceil_mode)
    ref_avg = naive.avg_pool2d(x, k, stride, pad, ceil_mode, count_include_pad)
    for name in _backends():
        assert_agree(F.max_pool2d(x, k, stride, pad, ceil_mode, backend=name), ref_max, f"max[{name}] {case}")
        assert_agree(F.avg_pool2d(x, k, stride, pad, ceil_mode, count_include_pad, backend=name),
                     ref_avg, f"avg[{name}] {case}")


@PROPERTY
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       oh=st.integers(1, 7), ow=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_adaptive_avg_pool_matches_naive_loops(n, c, h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    ref = naive.adaptive_avg_pool2d(x, (oh, ow))
    for name in _backends():
        assert_agree(F.adaptive_avg_pool2d(x, (oh, ow), backend=name), ref, f"adaptive[{name}]")


@PROPERTY
@given(n=st.integers(1, 2), c=st.integers(1, 9), hw=st.integers(1, 5), size=st.integers(1, 8),
       alpha=st.floats(1e-4, 1.0), beta=st.sampled_from([0.75, 0.5, 1.0, 0.3]), k=st.floats(0.5, 3.0),
       seed=st.integers(0, 2**16))
def test_lrn_matches_naive_loops(n, c, hw, size, alpha, beta, k, seed):
    x = (3 * np.random.default_rng(seed).standard_normal((n, c, hw, hw + 1))).astype(np.float32)
    ref = naive.local_response_norm(x, size, alpha, beta, k)
    for name in _backends():
        assert_agree(F.local_response_norm(x, size, alpha, beta, k, backend=name), ref, f"lrn[{name}]")


@PROPERTY
@given(n=st.integers(1, 3), fin=st.integers(1, 20), fout=st.integers(1, 12), bias=st.booleans(),
       relu=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_matches_naive_loops(n, fin, fout, bias, relu, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32) if bias else None
    ref = naive.linear(x, w, b, relu)
    for name in _backends():
        assert_agree(F.linear(x, w, b, "relu" if relu else None, backend=name), ref, f"linear[{name}]")


def _backends():
    from support import AVAILABLE_BACKENDS
    return AVAILABLE_BACKENDS


# ----------------------------------------------------------------------------- validation

X = np.zeros((1, 4, 8, 8), np.float32)
W = np.zeros((6, 2, 3, 3), np.float32)


@pytest.mark.parametrize("call, pattern", [
    (lambda: F.conv2d(np.zeros((8, 8)), W), r"conv2d: input must be \(N, C, H, W\).*got shape \(8, 8\)"),
    (lambda: F.conv2d(X, np.zeros((6, 2, 3))), r"conv2d: weight must be .*got shape \(6, 2, 3\)"),
    (lambda: F.conv2d(X, W, groups=1), r"conv2d: input has 4 channels but weight \(6, 2, 3, 3\) with groups=1 expects 2"),
    (lambda: F.conv2d(X, W, groups=3), r"conv2d: groups=3 must divide .*input channels \(4\)"),
    (lambda: F.conv2d(X, W, groups=0), r"conv2d: groups must be a positive int"),
    (lambda: F.conv2d(X, W, groups=2, stride=0), r"conv2d: stride must be positive, got 0"),
    (lambda: F.conv2d(X, W, groups=2, padding=-1), r"conv2d: padding must be non-negative"),
    (lambda: F.conv2d(X, W, groups=2, dilation=(1, 0)), r"conv2d: dilation must be positive"),
    (lambda: F.conv2d(X, np.zeros((6, 2, 9, 3)), groups=2), r"conv2d: kernel 9x3 .* larger than the padded input 8x8"),
    (lambda: F.conv2d(X, W, bias=np.zeros(5), groups=2), r"conv2d: bias must have shape \(6,\).*got \(5\)"),
    (lambda: F.conv2d(X, W, groups=2, activation="tanh"), r"conv2d: activation must be None or 'relu'"),
    (lambda: F.max_pool2d(X, 9), r"max_pool2d: kernel_size \(9, 9\) is larger than the padded input 8x8"),
    (lambda: F.max_pool2d(X, 0), r"max_pool2d: kernel_size must be positive"),
    (lambda: F.max_pool2d(X, 3, stride=0), r"max_pool2d: stride must be positive"),
    (lambda: F.max_pool2d(X, 3, padding=2), r"max_pool2d: padding \(2, 2\) must be at most half the kernel size \(3, 3\)"),
    (lambda: F.avg_pool2d(X, 2, padding=(0, 2)), r"avg_pool2d: padding \(0, 2\) must be at most half"),
    (lambda: F.avg_pool2d(X[0, 0], 2), r"avg_pool2d: input must be \(N, C, H, W\)"),
    (lambda: F.adaptive_avg_pool2d(X, 0), r"adaptive_avg_pool2d: output_size must be positive"),
    (lambda: F.local_response_norm(X, 0), r"local_response_norm: size must be a positive int"),
    (lambda: F.local_response_norm(X, 5, beta=float("nan")), r"local_response_norm: beta must be a finite number"),
    (lambda: F.linear(np.zeros((2, 5)), np.zeros((3, 4))), r"linear: input has 5 features but weight \(3, 4\) expects 4"),
    (lambda: F.linear(X, np.zeros((3, 4))), r"linear: input must be \(N, in_features\).*\(1, 4, 8, 8\)"),
    (lambda: F.linear(np.zeros((2, 4)), np.zeros((3, 4)), bias=np.zeros(4)), r"linear: bias must have shape \(3,\)"),
    (lambda: F.softmax(np.zeros(3), axis=2), r"softmax: axis 2 is out of range"),
])
def test_bad_arguments_raise_clear_value_errors(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("call, pattern", [
    (lambda: F.conv2d(X, W, groups=2, stride=1.5), r"conv2d: stride must be an int or a pair of ints, got 1.5"),
    (lambda: F.max_pool2d(X, (2, 2, 2)), r"max_pool2d: kernel_size must be an int or a pair"),
    (lambda: F.relu(np.array(["a", "b"])), r"relu: input must be numeric"),
    (lambda: F.conv2d(X.astype(complex), W, groups=2), r"conv2d: input must be real"),
])
def test_bad_types_raise_type_errors(call, pattern):
    with pytest.raises(TypeError, match=pattern):
        call()


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; valid backends are 'numpy', 'numba'"):
        F.relu(X, backend="cuda")


# ----------------------------------------------------------------------------- against PyTorch, if installed

def test_grid_matches_torch(backend):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    rng = np.random.default_rng(1)
    for _ in range(60):
        groups = int(rng.choice([1, 2, 4]))
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        h, w = int(rng.integers(6, 15)), int(rng.integers(6, 15))
        x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
        wt = rng.standard_normal((cout, cin // groups, *k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        tx = torch.from_numpy(x)
        if d[0] * (k[0] - 1) + 1 <= h + 2 * p[0] and d[1] * (k[1] - 1) + 1 <= w + 2 * p[1]:
            assert_agree(F.conv2d(x, wt, b, s, p, d, groups, backend=backend),
                         TF.conv2d(tx, torch.from_numpy(wt), torch.from_numpy(b), s, p, d, groups).numpy(), "conv")
        pk = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        pp = (int(rng.integers(0, pk[0] // 2 + 1)), int(rng.integers(0, pk[1] // 2 + 1)))
        cm, cip = bool(rng.integers(2)), bool(rng.integers(2))
        assert_agree(F.max_pool2d(x, pk, s, pp, cm, backend=backend),
                     TF.max_pool2d(tx, pk, s, pp, ceil_mode=cm).numpy(), "max_pool2d")
        assert_agree(F.avg_pool2d(x, pk, s, pp, cm, cip, backend=backend),
                     TF.avg_pool2d(tx, pk, s, pp, cm, cip).numpy(), "avg_pool2d")
        os_ = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        assert_agree(F.adaptive_avg_pool2d(x, os_, backend=backend), TF.adaptive_avg_pool2d(tx, os_).numpy(), "adaptive")
        size, kk = int(rng.integers(1, 8)), float(rng.uniform(0.5, 3))
        assert_agree(F.local_response_norm(x, size, 1e-2, 0.75, kk, backend=backend),
                     TF.local_response_norm(tx, size, 1e-2, 0.75, kk).numpy(), "lrn")
