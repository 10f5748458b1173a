"""Deliberately naive loop versions of every op, written straight from the formulas.

They are slow and obvious on purpose: the tests compare both backends against them.
Everything is computed in float64.
"""

import math

import numpy as np


def out_size(n, k, s, p, d=1, ceil_mode=False):
    span = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        o = math.ceil(span / s) + 1
        if (o - 1) * s >= n + p:  # the last window must start inside the input or left padding
            o -= 1
        return o
    return span // s + 1


def conv2d(x, w, b, stride, padding, dilation, groups, relu=False):
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho, Wo = out_size(H, KH, sh, ph, dh), out_size(W, KW, sw, pw, dw)
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        for u in range(KH):
                            for v in range(KW):
                                r, q = i * sh - ph + u * dh, j * sw - pw + v * dw
                                if 0 <= r < H and 0 <= q < W:
                                    acc += float(w[o, c, u, v]) * float(x[n, g * Cg + c, r, q])
                    y[n, o, i, j] = max(acc, 0.0) if relu else acc
    return y


def _pool(x, kernel, stride, padding, ceil_mode, reduce):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = out_size(H, kh, sh, ph, 1, ceil_mode), out_size(W, kw, sw, pw, 1, ceil_mode)
    y = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    r0, q0 = i * sh - ph, j * sw - pw
                    y[n, c, i, j] = reduce(x[n, c], r0, q0, H, W)
    return y


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    (kh, kw), (ph, pw) = kernel, padding

    def reduce(img, r0, q0, H, W):
        best = -math.inf
        for u in range(kh):
            for v in range(kw):
                r, q = r0 + u, q0 + v
                if 0 <= r < H and 0 <= q < W:
                    best = max(best, float(img[r, q]))
        return best

    return _pool(x, kernel, stride, padding, ceil_mode, reduce)


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    (kh, kw), (ph, pw) = kernel, padding

    def reduce(img, r0, q0, H, W):
        total, inside, in_padded = 0.0, 0, 0
        for u in range(kh):
            for v in range(kw):
                r, q = r0 + u, q0 + v
                if -ph <= r < H + ph and -pw <= q < W + pw:
                    in_padded += 1
                if 0 <= r < H and 0 <= q < W:
                    total += float(img[r, q])
                    inside += 1
        return total / (in_padded if count_include_pad else inside)

    return _pool(x, kernel, stride, padding, ceil_mode, reduce)


def adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    oh, ow = output_size
    y = np.zeros((N, C, oh, ow))
    for i in range(oh):
        r0, r1 = math.floor(i * H / oh), math.ceil((i + 1) * H / oh)
        for j in range(ow):
            q0, q1 = math.floor(j * W / ow), math.ceil((j + 1) * W / ow)
            y[:, :, i, j] = x[:, :, r0:r1, q0:q1].astype(np.float64).mean(axis=(2, 3))
    return y


def local_response_norm(x, size, alpha, beta, k):
    N, C, H, W = x.shape
    x = x.astype(np.float64)
    y = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return y


def linear(x, w, b, relu=False):
    N, F = x.shape
    O = w.shape[0]
    y = np.zeros((N, O))
    for n in range(N):
        for o in range(O):
            acc = 0.0 if b is None else float(b[o])
            for f in range(F):
                acc += float(x[n, f]) * float(w[o, f])
            y[n, o] = max(acc, 0.0) if relu else acc
    return y
