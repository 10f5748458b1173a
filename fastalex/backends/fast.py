"""The fast backend: ``@njit(parallel=True, cache=True)`` kernels, ``prange`` over independent work.

Contract (shared with every backend, see ``fastalex.backends``): inputs are validated,
C-contiguous float32 NCHW arrays; pair arguments are ``(h, w)`` tuples of ints. The Python
wrappers below allocate outputs (sizes from :mod:`fastalex.shapes`); the kernels assume
valid input and only do arithmetic, float32 throughout (adaptive pooling sums in float64).

* **Convolution** with prepared weights (``Conv2D`` layers, or ``functional.conv2d(plan=...)``)
  runs the Winograd algorithm of :mod:`._winograd` where it applies (square kernels, any
  stride folded into channels, at least ``WINOGRAD_MIN_CHANNELS`` channels per group: every
  AlexNet layer): 4-6.25x fewer multiplies than any direct method, as 36, 49 or 64 products per
  tile. Where each group's output channels are a multiple of 32 (every AlexNet layer) the
  products run on the register-blocked micro-kernel of :mod:`._gemm`, at any batch size,
  usually in one launch per layer (one task per row of tiles: transforms and products);
  otherwise on NumPy's sgemm, from ``WINOGRAD_MIN_BATCH`` images. Otherwise, and for a
  plain functional call (transforming the weights on every call would cost more than it
  saves), it is im2col + sgemm. A parallel kernel packs the input windows of a chunk
  of samples into one ``(C*kh*kw, samples*Ho*Wo)`` matrix (rows in the weight's
  ``(c, u, v)`` order); OpenBLAS multiplies each group's ``(out/groups, C/groups*kh*kw)``
  weight view by its rows of that matrix (a grouped convolution is ``groups`` smaller
  products over the same packing: never more work than one ungrouped); a second parallel
  kernel adds the bias, applies the fused ReLU and writes NCHW. At batch 1 the product is
  written straight into the output. Chunks of samples keep small maps (13x13) in products
  wide enough for BLAS to run at full speed.
* **Pooling** is separable: a window's input rows are reduced into a row buffer, then each
  output cell reduces its columns; whole image planes per task. Max pooling does both passes
  in explicit vectors (:mod:`._pool`), NaN-propagating maxima without branches.
  Adaptive average pooling to the input's own size (torchvision's AlexNet at 224) is a copy.
* **LRN** sums the squares over each channel window for a block of pixels in O(1) per channel
  whatever the window size, without subtracting (a running sum that subtracts lets one NaN,
  inf or huge value spoil every later channel), and uses ``sqrt(d) * sqrt(sqrt(d))`` for
  ``d**0.75``.
* **Dense** layers run the register-tiled kernel of :mod:`fastalex.backends._dense_lowp`
  (the weight read in place, once per 4 samples, never packed or copied; for one sample it
  streams the weight as fast as OpenBLAS's sgemv). With a bfloat16 or int8 weight
  (:class:`fastalex.lowp.LowpWeight`) the same kernel widens it in registers inside the
  product. A read-only float32 weight (memory-mapped) goes to OpenBLAS rather than be copied.

So a forward pass of either AlexNet calls no BLAS at all. That matters beyond the products
themselves: OpenBLAS's threads spin for a while after each call, on the cores the next Numba
kernels need (measured here: the products of :mod:`._gemm` ran at ~100 GFLOP/s right after
OpenBLAS calls, ~190 GFLOP/s without them).

Threads
-------
The kernels run on ``numba.get_num_threads()`` threads (``NUMBA_NUM_THREADS``,
``numba.set_num_threads``). Numba kernels and BLAS products alternate, never nest, so the two
thread pools do not fight over the cores. Importing this module chooses Numba's threading
layer (:func:`fastalex.backends.auto_configure_threads`) unless the user, the program or
``NUMBA_THREADING_LAYER`` already chose one, or ``FASTALEX_THREADING_LAYER=numba`` leaves it to
Numba: ``tbb`` where TBB loads (the wheel's library is loaded by its path, so from a venv too),
else ``workqueue``. Both survive ``fork()``, and TBB starts a kernel in microseconds where
workqueue wakes its sleeping threads in tens of microseconds.

The kernels release the GIL (``nogil=True``). During a model's forward pass,
:func:`fastalex.backends._awake.keep_awake` keeps the other cores from halting between kernels
(idle-priority threads that yield the CPU in a loop; Linux), which in a virtual machine made a
pass after an idle pause as fast as back-to-back ones.

The launch lock, ``_LAUNCH``: every parallel launch of this module holds it, so launches from
several Python threads of one process take turns. The ``workqueue`` layer aborts the process
on two parallel launches at once, and with any layer two launches would oversubscribe the
cores. Its scope is this module's launches in this process (other Numba code does not take
it); BLAS products run outside it. ``os.fork()`` waits for the launch in flight in another
thread (up to ``tunables.FORK_WAIT`` seconds), so the threading layer forks with idle workers, and the
child gets a fresh, free lock (``os.register_at_fork``): a thread that held the parent's does
not exist in the child.

The compiled kernels are cached on disk (``cache=True``): next to this file in
``__pycache__``, or where ``NUMBA_CACHE_DIR`` points.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from numba import njit, prange, uint64

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from ..shapes import conv_output_size, pool_output_size
from . import _gemm, _pool, _tune, _winograd, auto_configure_threads, tunables
from ._dense_lowp import linear_lowp_kernel

NAME = "numba"

auto_configure_threads()  # TBB (else workqueue) unless the user or NUMBA_THREADING_LAYER chose

# Every parallel launch of this module holds this lock (see "Threads" above).
_LAUNCH = threading.Lock()


_held_at_fork = None


def _before_fork():
    """Before ``os.fork()``: wait (up to ``tunables.FORK_WAIT`` s) for the launch in flight, if any, and
    hold the lock, so that no kernel runs while the process forks. The threading layer can then
    stop its workers cleanly for the child (TBB's cannot while they run a kernel, and its child
    may then hang)."""
    global _held_at_fork
    _held_at_fork = _LAUNCH if _LAUNCH.acquire(timeout=tunables.FORK_WAIT) else None


def _after_fork_in_parent():
    global _held_at_fork
    if _held_at_fork is not None:
        _held_at_fork.release()
        _held_at_fork = None


def _new_launch_lock():
    """After ``fork()``, in the child: a free lock (the parent's may be held by a thread that
    was running a kernel and does not exist in the child, which would wait forever)."""
    global _LAUNCH, _held_at_fork
    _LAUNCH = threading.Lock()
    _held_at_fork = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_new_launch_lock)

# Options of the kernels: cached on disk, no Python-style ZeroDivisionError checks.
_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")
_NO_BIAS = np.zeros(0, np.float32)  # "no bias" as an array: one kernel signature, not two
_NO_SCALE = _NO_BIAS                 # likewise "scale 1" for the dense kernel


def describe_runtime() -> str:
    """The threading layer, threads, CPU and instruction set the kernels run with."""
    from . import describe_runtime as describe
    dense = sorted((k.split("|")[0], k.split("|")[2], k.split("|")[1], v) for k, v in _tune.choices().items()
                   if k.startswith(("linear|", "linear_bf16|")))
    lines = [f"  dense {w} input {x}{' bfloat16' if op == 'linear_bf16' else ''}: {name} ({origin})"
             for op, w, x, (name, origin) in dense]
    return "\n".join((["Dense layers:"] + lines if lines else []) + [describe()])


def _launch(kernel, *args):
    """Run a parallel kernel, one launch at a time in this process."""
    with _LAUNCH:
        kernel(*args)


def _writable(a):
    """``a``, or a copy if it is read-only: Numba compiles a second version of a kernel for
    read-only arrays (memory-mapped weights, ``np.frombuffer`` images)."""
    return a if a.flags.writeable else a.copy()


@njit(**_SER)
def _im2col_row(xf, cf, base, row, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """One row of the packed matrix for sample ``n``: ``cf[base + i*wo + j] =
    x[n, c, i*sh - ph + u*dh, j*sw - pw + v*dw]`` (0 outside the input), where
    ``row = (c*kh + u)*kw + v`` is the weight's ``(c, u, v)`` order.

    ``xf`` and ``cf`` are flat views indexed with unsigned offsets: Numba then skips its
    negative-index wraparound and the copies vectorize (3x faster than 4-D indexing).
    """
    c = row // (kh * kw)
    u = (row // kw) % kh
    v = row % kw
    off_w = v * dw - pw
    # output columns whose input column lies inside the image: [j0, j1)
    j0 = 0 if off_w >= 0 else min((-off_w + sw - 1) // sw, wo)
    j1 = min(max((W - 1 - off_w) // sw + 1, j0), wo)
    plane = (n * C + c) * H * W
    for i in range(ho):
        ih = i * sh - ph + u * dh
        d = uint64(base + i * wo)
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


@njit(**_PAR)
def _im2col(x, n0, n1, col, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """Pack samples ``[n0, n1)`` into ``col`` ``(C*kh*kw, (n1-n0)*ho*wo)``: column ``s*P + i*wo + j``
    holds output pixel ``(i, j)`` of sample ``n0 + s``, so one sgemm per group covers the chunk."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    K = col.shape[0]
    P = ho * wo
    nb = n1 - n0
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    for t in prange(K * nb):
        row, s = t // nb, t % nb
        _im2col_row(xf, cf, row * nb * P + s * P, row, n0 + s, C, H, W,
                    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


@njit(**_PAR)
def _bias_relu(y, bias, relu):
    """In place on ``y`` ``(N, O, P)``: add ``bias[o]``, then ReLU if ``relu``."""
    N, O = y.shape[0], y.shape[1]
    has_bias = bias.shape[0] > 0
    for t in prange(N * O):
        n, o = t // O, t % O
        _gemm.bias_relu_row(y[n, o], y[n, o], bias[o] if has_bias else np.float32(0.0), relu)


@njit(**_PAR)
def _scatter_bias_relu(tmp, y, n0, nb, bias, relu):
    """``y[n0 + s, o, p] = act(tmp[o, s*P + p] + bias[o])``: a chunk's product back to NCHW."""
    O, P = y.shape[1], y.shape[2]
    has_bias = bias.shape[0] > 0
    for t in prange(nb * O):
        s, o = t // O, t % O
        _gemm.bias_relu_row(tmp[o, s * P:(s + 1) * P], y[n0 + s, o],
                       bias[o] if has_bias else np.float32(0.0), relu)


def prepare_conv2d(weight, bias, stride, dilation, groups):
    """The Winograd transform of the weights (``_winograd.Plan``), or None where only im2col
    applies (Winograd does not support the shape, or its channels are too few)."""
    O, cin_g, kh, kw = weight.shape
    if not _winograd.supports(weight.shape, stride, dilation):
        return None
    cs = cin_g * stride[0] * stride[1]
    if min(cs, O // groups) < tunables.WINOGRAD_MIN_CHANNELS:
        return None
    return _winograd.prepare(weight, bias, stride, groups)


def forward_pass():
    """The contract's ``forward_pass`` hook: around a model's forward pass, keep the other cores
    from halting between the kernels (:func:`fastalex.backends._awake.keep_awake`; a pass after
    an idle pause took 1.3-1.5x as long without it, in a VM)."""
    from . import _awake
    return _awake.keep_awake()


#: the Winograd schedules (see :func:`conv2d`), each with a tile size: ``winograd-fused-5x5``
WINOGRAD_SCHEDULES = ("winograd-fused", "winograd-chunked", "winograd-chunked-small")


def winograd_schedule(schedule: str, m: int) -> str:
    """The name of a Winograd schedule with output tiles of ``m x m``: ``winograd-fused-5x5``."""
    return f"{schedule}-{m}x{m}"


def schedule_tile(name: str):
    """The tile size ``m`` of a :func:`winograd_schedule` name, or None for another schedule."""
    if name and name.startswith(WINOGRAD_SCHEDULES):
        return int(name.rsplit("x", 1)[1])
    return None


#: every convolution schedule (see :func:`conv2d`)
CONV_SCHEDULES = tuple(winograd_schedule(s, m) for s in WINOGRAD_SCHEDULES
                       for m in sorted({m for ms in _winograd.TILES.values() for m in ms})) + ("im2col-sgemm",)


def describe_plan(plan) -> str:
    """How a prepared convolution runs, for ``Model.summary()``: its algorithm, then the
    schedule chosen for each input shape it ran on so far."""
    text = _winograd.describe(plan) if isinstance(plan, _winograd.Plan) else "im2col + sgemm"
    if plan is not None and plan.chosen:
        text += "; " + _tune.describe_choices(plan.chosen)
    return text


def _conv_candidates(x, weight, bias, stride, padding, dilation, groups, relu, plan):
    """name -> zero-argument function, for every schedule that can run this convolution."""
    def im2col():
        return _conv2d_im2col(x, weight, bias, stride, padding, dilation, groups, relu)
    if not isinstance(plan, _winograd.Plan):
        return {"im2col-sgemm": im2col}
    cands = _winograd_schedules(_writable(x), plan, padding, relu)
    if not plan.packed:
        # BLAS only where the micro-kernel cannot run: OpenBLAS's threads spin for a while after
        # each call, on the cores the next kernels need, so a BLAS schedule that wins when timed
        # alone loses inside a forward pass (measured: torchvision at batch 16 took 1.5x longer)
        cands["im2col-sgemm"] = im2col
    return cands


def _winograd_schedules(x, plan, padding, relu, round_bf16=False):
    """name -> zero-argument function for each Winograd schedule of ``plan`` on ``x``
    (``round_bf16``: its values rounded to bfloat16 as the transforms gather them), with each
    tile size worth trying on this output size (``_winograd.Plan.tiles``)."""
    cands = {}
    for m in plan.tiles(*_winograd.output_size(x.shape, plan, padding)):
        def run(schedule, chunk=None, m=m):
            return _winograd.conv2d(x, plan, padding, relu, _launch, schedule, chunk, round_bf16, tile=m)
        if plan.packed:
            cands[winograd_schedule("winograd-fused", m)] = lambda run=run: run("fused")
        cands[winograd_schedule("winograd-chunked", m)] = lambda run=run: run("chunked")
        cands[winograd_schedule("winograd-chunked-small", m)] = lambda run=run: run("chunked", tunables.CHUNK_BYTES // 4)
    return cands


def _conv_default(x, plan, padding):
    """The schedule used without measuring (``FASTALEX_TUNE=0``): the tile of fewest multiplies."""
    if not isinstance(plan, _winograd.Plan):
        return "im2col-sgemm"
    ho, wo = _winograd.output_size(x.shape, plan, padding)
    m = plan.tile(ho, wo)
    if plan.packed:
        fused = _winograd.fuses_by_default(plan, x.shape[0], ho, m)
        return winograd_schedule("winograd-fused" if fused else "winograd-chunked", m)
    if x.shape[0] >= tunables.WINOGRAD_MIN_BATCH:
        return winograd_schedule("winograd-chunked", m)
    return "im2col-sgemm"


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu, plan=None):
    """The schedule measured fastest for this shape on this machine (:mod:`._tune`) among
    those that apply: with a Winograd plan (prepared weights), Winograd fused (one launch per
    layer) or chunked (two chunk sizes), or im2col + sgemm; without one, im2col + sgemm."""
    cands = _conv_candidates(x, weight, bias, stride, padding, dilation, groups, relu, plan)
    default = _conv_default(x, plan, padding)
    if len(cands) == 1:
        return cands[default]()
    key = _tune.make_key("conv2d", x.shape, weight.shape, stride, padding, dilation, groups)
    y = _tune.run_for(plan.chosen, x.shape[0], "conv2d", key, cands, default)
    _keep_chosen_tiles(plan, plan.chosen)
    return y


def _keep_chosen_tiles(plan, chosen):
    """Free the Winograd ``plan``'s weights transformed for tile sizes that no schedule in
    ``chosen`` (batch -> (schedule, origin)) runs with."""
    if isinstance(plan, _winograd.Plan) and len(plan.held()) > 1:
        plan.keep({schedule_tile(name) for name, _ in chosen.values()})


def _conv2d_im2col(x, weight, bias, stride, padding, dilation, groups, relu):
    N, C, H, W = x.shape
    O, cin_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    P, kg, og = ho * wo, cin_g * kh * kw, O // groups
    K = C * kh * kw
    y = np.empty((N, O, ho, wo), np.float32)
    y3 = y.reshape(N, O, P)
    w = weight.reshape(groups, og, kg)
    x = _writable(x)
    b = _NO_BIAS if bias is None else _writable(bias)
    nb = max(1, min(N, tunables.GEMM_COLUMNS // P))
    col = np.empty((K, nb * P), np.float32)
    tmp = np.empty((O, nb * P), np.float32) if nb > 1 else None
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        m = n1 - n0
        c = col[:, :m * P] if m == nb else np.empty((K, m * P), np.float32)
        _launch(_im2col, x, n0, n1, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
        out = y3[n0] if nb == 1 else (tmp if m == nb else np.empty((O, m * P), np.float32))
        for g in range(groups):
            np.matmul(w[g], c[g * kg:(g + 1) * kg], out=out[g * og:(g + 1) * og])
        if nb > 1:
            _launch(_scatter_bias_relu, out, y3, n0, m, b, relu)
    if nb == 1 and (bias is not None or relu):
        _launch(_bias_relu, y3, b, relu)
    return y


def _pool_output(x, kernel, stride, padding, ceil_mode):
    N, C, H, W = x.shape
    ho = pool_output_size(H, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(W, kernel[1], stride[1], padding[1], ceil_mode)
    return np.empty((N, C, ho, wo), np.float32)


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    x = _writable(x)
    _launch(_pool.max_pool, x.reshape(-1), y.reshape(-1), x.shape[2], x.shape[3], y.shape[2], y.shape[3],
            kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1])
    return y


@njit(**_SER)
def _avg_pool_item(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, r):
    """Plane ``r``: window sum / divisor with torch's divisor: the window's cells inside the
    zero-padded input with ``count_include_pad`` (never the extra ``ceil_mode`` margin), else
    only its cells inside the input."""
    N, C, H, W = x.shape
    ho, wo = y.shape[2], y.shape[3]
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


@njit(**_PAR)
def _avg_pool(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    """Every image plane in parallel."""
    for r in prange(x.shape[0] * x.shape[1]):
        _avg_pool_item(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, r)


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    y = _pool_output(x, kernel, stride, padding, ceil_mode)
    _launch(_avg_pool, _writable(x), y, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
              bool(count_include_pad))
    return y


@njit(**_SER)
def _adaptive_avg_pool_item(x, y, r):
    """Plane ``r``: ``y[n, c, i, j]`` = mean of rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` and the
    columns alike (float64 accumulator: adaptive windows can be large)."""
    N, C, H, W = x.shape
    oh, ow = y.shape[2], y.shape[3]
    n, c = r // C, r % C
    src = x[n, c]
    for i in range(oh):
        h0 = (i * H) // oh
        h1 = ((i + 1) * H + oh - 1) // oh
        for j in range(ow):
            w0 = (j * W) // ow
            w1 = ((j + 1) * W + ow - 1) // ow
            s = 0.0
            for h in range(h0, h1):
                for q in range(w0, w1):
                    s += src[h, q]
            y[n, c, i, j] = np.float32(s / ((h1 - h0) * (w1 - w0)))


@njit(**_PAR)
def _adaptive_avg_pool(x, y):
    """Every image plane in parallel."""
    for r in prange(x.shape[0] * x.shape[1]):
        _adaptive_avg_pool_item(x, y, r)


def adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    if (H, W) == tuple(output_size):  # every window is one pixel (torchvision's AlexNet at 224)
        return x.copy()
    y = np.empty((N, C, output_size[0], output_size[1]), np.float32)
    _launch(_adaptive_avg_pool, _writable(x), y)
    return y


_LRN_BLOCK = tunables.LRN_BLOCK  # pixels per task (a compile-time constant of the kernel)


@njit(**_SER)
def _squares(out, row):
    """``out[p] = row[p]**2`` (float32, as in torch)."""
    for p in range(out.shape[0]):
        out[p] = row[p] * row[p]


@njit(**_SER)
def _next_squares(out, prev, row):
    """``out[p] = prev[p] + row[p]**2`` (``out`` and ``prev`` distinct)."""
    for p in range(out.shape[0]):
        out[p] = prev[p] + row[p] * row[p]


@njit(**_SER)
def _add_squares(out, row):
    """``out[p] += row[p]**2``."""
    for p in range(out.shape[0]):
        out[p] += row[p] * row[p]


@njit(fastmath={"contract"}, **_SER)  # fused multiply-add; sqrt, pow and divide stay IEEE
def _lrn_scale(src, dst, s1, s2, alpha_size, beta, k):
    """``dst[p] = src[p] / (k + alpha_size * (s1[p] + s2[p])) ** beta``. For beta 0.75 the power
    is ``sqrt(d) * sqrt(sqrt(d))``, which cannot overflow (``d * sqrt(d)`` does past 4.9e25)."""
    if beta == 0.75:
        for p in range(src.shape[0]):
            q = np.sqrt(k + alpha_size * (s1[p] + s2[p]))
            dst[p] = src[p] / (q * np.sqrt(q))
    else:
        for p in range(src.shape[0]):
            dst[p] = src[p] / (k + alpha_size * (s1[p] + s2[p])) ** beta


@njit(**_SER)
def _lrn_block(x, y, t, size, alpha, beta, k):
    """Item ``t`` = (sample, block of ``_LRN_BLOCK`` pixels) of ``x``, ``y`` ``(N, C, H*W)``:
    ``y[n, c, p] = x[n, c, p] / (k + alpha/size * sum_{j=c-size//2}^{c+(size-1)//2} x[n, j, p]^2) ** beta``.

    The window sums never subtract (van Herk / Gil-Werman), so each comes from its own
    channels only: a NaN or inf stays in the windows that contain it and a huge value cannot
    cancel its neighbours' small ones, as it would in a running sum; and they cost O(1) per
    channel whatever ``size`` is. The channels are cut into runs of ``size``. While the
    window's last channel ``hi`` moves on, ``head`` sums the squares from the start of hi's
    run to ``hi``; when a run is complete, ``tail[j % size]`` gets the sum from ``j`` to the
    run's end. A window (at most ``size`` channels) that starts a run sums to ``head``; one
    that spans two runs to ``tail[lo] + head``; one that ends at the last channel (clipped)
    to ``tail[lo]``. Squares and sums are float32, as in torch (past 3.4e38 the sum is inf
    and the output 0).
    """
    C, P = x.shape[1], x.shape[2]
    nblocks = (P + _LRN_BLOCK - 1) // _LRN_BLOCK
    before, after = size // 2, (size - 1) // 2
    n = t // nblocks
    p0 = (t % nblocks) * _LRN_BLOCK
    p1 = min(p0 + _LRN_BLOCK, P)
    head = np.zeros(p1 - p0, np.float32)
    tail = np.empty((min(size, C), p1 - p0), np.float32)
    zero = np.zeros(p1 - p0, np.float32)
    alpha_size, kk, fbeta = np.float32(alpha / size), np.float32(k), np.float32(beta)
    hi = -1
    for c in range(C):
        lo = max(c - before, 0)
        while hi < min(c + after, C - 1):  # move the window's end on, one channel at a time
            hi += 1
            row = x[n, hi, p0:p1]
            if hi % size == 0:
                _squares(head, row)
            else:
                _add_squares(head, row)
            if hi % size == size - 1 or hi == C - 1:  # hi ends a run: that run's tails
                _squares(tail[hi % size], row)
                for j in range(hi - 1, hi - hi % size - 1, -1):
                    _next_squares(tail[j % size], tail[(j + 1) % size], x[n, j, p0:p1])
        if lo // size != hi // size:  # the window spans two runs
            s1, s2 = tail[lo % size], head
        elif lo % size == 0:          # it starts a run
            s1, s2 = head, zero
        else:                         # it ends at the last channel
            s1, s2 = tail[lo % size], zero
        _lrn_scale(x[n, c, p0:p1], y[n, c, p0:p1], s1, s2, alpha_size, fbeta, kk)


@njit(**_PAR)
def _lrn(x, y, size, alpha, beta, k):
    """Every (sample, pixel block) of ``x`` ``(N, C, H*W)``, in parallel."""
    items = x.shape[0] * ((x.shape[2] + _LRN_BLOCK - 1) // _LRN_BLOCK)
    for t in prange(items):
        _lrn_block(x, y, np.int64(t), size, alpha, beta, k)  # one signature (prange's index may be unsigned)


def local_response_norm(x, size, alpha, beta, k):
    x = _writable(x)
    N, C, H, W = x.shape
    y = np.empty_like(x)
    _launch(_lrn, x.reshape(N, C, H * W), y.reshape(N, C, H * W), size, alpha, beta, k)
    return y


#: the dense schedules (see :func:`linear`)
DENSE_SCHEDULES = ("tiled", "microkernel")


def linear(x, weight, bias, relu):
    """The schedule measured fastest for this shape (:mod:`._tune`): the register-tiled kernel
    of ``_dense_lowp`` (4 rows x 4 samples per step, bias and ReLU fused; it reads the weight
    once per 4 samples and streams it at the memory's full rate, the fastest for a few
    samples), or, from 2 samples, the micro-kernel of ``_gemm`` (``W @ X^T``: the weight read
    once for every 16 samples, its rows broadcast against 16 samples a vector). Neither packs
    or copies the weight. A read-only weight (memory-mapped, say) goes to OpenBLAS rather than
    be copied."""
    if not weight.flags.writeable:
        y = np.matmul(weight, x[0])[None] if x.shape[0] == 1 else x @ weight.T  # weight.T: a view
        if bias is not None:
            y += bias
        if relu:
            np.maximum(y, np.float32(0.0), out=y)
        return y
    N = x.shape[0]
    cands = {"tiled": lambda: _linear_tiled(x, weight, None, bias, relu)}
    if N >= 2:
        cands["microkernel"] = lambda: _linear_microkernel(x, weight, bias, relu)
    default = "microkernel" if N >= tunables.DENSE_MICROKERNEL_MIN_BATCH else "tiled"
    if len(cands) == 1:
        return cands["tiled"]()
    return _tune.run("linear", _tune.make_key("linear", x.shape, weight.shape), cands, default)


def _linear_microkernel(x, weight, bias, relu):
    y = np.empty((x.shape[0], weight.shape[0]), np.float32)
    xp = _gemm.pack_x(x)
    b = _NO_BIAS if bias is None else _writable(bias)
    _launch(_gemm.dense, *_gemm.checked_dense(weight, xp, b, relu, y))
    return y


def linear_lowp(x, weight, bias, relu):
    return _linear_tiled(x, weight.data, weight.scale, bias, relu)


def _linear_tiled(x, data, scale, bias, relu):
    """``relu?(scale * (x @ widen(data).T) + bias)`` by the register-tiled kernel of
    ``_dense_lowp``; ``data`` float32, bfloat16 bits or int8, ``scale`` None for all ones."""
    y = np.empty((x.shape[0], data.shape[0]), np.float32)
    _launch(linear_lowp_kernel, _writable(x), _writable(data), _NO_SCALE if scale is None else scale,
            _NO_BIAS if bias is None else _writable(bias), bool(relu), y)
    return y


@njit(**_PAR)
def _relu(x, y):
    """``y[i] = max(x[i], 0)`` on flat arrays (NaN propagates, as in NumPy)."""
    for i in prange(x.size):
        v = x[i]
        y[i] = np.float32(0.0) if v < 0.0 else v


def relu(x):
    x = _writable(x)
    y = np.empty_like(x)
    _launch(_relu, x.reshape(-1), y.reshape(-1))
    return y


# ----------------------------------------------------------------------------- bfloat16 (precision="bfloat16")
# Added for issue 18, apart from the float32 functions above: products in bfloat16 with float32
# sums on the CPU's best bf16 units (AMX, AVX512-BF16) or an emulation, see ._bf16.

def bf16_path() -> str:
    """The path this backend's bfloat16 products run on (``_bf16.active_path()``)."""
    from . import _bf16
    return _bf16.active_path()


def prepare_bf16(weight, bias, stride, dilation, groups):
    """A convolution's weight rounded to bfloat16 and packed once (``_bf16.Bf16Plan``); a dense
    layer's with ``stride=None``."""
    from . import _bf16
    if stride is None:
        return _bf16.plan_dense(weight, bias)
    return _bf16.plan_conv(weight, bias, stride, dilation, groups)


def describe_bf16(plan) -> str:
    return plan.describe(bf16_path())


def _bf16_winograd(plan, stride, dilation, groups):
    """The float32 Winograd plan of the bfloat16-rounded weight (made once, on first use), or
    None where Winograd does not apply."""
    if "winograd" not in plan.extra:
        plan.extra["winograd"] = prepare_conv2d(plan.weight_rounded(), plan.bias, stride, dilation, groups)
    return plan.extra["winograd"]


def conv2d_bf16(x, weight, bias, stride, padding, dilation, groups, relu, plan=None):
    """``act(conv(bf16(x), bf16(weight)) + bias)``, float32 sums (``plan``: from
    :func:`prepare_bf16` for these arguments, else packed now).

    The candidates, measured per shape like the float32 schedules (:mod:`._tune`): the product
    on each of the CPU's bf16 units (AMX, AVX512-BF16; the emulation on a CPU with neither),
    and the float32 Winograd schedules run on the rounded operands. A product of two bfloat16
    values is exact in float32, so those compute the same numbers up to the order and rounding
    of the float32 sums (Winograd's own error, ~5e-6 of the largest output, included): on a CPU
    without AMX, Winograd's 4-6x fewer multiplies beat AVX512-BF16's 2x faster ones. A path set
    by ``set_bf16_path`` / ``FASTALEX_BF16_PATH`` runs alone; ``FASTALEX_TUNE=0`` runs the best
    bf16 unit's product."""
    from . import _bf16
    if plan is None:
        plan = prepare_bf16(weight, bias, stride, dilation, groups)
    xw, relu = _writable(x), bool(relu)
    explicit = _bf16.chosen_path()
    paths = (explicit,) if explicit else _bf16.hardware_paths()
    cands = {p: (lambda p=p: _bf16.conv2d(xw, plan, padding, relu, _launch, p)) for p in paths}
    if explicit is None:
        wplan = _bf16_winograd(plan, stride, dilation, groups)
        if wplan is not None:
            cands.update(_winograd_schedules(xw, wplan, padding, relu, round_bf16=True))
    if len(cands) == 1:
        return cands[paths[0]]()
    key = _tune.make_key("conv2d_bf16", x.shape, weight.shape, stride, padding, dilation, groups)
    y = _tune.run_for(plan.chosen, x.shape[0], "conv2d_bf16", key, cands, paths[0])
    if explicit is None:
        _keep_chosen_tiles(plan.extra["winograd"], plan.chosen)
    return y


def linear_bf16(x, weight, bias, relu, plan=None):
    """``act(bf16(x) @ bf16(weight).T + bias)``, float32 sums.

    Candidates, measured per shape: the product on each bf16 unit (its panels are 32 samples
    wide, so a batch of one does 32x the work it needs), and ``"stream"``: the rounded samples
    against the bfloat16 weight widened in registers by the float32 dense kernel (exact
    products, float32 sums), which reads the weight once at the memory's rate, half the bytes
    of float32. Without measuring, ``"stream"`` below ``tunables.DENSE_MICROKERNEL_MIN_BATCH``
    samples, else the best bf16 unit."""
    from . import _bf16
    if plan is None:
        plan = prepare_bf16(weight, bias, None, None, 1)
    xw, relu = _writable(x), bool(relu)
    explicit = _bf16.chosen_path()
    paths = (explicit,) if explicit else _bf16.hardware_paths()
    cands = {p: (lambda p=p: _bf16.linear(xw, plan, relu, _launch, p)) for p in paths}
    if explicit is None:
        cands["stream"] = lambda: _linear_tiled(_bf16.rounded(xw, _launch), plan.rows(), None, plan.bias, relu)
    if len(cands) == 1:
        return cands[paths[0]]()
    default = "stream" if x.shape[0] < tunables.DENSE_MICROKERNEL_MIN_BATCH else paths[0]
    key = _tune.make_key("linear_bf16", x.shape, weight.shape)
    return _tune.run_for(plan.chosen, x.shape[0], "linear_bf16", key, cands, default)
