"""The register-blocked product of the fast backend (``backends/_gemm.py``) against NumPy.

The micro-kernel is LLVM IR (a Numba intrinsic): tiles of 1 to 6 rows by NR (32 or 16) columns, any depth,
any row strides and column offsets. Here every row count a tile can leave over, depths from 1
up, several panels, batches and column slices (a group's channels), and the columns of ``c``
outside the slice stay untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")
from fastalex.backends import _gemm  # noqa: E402


def _array(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _check(E, T, K, P, lda_extra=0, ak=0, ldc_extra=0, cn=0, rows=None):
    """``batched_gemm`` on a column slice of ``a`` and of ``c`` (rows, E, cols), against float64
    products."""
    N = P * _gemm.NR
    rows = T if rows is None else rows
    a = _array(T * 100 + K, (rows, E, ak + K + lda_extra))
    b = _array(K * 7 + P, (E, K, N))
    c = np.full((rows, E, cn + N + ldc_extra), np.float32(7.0))
    _gemm.batched_gemm(*_gemm.checked(a, _gemm.pack_b(b), c, T, ak, cn))
    want = np.matmul(a[:T, :, ak:ak + K].astype(np.float64).transpose(1, 0, 2), b.astype(np.float64))
    np.testing.assert_allclose(c[:T, :, cn:cn + N].transpose(1, 0, 2), want, rtol=1e-5, atol=1e-5 * np.sqrt(K))
    outside = np.ones(c.shape, bool)
    outside[:T, :, cn:cn + N] = False
    assert (c[outside] == 7.0).all(), "wrote outside the slice"


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 25])
@pytest.mark.parametrize("K", [1, 2, 17, 64])
def test_every_tile_height_and_depth(T, K):
    _check(2, T, K, 2)


@pytest.mark.parametrize("ak, cn, lda_extra, ldc_extra", [(0, 0, 5, 0), (3, 32, 0, 7), (9, 64, 2, 32)])
def test_column_slices_and_strides(ak, cn, lda_extra, ldc_extra):
    """A group's slice: ``a`` wider than ``K`` from column ``ak``, ``c`` written from column ``cn``."""
    _check(3, 10, 19, 2, lda_extra, ak, ldc_extra, cn)


def test_rows_past_t_are_not_read_or_written():
    _check(2, 5, 8, 1, rows=9)  # a chunk buffer with 9 rows, 5 in use


@settings(max_examples=40, deadline=None, derandomize=True)
@given(E=st.integers(1, 4), T=st.integers(1, 40), K=st.integers(1, 100), P=st.integers(1, 4),
       ak=st.integers(0, 5), cn=st.sampled_from([0, 1, 32]), lda_extra=st.integers(0, 3))
def test_random_products(E, T, K, P, ak, cn, lda_extra):
    _check(E, T, K, P, lda_extra, ak, 0, cn)


def test_pack_b_pads_and_orders_panels():
    nr = _gemm.NR                      # the target's panel width: 32 with AVX-512, else 16
    b = _array(0, (2, 3, nr + 8))
    p = _gemm.pack_b(b)
    assert p.shape == (2, 2, 3, nr) and p.flags.c_contiguous
    np.testing.assert_array_equal(p[:, 0], b[:, :, :nr])
    np.testing.assert_array_equal(p[:, 1, :, :8], b[:, :, nr:])
    assert (p[:, 1, :, 8:] == 0).all()


@pytest.mark.parametrize("G, E, T, K, P, ak, cn", [(2, 3, 10, 19, 2, 0, 0), (3, 2, 7, 8, 1, 2, 32), (4, 1, 25, 5, 3, 0, 0)])
def test_groups_in_one_launch(G, E, T, K, P, ak, cn):
    """``G`` packed weights stacked: group ``g`` reads ``a``'s columns from ``ak + g*K`` and
    writes ``c``'s from ``cn + g*P*32`` (a grouped convolution's products, one launch)."""
    N = P * _gemm.NR
    a = _array(G * 10 + T, (T + 2, E, ak + G * K + 3))
    b = _array(K + G, (G, E, K, N))
    c = np.full((T + 2, E, cn + G * N + 5), np.float32(7.0))
    _gemm.batched_gemm(*_gemm.checked(a, np.stack([_gemm.pack_b(u) for u in b]), c, T, ak, cn, K, N))
    outside = np.ones(c.shape, bool)
    for g in range(G):
        want = np.matmul(a[:T, :, ak + g * K:ak + (g + 1) * K].astype(np.float64).transpose(1, 0, 2),
                         b[g].astype(np.float64))
        got = c[:T, :, cn + g * N:cn + (g + 1) * N].transpose(1, 0, 2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(K))
        outside[:T, :, cn + g * N:cn + (g + 1) * N] = False
    assert (c[outside] == 7.0).all(), "wrote outside the groups' slices"


@pytest.mark.parametrize("dk, dn", [(3, 32), (2, 33), (-1, 32), (2, -32)])
def test_checked_refuses_groups_outside_the_arrays(dk, dn):
    """The last group's columns must fit too (and the steps may not be negative)."""
    a, c = _array(0, (10, 2, 8)), np.zeros((10, 2, 96), np.float32)
    bp = np.stack([_gemm.pack_b(_array(g, (2, 3, 32))) for g in range(3)])
    _gemm.checked(a, bp, c, 4, 0, 0, 2, 32)   # the last group ends at column 7 of 8, 96 of 96
    with pytest.raises(ValueError, match="out of range"):
        _gemm.checked(a, bp, c, 4, 0, 0, dk, dn)


@pytest.mark.parametrize("T, ak, cn, what", [
    (0, 0, 0, "out of range"), (11, 0, 0, "out of range"), (4, 3, 0, "out of range"),
    (4, 0, 1, "out of range"), (4, -1, 0, "out of range")])
def test_checked_refuses_tiles_outside_the_arrays(T, ak, cn, what):
    """The micro-kernel addresses memory directly: every call is checked first."""
    a, c = _array(0, (10, 2, 8)), np.zeros((10, 2, 32), np.float32)
    bp = _gemm.pack_b(_array(1, (2, 6, 32)))
    with pytest.raises(ValueError, match=what):
        _gemm.checked(a, bp, c, T, ak, cn)


def test_checked_refuses_other_arrays():
    a, c = _array(0, (10, 2, 8)), np.zeros((10, 2, 32), np.float32)
    bp = _gemm.pack_b(_array(1, (2, 8, 32)))
    with pytest.raises(ValueError, match="float32"):
        _gemm.checked(a.astype(np.float64), bp, c, 4, 0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _gemm.checked(a[:, :, ::2], bp, c, 4, 0, 0)
    with pytest.raises(ValueError, match="do not match"):
        _gemm.checked(np.ascontiguousarray(a[:, :1]), bp, c, 4, 0, 0)
