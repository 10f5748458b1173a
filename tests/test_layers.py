"""fastalex.layers: parameters, initialization, shapes, counts and validation."""

import numpy as np
import pytest

from support import assert_agree
from fastalex import functional as F
from fastalex import layers as L


def test_conv_layer_calls_functional_with_its_parameters(backend):
    rng = np.random.default_rng(0)
    layer = L.Conv2D(4, 6, 3, stride=2, padding=1, groups=2, activation="relu")
    layer.backend = backend
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    expected = F.conv2d(x, layer.weight, layer.bias, 2, 1, 1, 2, "relu", backend="numpy")
    assert_agree(layer(x), expected)
    assert layer.output_shape((4, 9, 9)) == layer(x).shape[1:] == (6, 5, 5)
    assert layer.num_params == 6 * 2 * 3 * 3 + 6
    assert layer.macs((4, 9, 9)) == 6 * 5 * 5 * 2 * 3 * 3


def test_he_normal_init_is_seeded_and_scaled():
    a, b = L.Conv2D(64, 128, 3, rng=7), L.Conv2D(64, 128, 3, rng=7)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, L.Conv2D(64, 128, 3, rng=8).weight)
    assert a.weight.dtype == np.float32 and a.weight.shape == (128, 64, 3, 3)
    assert a.weight.std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.05)
    np.testing.assert_array_equal(a.bias, np.zeros(128))
    d = L.Dense(1000, 200, rng=np.random.default_rng(1))
    assert d.weight.std() == pytest.approx(np.sqrt(2 / 1000), rel=0.05)


def test_random_weights_do_not_depend_on_the_thread_count(monkeypatch):
    """Large weights are drawn on every CPU at once, one stream per fixed-size chunk: the
    numbers must be the same on a 1-CPU and a 64-CPU machine, and each chunk must differ."""
    shape = (3 * L.HE_CHUNK // 512 + 7, 512)  # three full chunks and a partial one
    drawn = {}
    for cpus in (1, 2, 64):
        monkeypatch.setattr(L, "usable_cpus", lambda cpus=cpus: cpus)
        drawn[cpus] = L.he_normal(shape, 512, np.random.default_rng(5))
    np.testing.assert_array_equal(drawn[1], drawn[2])
    np.testing.assert_array_equal(drawn[1], drawn[64])
    flat = drawn[1].reshape(-1)
    assert not np.array_equal(flat[:1000], flat[L.HE_CHUNK:L.HE_CHUNK + 1000])
    assert flat.std() == pytest.approx(np.sqrt(2 / 512), rel=0.01) and abs(flat.mean()) < 1e-3
    assert not np.array_equal(drawn[1], L.he_normal(shape, 512, np.random.default_rng(6)))


def test_given_parameters_are_used():
    w = np.ones((2, 3), np.float32)
    d = L.Dense(3, 2, weight=w, bias_value=[1, -1], activation="relu")
    np.testing.assert_allclose(d(np.array([[1, 2, 3]], np.float32)), [[7, 5]])
    assert L.Dense(3, 2, bias=False).bias is None
    assert L.Dense(3, 2, bias=False).num_params == 6


def test_parameters_are_checked_when_set():
    conv = L.Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 3, 3, 3\), got \(4, 3, 3\)"):
        conv.weight = np.zeros((4, 3, 3))
    bad = np.zeros((4, 3, 3, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"weight contains 1 NaN/inf value"):
        conv.weight = bad
    with pytest.raises(ValueError, match=r"bias contains 1 NaN/inf"):
        L.Dense(2, 2, bias_value=[0, np.inf])
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        conv.bias = np.zeros(3)
    conv.weight = np.ones((4, 3, 3, 3))  # any float converts to float32
    assert conv.weight.dtype == np.float32


def test_pool_and_other_layers(backend):
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 6)).astype(np.float32)
    cases = [
        (L.MaxPool2D(3, 2), F.max_pool2d(x, 3, 2, backend="numpy")),
        (L.MaxPool2D(2, ceil_mode=True), F.max_pool2d(x, 2, ceil_mode=True, backend="numpy")),
        (L.AvgPool2D(3, 2, padding=1, count_include_pad=False),
         F.avg_pool2d(x, 3, 2, 1, count_include_pad=False, backend="numpy")),
        (L.AdaptiveAvgPool2D((2, 3)), F.adaptive_avg_pool2d(x, (2, 3), backend="numpy")),
        (L.LocalResponseNorm(5, k=2.0), F.local_response_norm(x, 5, k=2.0, backend="numpy")),
        (L.ReLU(), np.maximum(x, 0)),
        (L.Dropout(0.5), x),
        (L.Flatten(), x.reshape(1, -1)),
    ]
    for layer, expected in cases:
        layer.backend = backend
        y = layer(x)
        assert_agree(y, expected, repr(layer))
        assert layer.output_shape(x.shape[1:]) == y.shape[1:], repr(layer)
        assert layer.num_params == 0 and layer.macs(x.shape[1:]) == 0
    np.testing.assert_allclose(L.Softmax()(x.reshape(1, -1)).sum(), 1.0, rtol=1e-5)


def test_output_shape_rejects_inputs_that_do_not_fit():
    with pytest.raises(ValueError, match="expects 3 input channels"):
        L.Conv2D(3, 8, 3).output_shape((4, 10, 10))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        L.Conv2D(3, 8, 11).output_shape((3, 10, 10))
    with pytest.raises(ValueError, match="smaller than the window"):
        L.MaxPool2D(3).output_shape((3, 2, 2))
    with pytest.raises(ValueError, match=r"expects \(10,\) features"):
        L.Dense(10, 2).output_shape((11,))
    with pytest.raises(ValueError, match=r"conv2d: groups=2 must divide both the input channels \(3\)"):
        L.Conv2D(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="p must be between 0 and 1"):
        L.Dropout(1.5)


# Hyper-parameters are checked when a layer is built, by the functional API's own checks:
# (layer constructor, the functional call with the same bad argument).
_X = np.zeros((1, 4, 8, 8), np.float32)
_W = np.zeros((8, 4, 3, 3), np.float32)
BAD_HYPERPARAMETERS = {
    "conv stride 0": (lambda: L.Conv2D(4, 8, 3, stride=0), lambda: F.conv2d(_X, _W, stride=0)),
    "conv stride (1, 0)": (lambda: L.Conv2D(4, 8, 3, stride=(1, 0)), lambda: F.conv2d(_X, _W, stride=(1, 0))),
    "conv stride 1.5": (lambda: L.Conv2D(4, 8, 3, stride=1.5), lambda: F.conv2d(_X, _W, stride=1.5)),
    "conv stride 2**64": (lambda: L.Conv2D(4, 8, 3, stride=2**64), lambda: F.conv2d(_X, _W, stride=2**64)),
    "conv groups 0": (lambda: L.Conv2D(4, 8, 3, groups=0), lambda: F.conv2d(_X, _W, groups=0)),
    "conv groups 2.0": (lambda: L.Conv2D(4, 8, 3, groups=2.0), lambda: F.conv2d(_X, _W, groups=2.0)),
    "conv padding -1": (lambda: L.Conv2D(4, 8, 3, padding=-1), lambda: F.conv2d(_X, _W, padding=-1)),
    "conv padding (1, 1, 1, -1)": (lambda: L.Conv2D(4, 8, 3, padding=(1, 1, 1, -1)),
                                   lambda: F.conv2d(_X, _W, padding=(1, 1, 1, -1))),
    "conv padding (1, 1, 1)": (lambda: L.Conv2D(4, 8, 3, padding=(1, 1, 1)),
                               lambda: F.conv2d(_X, _W, padding=(1, 1, 1))),
    "conv padding 4-tuple 2**63": (lambda: L.Conv2D(4, 8, 3, padding=(0, 0, 0, 2**63)),
                                   lambda: F.conv2d(_X, _W, padding=(0, 0, 0, 2**63))),
    "max padding (0, 3, 0, 0)": (lambda: L.MaxPool2D(3, padding=(0, 3, 0, 0)),
                                 lambda: F.max_pool2d(_X, 3, padding=(0, 3, 0, 0))),
    "avg padding (0, 0, 1.5, 0)": (lambda: L.AvgPool2D(2, padding=(0, 0, 1.5, 0)),
                                   lambda: F.avg_pool2d(_X, 2, padding=(0, 0, 1.5, 0))),
    "conv dilation 0": (lambda: L.Conv2D(4, 8, 3, dilation=0), lambda: F.conv2d(_X, _W, dilation=0)),
    "conv activation": (lambda: L.Conv2D(4, 8, 3, activation="tanh"),
                        lambda: F.conv2d(_X, _W, activation="tanh")),
    "max kernel 0": (lambda: L.MaxPool2D(0), lambda: F.max_pool2d(_X, 0)),
    "max stride 0": (lambda: L.MaxPool2D(3, stride=0), lambda: F.max_pool2d(_X, 3, stride=0)),
    "max padding 2": (lambda: L.MaxPool2D(3, padding=2), lambda: F.max_pool2d(_X, 3, padding=2)),
    "avg padding (0, 2)": (lambda: L.AvgPool2D(2, padding=(0, 2)), lambda: F.avg_pool2d(_X, 2, padding=(0, 2))),
    "avg kernel (2, 2, 2)": (lambda: L.AvgPool2D((2, 2, 2)), lambda: F.avg_pool2d(_X, (2, 2, 2))),
    "adaptive 0": (lambda: L.AdaptiveAvgPool2D(0), lambda: F.adaptive_avg_pool2d(_X, 0)),
    "adaptive (6, -1)": (lambda: L.AdaptiveAvgPool2D((6, -1)), lambda: F.adaptive_avg_pool2d(_X, (6, -1))),
    "lrn size 0": (lambda: L.LocalResponseNorm(0), lambda: F.local_response_norm(_X, 0)),
    "lrn size 2.5": (lambda: L.LocalResponseNorm(2.5), lambda: F.local_response_norm(_X, 2.5)),
    "lrn beta nan": (lambda: L.LocalResponseNorm(5, beta=float("nan")),
                     lambda: F.local_response_norm(_X, 5, beta=float("nan"))),
    "lrn k 'a'": (lambda: L.LocalResponseNorm(5, k="a"), lambda: F.local_response_norm(_X, 5, k="a")),
    "dropout 1.5": (lambda: L.Dropout(1.5), lambda: F.dropout(_X, 1.5)),
    "dropout 'a'": (lambda: L.Dropout("a"), lambda: F.dropout(_X, "a")),
    "dense activation": (lambda: L.Dense(4, 2, activation="tanh"),
                         lambda: F.linear(_X[0, 0], np.zeros((2, 8), np.float32), activation="tanh")),
    "softmax axis 'a'": (lambda: L.Softmax("a"), lambda: F.softmax(_X, "a")),
}


@pytest.mark.parametrize("case", list(BAD_HYPERPARAMETERS))
def test_bad_hyperparameters_fail_when_the_layer_is_built(case):
    build, call = BAD_HYPERPARAMETERS[case]
    with pytest.raises((ValueError, TypeError)) as functional:
        call()
    with pytest.raises(type(functional.value)) as built:
        build()
    assert str(built.value) == str(functional.value)


@pytest.mark.parametrize("build, pattern", [
    (lambda: L.Conv2D(4, 8, 0), r"conv2d: kernel_size must be positive, got 0"),
    (lambda: L.Conv2D(4, 8, (3, -1)), r"conv2d: kernel_size must be positive, got \(3, -1\)"),
    (lambda: L.Conv2D(0, 8, 3), r"conv2d: in_channels must be a positive int, got 0"),
    (lambda: L.Conv2D(4, 6, 3, groups=4), r"conv2d: groups=4 must divide both the input channels \(4\) "
                                          r"and the output channels \(6\)"),
    (lambda: L.Dense(0, 3), r"linear: in_features must be a positive int, got 0"),
    (lambda: L.Dense(3, 2.5), r"linear: out_features must be an int, got 2.5"),
])
def test_layer_only_hyperparameters_are_checked_when_built(build, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        build()


def test_adaptive_pool_layer_keeps_a_side_given_as_none(backend):
    layer = L.AdaptiveAvgPool2D((None, 3))
    layer.backend = backend
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 9)).astype(np.float32)
    assert layer.output_shape((4, 7, 9)) == (4, 7, 3)
    assert layer(x).shape == (2, 4, 7, 3)


def test_repr_names_the_configuration():
    assert repr(L.Conv2D(96, 256, 5, padding=2, groups=2)) == \
        "Conv2D(96, 256, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=2)"
    assert repr(L.MaxPool2D(3, 2)) == "MaxPool2D(kernel_size=(3, 3), stride=(2, 2))"
