"""fastalex.models: both AlexNet variants, counts, summary, state dicts, fusion, backends."""

import numpy as np
import pytest

import fastalex
from support import assert_agree
from fastalex import layers as L
from fastalex.models import Sequential, build
from fastalex.specs import original_spec, torchvision_spec

ORIGINAL_KEYS = [f"features.{i}.{p}" for i in (0, 4, 8, 10, 12) for p in ("weight", "bias")] + \
                [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]
TORCHVISION_KEYS = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")] + \
                   [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def original():
    return fastalex.alexnet("original")


@pytest.fixture(scope="module")
def torchvision():
    return fastalex.alexnet("torchvision")


def test_parameter_counts_and_keys(original, torchvision):
    assert original.num_params == 60_965_224
    assert torchvision.num_params == 61_100_840
    assert list(original.state_dict()) == ORIGINAL_KEYS
    assert list(torchvision.state_dict()) == TORCHVISION_KEYS
    assert original.state_dict()["features.4.weight"].shape == (256, 48, 5, 5)  # groups=2
    assert torchvision.state_dict()["features.0.weight"].shape == (64, 3, 11, 11)


def test_layer_structure_matches_the_paper(original):
    f = original["features"]
    assert isinstance(f[2], L.LocalResponseNorm) and (f[2].size, f[2].alpha, f[2].beta, f[2].k) == (5, 1e-4, 0.75, 2.0)
    assert [f[i].groups for i in (0, 4, 8, 10, 12)] == [1, 2, 1, 2, 2]
    assert all(isinstance(f[i], L.MaxPool2D) and f[i].kernel_size == (3, 3) and f[i].stride == (2, 2)
               for i in (3, 7, 14))
    assert [type(layer).__name__ for layer in original["classifier"]] == \
        ["Dropout", "Dense", "ReLU", "Dropout", "Dense", "ReLU", "Dense"]


def test_num_classes_changes_only_the_last_layer():
    m = fastalex.alexnet("original", num_classes=10)
    assert m.num_classes == 10 and m.num_params == 60_965_224 - 4096 * 990 - 990
    assert m.state_dict()["classifier.6.weight"].shape == (10, 4096)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        fastalex.alexnet(num_classes=0)
    with pytest.raises(ValueError, match=r"unknown variant 'vgg'; valid variants are 'original', 'torchvision'"):
        fastalex.alexnet("vgg")


def test_summary_rows_and_totals(original, torchvision):
    rows = original.layer_table()
    shapes = [r["output_shape"] for r in rows if r["type"] in ("Conv2D", "MaxPool2D")]
    assert [s[-1] for s in shapes] == [55, 27, 27, 13, 13, 13, 13, 6]
    conv1 = rows[0]
    assert conv1["params"] == 96 * 3 * 11 * 11 + 96 and conv1["macs"] == 96 * 55 * 55 * 363
    text = original.summary()
    assert "Total params: 60,965,224" in text and "features.4" in text and "(256, 27, 27)" in text
    total_macs = sum(r["macs"] for r in rows)
    assert f"Total MACs:   {total_macs:,}" in text
    # torchvision counts AlexNet at 0.71 GFLOPS (its MACs of conv and dense layers)
    tv_macs = sum(r["macs"] for r in torchvision.layer_table())
    assert tv_macs == 714_188_480
    assert "Total params: 61,100,840" in torchvision.summary()


def test_forward_shapes_and_single_image(backend):
    m = fastalex.alexnet("original", num_classes=7, backend=backend)
    x = np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32)
    y = m(x)
    assert y.shape == (2, 7) and y.dtype == np.float32
    assert_agree(m(x[1]), y[1])
    probs, idx = m.predict(x, top=3)
    assert probs.shape == idx.shape == (2, 3)
    assert (np.diff(probs, axis=1) <= 0).all()
    full = fastalex.functional.softmax(y)
    np.testing.assert_allclose(probs, np.take_along_axis(full, idx, axis=1))


def test_torchvision_accepts_any_size_from_63(torchvision):
    small = fastalex.alexnet("torchvision", num_classes=3)
    assert small(np.zeros((1, 3, 63, 63), np.float32)).shape == (1, 3)
    assert small(np.zeros((1, 3, 100, 80), np.float32)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"torchvision AlexNet: input of shape \(1, 3, 62, 62\) does not fit"):
        small(np.zeros((1, 3, 62, 62), np.float32))
    with pytest.raises(ValueError, match="must have 3 channels"):
        small(np.zeros((1, 1, 224, 224), np.float32))


def test_backends_agree_on_the_whole_model():
    m = fastalex.alexnet("original", seed=3)
    x = np.random.default_rng(3).standard_normal((1, 3, 227, 227)).astype(np.float32)
    m.backend = "numpy"
    ref = m(x)
    m.backend = "numba"
    assert all(layer.backend == "numba" for _, layer in m.named_layers())
    assert_agree(m(x), ref)
    with pytest.raises(ValueError, match="valid backends"):
        m.backend = "gpu"


def test_fused_conv_relu_equals_running_them_apart():
    conv = L.Conv2D(3, 4, 3, rng=1)
    seq = Sequential([("0", conv), ("1", L.ReLU())])
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert len(seq._plan()) == 1  # fused into one step
    assert seq._plan() is seq._plan()  # planned once, not on every call
    np.testing.assert_allclose(seq(x), np.maximum(conv(x), 0), atol=1e-6)
    assert conv.activation is None  # the layer itself is unchanged


def _three_layers():
    return L.Conv2D(3, 4, 3, rng=1), L.ReLU(), L.MaxPool2D(2)


@pytest.mark.parametrize("form", ["list", "varargs", "pairs", "dict", "mixed"])
def test_sequential_accepts_plain_layers_pairs_and_dicts(form, backend):
    conv, relu, pool = _three_layers()
    seq = {"list": lambda: Sequential([conv, relu, pool]),
           "varargs": lambda: Sequential(conv, relu, pool),
           "pairs": lambda: Sequential([("0", conv), ("1", relu), ("2", pool)]),
           "dict": lambda: Sequential({"0": conv, "1": relu, "2": pool}),
           "mixed": lambda: Sequential([conv, ("1", relu), pool])}[form]()
    seq.backend = backend
    assert [name for name, _ in seq.named_layers()] == ["0", "1", "2"]  # torch's names
    assert list(seq.state_dict()) == ["0.weight", "0.bias"]
    assert seq[0] is conv and seq["2"] is pool and len(seq) == 3
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_agree(seq(x), pool(relu(conv(x))), form)
    assert seq.output_shape((3, 8, 8)) == (4, 3, 3)


def test_sequential_nested_plain_layers():
    inner = Sequential(L.Conv2D(3, 4, 3, rng=1), L.ReLU())
    outer = Sequential([inner, L.Flatten()])
    assert [name for name, _ in outer.named_layers()] == ["0.0", "0.1", "1"]


@pytest.mark.parametrize("children, error, pattern", [
    ([L.ReLU(), "relu"], TypeError, r"Sequential: child 1 must be a layer or a \(name, layer\) pair, got 'relu'"),
    ([("a", L.ReLU()), ("a", L.ReLU())], ValueError, r"Sequential: child 1 has name 'a'; names must be unique"),
    ([("a.b", L.ReLU())], ValueError, r"child 0 has name 'a.b'"),
    ([("x", "relu")], TypeError, r"child 0 must be a layer"),
])
def test_sequential_rejects_what_is_not_a_layer(children, error, pattern):
    with pytest.raises(error, match=pattern):
        Sequential(children)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("variant", ["original", "torchvision"])
def test_extract_returns_named_outputs_and_matches_the_forward(variant, backend):
    m = fastalex.alexnet(variant, seed=4, backend=backend)
    x = np.random.default_rng(4).standard_normal((2, *m.input_shape)).astype(np.float32)
    pool5 = "features.14" if variant == "original" else "features.12"
    out = m.extract(x, ["fc7", "features.0", "features.1", "pool5", "logits", "fc6", "features"])
    assert list(out) == ["fc7", "features.0", "features.1", "pool5", "logits", "fc6", "features"]
    assert_agree(out["logits"], m(x))
    assert out["fc7"].shape == out["fc6"].shape == (2, 4096)
    assert (out["fc6"] >= 0).all() and (out["fc7"] >= 0).all()  # after their ReLU, as in Caffe
    # the conv's own output is kept apart from its fused ReLU
    assert (out["features.0"] < 0).any()
    np.testing.assert_array_equal(out["features.1"], np.maximum(out["features.0"], 0))
    np.testing.assert_array_equal(out["pool5"], out["features"])
    assert out["pool5"].shape == (2, 256, 6, 6)
    assert m.resolve_layer("pool5") == pool5
    # a single image without a batch axis
    single = m.extract(x[1], "fc7")["fc7"]
    assert single.shape == (4096,)
    assert_agree(single, out["fc7"][1])


def test_extract_stops_after_the_deepest_layer_asked_for():
    m = fastalex.alexnet("torchvision", seed=0, backend="numpy")
    calls = []
    for name, layer in m.named_layers():
        layer.forward = (lambda f, n: (lambda *a, **k: (calls.append(n), f(*a, **k))[1]))(layer.forward, name)
    x = np.zeros((1, *m.input_shape), np.float32)
    m.extract(x, ["features.4", "features.0"])
    assert calls[-1] == "features.3"  # conv2 runs fused with its ReLU features.4; nothing after
    assert "features.5" not in calls and "classifier.6" not in calls


def test_extract_errors_name_the_layer():
    m = fastalex.alexnet("original", seed=0, backend="numpy")
    x = np.zeros((1, *m.input_shape), np.float32)
    with pytest.raises(ValueError, match="unknown layer 'fc9'.*fc7.*features.0"):
        m.extract(x, ["fc9"])
    with pytest.raises(ValueError, match="at least one"):
        m.extract(x, [])
    with pytest.raises(TypeError, match="strings"):
        m.extract(x, [3])


def test_state_dict_round_trip_and_strict_errors():
    a, b = fastalex.alexnet("torchvision", seed=1), fastalex.alexnet("torchvision", seed=2)
    result = b.load_state_dict(a.state_dict())
    assert result == ([], [], [])
    np.testing.assert_array_equal(b.state_dict()["classifier.6.bias"], a.state_dict()["classifier.6.bias"])
    sd = dict(a.state_dict())
    del sd["features.0.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["features.3.weight"] = np.zeros((1, 2))
    before = b.state_dict()["features.6.weight"].copy()
    with pytest.raises(ValueError) as err:
        b.load_state_dict({**sd, "features.6.weight": sd["features.6.weight"] + 1})
    msg = str(err.value)
    assert "missing keys: features.0.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "features.3.weight expects (192, 64, 5, 5) but got (1, 2)" in msg
    np.testing.assert_array_equal(b.state_dict()["features.6.weight"], before)  # nothing changed
    report = b.load_state_dict({**sd, "features.6.weight": sd["features.6.weight"] + 1}, strict=False)
    assert report.missing_keys == ["features.0.bias"] and report.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(b.state_dict()["features.6.weight"], before + 1)


def test_state_dict_with_nan_is_rejected():
    m = fastalex.alexnet("torchvision", num_classes=2)
    sd = dict(m.state_dict())
    sd["classifier.6.bias"] = np.array([0.0, np.nan], np.float32)
    with pytest.raises(ValueError, match="classifier.6.bias contains NaN/inf"):
        m.load_state_dict(sd)


def test_a_new_variant_is_a_new_spec():
    spec = original_spec(num_classes=5)
    spec["layers"][0] = ("features", [("Conv2D", dict(in_channels=3, out_channels=8, kernel_size=11, stride=4)),
                                      ("ReLU", {}), ("MaxPool2D", dict(kernel_size=3, stride=2))])
    spec["layers"][2] = ("classifier", [("Dense", dict(in_features=8 * 27 * 27, out_features=5))])
    m = build(spec)
    assert m(np.zeros((1, 3, 227, 227), np.float32)).shape == (1, 5)
    assert list(m.state_dict()) == ["features.0.weight", "features.0.bias", "classifier.0.weight", "classifier.0.bias"]
    bad = torchvision_spec()
    bad["layers"][1] = ("avgpool", ("Mystery", {}))
    with pytest.raises(ValueError, match="unknown layer type 'Mystery'"):
        build(bad)


def test_loading_weights_skips_the_random_init(tmp_path):
    source = fastalex.alexnet("torchvision", num_classes=4, seed=5)
    path = tmp_path / "w.npz"
    fastalex.save_weights(source, path)
    loaded = fastalex.alexnet("torchvision", num_classes=4, weights=str(path), seed=123)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    placeholder = fastalex.build(torchvision_spec(4), seed=None)  # what alexnet() builds before loading
    assert not placeholder.state_dict()["classifier.1.weight"].any()
