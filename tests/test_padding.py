"""Uneven (4-tuple) padding: ``F.pad`` and ``padding=(left, right, top, bottom)`` in conv2d and
the poolings, on both backends, against explicit padding and naive loops."""

import itertools
import math

import numpy as np
import pytest

import fastalex.functional as F
from fastalex import layers as L
from support import assert_agree

RNG = np.random.default_rng(7)


def test_pad_matches_numpy_pad_in_torch_order():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = F.pad(x, (1, 2, 3, 0), value=-1.5)  # (left, right, top, bottom)
    expected = np.pad(x, ((0, 0), (0, 0), (3, 0), (1, 2)), constant_values=-1.5)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(F.pad(x, (2, 1)), np.pad(x, ((0, 0), (0, 0), (0, 0), (2, 1))))
    assert F.pad(x, (0, 0, 0, 0)) is x
    assert y.dtype == np.float32 and y.flags.c_contiguous


@pytest.mark.parametrize("bad, error", [((1, 2, 3), TypeError), ((1, -1), ValueError), ((1.0, 2), TypeError),
                                        ((1,) * 10, ValueError)])
def test_pad_rejects_bad_pads(bad, error):
    with pytest.raises(error, match="pad"):
        F.pad(np.zeros((1, 1, 2, 2), np.float32), bad)


def test_conv2d_uneven_padding_equals_explicit_padding(backend):
    x = RNG.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((6, 2, 3, 2)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    for pads in [(0, 1, 2, 0), (2, 0, 0, 1), (1, 1, 0, 2), (0, 0, 1, 0), (3, 1, 2, 2)]:
        for stride, dilation in [(1, 1), (2, 1), ((1, 2), (2, 1))]:
            y = F.conv2d(x, w, b, stride=stride, padding=pads, dilation=dilation, groups=2,
                         activation="relu", backend=backend)
            ref = F.conv2d(F.pad(x, pads), w, b, stride=stride, dilation=dilation, groups=2,
                           activation="relu", backend="numpy")
            assert_agree(y, ref, f"conv2d padding={pads} stride={stride} dilation={dilation}")
            layer = L.Conv2D(4, 6, (3, 2), stride=stride, padding=pads, dilation=dilation, groups=2)
            assert layer.output_shape(x.shape[1:]) == y.shape[1:]


def _naive_pool(x, kernel, stride, sides, ceil_mode, kind, count_include_pad=True):
    """Loops straight from the definition, for uneven padding ``((top, bottom), (left, right))``."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), ((t, b), (l, r)) = kernel, stride, sides

    def out(n, k, s, p0, p1):
        span = n + p0 + p1 - k
        o = (math.ceil(span / s) if ceil_mode else span // s) + 1
        return o - 1 if ceil_mode and (o - 1) * s >= n + p0 else o

    ho, wo = out(H, kh, sh, t, b), out(W, kw, sw, l, r)
    y = np.zeros((N, C, ho, wo))
    for i, j in itertools.product(range(ho), range(wo)):
        r0, q0 = i * sh - t, j * sw - l
        rows = [u for u in range(r0, r0 + kh) if 0 <= u < H]
        cols = [v for v in range(q0, q0 + kw) if 0 <= v < W]
        win = x[:, :, rows][:, :, :, cols].astype(np.float64)
        if kind == "max":
            y[:, :, i, j] = win.max(axis=(2, 3))
        else:
            padded_rows = min(r0 + kh, H + b) - r0
            padded_cols = min(q0 + kw, W + r) - q0
            count = padded_rows * padded_cols if count_include_pad else len(rows) * len(cols)
            y[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return y


POOL_GRID = [(k, s, pads, ceil) for k, s in [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2))]
             for pads in [(0, 1, 0, 1), (1, 0, 2, 0), (0, 0, 1, 2), (2, 1, 0, 1), (1, 1, 1, 1), (2, 2, 2, 2)]
             for ceil in (False, True)
             if max(pads[2:]) < k[0] and max(pads[:2]) < k[1]]


@pytest.mark.parametrize("kernel, stride, pads, ceil_mode", POOL_GRID)
def test_pools_with_uneven_padding_match_naive_loops(backend, kernel, stride, pads, ceil_mode):
    x = RNG.standard_normal((2, 3, 7, 8)).astype(np.float32)
    sides = ((pads[2], pads[3]), (pads[0], pads[1]))
    y = F.max_pool2d(x, kernel, stride, pads, ceil_mode, backend=backend)
    assert_agree(y, _naive_pool(x, kernel, stride, sides, ceil_mode, "max"), f"max_pool2d {pads}")
    assert L.MaxPool2D(kernel, stride, pads, ceil_mode).output_shape(x.shape[1:]) == y.shape[1:]
    for cip in (True, False):
        y = F.avg_pool2d(x, kernel, stride, pads, ceil_mode, cip, backend=backend)
        assert_agree(y, _naive_pool(x, kernel, stride, sides, ceil_mode, "avg", cip),
                     f"avg_pool2d {pads} ceil_mode={ceil_mode} count_include_pad={cip}")


def test_symmetric_4_tuple_is_the_same_as_the_pair(backend):
    x = RNG.standard_normal((1, 2, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(F.max_pool2d(x, 3, 2, (1, 1, 1, 1), backend=backend),
                                  F.max_pool2d(x, 3, 2, 1, backend=backend))
    np.testing.assert_array_equal(F.avg_pool2d(x, 3, 2, (1, 1, 1, 1), True, False, backend=backend),
                                  F.avg_pool2d(x, 3, 2, 1, True, False, backend=backend))


def test_uneven_padding_errors():
    x = np.zeros((1, 1, 6, 6), np.float32)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        F.max_pool2d(x, 2, 2, (0, 2, 0, 0))
    with pytest.raises(ValueError, match="non-negative"):
        F.conv2d(x, np.zeros((1, 1, 3, 3), np.float32), padding=(0, -1, 0, 0))
    with pytest.raises(TypeError, match="4-tuple"):
        F.avg_pool2d(x, 2, padding=(1, 2, 3))
