"""fastalex.functional on edge inputs, both backends: huge and non-finite values stay local
(LRN, adaptive pooling), empty and absurd sizes match PyTorch or are refused the same way.

Each case here was a wrong answer or an unbounded allocation once (issue 9, items 3, 4, 10, 14).
"""

from __future__ import annotations

import numpy as np
import pytest

import naive_ops as naive
from fastalex import functional as F


def _same(actual, expected, rtol=1e-5):
    """Equal up to float32 rounding, NaN where NaN, inf where inf."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------- LRN: huge values

def test_lrn_of_huge_values_does_not_overflow(backend):
    # d = 2 + 1e-4/5 * 5e30 = 1e26: d * sqrt(d) overflows float32, d ** 0.75 does not.
    x = np.full((1, 5, 1, 1), 1e15, np.float32)
    y = F.local_response_norm(x, 5, 1e-4, 0.75, 2.0, backend=backend)
    assert np.isfinite(y).all()
    _same(y, naive.local_response_norm(x, 5, 1e-4, 0.75, 2.0))
    assert y[0, 0, 0, 0] == pytest.approx(4.6386e-5, rel=1e-4)


@pytest.mark.parametrize("k", [2.0, 0.0])
def test_lrn_huge_value_does_not_cancel_its_neighbours(backend, k):
    # A running sum adds 1e30 and later subtracts it: the small squares added meanwhile are lost.
    x = np.ones((1, 12, 2, 3), np.float32)
    x[0, 0] = 1e15
    x[0, 6, 1, 2] = 3e6
    y = F.local_response_norm(x, 3, 1e-4, 0.75, k, backend=backend)
    _same(y, naive.local_response_norm(x, 3, 1e-4, 0.75, k))


def test_lrn_sum_past_float32_range_gives_zero_like_torch(backend):
    # Squares summed in float32 (torch's rule): 3 * (2e19)^2 is inf, and x / inf is 0.
    x = np.full((1, 3, 1, 1), 2e19, np.float32)
    y = F.local_response_norm(x, 3, 1.0, 0.75, 1.0, backend=backend)
    np.testing.assert_array_equal(y, 0.0)


# ----------------------------------------------------------------------------- LRN: NaN and inf stay local

@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_lrn_non_finite_value_reaches_only_its_windows(backend, size, bad):
    x = np.random.default_rng(size).standard_normal((2, 11, 3, 4)).astype(np.float32)
    x[0, 3, 1, 2] = bad
    x[1, 10, 0, 0] = bad
    y = F.local_response_norm(x, size, 1e-2, 0.75, 1.0, backend=backend)
    expected = naive.local_response_norm(x, size, 1e-2, 0.75, 1.0)
    _same(y, expected, rtol=1e-4)
    # Channel 3's value is in the windows of channels [3 - (size-1)//2, 3 + size//2] only.
    touched = set(range(max(0, 3 - (size - 1) // 2), min(10, 3 + size // 2) + 1))
    assert np.isnan(y[0, 3, 1, 2])  # NaN / d or inf / inf
    assert np.isfinite(np.delete(y[0], sorted(touched), axis=0)).all()


def test_lrn_issue_case_nan_in_one_channel(backend):
    x = np.ones((1, 8, 1, 1), np.float32)
    x[0, 1] = np.nan
    y = F.local_response_norm(x, 3, 1e-4, 0.75, 2.0, backend=backend).ravel()
    assert np.isnan(y[:3]).all()
    assert np.isfinite(y[3:]).all()
    _same(y, naive.local_response_norm(x, 3, 1e-4, 0.75, 2.0).ravel())


@pytest.mark.parametrize("size", [1, 4, 7, 96, 2**40])
def test_lrn_window_larger_than_channels(backend, size):
    x = np.random.default_rng(0).standard_normal((2, 7, 3, 3)).astype(np.float32)
    y = F.local_response_norm(x, size, 1e-2, 0.75, 1.0, backend=backend)
    _same(y, naive.local_response_norm(x, size, 1e-2, 0.75, 1.0), rtol=1e-4)


def test_lrn_matches_torch_on_huge_and_non_finite(backend):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 9, 4, 4)).astype(np.float32)
    x[0, 2, 1, 1], x[0, 6, 2, 3], x[1, 0, 0, 0], x[1, 5, 3, 3] = np.nan, np.inf, 1e15, 1e18
    for size in (2, 3, 5):
        expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, 1e-4, 0.75, 2.0).numpy()
        _same(F.local_response_norm(x, size, 1e-4, 0.75, 2.0, backend=backend), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- adaptive pooling

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("out", [(3, 3), (2, 5), (6, 6), (1, 1)])
def test_adaptive_avg_pool_non_finite_value_reaches_only_its_cells(backend, bad, out):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 8)).astype(np.float32)
    x[0, 1, 2, 5] = bad
    x[1, 2, 6, 7] = bad
    y = F.adaptive_avg_pool2d(x, out, backend=backend)
    expected = naive.adaptive_avg_pool2d(x, out)
    _same(y, expected, rtol=1e-5)
    assert np.isfinite(y[0, 0]).all() and np.isfinite(y[1, :2]).all()
    if out != (1, 1):
        assert np.isfinite(y[0, 1]).any()  # not every cell of the plane


def test_adaptive_avg_pool_issue_case(backend):
    x = np.ones((1, 1, 5, 5), np.float32)
    x[0, 0, 0, 0], x[0, 0, 4, 4] = np.nan, np.inf
    y = F.adaptive_avg_pool2d(x, 3, backend=backend)[0, 0]
    expected = np.ones((3, 3), np.float32)
    expected[0, 0], expected[2, 2] = np.nan, np.inf
    np.testing.assert_array_equal(y, expected)


def test_adaptive_avg_pool_matches_torch_on_non_finite(backend):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 2, 9, 7)).astype(np.float32)
    x[0, 0, 4, 3], x[1, 1, 0, 6] = np.nan, -np.inf
    for out in ((3, 3), (4, 2), (6, 6)):
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
        _same(F.adaptive_avg_pool2d(x, out, backend=backend), expected, rtol=1e-5)
