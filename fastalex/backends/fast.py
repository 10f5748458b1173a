"""The fast backend: parallel Numba kernels, plus OpenBLAS (through NumPy) for the matrix products.

Contract (shared with every backend, see ``fastalex.backends``): inputs are validated,
C-contiguous float32 NCHW arrays; pair arguments are ``(h, w)`` tuples of ints. The Python
wrappers below allocate outputs (sizes from :mod:`fastalex.shapes`) and launch the kernels;
the ``@njit`` kernels assume valid input and only do arithmetic.

Design
------
* **Convolution** is im2col + sgemm: a parallel kernel packs the input windows of a few
  samples into ``col`` of shape ``(samples, C*kh*kw, Ho*Wo)`` (rows ordered like the
  weight's ``(c, u, v)``), then one NumPy ``matmul`` per chunk multiplies each group's
  ``(out/groups, C/groups*kh*kw)`` weight view by its block of rows and writes straight
  into the NCHW output (``(out/groups, Ho*Wo)`` per sample and group is exactly NCHW).
  Bias and ReLU are one fused epilogue pass over the chunk while it is still in cache.
  1x1 stride-1 unpadded convolutions skip the packing (the input already is ``col``).
* **Pooling** is separable: for each output row the window's input rows are reduced into
  a row buffer (contiguous, vectorizable), then each output cell reduces its columns.
* **LRN** keeps a running sum of squares over the channel window for a block of pixels
  (one add and one subtract per channel instead of ``size`` adds) and uses
  ``1/sqrt(d*sqrt(d))`` for ``d**0.75``.
* **Dense** layers are one sgemm on ``weight.T`` (a view: the 230 MB of AlexNet's dense
  weights are never copied).

Threads
-------
Numba kernels and OpenBLAS calls run one after the other, never nested, so each uses all
the cores in turn. ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads`` apply to the kernels.
Numba's ``workqueue`` threading layer aborts the process on concurrent parallel launches,
so when that layer is in use every launch holds a lock (``omp`` and ``tbb`` are safe).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange, uint64

from ..shapes import conv_output_size, pool_output_size

NAME = "numba"

# Options of every kernel: parallel, cached on disk, GIL released (other Python threads
# keep running), no Python-style ZeroDivisionError checks.
_KERNEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")

_NO_BIAS = np.zeros(0, np.float32)  # "no bias" as an array: one kernel signature, not two

# Bytes of packed windows per convolution chunk: a few samples at a time keeps ``col`` in
# the last-level cache and amortizes the kernel launches.
_COL_BUDGET = 8 << 20


# ----------------------------------------------------------------------------- thread safety

_launch_lock = threading.RLock()
_needs_lock = True  # until the first launch tells us which threading layer Numba picked


class _Launch:
    """Context manager around kernel launches: a lock, but only while it is needed."""

    def __enter__(self):
        self.locked = _needs_lock
        if self.locked:
            _launch_lock.acquire()

    def __exit__(self, *exc):
        global _needs_lock
        if self.locked:
            try:
                if _needs_lock:
                    _needs_lock = numba.threading_layer() == "workqueue"
            except ValueError:  # no parallel kernel has run yet
                pass
            finally:
                _launch_lock.release()
        return False


_launch = _Launch()


# ----------------------------------------------------------------------------- convolution

@njit(**_KERNEL)
def _im2col(x, n0, col, kh, kw, sh, sw, ph, pw, dh, dw, wo):
    """``col[b, (c*kh + u)*kw + v, i*wo + j] = x[n0 + b, c, i*sh - ph + u*dh, j*sw - pw + v*dw]`` (0 outside).

    One task per ``col`` row. Indexing goes through flat views with unsigned offsets: Numba
    then skips its negative-index wraparound and the copies vectorize (3x faster).
    """
    nb, K, P = col.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    ho = P // wo
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    for r in prange(nb * K):
        b = r // K
        row = r - b * K
        c = row // (kh * kw)
        u = (row // kw) % kh
        v = row % kw
        off_w = v * dw - pw
        # output columns whose input column lies inside the image: [j0, j1)
        j0 = 0 if off_w >= 0 else min((-off_w + sw - 1) // sw, wo)
        j1 = min(max((W - 1 - off_w) // sw + 1, j0), wo)
        plane = ((n0 + b) * C + c) * H * W
        for i in range(ho):
            ih = i * sh - ph + u * dh
            d = uint64(r * P + i * wo)
            if ih < 0 or ih >= H:
                for j in range(wo):
                    cf[d + uint64(j)] = 0.0
                continue
            for j in range(j0):
                cf[d + uint64(j)] = 0.0
            s = plane + ih * W + off_w          # may be "negative" only for j < j0
            if sw == 1:
                for j in range(j0, j1):
                    cf[d + uint64(j)] = xf[uint64(s + j)]
            else:
                for j in range(j0, j1):
                    cf[d + uint64(j)] = xf[uint64(s + j * sw)]
            for j in range(j1, wo):
                cf[d + uint64(j)] = 0.0


@njit(**_KERNEL)
def _bias_relu(y, bias, relu):
    """In place on ``y`` of shape ``(N, C, P)``: add ``bias[c]`` (if any), then ``max(., 0)`` if ``relu``."""
    N, C, P = y.shape
    has_bias = bias.shape[0] > 0
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        row = y[n, c]
        b = bias[c] if has_bias else np.float32(0.0)
        if relu:
            for p in range(P):
                v = row[p] + b
                row[p] = np.float32(0.0) if v < 0.0 else v  # NaN stays NaN, as np.maximum
        else:
            for p in range(P):
                row[p] += b


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu):
    N, C, H, W = x.shape
    O, cin_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    P, K, kg, og = ho * wo, C * kh * kw, cin_g * kh * kw, O // groups
    y = np.empty((N, O, ho, wo), np.float32)
    w = weight.reshape(1, groups, og, kg)                    # views, no copies
    b = _NO_BIAS if bias is None else bias
    pointwise = kh == 1 and kw == 1 and (sh, sw, ph, pw) == (1, 1, 0, 0)
    if pointwise:                                            # the input already is ``col``
        chunk, col = N, x.reshape(N, C, P)
    else:
        chunk = max(1, min(N, _COL_BUDGET // (4 * K * P)))
        col = np.empty((chunk, K, P), np.float32)
    with _launch:
        for n0 in range(0, N, chunk):
            m = min(chunk, N - n0)
            if pointwise:
                cols = col[n0:n0 + m]
            else:
                cols = col[:m]
                _im2col(x, n0, cols, kh, kw, sh, sw, ph, pw, dh, dw, wo)
            out = y[n0:n0 + m].reshape(m, O, P)
            # (1, G, og, kg) @ (m, G, kg, P) -> (m, G, og, P): one sgemm per sample and group
            np.matmul(w, cols.reshape(m, groups, kg, P), out=out.reshape(m, groups, og, P))
            if bias is not None or relu:
                _bias_relu(out, b, relu)
    return y


# ----------------------------------------------------------------------------- pooling

@njit(**_KERNEL)
def _max_pool(x, y, kh, kw, sh, sw, ph, pw):
    """``y[n, c, i, j] = max of x[n, c]`` over the window (padding never wins; NaN propagates)."""
    N, C, H, W = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        src = x[n, c]
        dst = y[n, c]
        rowmax = np.empty(W, np.float32)
        for i in range(ho):
            h0 = i * sh - ph
            h1 = min(h0 + kh, H)
            h0 = max(h0, 0)
            for q in range(W):
                rowmax[q] = src[h0, q]
            for h in range(h0 + 1, h1):
                for q in range(W):
                    v = src[h, q]
                    m = rowmax[q]
                    rowmax[q] = v if (v > m or v != v) else m
            for j in range(wo):
                w0 = j * sw - pw
                w1 = min(w0 + kw, W)
                w0 = max(w0, 0)
                m = rowmax[w0]
                for q in range(w0 + 1, w1):
                    v = rowmax[q]
                    if v > m or v != v:
                        m = v
                dst[i, j] = m


@njit(**_KERNEL)
def _avg_pool(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    """``y = window sum / divisor`` with torch's divisor (padded cells count only with count_include_pad)."""
    N, C, H, W = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        src = x[n, c]
        dst = y[n, c]
        rowsum = np.empty(W, np.float32)
        for i in range(ho):
            t0 = i * sh - ph
            t1 = min(t0 + kh, H + ph)
            h0 = max(t0, 0)
            h1 = min(t1, H)
            for q in range(W):
                rowsum[q] = src[h0, q]
            for h in range(h0 + 1, h1):
                for q in range(W):
                    rowsum[q] += src[h, q]
            for j in range(wo):
                l0 = j * sw - pw
                l1 = min(l0 + kw, W + pw)
                w0 = max(l0, 0)
                w1 = min(l1, W)
                s = np.float32(0.0)
                for q in range(w0, w1):
                    s += rowsum[q]
                if count_include_pad:
                    count = (t1 - t0) * (l1 - l0)
                else:
                    count = (h1 - h0) * (w1 - w0)
                dst[i, j] = s / np.float32(count)


@njit(**_KERNEL)
def _adaptive_avg_pool(x, y):
    """``y[n, c, i, j]`` = mean of rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` and the columns alike."""
    N, C, H, W = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        src = x[n, c]
        for i in range(oh):
            h0 = (i * H) // oh
            h1 = ((i + 1) * H + oh - 1) // oh
            for j in range(ow):
                w0 = (j * W) // ow
                w1 = ((j + 1) * W + ow - 1) // ow
                s = 0.0  # float64 accumulator: adaptive windows can be large
                for h in range(h0, h1):
                    for q in range(w0, w1):
                        s += src[h, q]
                y[n, c, i, j] = np.float32(s / ((h1 - h0) * (w1 - w0)))


def _pool_output(x, kernel, stride, padding, ceil_mode):
    N, C, H, W = x.shape
    ho = pool_output_size(H, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(W, kernel[1], stride[1], padding[1], ceil_mode)
    return np.empty((N, C, ho, wo), np.float32)


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    with _launch:
        _max_pool(x, y, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1])
    return y


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    with _launch:
        _avg_pool(x, y, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                  bool(count_include_pad))
    return y


def adaptive_avg_pool2d(x, output_size):
    N, C = x.shape[:2]
    y = np.empty((N, C, output_size[0], output_size[1]), np.float32)
    with _launch:
        _adaptive_avg_pool(x, y)
    return y


# ----------------------------------------------------------------------------- normalization

_LRN_BLOCK = 512  # pixels per task: the window's channel rows of a block stay in L1


@njit(**_KERNEL)
def _lrn(x, y, size, alpha, beta, k):
    """``y[n, c, p] = x[n, c, p] / (k + alpha/size * sum_{j=c-size//2}^{c+(size-1)//2} x[n, j, p]^2) ** beta``.

    ``x`` and ``y`` are ``(N, C, H*W)``. A running window sum over channels, kept in float64
    (squares of float32 values are exact there, so adding and removing them does not drift).
    """
    N, C, P = x.shape
    nblocks = (P + _LRN_BLOCK - 1) // _LRN_BLOCK
    before, after = size // 2, (size - 1) // 2
    scale = np.float32(alpha / size)
    kk = np.float32(k)
    fbeta = np.float32(beta)
    three_quarters = beta == 0.75
    for t in prange(N * nblocks):
        n = t // nblocks
        p0 = (t - n * nblocks) * _LRN_BLOCK
        p1 = min(p0 + _LRN_BLOCK, P)
        L = p1 - p0
        s = np.zeros(L, np.float64)
        for c in range(min(after, C)):
            row = x[n, c, p0:p1]
            for p in range(L):
                v = np.float64(row[p])
                s[p] += v * v
        for c in range(C):
            if c + after < C:
                row = x[n, c + after, p0:p1]
                for p in range(L):
                    v = np.float64(row[p])
                    s[p] += v * v
            if c - before - 1 >= 0:
                row = x[n, c - before - 1, p0:p1]
                for p in range(L):
                    v = np.float64(row[p])
                    s[p] -= v * v
            src = x[n, c, p0:p1]
            dst = y[n, c, p0:p1]
            if three_quarters:
                for p in range(L):
                    d = kk + scale * np.float32(s[p])
                    dst[p] = src[p] / np.sqrt(d * np.sqrt(d))
            else:
                for p in range(L):
                    d = kk + scale * np.float32(s[p])
                    dst[p] = src[p] / d ** fbeta


def local_response_norm(x, size, alpha, beta, k):
    N, C, H, W = x.shape
    y = np.empty_like(x)
    with _launch:
        _lrn(x.reshape(N, C, H * W), y.reshape(N, C, H * W), size, alpha, beta, k)
    return y


# ----------------------------------------------------------------------------- dense and relu

def linear(x, weight, bias, relu):
    y = np.matmul(x, weight.T)            # weight.T is a view: sgemm reads the weight in place
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, np.float32(0.0), out=y)
    return y


@njit(**_KERNEL)
def _relu(x, y):
    """``y = max(x, 0)`` on flat arrays (NaN propagates, as in NumPy)."""
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = np.float32(0.0) if v < 0.0 else v


def relu(x):
    y = np.empty_like(x)
    with _launch:
        _relu(x.reshape(-1), y.reshape(-1))
    return y
