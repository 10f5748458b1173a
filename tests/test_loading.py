"""fastalex.load_model: the library turns weights / variant / ONNX / precision / backend into a
model, the CLI only parses (issue 20, phase 2); distributed.model_recipe makes the same choices
for Dask workers."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex import cli
from fastalex.distributed import model_recipe
from fastalex.errors import ModelChoiceError, WeightsMismatchError
from fastalex.loading import choose_model
from support.fixture_specs import FIXTURES

CAFFE = FIXTURES / "onnx" / "caffe_alexnet.onnx"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", "http://127.0.0.1:9/alexnet-owt-7be5be79.pth")  # nobody there


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A state dict file of the original AlexNet with 7 classes (zero placeholders: fast)."""
    path = tmp_path_factory.mktemp("w") / "seven.npz"
    return fastalex.save_weights(fastalex.alexnet("original", num_classes=7, seed=None), path)


def test_random_weights_need_no_file_and_no_network():
    model = fastalex.load_model(random_weights=True, variant="original", num_classes=3, backend="numpy",
                                seed=None)
    assert (model.variant, model.num_classes, model.backend) == ("original", 3, "numpy")
    default = choose_model(random_weights=True)
    assert (default.kind, default.variant, default.seed) == ("random", None, 0)


def test_a_weights_file_brings_its_variant_and_classes(seven):
    model = fastalex.load_model(seven, weight_dtype="bfloat16")
    assert (model.variant, model.num_classes, model.weight_dtype) == ("original", 7, "bfloat16")
    assert model.recipe["weights"] == os.path.abspath(seven)  # workers can load it again
    with pytest.raises(WeightsMismatchError, match="fits the 'original' AlexNet .7 classes., not the 'torchvision'"):
        fastalex.load_model(seven, variant="torchvision")
    with pytest.raises(WeightsMismatchError, match="has 7 classes, not 5"):
        fastalex.load_model(seven, num_classes=5)


def test_the_published_weights_are_checked_before_any_download():
    assert choose_model().kind == "published" and choose_model("IMAGENET1K_V1").kind == "published"
    with pytest.raises(WeightsMismatchError, match="no published ImageNet weights exist for the 'original'"):
        choose_model(variant="original")
    with pytest.raises(WeightsMismatchError, match="have 1000 classes, not 10"):
        choose_model(num_classes=10)
    with pytest.raises(fastalex.WeightsUnavailableError, match="IMAGENET1K_V1 weights are not cached and cannot be "
                                                               "downloaded"):
        fastalex.load_model()


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights="w.npz", random_weights=True), "random weights cannot be combined with the weights w.npz"),
    (dict(weights="w.npz", onnx="m.onnx"), "not both"),
    (dict(onnx="m.onnx", variant="original"), "the variant 'original' cannot be combined with an ONNX model"),
    (dict(weights="m.ONNX", variant="original"), "brings its own architecture"),
    (dict(random_weights=True, precision="bfloat16", weight_dtype="int8"), "cannot use int8 weights"),
    (dict(random_weights=True, preprocess="opencv"), "unknown preprocess preset 'opencv'"),
    (dict(random_weights=True, variant="vgg"), "unknown variant 'vgg'"),
    (dict(random_weights=True, num_classes=0), "positive int"),
    (dict(weights=3), "weights must be"),
])
def test_choices_that_do_not_go_together(kwargs, message):
    with pytest.raises(ModelChoiceError, match=message):
        fastalex.load_model(**kwargs)
    assert issubclass(ModelChoiceError, fastalex.FastalexError) and issubclass(ModelChoiceError, ValueError)


def test_an_onnx_model_by_extension_or_by_name(tmp_path):
    pytest.importorskip("onnx")
    model = fastalex.load_model(CAFFE, preprocess="caffe", backend="numpy")
    assert model.variant.startswith("onnx:") and model.preprocess["channel_order"] == "BGR"
    renamed = tmp_path / "caffe.model"
    renamed.write_bytes(CAFFE.read_bytes())
    assert fastalex.load_model(onnx=renamed).num_classes == model.num_classes
    with pytest.raises(ModelChoiceError, match=f"the ONNX model {renamed} has {model.num_classes} classes, not 5"):
        fastalex.load_model(onnx=renamed, num_classes=5)
    with pytest.raises(fastalex.OnnxError, match="^cannot use ONNX model .*missing.onnx: no such file"):
        fastalex.load_model(tmp_path / "missing.onnx")


def test_preprocess_replaces_the_models_own_cropped_to_its_input():
    model = fastalex.load_model(random_weights=True, variant="original", preprocess="caffe", seed=None)
    assert model.preprocess["crop"] == 227 and model.preprocess["channel_order"] == "BGR"


def test_the_dask_recipe_makes_the_same_choices(seven, monkeypatch):
    monkeypatch.setenv("FASTALEX_BACKEND", "numpy")
    from fastalex import backends
    monkeypatch.setattr(backends, "_default", None)
    recipe = model_recipe(random_weights=True, variant="original", num_classes=4, seed=3)
    assert (recipe["seed"], recipe["weights"], recipe["backend"]) == (3, None, "numpy")
    assert recipe["spec"]["variant"] == "original" and recipe["spec"]["layers"][-1][1][-1][1]["out_features"] == 4
    recipe = model_recipe(precision="bfloat16", preprocess="caffe")  # no download without fill_cache
    assert (recipe["weights"], recipe["precision"], recipe["preprocess"]["preset"]) == ("IMAGENET1K_V1", "bfloat16",
                                                                                        "caffe")
    recipe = model_recipe(seven, backend="numba")
    assert recipe["weights"] == os.path.abspath(seven) and recipe["backend"] == "numba"
    with pytest.raises(ModelChoiceError, match="cannot run on a Dask cluster"):
        model_recipe(CAFFE)
    with pytest.raises(fastalex.WeightsUnavailableError, match="not cached"):
        model_recipe(fill_cache=True)  # local workers share this cache: filled first
    with pytest.raises(WeightsMismatchError):
        model_recipe(seven, variant="torchvision")
    assert fastalex.distributed.skeleton(model_recipe(random_weights=True, num_classes=4)).num_classes == 4


def test_a_state_dict_model_has_no_recipe_for_workers():
    state = fastalex.alexnet("original", num_classes=3, seed=None).state_dict()
    with pytest.raises(ValueError, match="given as arrays"):
        model_recipe(state)


@pytest.mark.parametrize("args, kwargs", [
    (["--random-weights", "--precision", "bfloat16", "--weight-dtype", "int8"],
     dict(random_weights=True, precision="bfloat16", weight_dtype="int8")),
    (["--weights", "SEVEN", "--variant", "torchvision"], dict(weights="SEVEN", variant="torchvision")),
    (["--weights", "SEVEN", "--num-classes", "5"], dict(weights="SEVEN", num_classes=5)),
    (["--variant", "original"], dict(variant="original")),
    ([], {}),
])
def test_the_cli_prints_the_library_message_as_it_is(args, kwargs, seven, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    args = [str(seven) if a == "SEVEN" else a for a in args]
    kwargs = {k: (str(seven) if v == "SEVEN" else v) for k, v in kwargs.items()}
    with pytest.raises(fastalex.FastalexError) as info:
        fastalex.load_model(**kwargs)
    assert cli.main(["classify", str(img), *args]) == 2
    assert capsys.readouterr().err == f"fastalex: error: {info.value}\n"
