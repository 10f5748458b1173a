"""fastalex.functional on edge inputs, both backends: huge and non-finite values stay local
(LRN, adaptive pooling), empty and absurd sizes match PyTorch or are refused the same way.

Each case here was a wrong answer or an unbounded allocation once (issue 9, items 3, 4, 10, 14).
"""

from __future__ import annotations

import numpy as np
import pytest

from support import naive_ops as naive
from fastalex import functional as F

# NaN/inf/huge inputs on purpose: NumPy's "overflow/invalid value encountered" warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")


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


# ----------------------------------------------------------------------------- empty and absurd sizes

X = np.ones((1, 3, 4, 4), np.float32)
W = np.ones((2, 3, 2, 2), np.float32)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_of_an_empty_axis_is_empty_like_torch(axis):
    y = F.softmax(np.zeros((2, 0), np.float32), axis)
    assert y.shape == (2, 0) and y.dtype == np.float32
    torch = pytest.importorskip("torch")
    assert tuple(torch.softmax(torch.zeros(2, 0), axis).shape) == y.shape


@pytest.mark.parametrize("p, error, pattern", [
    ("a", TypeError, r"dropout: p must be a number between 0 and 1, got 'a'"),
    (None, TypeError, r"dropout: p must be a number"),
    (float("nan"), ValueError, r"dropout: p must be between 0 and 1, got nan"),
    (-0.1, ValueError, r"dropout: p must be between 0 and 1"),
])
def test_dropout_p_is_checked(p, error, pattern):
    with pytest.raises(error, match=pattern):
        F.dropout(X, p)


@pytest.mark.parametrize("size", [1, 5, 2**40, 2**63 - 1])
def test_lrn_with_no_channels_is_empty(backend, size):
    y = F.local_response_norm(np.zeros((2, 0, 3, 3), np.float32), size, backend=backend)
    assert y.shape == (2, 0, 3, 3)


def test_lrn_size_beyond_int64_is_refused(backend):
    with pytest.raises(ValueError, match=r"local_response_norm: size must be at most 2\*\*63 - 1"):
        F.local_response_norm(X, 2**63, backend=backend)


BEYOND_INT64 = {
    "conv2d stride": lambda b: F.conv2d(X, W, stride=2**63, backend=b),
    "conv2d dilation": lambda b: F.conv2d(X, W, dilation=(1, 2**70), backend=b),
    "conv2d padding": lambda b: F.conv2d(X, W, padding=2**64, backend=b),
    "conv2d groups": lambda b: F.conv2d(X, W, groups=2**64, backend=b),
    "conv2d padding (left, right, top, bottom)": lambda b: F.conv2d(X, W, padding=(0, 2**64, 0, 0), backend=b),
    "avg_pool2d padding (left, right, top, bottom)": lambda b: F.avg_pool2d(X, 2, padding=(0, 0, 2**63, 0), backend=b),
    "max_pool2d stride": lambda b: F.max_pool2d(X, 2, 2**63, backend=b),
    "max_pool2d kernel_size": lambda b: F.max_pool2d(X, 2**64, backend=b),
    "avg_pool2d stride": lambda b: F.avg_pool2d(X, 2, (1, 2**70), backend=b),
    "adaptive_avg_pool2d output_size": lambda b: F.adaptive_avg_pool2d(X, (2, 2**63), backend=b),
}


@pytest.mark.parametrize("case", list(BEYOND_INT64))
def test_arguments_beyond_int64_are_refused_the_same_on_both_backends(case):
    messages = []
    for b in ("numpy", "numba"):
        with pytest.raises(ValueError, match=r"must be at most 2\*\*63 - 1") as err:
            BEYOND_INT64[case](b)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(case.split()[0] + ": " + case.split()[1])


def test_strides_up_to_int64_work_on_both_backends(backend):
    big = 2**62
    np.testing.assert_array_equal(F.conv2d(X, W, stride=big, backend=backend), F.conv2d(X, W, stride=4)[:, :, :1, :1])
    np.testing.assert_array_equal(F.max_pool2d(X, 2, big, backend=backend), np.ones((1, 3, 1, 1)))
    np.testing.assert_array_equal(F.avg_pool2d(X, 2, (big, 1), backend=backend), np.ones((1, 3, 1, 3)))


# Outputs that cannot be allocated: refused before anything is allocated, the same on both
# backends (the reference once built Python lists of 2**40 bounds and ate all memory).
HUGE_OUTPUTS = {
    "adaptive 2**40": lambda b: F.adaptive_avg_pool2d(X, 2**40, backend=b),
    "adaptive (2**20, 2**20)": lambda b: F.adaptive_avg_pool2d(X, (2**20, 2**20), backend=b),
    "adaptive (None, 2**40)": lambda b: F.adaptive_avg_pool2d(X, (None, 2**40), backend=b),
    "conv padding 2**40": lambda b: F.conv2d(X, W, padding=2**40, backend=b),
    "conv padding and stride 2**20": lambda b: F.conv2d(X, W, stride=2**20, padding=2**20, backend=b),
    "conv padding (0, 0, 2**40, 0)": lambda b: F.conv2d(X, W, padding=(0, 0, 2**40, 0), backend=b),
    "pad (0, 2**40)": lambda b: F.pad(X, (0, 2**40)),
    "linear 2**20 x 2**20": lambda b: F.linear(np.ones((2**20, 1), np.float32), np.ones((2**20, 1), np.float32),
                                               backend=b),
}


@pytest.mark.parametrize("case", list(HUGE_OUTPUTS))
def test_outputs_that_cannot_be_allocated_are_refused_the_same_on_both_backends(case):
    messages = []
    for b in ("numpy", "numba"):
        with pytest.raises(ValueError, match=r"would have shape .* more than this process can allocate") as err:
            HUGE_OUTPUTS[case](b)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_huge_outputs_are_refused_under_a_memory_limit():
    """In a process limited to 3 GiB of address space: a clean ValueError at once, never a
    MemoryError or a machine that swaps (each case under a 60 s alarm)."""
    code = """
        import resource, signal
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from test_functional_edges import HUGE_OUTPUTS
        for name, call in HUGE_OUTPUTS.items():
            for backend in ("numpy", "numba"):
                signal.alarm(60)
                try:
                    call(backend)
                except ValueError as exc:
                    print("refused", name, backend, "3 GiB" in str(exc))
                signal.alarm(0)
    """
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("refused") == 2 * len(HUGE_OUTPUTS), proc.stdout
    assert proc.stdout.count("True") == 2 * len(HUGE_OUTPUTS), proc.stdout


def _python(code):
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
