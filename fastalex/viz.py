"""Pictures of the network: its kernels, a photo's feature maps, and what the model looks at.

Every function returns a ``PIL.Image`` (RGB) and writes nothing; ``image.save("x.png")``
writes it. Only Pillow is used (no window ever opens)::

    from fastalex import viz
    viz.filters(model).save("conv1.png")                        # the 2012 paper's figure 3
    viz.activations(model, "cat.jpg", "features.1").save("maps.png")
    viz.explain(model, "cat.jpg").save("why.png")               # occlusion sensitivity
    heat = viz.occlusion(model, x)                              # the numbers behind it

**Grids.** Tiles of one size ``t`` (pixels) are laid out row-major in ``rows x cols`` cells
(:func:`grid_shape`), separated and framed by ``gutter`` pixels of white:
``width = cols * (t + gutter) + gutter``, ``height = rows * (t + gutter) + gutter``, and tile
``i`` of a plain grid has its top-left corner at ``(gutter + c * (t + gutter), gutter + r *
(t + gutter))`` with ``r, c = divmod(i, cols)``. Below the grid a caption strip of
``caption_height(lines)`` pixels says what the picture shows (the image is widened if the
text needs it).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["filters", "activations", "occlusion", "explain", "Occlusion", "grid_shape",
           "caption_height", "grey_fill", "prepare", "draw_occlusion", "class_label", "COLORMAPS",
           "DEFAULT_PATCH", "DEFAULT_STRIDE"]

GUTTER = 1                 # pixels between tiles (and around the grid)
BACKGROUND = (255, 255, 255)
FILTER_TILE = 40           # about this many pixels per kernel tile (nearest-neighbour upscaling)
ACTIVATION_TILE = 48       # about this many pixels per feature-map tile
FONT_SIZE = 12
LINE_HEIGHT = 16           # pixels per caption line
CAPTION_PAD = 4            # pixels above and below the caption lines
DEFAULT_PATCH = 56         # occlusion patch side in input pixels (a quarter of 224)
DEFAULT_STRIDE = 28        # occlusion stride: 7 x 7 = 49 positions on 224 (8 x 8 on 227)
MAX_SLICES = 1024          # cap on (output, input) kernel slices drawn by filters(per_input=True)

#: colour maps by name: anchor colours spread evenly from 0 to 1 (interpolated linearly);
#: viridis and inferno are sampled from matplotlib's maps of the same names
COLORMAPS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "inferno": [(0, 0, 4), (66, 10, 104), (147, 38, 103), (221, 81, 58), (252, 165, 10), (252, 255, 164)],
}


# ----------------------------------------------------------------------------- drawing helpers

def grid_shape(n: int) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` cells: a divisor of ``n`` as columns when one lies between
    ``sqrt(n)`` and ``2 sqrt(n)`` (96 -> 8 x 12, 64 -> 8 x 8: no empty cells), else a square-ish
    ``ceil(sqrt(n))`` columns."""
    n = max(1, int(n))
    root = math.sqrt(n)
    cols = next((c for c in range(math.ceil(root), int(2 * root) + 1) if n % c == 0), math.ceil(root))
    return math.ceil(n / cols), cols


@functools.lru_cache(maxsize=None)
def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the bitmap font, no size
        return ImageFont.load_default()


def caption_height(lines: int) -> int:
    """Height in pixels of a caption strip of ``lines`` lines (0 for none)."""
    return lines * LINE_HEIGHT + 2 * CAPTION_PAD if lines else 0


def _with_caption(img: Image.Image, lines) -> Image.Image:
    """``img`` with a white strip below holding ``lines`` of text (widened to fit the text)."""
    lines = [str(line) for line in lines if line]
    if not lines:
        return img
    font = _font()
    draw_probe = ImageDraw.Draw(img)
    text_w = max(int(math.ceil(draw_probe.textlength(line, font=font))) for line in lines)
    out = Image.new("RGB", (max(img.width, text_w + 2 * CAPTION_PAD), img.height + caption_height(len(lines))),
                    BACKGROUND)
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((CAPTION_PAD, img.height + CAPTION_PAD + k * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return out


def _cells(rows, cols, skip=frozenset()):
    """Row-major ``(r, c)`` cells, leaving out those in ``skip``."""
    return [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in skip]


def _canvas(rows, cols, tile, gutter):
    return Image.new("RGB", (cols * (tile + gutter) + gutter, rows * (tile + gutter) + gutter), BACKGROUND)


def _origin(r, c, tile, gutter):
    return gutter + c * (tile + gutter), gutter + r * (tile + gutter)


def _grid(tiles, tile, gutter, cols=None):
    """Paste equal-size square tiles (PIL images of side ``tile``) in a grid."""
    rows, cols = grid_shape(len(tiles)) if cols is None else (math.ceil(len(tiles) / cols), cols)
    img = _canvas(rows, cols, tile, gutter)
    for t, (r, c) in zip(tiles, _cells(rows, cols)):
        img.paste(t, _origin(r, c, tile, gutter))
    return img


def _normalize(a, lo=None, hi=None):
    """``a`` scaled to [0, 1] by ``lo``/``hi`` (default: its own min and max); flat -> 0.5."""
    a = np.asarray(a, dtype=np.float64)
    lo = a.min() if lo is None else lo
    hi = a.max() if hi is None else hi
    if not np.isfinite(hi - lo) or hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-30):
        return np.full(a.shape, 0.5)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _lut(name):
    if name not in COLORMAPS:
        raise ValueError(f"viz: unknown colour map {name!r}; valid maps are {', '.join(COLORMAPS)}")
    anchors = np.asarray(COLORMAPS[name], dtype=np.float64)
    at = np.linspace(0.0, 1.0, len(anchors))
    v = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(v, at, anchors[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def _colorize(unit, cmap="gray"):
    """A [0, 1] array ``(H, W)`` -> uint8 ``(H, W, 3)`` through a colour map."""
    return _lut(cmap)[np.rint(np.asarray(unit) * 255).astype(np.intp)]


def _tile(pixels, scale):
    """uint8 ``(h, w, 3)`` -> a PIL image upscaled ``scale`` times with nearest neighbour."""
    img = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale != 1 else img


def _check_positive(op, name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- layers and inputs

def _leaf(model, layer, op):
    """``(dotted name, layer)`` for a name (aliases as :meth:`Model.extract` takes them)."""
    resolve = getattr(model, "resolve_layer", None)
    name = resolve(layer) if resolve else layer
    for leaf, obj in model.named_layers():
        if leaf == name:
            return leaf, obj
    raise ValueError(f"{op}: unknown layer {layer!r}; the layers are "
                     + ", ".join(n for n, _ in model.named_layers()))


def _conv_layer(model, layer):
    from .layers import Conv2D
    convs = [(n, l) for n, l in model.named_layers() if isinstance(l, Conv2D)]
    if not convs:
        raise ValueError("filters: the model has no convolution layers")
    if layer is None:
        return convs[0]
    name, obj = _leaf(model, layer, "filters")
    if not isinstance(obj, Conv2D):
        raise ValueError(f"filters: layer {name} is a {type(obj).__name__}, not a convolution; "
                         f"the convolutions are {', '.join(n for n, _ in convs)}")
    return name, obj


def _mean_std(model):
    pre = getattr(model, "preprocess", None) or {}
    mean = np.asarray(pre.get("mean", (0.0, 0.0, 0.0)), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.get("std", (1.0, 1.0, 1.0)), dtype=np.float32).reshape(3, 1, 1)
    return mean, std


def prepare(model, image):
    """``(x, photo)``: the float32 ``(3, H, W)`` input the model sees and that input as an RGB
    PIL image (the resized, cropped photo). ``image`` is a path, a PIL image, a uint8 array
    ``(H, W[, 3|4])`` or an already preprocessed float array ``(3, H, W)``."""
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"viz: a preprocessed image must be a float array (3, H, W), got shape {image.shape}")
        x = np.ascontiguousarray(image, dtype=np.float32)
    else:
        from .images import get_preprocess, open_image, preprocess_image
        x = preprocess_image(open_image(image), get_preprocess(model))
    mean, std = _mean_std(model)
    rgb = np.clip((x * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return x, Image.fromarray(np.ascontiguousarray(rgb), "RGB")


# ----------------------------------------------------------------------------- filters

def filters(model, layer=None, scale=None, per_input=False, max_tiles=MAX_SLICES, gutter=GUTTER,
            caption=True) -> Image.Image:
    """A convolution's kernels as one picture.

    ``layer``: a convolution's name (default: the first one, ``features.0``). A layer with 3
    input channels (the first) shows each kernel as an RGB tile (the 2012 paper's figure 3:
    96 tiles of 11x11 for its conv1), channel 0 as red. A deeper layer shows one grey tile per
    output channel, the kernel's mean over its inputs, or with ``per_input`` one tile per
    (output, input) slice, a row per output channel, at most ``max_tiles`` of them (the first
    ``sqrt(max_tiles)`` inputs of as many outputs as fit; the caption says what was left out).
    Each tile is scaled to its own range (min black, max white) and upscaled ``scale`` times
    with nearest neighbour (default: to about 40 pixels). Tiles are laid out as the module
    docstring says (``grid_shape`` of the count, or a row per output channel with ``per_input``).
    """
    name, conv = _conv_layer(model, layer)
    w = np.asarray(conv.weight, dtype=np.float64)
    out, cin, kh, kw = w.shape
    scale = max(1, round(FILTER_TILE / max(kh, kw))) if scale is None else _check_positive("filters", "scale", scale)
    max_tiles = _check_positive("filters", "max_tiles", max_tiles)
    tile = max(kh, kw) * scale
    shape = f"{out} kernels {cin}x{kh}x{kw}"
    cols = None
    if cin == 3 and not per_input:
        tiles = [_tile((_normalize(k) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0), scale) for k in w]
        lines = [f"{name}: {shape}, as RGB (input channel 0 red), each scaled to its own range"]
    elif not per_input:
        tiles = [_tile(_colorize(_normalize(k.mean(axis=0))), scale) for k in w]
        lines = [f"{name}: {shape}; each tile the mean over the kernel's {cin} inputs",
                 "(per input: one tile per (output, input) slice)"]
    else:
        n_in = min(cin, max(1, math.isqrt(max_tiles)))  # rows no wider than the grid is tall
        n_out = min(out, max(1, max_tiles // n_in))
        tiles = [_tile(_colorize(_normalize(w[o, i])), scale) for o in range(n_out) for i in range(n_in)]
        cols = n_in
        lines = [f"{name}: {shape}; one tile per (output, input) slice, a row per output"]
        if n_out < out or n_in < cin:
            lines.append(f"showing the first {n_out} of {out} outputs x the first {n_in} of {cin} inputs "
                         f"(cap {max_tiles} tiles)")
    img = _grid(tiles, tile, gutter, cols=cols)  # a non-square kernel's tile leaves white at its side
    return _with_caption(img, lines) if caption else img


# ----------------------------------------------------------------------------- activations

def activations(model, image, layer="features.1", scale=None, max_channels=None, normalize="layer",
                cmap="gray", gutter=GUTTER, caption=True) -> Image.Image:
    """A photo's feature maps at ``layer`` as a grid of tiles, one per channel, with the photo
    (as the model sees it, resized and cropped) in the top-left corner over 2 x 2 cells.

    ``layer``: any name :meth:`Model.extract` takes (``features.1`` is conv1 after its ReLU,
    ``pool5``, ``fc6`` ...); a vector output (a dense layer's) is drawn as one square map.
    ``normalize``: ``"layer"`` (one scale for all channels, so dead channels stay black) or
    ``"channel"`` (each tile to its own range). ``cmap``: ``"gray"``, ``"viridis"`` or
    ``"inferno"``. ``max_channels``: draw only the first so many. ``scale``: nearest-neighbour
    upscaling (default: tiles of about 48 pixels). The cells are ``grid_shape(channels + 4)``,
    filled row-major around the photo's 2 x 2 block.
    """
    if normalize not in ("layer", "channel"):
        raise ValueError(f"activations: normalize must be 'layer' or 'channel', got {normalize!r}")
    _lut(cmap)
    x, photo = prepare(model, image)
    a = np.asarray(model.extract(x, layer)[layer], dtype=np.float64)
    what = None
    if a.ndim == 1:  # a vector: one square map, zero-padded
        side = math.ceil(math.sqrt(a.size))
        what = f"{a.size} values as one {side}x{side} map"
        a = np.concatenate([a, np.zeros(side * side - a.size)]).reshape(1, side, side)
    c_all, h, w = a.shape
    n = c_all if max_channels is None else min(c_all, _check_positive("activations", "max_channels", max_channels))
    a = a[:n]
    if scale is None:
        scale = max(1, round(ACTIVATION_TILE / max(h, w)))
    scale = _check_positive("activations", "scale", scale)
    tile = max(h, w) * scale
    rows, cols = grid_shape(n + 4)
    block = {(0, 0), (0, 1), (1, 0), (1, 1)}
    img = _canvas(rows, cols, tile, gutter)
    img.paste(photo.resize((2 * tile + gutter, 2 * tile + gutter), Image.BILINEAR), _origin(0, 0, tile, gutter))
    lo, hi = (a.min(), a.max()) if normalize == "layer" else (None, None)
    for k, (r, c) in zip(range(n), _cells(rows, cols, block)):
        img.paste(_tile(_colorize(_normalize(a[k], lo, hi), cmap), scale), _origin(r, c, tile, gutter))
    resolved, obj = _leaf(model, layer, "activations")
    where = f"{layer} ({type(obj).__name__})" if resolved == layer else f"{layer} ({resolved}, {type(obj).__name__})"
    lines = [f"{where}: " + (what or f"{c_all} maps of {h}x{w}") + (f", the first {n} shown" if n < c_all else "")
             + (", one scale for the layer" if normalize == "layer" else ", each map to its own range")
             + f" ({a.min():.3g} to {a.max():.3g})"]
    return _with_caption(img, lines) if caption else img


# ----------------------------------------------------------------------------- occlusion

class Occlusion(NamedTuple):
    """Occlusion sensitivity of one input (Zeiler & Fergus 2014).

    ``heatmap`` ``(H, W)``: at each input pixel, the mean drop of ``target``'s probability over
    the patch positions that hid it (positive: hiding it hurts the class). ``drops``
    ``(len(ys), len(xs))``: the drop for the patch with top-left corner ``(ys[i], xs[j])``.
    ``probability``: the class's probability on the unoccluded input.
    """

    heatmap: np.ndarray
    drops: np.ndarray
    ys: tuple
    xs: tuple
    target: int
    probability: float
    patch: int
    stride: int


def _positions(size, patch, stride):
    """Top-left corners ``0, stride, ...`` plus a last one flush with the edge, so every pixel
    is covered."""
    last = max(0, size - patch)
    pos = list(range(0, last + 1, stride))
    if pos[-1] != last:
        pos.append(last)
    return tuple(pos)


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def grey_fill(model) -> np.ndarray:
    """The value of a mid-grey pixel (0.5 in [0, 1]) after the model's normalization, ``(3, 1, 1)``."""
    mean, std = _mean_std(model)
    return ((0.5 - mean) / std).astype(np.float32)


def occlusion(model, x, target=None, patch=DEFAULT_PATCH, stride=DEFAULT_STRIDE, batch_size=16,
              fill=None, progress=None) -> Occlusion:
    """Slide a ``patch x patch`` square of ``fill`` (default mid grey, normalized like the input)
    over the preprocessed input ``x`` ``(3, H, W)`` in steps of ``stride``, run every occluded
    copy through ``model`` (``batch_size`` at a time, on the model's backend) and measure how
    much the probability of ``target`` (default: the top-1 class) drops. ``progress``: called
    with ``(done, total)`` after each batch. Returns an :class:`Occlusion`.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"occlusion: x must be a preprocessed float image (3, H, W), got {x.dtype} {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    _, h, w = x.shape
    patch = _check_positive("occlusion", "patch", patch)
    stride = _check_positive("occlusion", "stride", stride)
    batch_size = _check_positive("occlusion", "batch_size", batch_size)
    if patch > min(h, w):
        raise ValueError(f"occlusion: patch={patch} is larger than the input {h}x{w}")
    base = _softmax(model(x[None]))[0]
    if target is None:
        target = int(np.argmax(base))
    elif not isinstance(target, (int, np.integer)) or isinstance(target, bool) or not 0 <= target < base.size:
        raise ValueError(f"occlusion: target must be a class index in [0, {base.size}), got {target!r}")
    target = int(target)
    fill = grey_fill(model) if fill is None else np.broadcast_to(np.asarray(fill, np.float32), (3, 1, 1))
    ys, xs = _positions(h, patch, stride), _positions(w, patch, stride)
    corners = [(y, x0) for y in ys for x0 in xs]
    probs = np.empty(len(corners))
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for k, (y, x0) in enumerate(chunk):
            batch[k, :, y:y + patch, x0:x0 + patch] = fill
        probs[start:start + len(chunk)] = _softmax(model(batch))[:, target]
        if progress is not None:
            progress(start + len(chunk), len(corners))
    drops = base[target] - probs
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for (y, x0), d in zip(corners, drops):
        total[y:y + patch, x0:x0 + patch] += d
        count[y:y + patch, x0:x0 + patch] += 1
    heat = (total / np.maximum(count, 1)).astype(np.float32)
    return Occlusion(heat, drops.reshape(len(ys), len(xs)).astype(np.float32), ys, xs, target,
                     float(base[target]), patch, stride)


def explain(model, image, target=None, patch=DEFAULT_PATCH, stride=DEFAULT_STRIDE, batch_size=16,
            labels=None, scale=2, alpha=0.6, cmap="inferno", progress=None) -> Image.Image:
    """Occlusion sensitivity drawn over the photo: where hiding the photo lowers the class's
    probability most is brightest. ``image`` as :func:`activations` takes it; ``target``:
    the class (default: the top-1 prediction); ``labels``: class names (default: ImageNet's
    for 1000-class models). :func:`prepare`, then :func:`occlusion`, then
    :func:`draw_occlusion` (which says how it is drawn).
    """
    x, photo = prepare(model, image)
    occ = occlusion(model, x, target=target, patch=patch, stride=stride, batch_size=batch_size,
                    progress=progress)
    return draw_occlusion(photo, occ, label=class_label(occ.target, labels, model), scale=scale,
                          alpha=alpha, cmap=cmap)


def class_label(index, labels=None, model=None) -> str:
    """``"tabby (class 281)"`` from ``labels`` (default: ImageNet's for a 1000-class ``model``),
    or ``"class 281"`` without names."""
    if labels is None and getattr(model, "num_classes", None) == 1000:
        from .labels import imagenet_labels
        labels = imagenet_labels()
    return f"{labels[index]} (class {index})" if labels else f"class {index}"


def draw_occlusion(photo, occ: Occlusion, label=None, scale=2, alpha=0.6, cmap="inferno") -> Image.Image:
    """The heat map of ``occ`` over ``photo`` (the input as an RGB image, from :func:`prepare`):
    the photo in grey, blended with ``alpha`` of the colour-mapped drop (0 to the largest drop;
    rises are drawn as no drop), upscaled ``scale`` times, with a caption naming the class
    (``label``), its probability and the patch settings."""
    scale = _check_positive("explain", "scale", scale)
    peak = float(occ.heatmap.max())
    unit = _normalize(np.maximum(occ.heatmap, 0.0), 0.0, peak) if peak > 0 else np.zeros(occ.heatmap.shape)
    heat = Image.fromarray(_colorize(unit, cmap), "RGB")
    img = Image.blend(photo.convert("L").convert("RGB"), heat, float(alpha))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.BILINEAR)
    n_pos = len(occ.ys) * len(occ.xs)
    lines = [f"{label or f'class {occ.target}'}: p = {occ.probability:.1%}",
             f"bright = hiding it lowers p most (largest drop {peak:+.3f});",
             f"grey {occ.patch}px patch, stride {occ.stride}, {n_pos} positions"]
    return _with_caption(img, lines)
