"""Winograd convolution for the fast backend: fewer multiplies for small kernels.

A Winograd (Toom-Cook) algorithm ``F(m, r)`` computes ``m`` outputs of an ``r``-tap
correlation from ``alpha = m + r - 1`` inputs with ``alpha`` multiplies instead of ``m*r``
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Nested in two
dimensions, an ``m x m`` output tile of an ``r x r`` convolution is::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, alpha x alpha)

for the ``alpha x alpha`` input patch ``d`` and kernel ``g``. Summed over input channels, the
elementwise products become ``alpha**2`` independent matrix products, one per position
``e = (a, b)`` of the transformed tile::

    M[e] (tiles x out) = V[e] (tiles x in) @ U[e] (in x out)

run in one parallel launch by the register-blocked micro-kernel of :mod:`._gemm` on ``U``
packed once (where each group's output channels are a multiple of 32: every AlexNet layer;
~190 GFLOP/s here, where OpenBLAS reached 50-140 on these thin products), else by NumPy's
sgemm. For 3x3 kernels ``F(4, 3)`` does 36 multiplies per 16 outputs where a direct method
does 144 (4x fewer), with the points ``0, +-1, +-2, inf`` (alpha = 6); ``F(5, 3)`` (with
``1/2``, alpha = 7) and ``F(6, 3)`` (alpha 8) do 49 per 25 and 64 per 36, and the tile is chosen
per output size (:func:`tile_for`: AlexNet's 13x13 maps take 1.3x fewer multiplies in 5x5
tiles than in 4x4 ones, whose last row and column are mostly past the map); its 5x5 layer uses
``F(4, 5)``, 64 multiplies per 16 outputs instead of 400 (6.25x fewer), with ``+-1/2`` added
(alpha = 8). ``F(2, 5)`` (alpha 6, 2.8x fewer) took 1.6-1.9x as long on AlexNet's conv2, at
batch 1 and 16. The error of both stays far inside the agreement tolerance (the tests check every
algorithm the backend picks; ``F(4, 5)`` measured ~5e-6 of the largest output on conv2's
shapes, like ``F(2, 5)`` and ``F(4, 3)``).

A strided convolution becomes a stride-1 one first (space-to-depth): with stride ``s``,
input phase ``(u, v)`` of each ``s x s`` block is a channel of its own, and the kernel,
zero-padded to a multiple of ``s``, becomes ``ceil(k/s) x ceil(k/s)`` over ``C*s*s``
channels. AlexNet's first layer (11x11, stride 4, 3 channels) is then a 3x3 convolution
over 48 channels, and ``F(5, 3)`` or ``F(4, 3)`` applies.

Layout inside a call: one task per row of tiles. The input rows it needs are gathered from
NCHW into a zero-padded, channels-last band (space-to-depth folded in) that stays in cache,
so the transforms read and write whole channel vectors (they vectorize over channels;
AlexNet's maps are too small, 13x13, to vectorize over pixels). The output transform adds the
bias, applies the ReLU into a channels-last band, and writes it into the NCHW result row by
row: no pass over the whole input or output besides the transforms themselves. A row's
transformed tiles ``V`` and products ``M`` are tile-major, ``(tiles, alpha**2, channels)``: a
tile's 36, 49 or 64 vectors are one contiguous block, which the transforms write and read as one
stream (36 streams, one per product, were too many for the hardware prefetchers).

Two schedules, the same arithmetic:

* **Fused** (:func:`_fused`, the usual case): one launch for the whole layer, one task per
  tile row doing its input transform, its products (all of them, every group's) and its
  output transform, with ``V`` and ``M`` in the task's own scratch, which stays in the core's
  L2 between the three. Each task reads all the transformed weights.
* **Chunked**: three launches per chunk of tile rows (input transforms, the products by
  :func:`._gemm.batched_gemm`, output transforms) through scratch kept per Python thread,
  the chunk sized so that its ``V`` and ``M`` stay in the last-level cache; the products
  read the weights once per chunk. The only schedule when the products run on NumPy's sgemm.

Which one runs is measured per shape on the user's machine (``fast.conv2d`` and ``_tune``):
on one cloud machine fused won on most AlexNet layers, on another chunked won on all of them
by up to 2x at batch 16.

The weights' transform ``U`` depends only on the weights: a :class:`Plan` computes it once (in
float64) and packs it for the micro-kernel, the first time a convolution runs, and layers keep
their plan (see ``Conv2D``).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from ..shapes import conv_output_size
from . import _gemm, tunables
from ._bf16_common import round_bf16

_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
# _I64: the serial helpers are called with int64 indices everywhere (prange's index may be
# uint64, a constant 0 a literal): each distinct argument type is one more compilation of the
# whole helper, and a cold start compiled _input_row and _output_row four times each
_SER = dict(cache=True, nogil=True, error_model="numpy")

#: the output tile sizes ``m`` tried for each (effective, stride-1) kernel size ``r``, with the
#: transform size ``alpha = m + r - 1`` each makes: 6 points (``0, +-1, +-2, inf``), 7 (with
#: ``1/2``) or 8 (with ``+-1/2``). :func:`tile_for` picks, for the output's size, the one with
#: the fewest multiplies (``alpha**2`` per tile, tiles cropped at the edge doing the same work
#: as whole ones): AlexNet's 13x13 maps take 16 tiles of ``F(4, 3)`` (576 multiplies per channel
#: pair) or 9 of ``F(5, 3)`` (441, 1.3x fewer); a 12x12 map takes 4 of ``F(6, 3)`` (256).
#: ``F(4, 5)`` does 2.25x fewer multiplies than ``F(2, 5)`` (conv2: 27x27 as 7x7 tiles of 4x4
#: instead of 14x14 of 2x2). Larger tiles lose accuracy fast: ``F(7, 3)`` (alpha 9, a point
#: ``3`` or ``1/4`` more) erred by 4e-4 of the largest output in float32, past the tolerance;
#: ``F(4..6, 3)`` by 1.2-1.5e-5.
TILES = {2: (5,), 3: (4, 5, 6), 4: (3,), 5: (4,)}
ALPHAS = (6, 7, 8)
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # and infinity


def tile_for(r: int, ho: int, wo: int) -> int:
    """The output tile size ``m`` of :data:`TILES` ``[r]`` whose tiles cover an ``ho x wo``
    output with the fewest multiplies, ``ceil(ho/m) * ceil(wo/m) * (m + r - 1)**2``; on a tie the
    smaller transform (cheaper, and the more accurate)."""
    return min(TILES[r], key=lambda m: (-(-ho // m) * -(-wo // m) * (m + r - 1) ** 2, m))


def matrices(m: int, r: int):
    """``(AT, G, BT)`` of ``F(m, r)`` in float64: ``AT`` (m, alpha), ``G`` (alpha, r), ``BT`` (alpha, alpha).

    Built from the points ``0, 1, -1, 2, -2`` (as many as needed) and infinity, scaled as in
    Lavin & Gray (``G`` carries the fractions, ``BT`` and ``AT`` are small integers).
    ``AT`` and ``G`` follow from the points; ``BT`` is the solution of the identity
    ``sum_j AT[i, j] G[j, k] BT[j, s] = [s == i + k]`` (exact here: a square, well-conditioned
    system solved in float64 and rounded to the integers it is).
    """
    alpha = m + r - 1
    pts = np.array(_POINTS[:alpha - 1])
    AT = np.zeros((m, alpha))
    G = np.zeros((alpha, r))
    for j, p in enumerate(pts):
        AT[:, j] = p ** np.arange(m)
        f = np.prod([p - q for q in pts if q != p])
        G[j] = p ** np.arange(r) / f
    AT[m - 1, alpha - 1] = 1.0
    G[alpha - 1, r - 1] = 1.0
    # BT[j, s]: for every (i, k), sum_j AT[i,j] G[j,k] BT[j,s] = [s == i+k]
    lhs = np.einsum("ij,jk->ikj", AT, G).reshape(m * r, alpha)
    rhs = np.zeros((m * r, alpha))
    for i in range(m):
        for k in range(r):
            rhs[i * r + k, i + k] = 1.0
    BT = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    BT = np.round(BT, 6)
    assert np.allclose(lhs @ BT, rhs), "Winograd matrices: inconsistent system"
    return AT, G, BT


class Plan:
    """A convolution prepared for Winograd: its geometry, and the transformed weights, computed
    from the weights the first time a convolution needs them, for each tile size the inputs
    it runs on need (:func:`tile_for`: one for a model's layer).

    The ``alpha**2`` (36, 49 or 64) products per chunk of tiles run on the register-blocked
    kernel of :mod:`._gemm` when each group's output channels are a multiple of 32 (every
    AlexNet layer), every group's in one launch: :meth:`weights` then holds ``U`` packed in
    panels of 32 channels, the groups stacked, ``(groups, alpha**2, out/groups/32, C*s*s/groups,
    32)``. Otherwise they run on NumPy's sgemm and it holds, per group, ``U`` itself,
    ``(alpha**2, C*s*s/groups, out/groups)``: ``U[e]`` is one product's right side."""

    def __init__(self, weight, bias, stride, groups):
        O, cin_g, k, _ = weight.shape
        self.s = stride[0]                       # stride folded into channels (1 = none)
        self.r = -(-k // self.s)                 # effective kernel size after space-to-depth
        self.kernel = (k, k)
        self.out_channels = O
        self.in_channels = cin_g * groups * self.s * self.s   # after space-to-depth
        self.groups = groups
        #: whether the products run on :func:`._gemm.batched_gemm` (else NumPy's sgemm)
        self.packed = (O // groups) % _gemm.NR == 0
        self.bias = np.zeros(O, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self._weight = weight
        self._weights = {}                       # tile size m -> transformed weights
        #: batch size -> (schedule, origin) of the runs so far (``_tune.run_for``)
        self.chosen = {}

    def tile(self, ho: int, wo: int) -> int:
        """The output tile size for an ``ho x wo`` output (:func:`tile_for`)."""
        return tile_for(self.r, ho, wo)

    def tiles(self, ho: int, wo: int) -> tuple:
        """The tile sizes worth timing for an ``ho x wo`` output: the one of fewest multiplies,
        and the smallest (alpha 6) if that differs. Fewer multiplies did not always win: on
        AlexNet's layers ``F(5, 3)`` took 0.78-0.95x the time of ``F(4, 3)`` (best schedule of
        each, one Zen 4 run) at batch 1 and 16, but 1.26x on torchvision's conv3 at batch 1:
        its 3 rows of 3 tiles split unevenly over 2 cores where 4 rows of 4 did not."""
        best, small = self.tile(ho, wo), TILES[self.r][0]
        return (best,) if best == small else (best, small)

    def weights(self, m: int):
        """The weights transformed for ``F(m, r)``, on first use: packed, every group's stacked in
        one array ``(groups, alpha**2, out/groups/32, C*s*s/groups, 32)``; else a tuple of ``U``
        per group."""
        weights = self._weights.get(m)
        if weights is None:
            U = _transform(self._weight, self.s, self.r, m, self.groups)
            weights = self._weights[m] = np.stack([_gemm.pack_b(u) for u in U]) if self.packed else U
        return weights

    def weight_bytes(self, m: int) -> int:
        """The size of :meth:`weights` ``(m)``, without transforming anything."""
        og, cg = self.out_channels // self.groups, self.in_channels // self.groups
        cols = -(-og // _gemm.NR) * _gemm.NR if self.packed else og
        return 4 * self.groups * (m + self.r - 1) ** 2 * cg * cols

    def held(self) -> tuple:
        """The tile sizes whose transformed weights this plan holds now."""
        return tuple(sorted(self._weights))

    def keep(self, tiles):
        """Free the transformed weights of the tile sizes not in ``tiles`` (those the tuner tried
        and did not choose: 1.4x the layer's weights for a 5x5 tile of a 3x3 kernel); a later
        call that needs one transforms it again."""
        for m in [m for m in self._weights if m not in tiles]:
            del self._weights[m]


def describe(plan: Plan) -> str:
    """One line for a model's plan: ``Winograd F(4x4, 3x3)`` (the tile sizes it ran with so
    far, else those it may take), with the space-to-depth if any."""
    k, s, r = plan.kernel[0], plan.s, plan.r
    tiles = plan.held() or TILES[r]
    text = f"Winograd F({' or '.join(f'{m}x{m}' for m in tiles)}, {r}x{r})"
    if s > 1:
        text += f" after space-to-depth {s}x{s} ({k}x{k} stride {s} -> {r}x{r} over {plan.in_channels} channels)"
    return text + (", products by the micro-kernel" if plan.packed else ", products by sgemm")


def supports(weight_shape, stride, dilation) -> bool:
    """Whether :func:`prepare` handles this convolution (square kernels and strides, no dilation,
    an effective kernel of 2 to 5 taps)."""
    O, cin_g, kh, kw = weight_shape
    (sh, sw), (dh, dw) = stride, dilation
    if kh != kw or sh != sw or dh != 1 or dw != 1:
        return False
    return -(-kh // sh) in TILES and (kh > 1 or sh > 1)


def prepare(weight, bias, stride, groups) -> Plan:
    """The :class:`Plan` of a convolution :func:`supports` (its weights transformed on first use)."""
    return Plan(weight, bias, stride, groups)


def _transform(weight, s, r, m, groups) -> tuple:
    """``U[e, c, o] = sum_ij G[a, i] w'[o, c, i, j] G[b, j]`` per group, in float64, where ``w'``
    is the weight after space-to-depth (the weight itself for stride 1)."""
    O, cin_g, k, _ = weight.shape
    G = matrices(m, r)[1]  # the kernels spell B^T and A^T out (_bt6, _bt8, _at)
    w = weight.astype(np.float64)
    if s > 1:  # w'[o, (c, u, v), i, j] = w[o, c, i*s + u, j*s + v], zero past the kernel
        wp = np.zeros((O, cin_g, r * s, r * s))
        wp[:, :, :k, :k] = w
        w = wp.reshape(O, cin_g, r, s, r, s).transpose(0, 1, 3, 5, 2, 4).reshape(O, cin_g * s * s, r, r)
    og = O // groups
    # G g G^T for every (o, c) at once, as two batched products: (O, C, alpha, alpha)
    u = np.matmul(np.matmul(G, w), G.T)
    a2 = u.shape[-1] * u.shape[-2]
    return tuple(np.ascontiguousarray(u[g * og:(g + 1) * og].reshape(og, -1, a2).transpose(2, 1, 0),
                                      dtype=np.float32) for g in range(groups))


# ----------------------------------------------------------------------------- kernels

@njit(**_SER)
def _band(x, band, n, i0, s, pt, pl):
    """The zero-padded, space-to-depth, channels-last rows ``i0 .. i0+alpha-1`` (in blocks) of sample
    ``n`` of ``x`` (N, C, H, W): ``band[a, j, (c*s + u)*s + v] = x[n, c, (i0 + a)*s + u - pt,
    j*s + v - pl]`` (0 outside ``x``), for the tile row whose input they are. With space-to-depth
    each input row is read contiguously; the band (alpha x Wp x C*s*s) stays in L1/L2."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    alpha, Wp = band.shape[0], band.shape[1]
    if s == 1:  # a transpose: each pixel's channels gathered, written contiguously
        xf = x.reshape(-1)
        HW = H * W
        for a in range(alpha):
            h = i0 + a - pt
            for j in range(Wp):
                d = band[a, j]
                w = j - pl
                if h < 0 or h >= H or w < 0 or w >= W:
                    d[:] = 0.0
                else:
                    src = xf[n * C * HW + h * W + w:]
                    for c in range(C):
                        d[c] = src[c * HW]
        return
    # blocks j0 <= j < j1 lie inside every input row: s contiguous values each, unchecked
    j0 = min(Wp, -(-pl // s))
    j1 = max(j0, min(Wp, (W + pl) // s))
    for a in range(alpha):
        dst = band[a]
        for c in range(C):
            for u in range(s):
                h = (i0 + a) * s + u - pt
                q0 = (c * s + u) * s
                if h < 0 or h >= H:
                    for j in range(Wp):
                        for v in range(s):
                            dst[j, q0 + v] = 0.0
                    continue
                src = x[n, c, h]
                for j in range(j0):
                    for v in range(s):
                        w = j * s + v - pl
                        dst[j, q0 + v] = src[w] if 0 <= w < W else np.float32(0.0)
                for j in range(j0, j1):
                    d = dst[j, q0:q0 + s]
                    r = src[j * s - pl:j * s - pl + s]
                    for v in range(s):
                        d[v] = r[v]
                for j in range(j1, Wp):
                    for v in range(s):
                        w = j * s + v - pl
                        dst[j, q0 + v] = src[w] if 0 <= w < W else np.float32(0.0)


@njit(**_SER)
def _bt6(f, o, step, g, d, dstep, C):
    """``g[d + k*dstep : +C] = (B^T [f[o + r*step : +C] for r in 0..5])[k]`` for k in 0..5: the input
    transform of ``F(m, r)`` with alpha = 6 (points 0, +-1, +-2, inf) on channel vectors."""
    x0, x1, x2 = f[o:o + C], f[o + step:o + step + C], f[o + 2 * step:o + 2 * step + C]
    x3, x4, x5 = f[o + 3 * step:o + 3 * step + C], f[o + 4 * step:o + 4 * step + C], f[o + 5 * step:o + 5 * step + C]
    g0, g1, g2 = g[d:d + C], g[d + dstep:d + dstep + C], g[d + 2 * dstep:d + 2 * dstep + C]
    g3, g4, g5 = g[d + 3 * dstep:d + 3 * dstep + C], g[d + 4 * dstep:d + 4 * dstep + C], g[d + 5 * dstep:d + 5 * dstep + C]
    four, five, two = np.float32(4.0), np.float32(5.0), np.float32(2.0)
    for c in range(C):
        a0, a1, a2, a3, a4, a5 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c]
        g0[c] = four * a0 - five * a2 + a4
        g1[c] = a3 + a4 - four * (a1 + a2)
        g2[c] = a4 - a3 + four * (a1 - a2)
        g3[c] = a4 - a2 + two * (a3 - a1)
        g4[c] = a4 - a2 + two * (a1 - a3)
        g5[c] = four * a1 - five * a3 + a5


@njit(**_SER)
def _bt7(f, o, step, g, d, dstep, C):
    """As :func:`_bt6` for alpha = 7 (points 0, +-1, +-2, 1/2, inf): the ``B^T`` of
    :func:`matrices` ``(5, 3)``, row by row."""
    x0, x1, x2 = f[o:o + C], f[o + step:o + step + C], f[o + 2 * step:o + 2 * step + C]
    x3, x4, x5 = f[o + 3 * step:o + 3 * step + C], f[o + 4 * step:o + 4 * step + C], f[o + 5 * step:o + 5 * step + C]
    x6 = f[o + 6 * step:o + 6 * step + C]
    g0, g1, g2 = g[d:d + C], g[d + dstep:d + dstep + C], g[d + 2 * dstep:d + 2 * dstep + C]
    g3, g4, g5 = g[d + 3 * dstep:d + 3 * dstep + C], g[d + 4 * dstep:d + 4 * dstep + C], g[d + 5 * dstep:d + 5 * dstep + C]
    g6 = g[d + 6 * dstep:d + 6 * dstep + C]
    c2, c4, c5, c6 = np.float32(2.0), np.float32(4.0), np.float32(5.0), np.float32(6.0)
    c05, c15, c25, c35, c45 = np.float32(0.5), np.float32(1.5), np.float32(2.5), np.float32(3.5), np.float32(4.5)
    for c in range(C):
        a0, a1, a2, a3, a4, a5, a6 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c], x6[c]
        g0[c] = c4 * a1 - c2 * a0 + c25 * a2 - c5 * a3 - c05 * a4 + a5
        g1[c] = c2 * (a1 - a2) - c45 * a3 + c05 * a4 + a5
        g2[c] = c6 * a2 - c2 * a1 - c35 * a3 - c15 * a4 + a5
        g3[c] = a1 - c15 * a2 - c2 * a3 + c15 * a4 + a5
        g4[c] = c25 * (a2 - a4) - a1 + a5
        g5[c] = c4 * a1 - c5 * a3 + a5
        g6[c] = c4 * a2 - c2 * a1 + c25 * a3 - c5 * a4 - c05 * a5 + a6


@njit(**_SER)
def _bt8(f, o, step, g, d, dstep, C):
    """As :func:`_bt6` for alpha = 8 (points 0, +-1, +-2, +-1/2, inf): the ``B^T`` of
    :func:`matrices` ``(4, 5)``, its rows paired as ``t +- u`` (26 multiply-adds per 8 values)."""
    x0, x1, x2 = f[o:o + C], f[o + step:o + step + C], f[o + 2 * step:o + 2 * step + C]
    x3, x4, x5 = f[o + 3 * step:o + 3 * step + C], f[o + 4 * step:o + 4 * step + C], f[o + 5 * step:o + 5 * step + C]
    x6, x7 = f[o + 6 * step:o + 6 * step + C], f[o + 7 * step:o + 7 * step + C]
    g0, g1, g2 = g[d:d + C], g[d + dstep:d + dstep + C], g[d + 2 * dstep:d + 2 * dstep + C]
    g3, g4, g5 = g[d + 3 * dstep:d + 3 * dstep + C], g[d + 4 * dstep:d + 4 * dstep + C], g[d + 5 * dstep:d + 5 * dstep + C]
    g6, g7 = g[d + 6 * dstep:d + 6 * dstep + C], g[d + 7 * dstep:d + 7 * dstep + C]
    c525, c425, c25, c125 = np.float32(5.25), np.float32(4.25), np.float32(2.5), np.float32(1.25)
    c5, c4, c2, c05, c025 = np.float32(5.0), np.float32(4.0), np.float32(2.0), np.float32(0.5), np.float32(0.25)
    for c in range(C):
        a0, a1, a2, a3, a4, a5, a6, a7 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c], x6[c], x7[c]
        g0[c] = a6 - a0 + c525 * (a2 - a4)
        g7[c] = a7 - a1 + c525 * (a3 - a5)
        t, u = a2 + a6 - c425 * a4, a1 + a5 - c425 * a3
        g1[c], g2[c] = t + u, t - u
        t, u = c025 * a2 - c125 * a4 + a6, c05 * a1 - c25 * a3 + c2 * a5
        g3[c], g4[c] = t + u, t - u
        t, u = c4 * a2 - c5 * a4 + a6, c2 * a1 - c25 * a3 + c05 * a5
        g5[c], g6[c] = t + u, t - u


@njit(**_SER)
def _at(alpha, m, f, o, step, g, d, dstep, C):
    """``g[d + i*dstep : +C] = (A^T [f[o + a*step : +C] for a < alpha])[i]`` for i < m: the output
    transform, ``A^T[i] = [i == 0, 1, (-1)^i, 2^i, (-2)^i, (1/2)^i, (-1/2)^i, i == m-1]``
    (without the ``(-1/2)^i`` column for alpha = 7, nor ``(+-1/2)^i`` for alpha = 6)."""
    x0, x1, x2 = f[o:o + C], f[o + step:o + step + C], f[o + 2 * step:o + 2 * step + C]
    x3, x4 = f[o + 3 * step:o + 3 * step + C], f[o + 4 * step:o + 4 * step + C]
    for i in range(m):
        gi = g[d + i * dstep:d + i * dstep + C]
        sign = np.float32(1.0 if i % 2 == 0 else -1.0)
        two = np.float32(2.0 ** i)
        first = np.float32(1.0 if i == 0 else 0.0)
        last = np.float32(1.0 if i == m - 1 else 0.0)
        if alpha == 6:
            x5 = f[o + 5 * step:o + 5 * step + C]
            for c in range(C):
                gi[c] = first * x0[c] + (x1[c] + sign * x2[c]) + two * (x3[c] + sign * x4[c]) + last * x5[c]
        elif alpha == 7:
            x5, x6 = f[o + 5 * step:o + 5 * step + C], f[o + 6 * step:o + 6 * step + C]
            half = np.float32(0.5 ** i)
            for c in range(C):
                gi[c] = (first * x0[c] + (x1[c] + sign * x2[c]) + two * (x3[c] + sign * x4[c])
                         + half * x5[c] + last * x6[c])
        else:
            x5, x6 = f[o + 5 * step:o + 5 * step + C], f[o + 6 * step:o + 6 * step + C]
            x7 = f[o + 7 * step:o + 7 * step + C]
            half = np.float32(0.5 ** i)
            for c in range(C):
                gi[c] = (first * x0[c] + (x1[c] + sign * x2[c]) + two * (x3[c] + sign * x4[c])
                         + half * (x5[c] + sign * x6[c]) + last * x7[c])


@njit(**_SER)
def _input_row(x, V, k, r, m, s, pt, pl, th, tw, Wp, rnd):
    """The input transform of tile row ``r = n*th + ty`` of ``x`` (N, C, H, W) into ``V[k*tw :
    (k+1)*tw]``: ``V[t, a*alpha + b, :] = sum_{r,s} BT[a, r] BT[b, s] d_t[r, s, :]``, where ``d_t``
    is the alpha x alpha patch of tile ``t = k*tw + tx`` in the padded, space-to-depth,
    channels-last input (the row's band, built by ``_band``): rows first, then columns, all
    channels at once. ``rnd``: the band's values rounded to bfloat16 first (a convolution of
    ``precision="bfloat16"`` on float32 units: ``fast.conv2d_bf16``)."""
    C, A = V.shape[2], V.shape[1]
    alpha = 8 if A == 64 else (7 if A == 49 else 6)
    vf = V.reshape(-1)
    n, ty = r // th, r % th
    band = np.empty((alpha, Wp, C), np.float32)
    _band(x, band, n, ty * m, s, pt, pl)
    bf = band.reshape(-1)
    if rnd:
        for i in range(bf.size):
            bf[i] = round_bf16(bf[i])
    tmp = np.empty(A * C, np.float32)  # tmp[a, s, :] = sum_r BT[a, r] d[r, s, :]
    for tx in range(tw):
        t = k * tw + tx
        if alpha == 6:
            for s_ in range(6):
                _bt6(bf, (tx * m + s_) * C, Wp * C, tmp, s_ * C, 6 * C, C)
            for a in range(6):
                _bt6(tmp, a * 6 * C, C, vf, (t * 36 + a * 6) * C, C, C)
        elif alpha == 7:
            for s_ in range(7):
                _bt7(bf, (tx * m + s_) * C, Wp * C, tmp, s_ * C, 7 * C, C)
            for a in range(7):
                _bt7(tmp, a * 7 * C, C, vf, (t * 49 + a * 7) * C, C, C)
        else:
            for s_ in range(8):
                _bt8(bf, (tx * m + s_) * C, Wp * C, tmp, s_ * C, 8 * C, C)
            for a in range(8):
                _bt8(tmp, a * 8 * C, C, vf, (t * 64 + a * 8) * C, C, C)


@njit(**_SER)
def _output_row(M, y, k, r, m, bias, relu, th, tw):
    """The output transform of tile row ``r = n*th + ty`` from ``M[k*tw : (k+1)*tw]``:
    ``y[n, :, ty*m + i, tx*m + j] = act(bias + sum_{a,b} AT[i, a] M[t, a*alpha + b, :] AT[j, b])``
    (``t = k*tw + tx``), cropped to ``y`` (N, O, Ho, Wo). The row goes through a channels-last band
    (m x Wo x O, in L1/L2), then into ``y``'s rows, each written contiguously: NCHW out,
    without a pass over the whole output."""
    O, A = M.shape[2], M.shape[1]
    alpha = 8 if A == 64 else (7 if A == 49 else 6)
    Ho, Wo = y.shape[2], y.shape[3]
    mf = M.reshape(-1)
    n, ty = r // th, r % th
    hi = min(m, Ho - ty * m)
    band = np.empty((m, tw * m, O), np.float32)
    tmp = np.empty(alpha * m * O, np.float32)  # tmp[b, i, :] = sum_a AT[i, a] M[a, b, :]
    out = np.empty(m * O, np.float32)
    for tx in range(tw):
        t = k * tw + tx
        for b in range(alpha):
            _at(alpha, m, mf, (t * A + b) * O, alpha * O, tmp, b * m * O, O, O)
        for i in range(hi):
            _at(alpha, m, tmp, i * O, m * O, out, np.int64(0), O, O)  # int64, as above: one compile
            for j in range(m):
                src = out[j * O:(j + 1) * O]
                dst = band[i, tx * m + j]
                if relu:
                    for o in range(O):
                        v = src[o] + bias[o]
                        dst[o] = np.float32(0.0) if v < 0.0 else v
                else:
                    for o in range(O):
                        dst[o] = src[o] + bias[o]
    for o in range(O):
        for i in range(hi):
            row = y[n, o, ty * m + i]
            for w in range(Wo):
                row[w] = band[i, w, o]


@njit(**_PAR)
def _input_transform(x, V, m, s, pt, pl, th, tw, Wp, r0, rows, rnd):
    """:func:`_input_row` for the tile rows ``r0 .. r0+rows-1`` (row ``r = n*th + ty``) into
    ``V`` (rows*tw, alpha**2, C*s*s), one task per tile row."""
    for k in prange(rows):
        _input_row(x, V, np.int64(k), np.int64(r0 + k), m, s, pt, pl, th, tw, Wp, rnd)


@njit(**_PAR)
def _output_transform(M, y, m, bias, relu, th, tw, r0, rows):
    """:func:`_output_row` for the tile rows ``r0 .. r0+rows-1`` from ``M`` (rows*tw, alpha**2, O),
    one task per tile row."""
    for k in prange(rows):
        _output_row(M, y, np.int64(k), np.int64(r0 + k), m, bias, relu, th, tw)


@njit(**_SER)
def _fused_row(x, bp, y, bias, relu, m, s, pt, pl, th, tw, Wp, cs, r, rnd):
    """One task of :func:`_fused`: tile row ``r`` through its input transform, its products
    and its output transform, with its own ``V`` and ``M``."""
    G, E, P, K = bp.shape[0], bp.shape[1], bp.shape[2], bp.shape[3]
    O = y.shape[1]
    bf = bp.reshape(-1)
    V = np.empty((tw, E, cs), np.float32)
    M = np.empty((tw, E, O), np.float32)
    zero, row = np.int64(0), np.int64(r)  # one signature for every caller (see _I64)
    _input_row(x, V, zero, row, m, s, pt, pl, th, tw, Wp, rnd)
    vf, mf = V.reshape(-1), M.reshape(-1)
    for task in range(G * E * P):  # group g's columns: K of V's, P*32 of M's
        _gemm.product_task(vf, cs, zero, K, bf, G, E, P, K, mf, O, zero, P * _gemm.NR, tw, np.int64(task))
    _output_row(M, y, zero, row, m, bias, relu, th, tw)


@njit(**_PAR)
def _fused(x, bp, y, bias, relu, m, s, pt, pl, th, tw, Wp, cs, rnd):
    """The whole convolution, one task per tile row (``N*th`` of them): the row's input
    transform into its own ``V`` (tw, alpha**2, cs), its products with every group's packed
    weights ``bp`` (G, alpha**2, P, K, 32) into its own ``M`` (tw, alpha**2, O), and its output
    transform into ``y`` (:func:`_fused_row`). A task's ``V`` and ``M`` stay in its core's L2
    from the transform that writes them to the one that reads them, and the whole layer is one
    launch. Arguments through :func:`checked_fused`."""
    for r in prange(x.shape[0] * th):
        _fused_row(x, bp, y, bias, relu, m, s, pt, pl, th, tw, Wp, cs, np.int64(r), rnd)


def checked_fused(x, bp, y, bias, relu, m, s, pt, pl, th, tw, Wp, cs, rnd=False):
    """The arguments of :func:`_fused`, after checking that its products stay inside each task's
    ``V`` (tw, alpha**2, cs) and ``M`` (tw, alpha**2, O): the micro-kernel addresses memory
    directly. ``ValueError`` otherwise."""
    G, E, P, K, nr = bp.shape
    O = y.shape[1]
    if not (bp.dtype == np.float32 and bp.flags.c_contiguous and nr == _gemm.NR and E in (36, 49, 64)
            and G * K == cs and G * P * _gemm.NR == O and tw >= 1):
        raise ValueError(f"winograd: packed weights {bp.shape} do not fit {cs} input and {O} output "
                         f"channels")
    return x, bp, y, bias, bool(relu), m, s, pt, pl, th, tw, Wp, cs, bool(rnd)


_local = threading.local()


def _workspace(name, shape):
    """A float32 scratch array of ``shape``, kept per Python thread and reused by the next call
    that fits in it. Fresh multi-MB buffers on every call cost page faults (torchvision's conv1
    at batch 1 took 2.3 ms with fresh buffers, 1.0 ms reusing them, here). Per thread, so that
    convolutions running in several Python threads never share one."""
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    size = int(np.prod(shape))
    buf = spaces.get(name)
    if buf is None or buf.size < size:
        buf = spaces[name] = np.empty(size, np.float32)
    return buf[:size].reshape(shape)


def fuses_by_default(plan: Plan, batch: int, ho: int, m: int) -> bool:
    """The heuristic (``FASTALEX_TUNE=0``) for ``batch`` outputs of ``ho`` rows in ``m x m``
    tiles: :func:`_fused` while its tasks (one per row of tiles) together read at most
    ``tunables.FUSED_MAX_WEIGHT_TRAFFIC`` bytes of transformed weights."""
    rows = batch * -(-ho // m)
    return plan.packed and plan.weight_bytes(m) * rows <= tunables.FUSED_MAX_WEIGHT_TRAFFIC


def output_size(x_shape, plan: Plan, padding) -> tuple:
    """``(ho, wo)``: the output size of ``plan``'s convolution on an input of ``x_shape``."""
    k, s = plan.kernel[0], plan.s
    return (conv_output_size(x_shape[2], k, s, padding[0], 1), conv_output_size(x_shape[3], k, s, padding[1], 1))


def conv2d(x, plan: Plan, padding, relu, launch, schedule="chunked", chunk_bytes=None, round_bf16=False,
           tile=None):
    """The convolution of ``x`` (N, C, H, W) by the prepared ``plan``; ``launch(kernel, *args)``
    runs a parallel kernel (the backend's launch lock). ``schedule``: ``"fused"`` (one launch,
    products on the micro-kernel: ``plan.packed`` only) or ``"chunked"`` (three launches per
    chunk of tile rows whose ``V`` and ``M`` take about ``chunk_bytes``, by default
    ``tunables.CHUNK_BYTES``). ``round_bf16``: the input's values rounded to bfloat16 as they
    are gathered (the weights of such a plan are rounded already). ``tile``: the output tile
    size ``m`` (one of :data:`TILES` for the kernel), by default :meth:`Plan.tile`'s."""
    N, C = x.shape[:2]
    s, r = plan.s, plan.r
    (ph, pw) = padding
    ho, wo = output_size(x.shape, plan, padding)
    m = plan.tile(ho, wo) if tile is None else tile
    if m not in TILES[r]:
        raise ValueError(f"winograd: no {m}x{m} tiles for a {r}x{r} kernel (tiles: {TILES[r]})")
    U = plan.weights(m)
    alpha = m + r - 1
    th, tw = -(-ho // m), -(-wo // m)
    Wp = tw * m + r - 1                           # band width in (space-to-depth) blocks
    Cs = C * s * s
    O = plan.out_channels
    if schedule == "fused":
        if not plan.packed:
            raise ValueError("winograd: the fused schedule needs products on the micro-kernel")
        y = np.empty((N, O, ho, wo), np.float32)
        launch(_fused, *checked_fused(x, U, y, plan.bias, relu, m, s, ph, pw, th, tw, Wp, Cs, round_bf16))
        return y
    cg, og = Cs // plan.groups, O // plan.groups
    # whole tile rows in chunks whose transformed input and products (V, M) stay in the
    # last-level cache
    R = N * th
    A = alpha * alpha
    per_row = A * 4 * (Cs + O) * tw
    chunk = max(1, min(R, (chunk_bytes or tunables.CHUNK_BYTES) // per_row))
    V = _workspace("V", (chunk * tw, A, Cs))
    M = _workspace("M", (chunk * tw, A, O))
    y = np.empty((N, O, ho, wo), np.float32)
    for r0 in range(0, R, chunk):
        rows = min(chunk, R - r0)
        count = rows * tw
        launch(_input_transform, x, V, m, s, ph, pw, th, tw, Wp, r0, rows, bool(round_bf16))
        if plan.packed:  # alpha**2 products per group, every group's in one launch
            launch(_gemm.batched_gemm, *_gemm.checked(V, U, M, count, 0, 0, cg, og))
        else:
            for g, Ug in enumerate(U):
                np.matmul(V[:count, :, g * cg:(g + 1) * cg].transpose(1, 0, 2), Ug,
                          out=M[:count, :, g * og:(g + 1) * og].transpose(1, 0, 2))
        launch(_output_transform, M, y, m, plan.bias, relu, th, tw, r0, rows)
    return y
