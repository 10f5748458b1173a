"""Files written by real ``torch.save`` (committed fixtures, see tools/make_fixtures.py) read without
torch, and the reduced AlexNets they hold reproduce torch's logits on both backends.

The checks at the end that need torch itself are skipped when it is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest

from support import assert_agree
from fastalex.models import alexnet, build
from fastalex.weights import load_weights
from support.fixture_specs import FIXTURES, REDUCED, fixture_input, reduced_spec

FORMATS = {"zip": "", "legacy": "_legacy"}


def _backend_param(name):
    """The numba backend is skipped only when its module does not exist; one that exists but
    fails to import is a failure, not a skip."""
    module = f"fastalex.backends.{'fast' if name == 'numba' else 'reference'}"
    if importlib.util.find_spec(module) is None:
        return pytest.param(name, marks=pytest.mark.skip(reason=f"{module} does not exist yet"))
    return name


BACKENDS = [_backend_param("numpy"), _backend_param("numba")]


def test_fastalex_does_not_import_torch():
    import subprocess
    code = ("import sys, fastalex, fastalex.weights; from fastalex.weights import load_weights; "
            f"load_weights({str(FIXTURES / 'tensors.pth')!r}); load_weights({str(FIXTURES / 'tensors_legacy.pth')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("variant", list(REDUCED))
def test_reduced_alexnet_matches_torch(variant, fmt, backend):
    model = build(reduced_spec(variant), backend=backend)
    result = model.load_state_dict(load_weights(FIXTURES / f"{variant}_reduced{FORMATS[fmt]}.pth"))
    assert not (result.missing_keys or result.unexpected_keys or result.mismatched)
    io = np.load(FIXTURES / f"{variant}_reduced_io.npz")
    for shape in REDUCED[variant]["inputs"]:
        tag = "x".join(map(str, shape))
        x, reference = fixture_input(io[f"q_{tag}"]), io[f"logits_{tag}"]
        assert np.abs(reference).max() > 1.0  # the fixture exercises real magnitudes
        assert_agree(model(x), reference, f"{variant} {fmt} {backend} input {tag}")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_odd_tensors(fmt):
    """f16, bf16 (with inf/nan/subnormal), f64, ints, bool, 0-d, empty, transposed, sliced,
    strided, expanded, channels-last, shared storages, nn.Parameter: as torch has them."""
    got = load_weights(FIXTURES / f"tensors{FORMATS[fmt]}.pth")
    expected = np.load(FIXTURES / "tensors_expected.npz")
    assert list(got) == list(expected.files)
    for key in expected.files:
        want, have = expected[key], got[key]
        assert have.shape == want.shape, key
        assert have.dtype == (np.float32 if want.dtype.kind == "f" else want.dtype), key
        assert have.flags.c_contiguous, key
        np.testing.assert_array_equal(have, want, err_msg=key)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_checkpoint_is_unwrapped(fmt):
    got = load_weights(FIXTURES / f"checkpoint{FORMATS[fmt]}.pth")
    assert sorted(got) == ["bias", "weight"]  # "module." stripped, optimizer state ignored
    assert got["weight"].shape == (2, 3) and got["bias"].shape == (2,)


def test_zip_and_legacy_fixtures_agree():
    for stem in ("original_reduced", "torchvision_reduced", "tensors"):
        a, b = load_weights(FIXTURES / f"{stem}.pth"), load_weights(FIXTURES / f"{stem}_legacy.pth")
        assert list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stem}: {k}")


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 4 * 2**20, f"tests/fixtures is {total / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- with torch installed

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_same_as_torch_load(fmt):
    torch = _torch()
    for stem in ("torchvision_reduced", "tensors"):
        path = FIXTURES / f"{stem}{FORMATS[fmt]}.pth"
        ours, theirs = load_weights(path), torch.load(path, weights_only=True)
        assert list(ours) == list(theirs)
        for k, v in theirs.items():
            v = v.detach()
            np.testing.assert_array_equal(ours[k], (v.float() if v.is_floating_point() else v).numpy())


def _torch_alexnet(torch):
    """torchvision's AlexNet architecture (torchvision itself is not installed)."""
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return AlexNet


@pytest.fixture(scope="module")
def full_torch_model():
    torch = _torch()
    torch.manual_seed(0)
    model = _torch_alexnet(torch)().eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    x = torch.from_numpy(np.random.default_rng(1).uniform(-2, 2, (2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        logits = model(x).numpy()
    return model, x.numpy(), logits


@pytest.mark.parametrize("fmt,backend", [("zip", "numpy"), ("legacy", BACKENDS[1])])
def test_full_size_torchvision_alexnet_from_torch_save(tmp_path, fmt, backend, full_torch_model):
    torch = _torch()
    model, x, logits = full_torch_model
    path = tmp_path / "alexnet.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=(fmt == "zip"))
    ours = alexnet("torchvision", weights=path, backend=backend)
    assert_agree(ours(x), logits, f"full-size torchvision AlexNet, {fmt} format, {backend}")
