"""Images in, float32 ``(3, H, W)`` tensors out, with each model's own preprocessing.

The steps are torchvision's ImageNet evaluation transform on a PIL image, so weights trained
with it see the same numbers here::

    Resize(256)             shorter side -> 256, longer side -> int(256 * long / short),
                            Pillow bilinear (antialiased) resampling
    CenterCrop(224 or 227)  top = int(round((h - crop) / 2)), left likewise
    ToTensor()              uint8 -> [0, 1]
    Normalize(mean, std)    per channel, in float32

A model's preprocessing is ``model.preprocess``, a dict of ``resize``, ``crop``, ``mean`` and
``std``; it may also say ``"channel_order": "BGR"`` (Caffe's order) and ``"pixel_max": 255.0``
(pixels in [0, 255] instead of [0, 1]). The presets are here, in :data:`PRESETS`:
``torchvision`` (RGB, [0, 1], ImageNet mean/std) and ``caffe`` (BGR, [0, 255], the mean
(104, 117, 123) subtracted, no scaling). A model spec names its preset and its sizes
(``{"preset": "torchvision", "resize": 256, "crop": 227}``, see :mod:`fastalex.specs`);
:func:`expand_preset` fills in the rest, :func:`preprocess_preset` makes one for an input size.

Before that, every image becomes 8-bit RGB: the EXIF orientation is applied, an animated
image gives its first frame, alpha (``LA``, ``RGBA``, ``P`` with transparency, ...) is
composited on white, 16-bit and 32-bit integer images are read on the 16-bit scale (0-65535),
float images on [0, 1] (values outside are clipped, never used to rescale the whole image),
and ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr`` become RGB.

Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is respected: an image
with more pixels than that raises :class:`ImageError` (Pillow itself only warns below twice
the limit). A file larger than :data:`fastalex._files.MAX_IMAGE_BYTES` (512 MiB) is refused
too; image URLs have the same cap and a deadline (see :mod:`fastalex._files`). Every failure
to read an image raises :class:`ImageError`, naming the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import _files
from ._files import FileProblem, open_regular
from .specs import VARIANTS

__all__ = ["ImageError", "load_image", "load_images", "open_image", "to_rgb", "preprocess_image",
           "get_preprocess", "preprocess_preset", "expand_preset", "PRESETS", "IMAGE_EXTENSIONS",
           "IMAGENET_MEAN", "IMAGENET_STD"]

#: file extensions picked up when a directory is searched for images (compared lower-case)
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif",
})

WHITE = (255, 255, 255)

#: images longer than this many times their width (or the reverse) are refused: resizing the
#: short side to 256 would make the long side absurd (a 1x20000 strip: 256x5,120,000 pixels)
MAX_ASPECT_RATIO = 1000

#: above this many times the crop's area, only the centre crop is resampled (``box=``), so the
#: work is bounded by the output's size, not the resized image's; below it the whole image is
#: resized then cropped, exactly as torchvision does
_BOX_RESIZE_AREA = 16


from .errors import ImageError  # noqa: E402  (defined with the other exceptions)


# ----------------------------------------------------------------------------- preprocessing spec

#: the mean and standard deviation of ImageNet's pixels on [0, 1], per RGB channel
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: preset name -> the preprocessing without its sizes (see :func:`preprocess_preset`)
PRESETS = {
    "torchvision": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "caffe": {"mean": (104.0, 117.0, 123.0), "std": (1.0, 1.0, 1.0), "channel_order": "BGR",
              "pixel_max": 255.0},
}


def preprocess_preset(name, crop=224) -> dict:
    """The preprocess dict of preset ``name`` (``"torchvision"`` or ``"caffe"``) for ``crop`` x
    ``crop`` inputs (or ``crop = (height, width)``, a non-square input): the shorter side resized
    to 256 (``side * 256 / 224`` outside 224..256, for the longer side of the crop), the centre
    cropped, then the preset's channel order, scale and normalization."""
    if name not in PRESETS:
        raise ValueError(f"unknown preprocess preset {name!r}; valid presets are "
                         + ", ".join(repr(p) for p in PRESETS))
    height, width = crop_size(crop)
    side = max(height, width)  # the resized image must cover the crop both ways
    resize = 256 if 224 <= side <= 256 else int(round(side * 256 / 224))
    crop = height if height == width else (height, width)
    return {"resize": resize, "crop": crop, **PRESETS[name], "preset": name}


def crop_size(crop) -> tuple[int, int]:
    """A preprocess dict's ``crop`` (an int for a square, or ``(height, width)``) as ``(height, width)``."""
    if isinstance(crop, (list, tuple)):
        if len(crop) != 2:
            raise ValueError(f"preprocess: crop must be a size or (height, width), got {crop!r}")
        return int(crop[0]), int(crop[1])
    return int(crop), int(crop)


def expand_preset(preprocess: dict) -> dict:
    """``preprocess`` with the mean, std (and channel order, pixel scale) of the preset it names
    filled in: ``{"preset": "torchvision", "resize": 256, "crop": 227}`` -> ``{"resize": 256,
    "crop": 227, "mean": ..., "std": ...}``. A dict that names no preset, or has its own mean,
    comes back as is (a copy)."""
    name = preprocess.get("preset")
    if name is None or "mean" in preprocess:
        return dict(preprocess)
    if name not in PRESETS:
        raise ValueError(f"unknown preprocess preset {name!r}; valid presets are "
                         + ", ".join(repr(p) for p in PRESETS))
    return {**{k: v for k, v in preprocess.items() if k != "preset"}, **PRESETS[name]}


def get_preprocess(variant="torchvision") -> dict:
    """The preprocessing dict (``resize``, ``crop``, ``mean``, ``std``, optionally
    ``channel_order`` and ``pixel_max``) of a variant name (its spec names its preset and sizes),
    a preset name (``"caffe"``, for 224x224), a model (anything with a ``preprocess``
    attribute) or a dict (a preset it names is filled in, see :func:`expand_preset`)."""
    if isinstance(variant, dict):
        spec = expand_preset(variant)
    elif isinstance(variant, str):
        if variant in VARIANTS:
            spec = expand_preset(VARIANTS[variant]()["preprocess"])
        elif variant in PRESETS:
            spec = preprocess_preset(variant)
        else:
            raise ValueError(f"load_image: unknown variant {variant!r}; valid variants are "
                             + ", ".join(repr(v) for v in VARIANTS) + " (presets: "
                             + ", ".join(repr(p) for p in PRESETS) + ")")
    elif hasattr(variant, "preprocess"):
        spec = variant.preprocess
    else:
        raise TypeError(f"load_image: variant must be a variant name, a model or a preprocess dict, "
                        f"got {type(variant).__name__}")
    missing = {"mean", "std"} - set(spec)
    if missing:
        raise ValueError(f"load_image: the preprocess dict lacks {', '.join(sorted(missing))}")
    if spec.get("channel_order", "RGB") not in ("RGB", "BGR"):
        raise ValueError(f"load_image: channel_order must be 'RGB' or 'BGR', got {spec['channel_order']!r}")
    return spec


def _lut(mean, std, pixel_max=1.0) -> np.ndarray:
    """``(3, 256)`` float32 table: ``lut[c, v] == (float32(v) / 255 - mean[c]) / std[c]``
    computed exactly as ToTensor + Normalize do in float32 (``pixel_max=1``), or with ``v``
    itself (``pixel_max=255``, Caffe's range) or ``v / 255 * pixel_max``."""
    v = np.arange(256, dtype=np.float32)
    if pixel_max == 1.0:
        v = v / np.float32(255)
    elif pixel_max != 255.0:
        v = v * np.float32(pixel_max / 255.0)
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1)
    return np.ascontiguousarray((v[None, :] - mean) / std, dtype=np.float32)


_LUTS: dict = {}


def _cached_lut(mean, std, pixel_max=1.0):
    key = (tuple(float(m) for m in mean), tuple(float(s) for s in std), float(pixel_max))
    lut = _LUTS.get(key)
    if lut is None:
        lut = _LUTS[key] = _lut(*key)
    return lut


# ----------------------------------------------------------------------------- decoding

def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (Pillow cannot identify the format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large, refused as a possible decompression bomb ({exc})"
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return f"truncated or corrupt image ({text})"
    return f"cannot decode image ({type(exc).__name__}: {text})"


def _bomb_check(img, path):
    """Refuse images with more pixels than Pillow's limit, or an absurd aspect ratio."""
    short, long = sorted((img.width, img.height))
    if long > MAX_ASPECT_RATIO * max(short, 1):
        raise ImageError(path, f"a {img.width}x{img.height} image has an aspect ratio beyond "
                               f"1:{MAX_ASPECT_RATIO}; refused (resized for the model it would be "
                               f"absurdly large)")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise ImageError(path, f"too large, refused as a possible decompression bomb "
                               f"({img.width}x{img.height} = {img.width * img.height:,} pixels, "
                               f"more than PIL.Image.MAX_IMAGE_PIXELS = {int(limit):,})")


def open_image(source) -> Image.Image:
    """Decode ``source`` (a path or an already open PIL image) into an 8-bit RGB PIL image
    with the EXIF orientation applied. Raises :class:`ImageError`."""
    if isinstance(source, Image.Image):
        _bomb_check(source, None)
        return to_rgb(_upright(source))
    if isinstance(source, np.ndarray):
        return to_rgb(_from_array(source))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image: expected a path, a PIL image or a uint8 array, "
                        f"got {type(source).__name__}")
    path = os.fspath(source)
    try:
        f, size = open_regular(path, _files.MAX_IMAGE_BYTES)  # a FIFO or device is refused, never waited on
    except FileProblem as problem:
        raise ImageError(path, _FILE_PROBLEMS.get(problem.reason, problem.reason)) from None
    with f:
        if size == 0:
            raise ImageError(path, "empty file")
        try:
            with Image.open(f) as img:
                _bomb_check(img, path)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated: the first frame
                img.load()
                return to_rgb(_upright(img))
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(path, "out of memory while decoding") from None
        except Exception as exc:  # Pillow raises many types for corrupt data (OSError, ValueError, SyntaxError, ...)
            raise ImageError(path, _describe(exc)) from exc


_FILE_PROBLEMS = {"not found": "no such file", "is a directory, not a file": "is a directory"}


def _from_array(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(None, f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); "
                               f"got {a.dtype} {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(a))
    _bomb_check(img, None)
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; broken EXIF data is ignored rather than fatal."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_8bit(a: np.ndarray, scale: float) -> Image.Image:
    return Image.fromarray(np.clip(a * (255.0 / scale) + 0.5, 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit ``RGB``: alpha over white, 16/32-bit integers read on the 16-bit
    scale, floats on [0, 1]; out-of-range values are clipped (the scale never depends on the
    data)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):  # 16-bit grayscale (PNG, TIFF, PGM)
        img = _to_8bit(np.asarray(img, dtype=np.float64), 65535.0)
    elif mode == "I":  # 32-bit signed; in practice 16-bit data widened by the decoder (PGM)
        img = _to_8bit(np.asarray(img, dtype=np.float64), 65535.0)  # a fixed scale, clipped
    elif mode == "F":  # [0, 1] as torchvision's to_tensor gives floats; outside it is clipped
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        img = _to_8bit(a, 1.0)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return img.convert("RGB")
    except Exception as exc:
        raise ImageError(getattr(img, "filename", None) or None,
                         f"unsupported image mode {img.mode!r} ({exc})") from exc


# ----------------------------------------------------------------------------- geometry

def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` rule: the shorter side becomes ``size``, the longer one
    ``int(size * long / short)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop) -> tuple[int, int, int, int]:
    """torchvision's ``CenterCrop`` box ``(left, top, right, bottom)`` (``round`` as Python's);
    ``crop`` is a size or ``(height, width)``."""
    ch, cw = crop_size(crop)
    top = int(round((height - ch) / 2.0))
    left = int(round((width - cw) / 2.0))
    return left, top, left + cw, top + ch


def preprocess_image(img: Image.Image, preprocess: dict, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB PIL image -> float32 ``(3, crop, crop)`` (or ``(3, height, width)`` for a crop
    ``(height, width)``) per ``preprocess``; writes into ``out`` when given."""
    resize, crop = preprocess.get("resize"), preprocess.get("crop")
    if resize and crop:
        size = resized_size(img.width, img.height, int(resize))
        ch, cw = crop_size(crop)
        if size[0] >= cw and size[1] >= ch and size[0] * size[1] > _BOX_RESIZE_AREA * ch * cw:
            # a long strip: resample just the centre crop's part of the source (the same filter,
            # scale and sample positions as resize-then-crop, up to float rounding: +-1 level)
            left, top, right, bottom = center_crop_box(size[0], size[1], crop)
            sx, sy = img.width / size[0], img.height / size[1]
            img = img.resize((cw, ch), Image.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy))
            resize = None
    if resize:
        size = resized_size(img.width, img.height, int(resize))
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
    if crop:
        ch, cw = crop_size(crop)
        if img.width < cw or img.height < ch:  # torchvision pads with 0
            padded = Image.new("RGB", (max(cw, img.width), max(ch, img.height)))
            padded.paste(img, ((padded.width - img.width) // 2, (padded.height - img.height) // 2))
            img = padded
        box = center_crop_box(img.width, img.height, crop)
        if box != (0, 0, img.width, img.height):
            img = img.crop(box)
    pixels = np.asarray(img)  # (H, W, 3) uint8
    lut = _cached_lut(preprocess["mean"], preprocess["std"], preprocess.get("pixel_max", 1.0))
    bgr = preprocess.get("channel_order", "RGB") == "BGR"
    if out is None:
        out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
    for c in range(3):  # output channel c; mean[c] and std[c] are in the output's order
        np.take(lut[c], pixels[:, :, 2 - c if bgr else c], out=out[c])
    return out


# ----------------------------------------------------------------------------- public API

def load_image(image, variant="torchvision") -> np.ndarray:
    """One image -> float32 ``(3, H, W)``, preprocessed for a model.

    ``image``: a path, a PIL image or a uint8 array ``(H, W[, 3|4])``. ``variant``: a variant
    name (``"torchvision"`` -> 224x224, ``"original"`` -> 227x227), a model, or a preprocess
    dict like ``model.preprocess``. Raises :class:`ImageError` when the image cannot be read.
    """
    preprocess = get_preprocess(variant)
    return preprocess_image(open_image(image), preprocess)


def load_images(images, variant="torchvision") -> np.ndarray:
    """Several images -> float32 ``(N, 3, H, W)``; see :func:`load_image`. The first image that
    cannot be read raises :class:`ImageError` (``fastalex.classify`` reports and skips instead)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    preprocess = get_preprocess(variant)
    arrays = [preprocess_image(open_image(image), preprocess) for image in images]
    if not arrays:
        ch, cw = crop_size(preprocess.get("crop") or 0)
        return np.empty((0, 3, ch, cw), dtype=np.float32)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"load_images: the images have different sizes {sorted(shapes)}; "
                         f"use a preprocess with a crop")
    return np.stack(arrays)


def is_image_file(path) -> bool:
    """Whether ``path``'s extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
