"""fastalex.images: torchvision's eval preprocessing, checked against hand-computed expectations,
plus every image mode, EXIF orientation, animated GIFs, bad files and the decompression-bomb limit."""

import numpy as np
import pytest
from PIL import Image

from fastalex import ImageError, load_image, load_images
from fastalex.images import center_crop_box, get_preprocess, open_image, resized_size, to_rgb
from fastalex.images import IMAGENET_MEAN, IMAGENET_STD

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def expected_pixel(rgb):
    """ToTensor + Normalize of one 8-bit RGB pixel, in float32 as torchvision computes it."""
    return (np.asarray(rgb, dtype=np.float32) / np.float32(255) - MEAN) / STD


def assert_pixel(out, rgb, where=(slice(None), slice(None))):
    want = expected_pixel(rgb)
    for c in range(3):
        np.testing.assert_array_equal(out[c][where], np.full_like(out[c][where], want[c]))


# ----------------------------------------------------------------------------- preprocessing math

@pytest.mark.parametrize("variant, crop", [("torchvision", 224), ("original", 227)])
def test_constant_colour_gives_exact_normalized_values(variant, crop):
    out = load_image(Image.new("RGB", (500, 375), (10, 200, 31)), variant=variant)
    assert out.shape == (3, crop, crop) and out.dtype == np.float32 and out.flags.c_contiguous
    assert_pixel(out, (10, 200, 31))


def test_every_byte_value_maps_like_totensor_normalize():
    a = np.arange(256 * 256 * 3, dtype=np.int64).reshape(256, 256, 3) % 256
    out = load_image(a.astype(np.uint8), variant={"resize": None, "crop": None, "mean": MEAN, "std": STD})
    want = ((a.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_array_equal(out, want)


def test_resize_rule_is_torchvisions():
    assert resized_size(500, 375, 256) == (341, 256)  # int(256 * 500 / 375) = int(341.33)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(300, 300, 256) == (256, 256)
    assert resized_size(10, 10, 256) == (256, 256)  # small images are upscaled
    assert resized_size(1000, 3, 256) == (85333, 256)


def test_center_crop_uses_pythons_round():
    assert center_crop_box(256, 301, 224) == (16, 38, 240, 262)  # round(38.5) == 38 (half to even)
    assert center_crop_box(256, 303, 224) == (16, 40, 240, 264)  # round(39.5) == 40
    assert center_crop_box(341, 256, 227) == (57, 14, 284, 241)


@pytest.mark.parametrize("height", [301, 303])
def test_crop_position_on_a_coordinate_image(height):
    # R = column, G = row (mod 256): with the short side already 256 there is no resampling,
    # so the output shows exactly which window was cropped.
    ys, xs = np.mgrid[0:height, 0:256]
    a = np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    out = load_image(a, variant="torchvision")
    left, top = 16, int(round((height - 224) / 2.0))
    cols = (np.arange(224) + left) % 256
    rows = (np.arange(224) + top) % 256
    lut = expected_pixel(np.stack([np.arange(256)] * 3, axis=-1))  # (256, 3)
    np.testing.assert_array_equal(out[0], np.broadcast_to(lut[cols, 0], (224, 224)))
    np.testing.assert_array_equal(out[1], np.broadcast_to(lut[rows, 1][:, None], (224, 224)))


def test_matches_pillow_bilinear_resize_then_crop():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    small = img.resize((341, 256), Image.BILINEAR)  # torchvision's Resize(256) on a PIL image
    left, top = int(round((341 - 224) / 2.0)), int(round((256 - 224) / 2.0))
    pixels = np.asarray(small)[top:top + 224, left:left + 224].astype(np.float32)
    want = ((pixels / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_array_equal(load_image(img), want)


def test_agrees_with_torch_normalize_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    small = img.resize(resized_size(260, 300, 256), Image.BILINEAR)
    box = center_crop_box(*small.size, 224)
    t = torch.from_numpy(np.asarray(small.crop(box)).copy()).permute(2, 0, 1).float().div(255)
    t = (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    np.testing.assert_allclose(load_image(img), t.numpy(), rtol=0, atol=1e-6)


def test_variant_model_and_dict_are_accepted():
    assert get_preprocess("original")["crop"] == 227

    class FakeModel:
        preprocess = {"resize": 64, "crop": 32, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    img = Image.new("RGB", (80, 60), (1, 2, 3))
    assert load_image(img, variant=FakeModel()).shape == (3, 32, 32)
    assert load_image(img, variant=FakeModel.preprocess).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown variant"):
        load_image(img, variant="vgg")
    with pytest.raises(TypeError):
        load_image(img, variant=3)
    with pytest.raises(TypeError):
        load_image(42)


# ----------------------------------------------------------------------------- modes

def test_grayscale_and_bilevel():
    assert_pixel(load_image(Image.new("L", (300, 300), 77)), (77, 77, 77))
    assert_pixel(load_image(Image.new("1", (300, 300), 1)), (255, 255, 255))


def test_rgba_is_composited_on_white():
    out = load_image(Image.new("RGBA", (256, 256), (255, 0, 0, 0)))  # fully transparent red
    assert_pixel(out, (255, 255, 255))
    out = load_image(Image.new("RGBA", (256, 256), (0, 0, 0, 255)))  # opaque black
    assert_pixel(out, (0, 0, 0))
    rgb = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))  # half-transparent black -> mid grey
    assert rgb.mode == "RGB" and abs(int(rgb.getpixel((0, 0))[0]) - 127) <= 1


def test_la_and_palette_with_transparency(tmp_path):
    assert_pixel(load_image(Image.new("LA", (256, 256), (0, 0))), (255, 255, 255))
    p = Image.new("P", (256, 256), 0)
    p.putpalette([0, 255, 0] + [0, 0, 255] * 255)
    p.paste(1, (0, 128, 256, 256))  # bottom half: index 1 (blue), top half: index 0 (green)
    p.info["transparency"] = 0  # ... and index 0 is transparent
    path = tmp_path / "palette.png"
    p.save(path, transparency=0)
    out = load_image(path, variant={"resize": None, "crop": None, "mean": MEAN, "std": STD})
    assert_pixel(out, (255, 255, 255), (slice(0, 128), slice(None)))
    assert_pixel(out, (0, 0, 255), (slice(128, 256), slice(None)))


def test_16_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    img = Image.open(path)
    assert img.mode.startswith("I;16")
    rgb = np.asarray(open_image(path))[0, :, 0]
    np.testing.assert_array_equal(rgb, [0, 4, 128, 255])  # v / 257, rounded


def test_32_bit_int_and_float_modes():
    i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert i.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(i))[0, :, 0], [0, 255])
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert f.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_rgb(f))[0, :, 0], [0, 128, 255, 0])


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (300, 300), (0, 0, 0, 0)).save(path, quality=100)
    out = load_image(path)
    assert np.abs(out - expected_pixel((255, 255, 255))[:, None, None]).max() < 0.05


def test_tiny_image_is_upscaled():
    assert_pixel(load_image(Image.new("RGB", (10, 10), (9, 99, 199))), (9, 99, 199))


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 48), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert_pixel(load_image(path), (255, 0, 0))


# ----------------------------------------------------------------------------- EXIF orientation

def _exif_image(tmp_path, orientation):
    """40 wide x 20 high: left half red, right half blue, saved with an EXIF orientation."""
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.png"  # PNG: lossless, so colours are exact
    Image.fromarray(a).save(path, exif=exif)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = _exif_image(tmp_path, 6)  # "rotate 90 clockwise to display": the left half goes on top
    img = open_image(path)
    assert img.size == (20, 40)
    assert img.getpixel((10, 5)) == (255, 0, 0) and img.getpixel((10, 35)) == (0, 0, 255)
    out = load_image(path)  # resized to 256x512, centre crop rows 144..368 straddle the middle row 256
    assert_pixel(out, (255, 0, 0), (slice(0, 100), slice(None)))
    assert_pixel(out, (0, 0, 255), (slice(124, 224), slice(None)))


def test_exif_orientation_on_a_jpeg(tmp_path):
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 counter-clockwise to display: the left half goes to the bottom
    path = tmp_path / "photo.JPG"
    Image.fromarray(a).save(path, exif=exif, quality=95)
    img = open_image(path)
    assert img.size == (20, 40)
    assert img.getpixel((10, 35))[0] > 200 and img.getpixel((10, 5))[0] < 50


def test_upright_image_is_unchanged(tmp_path):
    img = open_image(_exif_image(tmp_path, 1))
    assert img.size == (40, 20) and img.getpixel((5, 10)) == (255, 0, 0)


# ----------------------------------------------------------------------------- failures

def _jpeg_bytes():
    import io
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name, content, reason", [
    ("missing.jpg", None, "no such file"),
    ("text.jpg", b"this is not an image\n", "not an image"),
    ("empty.png", b"", "empty file"),
    ("truncated.jpg", "truncated", "truncated"),
])
def test_bad_files_raise_image_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if content == "truncated":
        data = _jpeg_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("size", [(12, 12), (20, 20)])  # 144 px: Pillow only warns; 400 px: Pillow raises
def test_decompression_bomb_limit_is_a_clear_error(tmp_path, monkeypatch, size):
    path = tmp_path / "bomb.png"
    Image.new("RGB", size).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning) if size == (12, 12) else _nothing():
        with pytest.raises(ImageError, match="decompression bomb") as info:
            load_image(path)
    assert str(path) in str(info.value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bad_arrays():
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((10, 10, 2), dtype=np.uint8))
    assert load_image(np.zeros((10, 10, 1), dtype=np.uint8)).shape == (3, 224, 224)


# ----------------------------------------------------------------------------- batches

def test_load_images_stacks_and_raises_on_the_first_bad_file(tmp_path):
    good = tmp_path / "a.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(good)
    batch = load_images([good, Image.new("L", (50, 50), 9)], variant="original")
    assert batch.shape == (2, 3, 227, 227) and batch.dtype == np.float32
    assert_pixel(batch[0], (1, 2, 3))
    assert load_images([]).shape == (0, 3, 224, 224)
    assert load_images(good).shape == (1, 3, 224, 224)
    with pytest.raises(ImageError, match="nope.jpg"):
        load_images([good, tmp_path / "nope.jpg"])
