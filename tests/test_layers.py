"""fastalex.layers: parameters, initialization, shapes, counts and validation."""

import numpy as np
import pytest

from conftest import assert_agree
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
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        L.Conv2D(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="p must be between 0 and 1"):
        L.Dropout(1.5)


def test_repr_names_the_configuration():
    assert repr(L.Conv2D(96, 256, 5, padding=2, groups=2)) == \
        "Conv2D(96, 256, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=2)"
    assert repr(L.MaxPool2D(3, 2)) == "MaxPool2D(kernel_size=(3, 3), stride=(2, 2))"
