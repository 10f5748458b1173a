"""The fast backend: compiled Numba kernels run on all cores, OpenBLAS for the matrix products.

Contract (shared with every backend, see ``fastalex.backends``): inputs are validated,
C-contiguous float32 NCHW arrays; pair arguments are ``(h, w)`` tuples of ints. The Python
wrappers below allocate outputs (sizes from :mod:`fastalex.shapes`) and split the work;
the ``@njit`` kernels assume valid input and only do arithmetic.

Kernels
-------
Every kernel computes one contiguous range ``[start, stop)`` of independent items (image
planes, pixel blocks, samples) and is compiled ``nogil`` and ``cache=True``.
:func:`_parallel_for` runs the ranges on the cores: one range per thread, one fork and
one join per operation.

* **Convolution** is im2col + sgemm, done per (sample, group, block of output rows): pack
  the group's input windows into a thread-private ``col`` of shape ``(C/groups*kh*kw, rows*Wo)``
  (rows in the weight's ``(c, u, v)`` order), multiply the group's ``(out/groups,
  C/groups*kh*kw)`` weight view by it straight into the NCHW output (an ``(out/groups,
  pixels)`` block is already NCHW), then add bias and ReLU on the block while it is in cache.
* **Pooling** is separable: the window's input rows are reduced into a row buffer
  (contiguous, vectorizable), then each output cell reduces its columns.
* **LRN** keeps a running sum of squares over the channel window for a block of pixels
  (one add and one subtract per channel instead of ``size`` adds) and uses
  ``1/sqrt(d*sqrt(d))`` for ``d**0.75``.
* **Dense** layers are sgemm on ``weight.T`` (a view: the 230 MB of AlexNet's dense weights
  are never copied), one block of output features per thread; a single sample is one
  sgemv on the weight's rows, threaded by BLAS.

Threads
-------
The kernels are serial loops over a range, compiled ``nogil``; the threads are a few
Python threads that wait on a lock for work, sized by ``numba.get_num_threads()`` at each
call (so ``NUMBA_NUM_THREADS`` and ``numba.set_num_threads`` apply to the whole backend,
BLAS included). A range is cut into chunks the threads take in turn, and work goes to
another thread only when each gets at least ``_MIN_THREAD_NS`` of it.

Why not ``parallel=True`` kernels: measured on this busy 2-core VM, Numba's OpenMP layer
spins and pays a scheduler tick (4-8 ms) per launch whenever another process holds a core
(AlexNet batch 1: 415-475 ms a forward pass with ``parallel=True`` kernels, 65-77 ms with
this pool, same load), its ``workqueue`` layer aborts on concurrent launches, and
OpenBLAS's own threads fight both. With no Numba parallel launch at all, any number of
Python threads may call the backend at once; a caller that finds the workers busy does
the work itself.

While the workers run matrix products, NumPy's OpenBLAS is set to one thread (reference
counted across concurrent calls, restored afterwards; other threads' NumPy products are
single-threaded meanwhile). When NumPy's BLAS cannot be controlled that way, products run
in the calling thread and BLAS threads them itself.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import itertools
import os
import threading

import numba
import numpy as np
from numba import njit, uint64

from ..shapes import conv_output_size, pool_output_size

NAME = "numba"

# Options of every kernel: cached on disk, GIL released (the pool threads run them at
# once), no Python-style ZeroDivisionError checks.
_KERNEL = dict(cache=True, nogil=True, error_model="numpy")

_NO_BIAS = np.zeros(0, np.float32)  # "no bias" as an array: one kernel signature, not two


def _writable(a):
    """``a``, or a copy if it is read-only: Numba compiles a second version of a kernel for
    read-only arrays (memory-mapped weights, ``np.frombuffer`` images)."""
    return a if a.flags.writeable else a.copy()


# Each thread gets at least this much work (estimated nanoseconds on one core): waking a
# sleeping thread and hearing back costs 0.1-0.3 ms in a small VM (~20 us on bare metal).
_MIN_THREAD_NS = 400_000


# ----------------------------------------------------------------------------- threads

class _Worker:
    """A thread that sleeps on a lock until it is handed a task (a bare lock handoff: no
    queue or future objects, a little cheaper than ``ThreadPoolExecutor``)."""

    def __init__(self, index):
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.task, self.error = None, None
        threading.Thread(target=self._run, name=f"fastalex-{index}", daemon=True).start()

    def _run(self):
        while True:
            self.go.acquire()
            try:
                self.task()
            except BaseException as exc:  # handed back to the caller
                self.error = exc
            self.task = None
            self.done.release()

    def start(self, task):
        self.task, self.error = task, None
        self.go.release()

    def wait(self):
        self.done.acquire()
        return self.error


_idle: list[_Worker] = []       # workers not running anything
_created = 0
_pool_lock = threading.Lock()


def _take_workers(wanted: int) -> list[_Worker]:
    """Up to ``wanted`` idle workers (created on demand, at most ``NUMBA_NUM_THREADS - 1``:
    the most ``numba.set_num_threads`` can ask for). Callers that find them all busy
    (other Python threads are using them) get fewer and do more of the work themselves."""
    global _created
    with _pool_lock:
        while len(_idle) < wanted and _created < numba.config.NUMBA_NUM_THREADS - 1:
            _created += 1
            _idle.append(_Worker(_created))
        taken = _idle[len(_idle) - min(wanted, len(_idle)):]
        del _idle[len(_idle) - len(taken):]
    return taken


def _give_back(workers: list[_Worker]) -> None:
    with _pool_lock:
        _idle.extend(workers)


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's worker threads (and maybe a lock held by one)."""
    global _idle, _created, _pool_lock, _blas_lock, _blas_users
    _idle, _created, _pool_lock = [], 0, threading.Lock()
    if _blas_users:  # forked in the middle of an operation: give BLAS its threads back
        _blas_threads[1](_blas_saved)
    _blas_lock, _blas_users = threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _num_threads(items: int, work_ns: float) -> int:
    """Threads worth using for ``items`` independent items totalling ``work_ns`` of work."""
    return max(1, min(numba.get_num_threads(), items, int(work_ns // _MIN_THREAD_NS)))


def _parallel_for(task, items: int, threads: int, chunks_per_thread: int = 4) -> None:
    """Run ``task(start, stop)`` over ``range(items)`` on up to ``threads`` threads, the
    calling thread included. The range is cut into ``chunks_per_thread * threads`` near-equal
    chunks that the threads take in turn, so one that wakes up late (a sleeping thread takes
    0.1-0.3 ms to wake in a small VM) just takes fewer. Exceptions propagate."""
    workers = _take_workers(threads - 1) if threads > 1 and items > 1 else []
    if not workers:
        task(0, items)
        return
    chunks = min(items, chunks_per_thread * (len(workers) + 1))
    bounds = [items * c // chunks for c in range(chunks + 1)]
    next_chunk = itertools.count().__next__    # atomic under the GIL

    def run():
        while (c := next_chunk()) < chunks:
            task(bounds[c], bounds[c + 1])

    for worker in workers:
        worker.start(run)
    try:
        run()
    finally:
        errors = [worker.wait() for worker in workers]
        _give_back(workers)
    for error in errors:
        if error is not None:
            raise error


# ----------------------------------------------------------------------------- BLAS threads

def _loaded_openblas_paths():
    """NumPy's bundled OpenBLAS (wheels), then any OpenBLAS already mapped in this process."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    paths = sorted(glob.glob(os.path.join(libs_dir, "*openblas*")))
    try:
        with open("/proc/self/maps") as maps:
            paths += sorted({line.split()[-1] for line in maps
                             if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:  # not Linux
        pass
    return paths


def _find_openblas_threads():
    """``(get, set)`` of the number of threads of NumPy's OpenBLAS, or ``None`` (other BLAS)."""
    names = ("scipy_openblas{}_num_threads64_", "scipy_openblas{}_num_threads_64_",
             "scipy_openblas{}_num_threads", "openblas{}_num_threads64_", "openblas{}_num_threads")
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            getter = getattr(lib, name.format("_get"), None)
            setter = getattr(lib, name.format("_set"), None)
            if getter is not None and setter is not None:
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                return getter, setter
    return None


_blas_threads = _find_openblas_threads()
_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = 1


class _SingleThreadedBlas:
    """While any operation of this backend runs products on the pool, OpenBLAS uses 1 thread."""

    def __enter__(self):
        global _blas_users, _blas_saved
        with _blas_lock:
            if _blas_users == 0:
                _blas_saved = _blas_threads[0]()
                _blas_threads[1](1)
            _blas_users += 1

    def __exit__(self, *exc):
        global _blas_users
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_threads[1](_blas_saved)
        return False


_single_threaded_blas = _SingleThreadedBlas()


def _blas_parallel_for(task, items: int, threads: int) -> None:
    """:func:`_parallel_for` for tasks that call BLAS. BLAS runs single-threaded inside the
    pool (and when the thread budget is one); if that cannot be arranged, everything runs in
    the calling thread and BLAS threads the products itself."""
    if _blas_threads is None:
        task(0, items)
    elif threads > 1 or numba.get_num_threads() == 1:
        with _single_threaded_blas:
            _parallel_for(task, items, threads)
    else:  # small work: BLAS keeps its settings (it does not thread small products anyway)
        task(0, items)


# ----------------------------------------------------------------------------- convolution

@njit(**_KERNEL)
def _im2col(x, n, c0, i0, i1, col, kh, kw, sh, sw, ph, pw, dh, dw, wo):
    """Input channels ``[c0, c0 + col.shape[0] // (kh*kw))`` and output rows ``[i0, i1)`` of sample ``n``:
    ``col[(c*kh + u)*kw + v, (i - i0)*wo + j] = x[n, c0 + c, i*sh - ph + u*dh, j*sw - pw + v*dw]`` (0 outside).

    Indexing goes through flat views with unsigned offsets: Numba then skips its
    negative-index wraparound and the copies vectorize (3x faster than 4-D indexing).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    K = col.shape[0]
    L = (i1 - i0) * wo
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    for row in range(K):
        c = row // (kh * kw)
        u = (row // kw) % kh
        v = row % kw
        off_w = v * dw - pw
        # output columns whose input column lies inside the image: [j0, j1)
        j0 = 0 if off_w >= 0 else min((-off_w + sw - 1) // sw, wo)
        j1 = min(max((W - 1 - off_w) // sw + 1, j0), wo)
        plane = (n * C + c0 + c) * H * W
        for i in range(i0, i1):
            ih = i * sh - ph + u * dh
            d = uint64(row * L + (i - i0) * wo)
            if ih < 0 or ih >= H:
                for j in range(wo):
                    cf[d + uint64(j)] = 0.0
                continue
            for j in range(j0):
                cf[d + uint64(j)] = 0.0
            s = plane + ih * W + off_w          # s + j*sw >= 0 for j >= j0
            if sw == 1:
                for j in range(j0, j1):
                    cf[d + uint64(j)] = xf[uint64(s + j)]
            else:
                for j in range(j0, j1):
                    cf[d + uint64(j)] = xf[uint64(s + j * sw)]
            for j in range(j1, wo):
                cf[d + uint64(j)] = 0.0


@njit(**_KERNEL)
def _bias_relu(y, n, c0, c1, p0, p1, bias, relu):
    """In place on channels ``[c0, c1)``, pixels ``[p0, p1)`` of sample ``n`` of ``y`` ``(N, C, P)``:
    add ``bias[c]`` (if any), then ``max(., 0)`` if ``relu`` (NaN stays NaN, as ``np.maximum``)."""
    has_bias = bias.shape[0] > 0
    for c in range(c0, c1):
        row = y[n, c]
        b = bias[c] if has_bias else np.float32(0.0)
        if relu:
            for p in range(p0, p1):
                v = row[p] + b
                row[p] = np.float32(0.0) if v < 0.0 else v
        elif has_bias:
            for p in range(p0, p1):
                row[p] += b


class _Scratch(threading.local):
    """One growing float32 buffer per thread, for the packed windows."""

    buf = np.zeros(0, np.float32)

    def get(self, size):
        if self.buf.size < size:
            self.buf = np.empty(size, np.float32)
        return self.buf[:size]


_scratch = _Scratch()


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu):
    N, C, H, W = x.shape
    O, cin_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    P, kg, og = ho * wo, cin_g * kh * kw, O // groups
    y = np.empty((N, O, ho, wo), np.float32)
    y3 = y.reshape(N, O, P)
    w = weight.reshape(groups, og, kg)                       # views, no copies
    b = _NO_BIAS if bias is None else _writable(bias)
    x = _writable(x)
    epilogue = bias is not None or relu
    pointwise = kh == 1 and kw == 1 and (sh, sw, ph, pw) == (1, 1, 0, 0)
    x3 = x.reshape(N, C, H * W)

    # Work items: (sample, group, block of output rows). One block while there are a few
    # (sample, group) pairs per thread or they share out evenly (a whole group keeps its
    # product large: fewer, bigger sgemm calls), else one block of rows per thread, or more
    # if the blocks stay large (>= 384 pixels): then a thread that wakes late takes fewer.
    threads = _num_threads(N * groups * ho, N * P * O * kg / 30)    # ~30 multiply-adds per ns
    units = N * groups
    if units >= 4 * threads or units % threads == 0:
        blocks = 1
    else:
        blocks = min(ho, max(threads, P // 384))

    def task(start, stop):
        for item in range(start, stop):
            unit, blk = divmod(item, blocks)
            n, g = divmod(unit, groups)
            i0, i1 = ho * blk // blocks, ho * (blk + 1) // blocks
            p0, p1 = i0 * wo, i1 * wo
            if pointwise:                                    # the input already is ``col``
                col = x3[n, g * cin_g:(g + 1) * cin_g, p0:p1]
            else:
                col = _scratch.get(kg * (p1 - p0)).reshape(kg, p1 - p0)
                _im2col(x, n, g * cin_g, i0, i1, col, kh, kw, sh, sw, ph, pw, dh, dw, wo)
            np.matmul(w[g], col, out=y3[n, g * og:(g + 1) * og, p0:p1])
            if epilogue:
                _bias_relu(y3, n, g * og, (g + 1) * og, p0, p1, b, relu)

    _blas_parallel_for(task, units * blocks, threads)
    return y


# ----------------------------------------------------------------------------- pooling

@njit(**_KERNEL)
def _max_pool(x, y, r0, r1, kh, kw, sh, sw, ph, pw):
    """Planes ``[r0, r1)`` of ``(N*C)``: ``y[n, c, i, j] = max of x[n, c]`` over the window
    (padding never wins; NaN propagates, as in torch)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for r in range(r0, r1):
        n, c = r // C, r % C
        src, dst = x[n, c], y[n, c]
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
def _avg_pool(x, y, r0, r1, kh, kw, sh, sw, ph, pw, count_include_pad):
    """Planes ``[r0, r1)``: ``y = window sum / divisor`` with torch's divisor: the window's
    cells inside the zero-padded input with ``count_include_pad`` (never the extra
    ``ceil_mode`` margin), else only its cells inside the input."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for r in range(r0, r1):
        n, c = r // C, r % C
        src, dst = x[n, c], y[n, c]
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
def _adaptive_avg_pool(x, y, r0, r1):
    """Planes ``[r0, r1)``: ``y[n, c, i, j]`` = mean of rows ``[floor(i*H/oh), ceil((i+1)*H/oh))``
    and the columns alike."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    for r in range(r0, r1):
        n, c = r // C, r % C
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


def _planes_parallel_for(kernel, x, y, window, *args):
    x = _writable(x)
    N, C = x.shape[:2]
    planes = N * C
    threads = _num_threads(planes, 2 * (y.size * window + x.size))
    _parallel_for(lambda r0, r1: kernel(x, y, r0, r1, *args), planes, threads)


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    _planes_parallel_for(_max_pool, x, y, kernel[1], kernel[0], kernel[1], stride[0], stride[1],
                         padding[0], padding[1])
    return y


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    _planes_parallel_for(_avg_pool, x, y, kernel[1], kernel[0], kernel[1], stride[0], stride[1],
                         padding[0], padding[1], bool(count_include_pad))
    return y


def adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    y = np.empty((N, C, output_size[0], output_size[1]), np.float32)
    _planes_parallel_for(_adaptive_avg_pool, x, y, 1)
    return y


# ----------------------------------------------------------------------------- normalization

_LRN_BLOCK = 512  # pixels per item: the window's channel rows of a block stay in L1


@njit(fastmath={"afn", "arcp", "contract"}, **_KERNEL)  # approximate sqrt/divide, still IEEE NaN/inf
def _lrn(x, y, t0, t1, size, alpha, beta, k):
    """Items ``[t0, t1)`` of (sample, block of ``_LRN_BLOCK`` pixels), ``x`` and ``y`` ``(N, C, H*W)``:
    ``y[n, c, p] = x[n, c, p] / (k + alpha/size * sum_{j=c-size//2}^{c+(size-1)//2} x[n, j, p]^2) ** beta``.

    A running window sum over channels, kept in float64 (squares of float32 values are exact
    there, so adding and removing them does not drift).
    """
    C, P = x.shape[1], x.shape[2]
    nblocks = (P + _LRN_BLOCK - 1) // _LRN_BLOCK
    before, after = size // 2, (size - 1) // 2
    scale = np.float32(alpha / size)
    kk = np.float32(k)
    fbeta = np.float32(beta)
    three_quarters = beta == 0.75
    for t in range(t0, t1):
        n = t // nblocks
        p0 = (t % nblocks) * _LRN_BLOCK
        L = min(p0 + _LRN_BLOCK, P) - p0
        p1 = p0 + L
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
            src, dst = x[n, c, p0:p1], y[n, c, p0:p1]
            if three_quarters:
                for p in range(L):
                    d = kk + scale * np.float32(s[p])
                    dst[p] = src[p] / np.sqrt(d * np.sqrt(d))
            else:
                for p in range(L):
                    d = kk + scale * np.float32(s[p])
                    dst[p] = src[p] / d ** fbeta


def local_response_norm(x, size, alpha, beta, k):
    x = _writable(x)
    N, C, H, W = x.shape
    y = np.empty_like(x)
    x3, y3 = x.reshape(N, C, H * W), y.reshape(N, C, H * W)
    items = N * ((H * W + _LRN_BLOCK - 1) // _LRN_BLOCK)
    threads = _num_threads(items, 1.3 * x.size)
    _parallel_for(lambda t0, t1: _lrn(x3, y3, t0, t1, size, alpha, beta, k), items, threads)
    return y


# ----------------------------------------------------------------------------- dense and relu

def linear(x, weight, bias, relu):
    N, K = x.shape
    F = weight.shape[0]
    y = np.empty((N, F), np.float32)

    def rows_cols(n0, n1, f0, f1):
        out = y[n0:n1, f0:f1]
        if n1 - n0 == 1:                               # matrix-vector: sgemv streams the rows
            np.matmul(weight[f0:f1], x[n0], out=out[0])
        else:                                          # weight.T is a view: read in place
            np.matmul(x[n0:n1], weight[f0:f1].T, out=out)
        if bias is not None:
            out += bias[f0:f1]
        if relu:
            np.maximum(out, np.float32(0.0), out=out)

    # One sample: a single sgemv, threaded by BLAS itself (one fork and join, from threads
    # that spin briefly: measured 20-70% faster than handing halves to sleeping threads).
    if N == 1:
        _blas_parallel_for(lambda a, b: rows_cols(0, 1, 0, F), 1, 1)
        return y
    # Batches: split the output features in blocks of 64 (each thread streams its share of
    # the weight); too few features: split the batch.
    blocks = -(-F // 64)
    threads = _num_threads(max(blocks, N), F * K * (0.15 + N / 30))
    if blocks >= 2 * threads or blocks >= N:
        _blas_parallel_for(lambda a, b: rows_cols(0, N, 64 * a, min(64 * b, F)), blocks, threads)
    else:
        _blas_parallel_for(lambda n0, n1: rows_cols(n0, n1, 0, F), N, threads)
    return y


@njit(**_KERNEL)
def _relu(x, y, i0, i1):
    """``y[i] = max(x[i], 0)`` on flat arrays for ``i`` in ``[i0, i1)`` (NaN propagates, as in NumPy)."""
    for i in range(i0, i1):
        v = x[i]
        y[i] = np.float32(0.0) if v < 0.0 else v


def relu(x):
    x = _writable(x)
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    threads = _num_threads(xf.size, xf.size / 4)
    _parallel_for(lambda i0, i1: _relu(xf, yf, i0, i1), xf.size, threads)
    return y
