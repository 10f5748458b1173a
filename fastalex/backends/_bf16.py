"""bfloat16 products with float32 accumulation (``precision="bfloat16"``) on the fast backend.

A convolution or dense layer becomes, per group, one product ``C = A @ B``:

* ``A`` (rows ``M``, depth ``K``): the weight, ``(out/groups, in/groups*kh*kw)`` in torch's
  ``(c, u, v)`` order, rounded to bfloat16 (nearest, ties to even) and packed **once**, when the
  layer is planned: ``(G, Mp, Kp)`` ``uint16`` bit patterns, ``Mp`` a multiple of 32 rows and
  ``Kp`` of 32 (zeros beyond ``M`` and ``K``). Row-major: an AMX ``A`` tile (16 rows x 32 bf16)
  is 16 rows of 64 bytes at stride ``2*Kp``.
* ``B`` (depth ``K``, columns ``N``): the input windows (im2col: column = output pixel of a
  sample) or, for a dense layer, the samples; rounded to bfloat16 on the way in and packed on
  every call into **panels** of 32 columns in "VNNI" order: ``(G, Np/32, Kp/2, 32, 2)``, pairs of
  consecutive ``k`` side by side. A step ``kp`` of a panel is 128 contiguous bytes: two
  ``vdpbf16ps`` operands, or one row of two AMX ``B`` tiles (16 ``k`` pairs x 16 columns, stride
  128 bytes).
* ``C`` ``(G, Mp, Np)`` float32, then bias, ReLU and the NCHW (or ``(N, out)``) layout in one
  pass.

Three paths multiply the same packed operands, chosen at run time from what the CPU has
(:func:`bf16_paths`, best first):

``"amx"``
    Intel AMX (``amx_bf16``, Sapphire Rapids and later): blocks of 32x32 float32 in four tile
    registers, ``tdpbf16ps`` on two ``A`` and two ``B`` tiles per 32 ``k`` (:mod:`._bf16_amx`).
``"avx512_bf16"``
    ``vdpbf16ps`` (Cooper Lake, Sapphire Rapids, AMD Zen 4): register tiles of 6 rows x 32
    columns (:mod:`._bf16_avx512`).
``"emulation"``
    Any CPU: the packed bf16 values widened to float32 (exact) and multiplied by NumPy's sgemm.
    A product of two bfloat16 values is exact in float32, so every path computes the same
    products of the same rounded inputs; only the order (and, in hardware, the rounding) of
    the float32 sums differs.

The path in use is the first of :func:`bf16_paths` unless :func:`set_bf16_path` or the
environment variable ``FASTALEX_BF16_PATH`` chose another (a tuner can time each).
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from . import _cache_stamp  # noqa: F401  (before any cached kernel: see the module)

from ..shapes import conv_output_size
from . import _target, _tune
from ._gemm import bias_relu_row
from ._bf16_common import KB, MB, NR, amx_permitted, round_bf16, write_block  # noqa: F401  (part of this module's API)

#: every path, best first
PATHS = ("amx", "avx512_bf16", "emulation")

_PAR = dict(parallel=True, cache=True, nogil=True, error_model="numpy")
_SER = dict(cache=True, nogil=True, error_model="numpy")


# ----------------------------------------------------------------------------- the CPU

def _usable(*features) -> bool:
    """Whether this CPU has ``features`` and Numba compiles for them: with ``NUMBA_CPU_NAME=haswell``
    (a portable build) on an AVX-512 machine, LLVM would abort the process on a bf16 kernel."""
    host, target = _target.host_features(), _target.target().features
    return all(host.get(f) and f in target for f in features)


def cpu_paths() -> tuple[str, ...]:
    """The paths this CPU (and OS) can run, and the compile target allows, best first;
    ``"emulation"`` always."""
    paths = []
    if _usable("amx-bf16", "amx-tile") and amx_permitted():
        paths.append("amx")
    if _usable("avx512bf16", "avx512f"):
        paths.append("avx512_bf16")
    paths.append("emulation")
    return tuple(paths)


_chosen: str | None = None


def bf16_paths() -> list[str]:
    """The bfloat16 paths available here, best first (``"amx"``, ``"avx512_bf16"``,
    ``"emulation"``: the last always)."""
    return list(cpu_paths())


def check_path(name, op="bf16 path") -> str:
    if not isinstance(name, str) or name not in PATHS:
        raise ValueError(f"{op}: unknown bfloat16 path {name!r}; valid paths are "
                         + ", ".join(repr(p) for p in PATHS))
    if name not in cpu_paths():
        raise ValueError(f"{op}: this CPU, or the CPU Numba compiles for (NUMBA_CPU_NAME), cannot run the "
                         f"bfloat16 path {name!r}; available: "
                         + ", ".join(repr(p) for p in cpu_paths()))
    return name


def set_bf16_path(name: str | None) -> None:
    """Run bfloat16 products on path ``name`` from now on (one of :func:`bf16_paths`);
    None goes back to the best one."""
    global _chosen
    _chosen = None if name is None else check_path(name, "set_bf16_path")


def chosen_path() -> str | None:
    """The path :func:`set_bf16_path` or ``FASTALEX_BF16_PATH`` chose, or None (then every
    layer's product is chosen by measurement, see ``fast.conv2d_bf16``)."""
    if _chosen is not None:
        return _chosen
    env = os.environ.get("FASTALEX_BF16_PATH")
    if env:
        return check_path(env, "FASTALEX_BF16_PATH")
    return None


def active_path() -> str:
    """The path bfloat16 products run on: :func:`set_bf16_path`'s choice, else
    ``FASTALEX_BF16_PATH``, else the best one this CPU has."""
    return chosen_path() or cpu_paths()[0]


def hardware_paths() -> tuple[str, ...]:
    """The paths that multiply on bf16 units here (AMX, AVX512-BF16); the emulation where the
    CPU has none."""
    return tuple(p for p in cpu_paths() if p != "emulation") or ("emulation",)


def _kernels(path):
    """The module of ``path``'s product (imported only on a CPU that has its instructions:
    compiling them elsewhere would fail)."""
    if path == "amx":
        from . import _bf16_amx
        return _bf16_amx
    if path == "avx512_bf16":
        from . import _bf16_avx512
        return _bf16_avx512
    return None


# ----------------------------------------------------------------------------- rounding and packing

@njit(**_SER)
def _round1(bits):
    """bfloat16 bits of the float32 with bits ``bits`` (uint32): nearest, ties to even; NaN quiet."""
    if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x0040))
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    return np.uint16((np.uint64(bits) + np.uint64(0x7FFF) + np.uint64(lsb)) >> np.uint64(16))


@njit(**_PAR)
def round_to_bf16(xf, out):
    """``out[i]`` = bfloat16 bits of ``xf[i]`` (flat float32 -> flat uint16)."""
    bits = xf.view(np.uint32)
    for i in prange(xf.size):
        out[i] = _round1(bits[i])


@njit(**_PAR)
def _round_through(xf, out):
    """``out[i]`` = ``xf[i]`` rounded to bfloat16 (nearest, ties to even), as float32."""
    for i in prange(xf.size):
        out[i] = round_bf16(xf[i])


def rounded(x, launch=None):
    """float32 ``x`` with every value rounded to bfloat16 (nearest, ties to even), still
    float32: the operand of a product whose float32 multiplies are then exact (the product of
    two bfloat16 values fits in float32's 24 bits)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.float32)
    (launch or (lambda k, *a: k(*a)))(_round_through, x.reshape(-1), out.reshape(-1))
    return out


def to_bf16(x):
    """bfloat16 bits (``uint16``, same shape) of float32 ``x``, by the parallel kernel."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.uint16)
    round_to_bf16(x.reshape(-1), out.reshape(-1))
    return out


def _ceil(n, m):
    return -(-n // m) * m


def pack_weight(w3):
    """``A``: float32 ``(G, M, K)`` -> bfloat16 bits ``(G, Mp, Kp)`` (zero-padded)."""
    G, M, K = w3.shape
    a = np.zeros((G, _ceil(M, MB), _ceil(K, KB)), np.uint16)
    from ..lowp import to_bfloat16
    a[:, :M, :K] = to_bfloat16(w3)
    return a


#: a row or column offset that puts a tap outside any image (so its value is 0)
_OUT = -(1 << 40)


def window_taps(kh, kw, dh, dw, H, W, kg, kp):
    """Per row ``k < kp`` of a group's im2col matrix: its offset in the input (``c*H*W +
    u*dh*W + v*dw``), row shift ``u*dh`` and column shift ``v*dw``; rows from ``kg`` on are
    outside every image."""
    k = np.arange(kp)
    c, u, v = k // (kh * kw), (k // kw) % kh, k % kw
    off = (c * H * W + u * dh * W + v * dw).astype(np.int64)
    tu = np.where(k < kg, u * dh, _OUT).astype(np.int64)
    tv = (v * dw).astype(np.int64)
    return off, tu, tv


@njit(**_PAR)
def _pack_windows(x16, n0, nb, bp, cin_g, sh, sw, ph, pw, ho, wo, toff, tu, tv):
    """im2col of samples ``[n0, n0+nb)`` of bf16 ``x16`` (N, C, H, W) into the panels ``bp``
    ``(G, NP, KP2, 32, 2)``: ``B[g][k, s*ho*wo + i*wo + j] = x[n0+s, g*cin_g + c, i*sh - ph + u*dh,
    j*sw - pw + v*dw]`` (0 outside, and for rows and columns beyond the matrix), with the taps
    of :func:`window_taps`. One task per ``(group, panel)``, writing the panel in order: per ``k``
    pair, 32 words (low half: ``k`` even), each a select of two bounds-checked loads."""
    G, NP, KP2 = bp.shape[0], bp.shape[1], bp.shape[2]
    C, H, W = x16.shape[1], x16.shape[2], x16.shape[3]
    P = ho * wo
    xf = x16.reshape(-1)
    wf = bp.reshape(-1).view(np.uint32)   # (G, NP, KP2, 32) words
    for t in prange(G * NP):
        g, q = t // NP, t % NP
        off = np.empty(NR, np.int64)
        ihb = np.empty(NR, np.int64)
        iwb = np.empty(NR, np.int64)
        for lane in range(NR):
            cc = q * NR + lane
            if cc < nb * P:
                sm = cc // P
                pix = cc - sm * P
                i = pix // wo
                j = pix - i * wo
                ihb[lane] = i * sh - ph
                iwb[lane] = j * sw - pw
                off[lane] = ((n0 + sm) * C + g * cin_g) * H * W + ihb[lane] * W + iwb[lane]
            else:
                ihb[lane] = _OUT
                iwb[lane] = 0
                off[lane] = 0
        base = t * KP2 * NR
        for kp in range(KP2):
            ka, kb = 2 * kp, 2 * kp + 1
            oa, ua, va = toff[ka], tu[ka], tv[ka]
            ob, ub, vb = toff[kb], tu[kb], tv[kb]
            d = base + kp * NR
            for lane in range(NR):
                iha, iwa = ihb[lane] + ua, iwb[lane] + va
                ihh, iwh = ihb[lane] + ub, iwb[lane] + vb
                lo = np.uint32(0)
                hi = np.uint32(0)
                if 0 <= iha < H and 0 <= iwa < W:
                    lo = np.uint32(xf[off[lane] + oa])
                if 0 <= ihh < H and 0 <= iwh < W:
                    hi = np.uint32(xf[off[lane] + ob])
                wf[d + lane] = lo | (hi << np.uint32(16))


@njit(**_PAR)
def _pack_rows(x, bp):
    """The samples ``x`` (N, K) float32 as the panels ``bp`` (1, NP, KP2, 32, 2) of ``B = x.T``,
    rounded to bfloat16; zeros beyond ``N`` and ``K``."""
    N, K = x.shape
    NP, KP2 = bp.shape[1], bp.shape[2]
    bits = x.view(np.uint32)
    for kp in prange(KP2):
        for q in range(NP):
            for col in range(NR):
                n = q * NR + col
                for e in range(2):
                    k = 2 * kp + e
                    bp[0, q, kp, col, e] = _round1(bits[n, k]) if (n < N and k < K) else np.uint16(0)


@njit(**_PAR)
def _conv_epilogue(c, y, n0, nb, og, bias, relu):
    """``y[n0+s, o, p] = act(C[o // og, o % og, s*P + p] + bias[o])``."""
    O, P = y.shape[1], y.shape[2]
    has_bias = bias.shape[0] > 0
    for t in prange(nb * O):
        s, o = t // O, t % O
        bias_relu_row(c[o // og, o % og, s * P:(s + 1) * P], y[n0 + s, o],
                       bias[o] if has_bias else np.float32(0.0), relu)


@njit(**_PAR)
def _dense_epilogue(c, y, bias, relu):
    """``y[n, o] = act(C[0, o, n] + bias[o])``."""
    N, O = y.shape
    has_bias = bias.shape[0] > 0
    for o in prange(O):
        b = bias[o] if has_bias else np.float32(0.0)
        for n in range(N):
            v = c[0, o, n] + b
            y[n, o] = np.float32(0.0) if relu and v < 0.0 else v


# ----------------------------------------------------------------------------- products

def _widen(bits):
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def gemm(path, a, bp, c, m, n, a32=None):
    """``C[g, :m, :] = A[g, :m] @ B[g]`` on ``path``: ``a`` (G, Mp, Kp) and ``bp`` (G, NP, Kp/2,
    32, 2) bfloat16 bits, ``c`` (G, Mp, NP*32) float32; ``n``: the columns that matter (rows
    from ``m`` on and columns from ``n`` on may be left unwritten). ``a32``: ``a`` widened, for the emulation (made once by the caller)."""
    G, Mp, Kp = a.shape
    NP = bp.shape[1]
    if path == "emulation":
        a32 = _widen(a) if a32 is None else a32
        b32 = _widen(bp).transpose(0, 2, 4, 1, 3).reshape(G, Kp, NP * NR)
        np.matmul(a32, b32, out=c)
        return c
    _kernels(path).gemm(a, bp, c, m, n)
    return c


class Bf16Plan:
    """A layer's weight in bfloat16, packed once: ``a`` (G, Mp, Kp) bits, ``m`` rows and ``k``
    depth per group, the bias (float32 or None) and the geometry of a convolution (``kernel``
    ``(kh, kw)``, ``stride``, ``dilation``, ``cin_g``) or ``kernel=None`` for a dense layer."""

    def __init__(self, w3, bias, kernel=None, stride=(1, 1), dilation=(1, 1), cin_g=None):
        self.groups, self.m, self.k = w3.shape
        self.a = pack_weight(w3)
        self.bias = bias
        self.kernel, self.stride, self.dilation, self.cin_g = kernel, stride, dilation, cin_g
        self._a32 = None
        #: other forms of the weight a path makes once, when it first runs (AMX: tile order)
        self.extra = {}
        #: batch size -> (product, origin) of the runs so far (``_tune.run_for``)
        self.chosen = {}

    @property
    def a32(self):
        if self._a32 is None:
            self._a32 = _widen(self.a)
        return self._a32

    @property
    def nbytes(self):
        return self.a.nbytes

    def weight_rounded(self):
        """The weight as float32 values rounded to bfloat16, in its layer's shape: ``(out,
        in/groups, kh, kw)``, or ``(out, in)`` for a dense layer (exact: widened from ``a``)."""
        w = _widen(self.a[:, :self.m, :self.k]).reshape(self.groups * self.m, self.k)
        if self.kernel is None:
            return np.ascontiguousarray(w)
        return np.ascontiguousarray(w.reshape(self.groups * self.m, self.cin_g, *self.kernel))

    def rows(self):
        """A dense layer's weight as bfloat16 bits ``(out, in)``, C-contiguous (a view of ``a``
        where its depth needed no padding), for the streaming product of one or a few samples."""
        r = self.extra.get("rows")
        if r is None:
            r = self.extra["rows"] = np.ascontiguousarray(self.a[0, :self.m, :self.k])
        return r

    def describe(self, path=None):
        g, mp, kp = self.a.shape
        what = f"{g} x " if g > 1 else ""
        text = (f"bfloat16 {path or active_path()}: {what}({mp} x {kp}) packed weight, "
                f"{'im2col' if self.kernel else 'samples'} in VNNI panels of {NR}")
        if self.chosen:
            text += "; " + _tune.describe_choices(self.chosen, _product_name)
        return text


def _product_name(name):
    """How a tuned product reads in a summary: the bf16 paths by name, the others say that they
    multiply the rounded operands on float32 units (exact products, float32 sums)."""
    if name in PATHS:
        return name
    return f"{name} on float32 units"


def plan_conv(weight, bias, stride, dilation, groups) -> Bf16Plan:
    O, cin_g, kh, kw = weight.shape
    w3 = np.ascontiguousarray(weight, np.float32).reshape(groups, O // groups, cin_g * kh * kw)
    return Bf16Plan(w3, bias, (kh, kw), tuple(stride), tuple(dilation), cin_g)


def plan_dense(weight, bias) -> Bf16Plan:
    w = np.ascontiguousarray(weight, np.float32)
    return Bf16Plan(w[None], bias, None)


#: columns of ``B`` per chunk of samples in a convolution (the packed windows stay in cache)
CONV_COLUMNS = 4096

_NO_BIAS = np.zeros(0, np.float32)


def conv2d(x, plan: Bf16Plan, padding, relu, launch, path=None):
    """``act(conv(bf16(x), bf16(w)) + bias)`` with float32 sums, NCHW float32 out."""
    path = path or active_path()
    N, C, H, W = x.shape
    kh, kw = plan.kernel
    (sh, sw), (dh, dw), (ph, pw) = plan.stride, plan.dilation, padding
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    P = ho * wo
    G, Mp, Kp = plan.a.shape
    y = np.empty((N, G * plan.m, ho, wo), np.float32)
    y3 = y.reshape(N, G * plan.m, P)
    x16 = to_bf16(x)
    toff, tu, tv = window_taps(kh, kw, dh, dw, H, W, plan.k, Kp)
    nb = max(1, min(N, CONV_COLUMNS // P))
    bias = _NO_BIAS if plan.bias is None else plan.bias
    a32 = plan.a32 if path == "emulation" else None
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        NP = -(-(m * P) // NR)
        bp = np.empty((G, NP, Kp // 2, NR, 2), np.uint16)
        launch(_pack_windows, x16, n0, m, bp, plan.cin_g, sh, sw, ph, pw, ho, wo, toff, tu, tv)
        if path == "emulation":
            c = np.empty((G, Mp, NP * NR), np.float32)
            gemm(path, plan.a, bp, c, plan.m, m * P, a32)
            launch(_conv_epilogue, c, y3, n0, m, plan.m, bias, relu)
        else:  # the product writes its blocks straight into y, with bias and ReLU
            _kernels(path).fused(launch, plan, bp, y3, n0, P, bias, relu, m * P)
    return y


def linear(x, plan: Bf16Plan, relu, launch, path=None):
    """``act(bf16(x) @ bf16(w).T + bias)`` with float32 sums, ``(N, out)`` float32."""
    path = path or active_path()
    N = x.shape[0]
    G, Mp, Kp = plan.a.shape
    NP = -(-N // NR)
    bp = np.empty((1, NP, Kp // 2, NR, 2), np.uint16)
    launch(_pack_rows, np.ascontiguousarray(x, np.float32), bp)
    y = np.empty((N, plan.m), np.float32)
    bias = _NO_BIAS if plan.bias is None else plan.bias
    if path == "emulation":
        c = np.empty((1, Mp, NP * NR), np.float32)
        gemm(path, plan.a, bp, c, plan.m, N, plan.a32)
        launch(_dense_epilogue, c, y, bias, bool(relu))
    else:  # y as (N, out, 1): a sample is a "pixel column" of one pixel
        _kernels(path).fused(launch, plan, bp, y.reshape(N, plan.m, 1), 0, 1, bias, bool(relu), N)
    return y
