"""fastalex.classify and fastalex.labels, with a tiny model so the pipeline is what is tested."""

import json
import time

import numpy as np
import pytest
from PIL import Image

import fastalex
from fastalex.classify import Prediction, expand_inputs, iter_classify
from fastalex.labels import LabelsError, imagenet_labels, load_labels
from fastalex.images import IMAGENET_MEAN, IMAGENET_STD
from fastalex.models import build


def tiny_spec(num_classes):
    return {
        "variant": "tiny",
        "input_shape": (3, 224, 224),
        "preprocess": {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "layers": [
            ("features", [("Conv2D", dict(in_channels=3, out_channels=4, kernel_size=11, stride=4)), ("ReLU", {})]),
            ("avgpool", ("AdaptiveAvgPool2D", dict(output_size=1))),
            ("flatten", ("Flatten", {})),
            ("classifier", [("Dense", dict(in_features=4, out_features=num_classes))]),
        ],
    }


@pytest.fixture(scope="module")
def model():
    return build(tiny_spec(10), seed=0, backend="numpy")


@pytest.fixture(scope="module")
def model1000():
    return build(tiny_spec(1000), seed=0, backend="numpy")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", ".hidden/e.jpg", "sub/.f.jpg"]:
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "broken.jpg").write_text("not an image either")
    return tmp_path


def test_folders_are_walked_recursively_sorted_by_extension(folder):
    paths = [item.path for item in expand_inputs(folder)]
    rel = [p[len(str(folder)) + 1:] for p in paths]
    assert rel == ["a.PNG", "b.jpg", "sub/broken.jpg", "sub/c.JpEg", "sub/deeper/d.webp"]


def test_bad_inputs_are_reported_and_the_rest_classified(folder, model):
    missing = folder / "missing.jpg"
    results = fastalex.classify([folder, missing, folder / "notes.txt"], model=model, top=3, batch_size=2)
    assert [r.input for r in results] == list(range(len(results)))
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in results}
    assert by_name["missing.jpg"].error == "no such file or directory"
    assert "not an image" in by_name["broken.jpg"].error
    assert "not an image" in by_name["notes.txt"].error  # a file named explicitly is tried
    good = [r for r in results if r.ok]
    assert len(good) == 4
    for r in good:
        assert len(r.indices) == 3 and r.labels == [None] * 3  # 10 classes: no names
        assert r.probabilities == sorted(r.probabilities, reverse=True)
        assert all(0 <= i < 10 for i in r.indices)
    d = good[0].to_dict()
    assert set(d) == {"path", "top"} and set(d["top"][0]) == {"index", "label", "probability"}
    json.dumps(d)
    assert by_name["missing.jpg"].to_dict() == {"path": str(missing), "error": "no such file or directory"}


def test_results_match_a_direct_forward_pass(folder, model):
    files = sorted(str(p) for p in folder.glob("*.*") if p.suffix.lower() in (".jpg", ".png"))
    x = fastalex.load_images(files, variant=model)
    probs, idx = model.predict(x, top=4)
    for prefetch in (True, False):
        results = list(iter_classify(files, model=model, top=4, batch_size=1, prefetch=prefetch))
        for r, p, i in zip(results, probs, idx):
            assert r.indices == i.tolist()
            np.testing.assert_allclose(r.probabilities, p, rtol=1e-6)


def test_in_memory_inputs(model):
    img = Image.new("RGB", (50, 40), (200, 10, 10))
    arr = np.full((40, 50, 3), 7, dtype=np.uint8)
    pre = fastalex.load_image(img)
    results = fastalex.classify([img, arr, pre, np.stack([pre, pre]), np.zeros((3, 5), np.float32)],
                                model=model, top=2)
    assert [r.path for r in results] == [None] * 6
    assert [r.ok for r in results] == [True, True, True, True, True, False]
    assert results[0].indices == results[2].indices == results[3].indices
    assert "(3, H, W)" in results[5].error
    assert results[0].to_dict()["input"] == 0


def test_preprocessed_arrays_of_other_sizes_run_separately_or_fail_cleanly(model):
    small = np.zeros((3, 8, 8), np.float32)  # too small for the 11x11 stride-4 convolution
    results = fastalex.classify([np.zeros((3, 224, 224), np.float32), np.zeros((3, 256, 256), np.float32), small],
                                model=model, batch_size=8)
    assert results[0].ok and results[1].ok
    assert not results[2].ok and "does not fit" in results[2].error


def test_imagenet_names_for_1000_classes_and_labels_argument(tmp_path, model, model1000):
    img = Image.new("RGB", (30, 30))
    r = fastalex.classify(img, model=model1000, top=2)[0]
    assert r.labels == [imagenet_labels()[i] for i in r.indices]
    assert fastalex.classify(img, model=model1000, labels=False)[0].labels == [None] * 5
    names = [f"thing {i}" for i in range(10)]
    r = fastalex.classify(img, model=model, labels=names)[0]
    assert r.labels == [names[i] for i in r.indices]
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n\n")
    assert fastalex.classify(img, model=model, labels=path)[0].labels == r.labels
    with pytest.raises(ValueError, match="3 labels"):
        fastalex.classify(img, model=model, labels=["a", "b", "c"])


def test_top_is_clamped_and_arguments_checked(model):
    img = Image.new("RGB", (30, 30))
    assert len(fastalex.classify(img, model=model, top=50)[0].indices) == 10
    for bad in (dict(top=0), dict(batch_size=0), dict(batch_size=1.5), dict(top=True)):
        with pytest.raises(ValueError):
            fastalex.classify(img, model=model, **bad)
    with pytest.raises(TypeError):
        fastalex.classify([3.5], model=model)
    assert fastalex.classify([], model=model) == []


def test_decoding_is_lazy_and_bounded_by_the_batch_size(folder, model, monkeypatch):
    from fastalex import pipeline as mod  # where the images are decoded
    img = folder / "a.PNG"
    decoded = []
    real = mod.preprocess_image
    monkeypatch.setattr(mod, "preprocess_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    gen = iter_classify([img] * 40, model=model, batch_size=4)
    next(gen)
    time.sleep(0.2)  # give the prefetch thread time to run ahead if it were unbounded
    assert len(decoded) <= 8  # the current batch and the prefetched one
    gen.close()
    assert len(decoded) <= 8


def test_progress_bar(model, capsys):
    fastalex.classify([Image.new("RGB", (30, 30))] * 3, model=model, progress=True)
    assert "classify" in capsys.readouterr().err


def test_prediction_dataclass():
    p = Prediction("x.jpg", 0, [3], ["cat"], [0.5])
    assert p.ok and p.top == [{"index": 3, "label": "cat", "probability": 0.5}]
    assert Prediction("y.jpg", 1, error="bad").to_dict() == {"path": "y.jpg", "error": "bad"}


# ----------------------------------------------------------------------------- labels

def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[281] == "tabby"
    assert imagenet_labels() is labels  # cached


def test_load_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog \r\nbird\n\n")
    assert load_labels(path) == ("cat", "dog", "bird")
    assert load_labels(path, num_classes=3) == ("cat", "dog", "bird")
    with pytest.raises(LabelsError, match="3 labels but the model has 4 classes"):
        load_labels(path, num_classes=4)
    with pytest.raises(LabelsError, match="does not exist"):
        load_labels(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LabelsError, match="empty"):
        load_labels(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(LabelsError, match="cannot read"):
        load_labels(tmp_path / "bin.txt")
