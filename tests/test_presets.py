"""Preprocessing presets (``torchvision``, ``caffe``) and the ``channel_order``/``pixel_max``
keys of a preprocess dict, which let one pipeline serve models that carry no preprocessing."""

import numpy as np
import pytest

import fastalex
from fastalex.images import PRESETS, get_preprocess, preprocess_preset

RNG = np.random.default_rng(11)


def test_caffe_preset_is_bgr_0_255_minus_the_mean():
    pixels = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    prep = {k: v for k, v in preprocess_preset("caffe").items() if k not in ("resize", "crop")}
    x = fastalex.load_image(pixels, prep)
    expected = pixels[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - np.float32([104, 117, 123])[:, None, None]
    np.testing.assert_array_equal(x, expected)


def test_torchvision_preset_is_the_torchvision_variants_preprocessing():
    pixels = RNG.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fastalex.load_image(pixels, preprocess_preset("torchvision", 224)),
                                  fastalex.load_image(pixels, "torchvision"))
    assert get_preprocess("caffe")["crop"] == 224


def test_pixel_max_scales_and_bgr_keeps_the_mean_in_output_order():
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    x = fastalex.load_image(pixels, {"mean": (1.0, 2.0, 3.0), "std": (1.0, 1.0, 2.0), "pixel_max": 2.0,
                                     "channel_order": "BGR"})
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, -2.0, (2.0 - 3.0) / 2.0])  # blue, green, red


def test_preset_sizes_and_errors():
    assert preprocess_preset("caffe", 227)["resize"] == 256 and preprocess_preset("caffe", 227)["crop"] == 227
    assert preprocess_preset("torchvision", 112)["resize"] == 128
    with pytest.raises(ValueError, match="'torchvision', 'caffe'"):
        preprocess_preset("opencv")
    with pytest.raises(ValueError, match="presets: 'torchvision', 'caffe'"):
        get_preprocess("opencv")
    with pytest.raises(ValueError, match="channel_order"):
        get_preprocess({"mean": (0, 0, 0), "std": (1, 1, 1), "channel_order": "GBR"})
    assert set(PRESETS) == {"torchvision", "caffe"}


def test_cli_preprocess_option_changes_what_the_model_sees(tmp_path, capsys, monkeypatch):
    import json

    from PIL import Image

    from fastalex import cli
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    path = tmp_path / "half.png"
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :32] = (240, 10, 10)
    Image.fromarray(pixels).save(path)
    top = {}
    for preset in (None, "torchvision", "caffe"):
        args = ["classify", str(path), "--random-weights", "--json", "--backend", "numpy"]
        assert cli.main(args + (["--preprocess", preset] if preset else [])) == 0
        top[preset] = json.loads(capsys.readouterr().out)["top"]
    assert top[None] == top["torchvision"] and top["caffe"] != top["torchvision"]
