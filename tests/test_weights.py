"""Weights files: .npz round trips, state-dict loading rules, the torch reader's safety and its
errors on damaged files. Runs without torch (crafted torch files come from fixture_specs)."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import struct
import subprocess
import zipfile

import numpy as np
import pytest

import fastalex
from fastalex.models import alexnet, build
from fastalex.hub import resolve_weights
from fastalex.weights import UnsafePickleError, WeightsFileError, load_weights, save_weights
from support.fixture_specs import (FIXTURES, LEGACY_MAGIC, Global, Storage, StorageSlice, Tensor, reduced_spec,
                           write_torch_file)


@pytest.fixture(scope="module")
def small_model():
    return build(reduced_spec("torchvision"), seed=3, backend="numpy")


def _same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- npz

def test_npz_round_trip(tmp_path, small_model):
    path = save_weights(small_model, tmp_path / "w.npz")
    assert path == tmp_path / "w.npz"
    loaded = load_weights(path)
    _same_state(small_model.state_dict(), loaded)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in loaded.values())
    other = build(reduced_spec("torchvision"), seed=99, backend="numpy")
    other.load_state_dict(loaded)
    _same_state(small_model.state_dict(), other.state_dict())
    assert os.listdir(tmp_path) == ["w.npz"]  # no temp file left behind


def test_save_state_dict_converts_and_keeps_the_name(tmp_path):
    sd = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.float16([1.5]), "n": np.int64(4)}
    path = save_weights(sd, tmp_path / "weights.bin")  # no suffix appended; format is by content
    assert path.name == "weights.bin"
    loaded = load_weights(str(path))
    assert loaded["a"].dtype == np.float32 and np.array_equal(loaded["a"], sd["a"])
    assert loaded["b"].dtype == np.float32 and loaded["n"] == 4


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "w.npz"
    save_weights({"a": np.zeros(3)}, path)
    save_weights({"a": np.ones(3)}, path)
    assert np.array_equal(load_weights(path)["a"], np.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="model or a state dict"):
        save_weights([1, 2], tmp_path / "x.npz")
    with pytest.raises(TypeError, match="keys must be"):
        save_weights({1: np.zeros(2)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="numeric"):
        save_weights({"a": np.array(["x"])}, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_top_level_exports():
    assert fastalex.save_weights is save_weights and fastalex.load_weights is load_weights


# ----------------------------------------------------------------------------- load_state_dict rules

def test_strict_lists_every_problem_in_one_error(small_model):
    sd = {k: v.copy() for k, v in small_model.state_dict().items()}
    del sd["features.0.bias"]
    sd["features.99.weight"] = np.zeros(3, np.float32)
    sd["classifier.6.weight"] = np.zeros((11, 64), np.float32)
    before = {k: v.copy() for k, v in small_model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        small_model.load_state_dict(sd)
    msg = str(info.value)
    assert "features.0.bias" in msg and "features.99.weight" in msg
    assert "classifier.6.weight" in msg and "(10, 64)" in msg and "(11, 64)" in msg
    _same_state(before, small_model.state_dict())  # nothing changed


def test_non_strict_loads_what_fits_and_reports(small_model):
    model = build(reduced_spec("torchvision"), seed=5, backend="numpy")
    sd = {k: v + 1 for k, v in small_model.state_dict().items()}
    del sd["features.0.bias"]
    sd["extra"] = np.zeros(1, np.float32)
    sd["classifier.6.bias"] = np.zeros(11, np.float32)
    old_bias = model.state_dict()["features.0.bias"].copy()
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["features.0.bias"]
    assert result.unexpected_keys == ["extra"]
    assert [m[0] for m in result.mismatched] == ["classifier.6.bias"]
    assert np.array_equal(model.state_dict()["features.0.weight"], sd["features.0.weight"])
    assert np.array_equal(model.state_dict()["features.0.bias"], old_bias)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_weights_rejected(tmp_path, small_model, bad):
    sd = {k: v.copy() for k, v in small_model.state_dict().items()}
    sd["features.3.weight"][0, 0, 0, 0] = bad
    path = save_weights(sd, tmp_path / "nan.npz")
    model = build(reduced_spec("torchvision"), seed=5, backend="numpy")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="features.3.weight"):
        model.load_state_dict(load_weights(path))
    _same_state(before, model.state_dict())


# ----------------------------------------------------------------------------- resolve / alexnet()

@pytest.fixture(scope="module")
def full_source():
    return alexnet("torchvision", seed=11, backend="numpy")


@pytest.mark.parametrize("fmt", ["npz", "zip", "legacy"])
def test_alexnet_end_to_end_from_a_file(tmp_path, fmt, full_source):
    sd = full_source.state_dict()
    if fmt == "npz":
        path = save_weights(full_source, tmp_path / "alexnet.npz")
    else:  # full-size torch files, written the way torch.save does
        path = write_torch_file(tmp_path / "alexnet.pth", {k: Tensor(v) for k, v in sd.items()}, fmt)
    model = alexnet("torchvision", weights=str(path) if fmt == "zip" else path, backend="numpy")
    _same_state(sd, model.state_dict())
    if fmt == "npz":
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
        np.testing.assert_array_equal(model(x), full_source(x))


def test_alexnet_with_wrong_variant_weights_names_the_problem(tmp_path, full_source):
    path = save_weights(full_source, tmp_path / "tv.npz")
    with pytest.raises(ValueError, match="fits the 'torchvision' AlexNet .1000 classes., not the 'original'"):
        alexnet("original", weights=path)


def test_resolve_weights():
    sd = {"a": np.zeros(2, np.float32)}
    assert resolve_weights(sd, variant="torchvision") is sd
    with pytest.raises(TypeError, match="weights must be"):
        resolve_weights(3, variant="torchvision")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights("nope.pth", variant="torchvision")


def test_no_imagenet_weights_for_the_original_variant():
    with pytest.raises(ValueError, match="no published ImageNet weights.*fit the 'torchvision' one"):
        alexnet("original", weights="imagenet")


# ----------------------------------------------------------------------------- torch files (crafted)

def test_crafted_torch_files_read_in_both_formats(tmp_path):
    base = np.arange(24, dtype=np.float32)
    shared = Storage(base)
    bf16 = (np.array([1.0, -2.5, 3.140625], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    obj = collections.OrderedDict(
        plain=Tensor(base.reshape(4, 6)),
        transposed=Tensor(shared, 0, (6, 4), (1, 6)),
        offset=Tensor(shared, 5, (3,), (1,)),
        strided=Tensor(shared, 1, (2, 3), (12, 2)),
        expanded=Tensor(shared, 2, (3, 2), (0, 1)),
        half=Tensor(np.float16([0.5, 65504])),
        double=Tensor(np.float64([1e-3, 2.0])),
        bf16=Tensor(Storage(bf16, "bfloat16"), 0, (3,), (1,)),
        count=Tensor(np.array(7, np.int64)),
        param=Tensor(np.ones((2, 2), np.float32), parameter=True),
    )
    for fmt in ("zip", "legacy"):
        sd = load_weights(write_torch_file(tmp_path / f"t_{fmt}.pth", obj, fmt))
        np.testing.assert_array_equal(sd["transposed"], base.reshape(4, 6).T)
        np.testing.assert_array_equal(sd["offset"], base[5:8])
        np.testing.assert_array_equal(sd["strided"], [[1, 3, 5], [13, 15, 17]])
        np.testing.assert_array_equal(sd["expanded"], np.broadcast_to(base[2:4], (3, 2)))
        np.testing.assert_array_equal(sd["half"], [0.5, 65504])
        np.testing.assert_array_equal(sd["bf16"], [1.0, -2.5, 3.140625])
        assert sd["count"].dtype == np.int64 and sd["count"].shape == ()
        for name in ("transposed", "strided", "expanded", "half", "double", "bf16", "param"):
            assert sd[name].dtype == np.float32 and sd[name].flags.c_contiguous and sd[name].flags.writeable


def test_a_weight_that_is_its_whole_storage_is_not_copied(tmp_path):
    """A saved model's weights are each a whole float32 storage: the array read from the file is
    the weight (no second copy of 244 MB for AlexNet); two tensors over one storage still get
    arrays of their own."""
    shared = Storage(np.arange(12, dtype=np.float32))
    obj = collections.OrderedDict(w=Tensor(np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)),
                                  a=Tensor(shared, 0, (3, 4), (4, 1)), b=Tensor(shared, 0, (3, 4), (4, 1)))
    for fmt in ("zip", "legacy"):
        sd = load_weights(write_torch_file(tmp_path / f"w_{fmt}.pth", obj, fmt))
        assert not sd["w"].flags.owndata and sd["w"].flags.writeable and sd["w"].flags.c_contiguous
        np.testing.assert_array_equal(sd["w"], np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))
        np.testing.assert_array_equal(sd["a"], sd["b"])
        sd["a"][0, 0] = 100.0
        assert sd["b"][0, 0] == 0.0, f"{fmt}: two tensors over one storage share memory"


def test_legacy_storage_views(tmp_path):
    """torch < 1.0 pickled views into a shared storage as (view key, offset, size)."""
    root = Storage(np.arange(10, dtype=np.float32))
    obj = {"a": Tensor(StorageSlice(root, 2, 4), 1, (3,), (1,)), "b": Tensor(root, 0, (2, 5), (5, 1))}
    sd = load_weights(write_torch_file(tmp_path / "v.pth", obj, "legacy"))
    np.testing.assert_array_equal(sd["a"], [3, 4, 5])
    np.testing.assert_array_equal(sd["b"], np.arange(10).reshape(2, 5))
    bad = {"a": Tensor(StorageSlice(root, 8, 2), 0, (3,), (1,))}  # runs past the view's end
    with pytest.raises(WeightsFileError, match="past the end"):
        load_weights(write_torch_file(tmp_path / "w.pth", bad, "legacy"))


def test_huge_sizes_are_refused(tmp_path):
    bad = {"w": Tensor(Storage(np.ones(4, np.float32)), 0, (2**40, 2**40), (1, 1))}
    with pytest.raises(WeightsFileError, match="past the end"):
        load_weights(write_torch_file(tmp_path / "h.pth", bad, "zip"))


def test_extension_does_not_matter(tmp_path):
    sd = {"w": Tensor(np.ones(3, np.float32))}
    a = write_torch_file(tmp_path / "torch_zip.npz", sd, "zip")
    b = write_torch_file(tmp_path / "legacy.txt", sd, "legacy")
    c = save_weights({"w": np.ones(3)}, tmp_path / "real_npz.pth")
    for path in (a, b, c):
        np.testing.assert_array_equal(load_weights(path)["w"], np.ones(3))


def test_checkpoint_wrappers_and_module_prefix(tmp_path):
    inner = {"module.features.0.weight": Tensor(np.ones((2, 3), np.float32)),
             "module.features.0.bias": Tensor(np.zeros(2, np.float32))}
    for key in ("state_dict", "model"):
        for fmt in ("zip", "legacy"):
            ckpt = {"epoch": 9, "arch": "alexnet", key: inner,
                    "optimizer": {"state": {0: {"momentum_buffer": Tensor(np.ones(5, np.float32))}}}}
            sd = load_weights(write_torch_file(tmp_path / f"c_{key}_{fmt}.pth", ckpt, fmt))
            assert sorted(sd) == ["features.0.bias", "features.0.weight"]


def test_file_without_tensors(tmp_path):
    path = write_torch_file(tmp_path / "meta.pth", {"epoch": 3, "lr": [0.1]}, "zip")
    with pytest.raises(WeightsFileError, match=r"meta.pth.*not a state dict of tensors"):
        load_weights(path)


# ----------------------------------------------------------------------------- malicious pickles

class _Payload:
    """Unpickling this with the standard pickle would run ``call(*args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker):
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, f"touch '{marker}'"),
        "builtins.eval": _Payload(builtins.eval, code),
        "builtins.exec": _Payload(builtins.exec, code),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "hidden in a state dict": collections.OrderedDict(
            [("features.0.weight", 1.0), ("features.0.bias", _Payload(os.system, f"touch '{marker}'"))]),
    }


def _check_refused(path, marker):
    with pytest.raises(UnsafePickleError) as info:
        load_weights(path)
    msg = str(info.value)
    assert str(path) in msg and "refusing to load" in msg and "not a tensor or plain container" in msg
    assert not marker.exists(), "the pickle ran code!"
    return msg


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call",
                                     "hidden in a state dict"])
@pytest.mark.parametrize("container", ["raw pickle", "zip", "legacy", "legacy header"])
def test_malicious_pickles_do_not_run(tmp_path, payload, container, protocol):
    marker = tmp_path / "pwned"
    obj = _payloads(marker)[payload]
    evil = pickle.dumps(obj, protocol=protocol)
    if container == "raw pickle":
        path = tmp_path / "evil.pth"
        path.write_bytes(evil)
        if protocol < 2:  # a protocol-0 pickle has no \x80 header: not even recognised as a pickle
            with pytest.raises(WeightsFileError, match="not an .npz or a PyTorch file"):
                load_weights(path)
            assert not marker.exists()
            return
    elif container == "zip":
        path = write_torch_file(tmp_path / "evil.pth", {}, "zip", pickle_bytes=evil)
    elif container == "legacy":
        path = write_torch_file(tmp_path / "evil.pth", {}, "legacy", pickle_bytes=evil)
    else:  # the payload in place of the magic number: the very first pickle of the file
        path = tmp_path / "evil.pth"
        path.write_bytes(evil if protocol >= 2 else b"\x80\x02" + evil)
    msg = _check_refused(path, marker)
    if payload != "hidden in a state dict":  # names it (as pickled: posix.system, __builtin__.eval)
        assert f".{payload.split('.')[1]}," in msg


def test_the_unpickler_really_would_have_run_it(tmp_path):
    """Sanity check of the payloads: the standard unpickler does run them."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["builtins.eval"]))
    assert marker.exists()


def test_torch_globals_cannot_be_abused(tmp_path):
    # a "tensor" rebuilt from something that is not a storage
    evil = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X\x03\x00\x00\x00abcK\x00))tR."
    path = write_torch_file(tmp_path / "a.pth", {}, "zip", pickle_bytes=evil)
    with pytest.raises(WeightsFileError, match="not a storage"):
        load_weights(path)
    # BUILD (setting attributes) on a whitelisted global
    evil = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00__code__K\x01sb."
    path = write_torch_file(tmp_path / "b.pth", {}, "zip", pickle_bytes=evil)
    with pytest.raises(WeightsFileError, match="set state"):
        load_weights(path)
    # a torch name outside the whitelist
    evil = b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R."
    path = write_torch_file(tmp_path / "c.pth", {}, "legacy", pickle_bytes=evil)
    with pytest.raises(UnsafePickleError, match=r"torch\.load"):
        load_weights(path)


# ----------------------------------------------------------------------------- damaged files

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth.*not found"):
        load_weights(tmp_path / "missing.pth")


def test_directory(tmp_path):
    with pytest.raises(WeightsFileError, match="directory"):
        load_weights(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsFileError, match=r"empty.pth' is empty"):
        load_weights(tmp_path / "empty.pth")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsFileError, match="noise.pth"):
        load_weights(path)


def test_text_file(tmp_path):
    path = tmp_path / "readme.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsFileError, match="not an .npz or a PyTorch file"):
        load_weights(path)


def test_plain_pickle_is_not_a_torch_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(WeightsFileError, match="not a PyTorch file"):
        load_weights(path)


def test_single_npy_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(WeightsFileError, match="single .npy"):
        load_weights(tmp_path / "a.npy")


def test_npz_with_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsFileError, match="obj.npz"):
        load_weights(tmp_path / "obj.npz")


def test_empty_npz(tmp_path):
    np.savez(tmp_path / "none.npz")
    with pytest.raises(WeightsFileError, match="none.npz"):
        load_weights(tmp_path / "none.npz")


def test_zip_that_is_neither(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(WeightsFileError, match="neither an .npz nor a PyTorch file"):
        load_weights(tmp_path / "other.zip")


@pytest.mark.parametrize("name", ["torchvision_reduced.pth", "torchvision_reduced_legacy.pth",
                                  "tensors.pth", "tensors_legacy.pth", "original_reduced_io.npz"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.9, 0.999])
def test_truncated_files(tmp_path, name, fraction):
    data = (FIXTURES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsFileError) as info:
        load_weights(path)
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["torchvision_reduced.pth", "torchvision_reduced_legacy.pth"])
def test_corrupted_pickle(tmp_path, name):
    data = bytearray((FIXTURES / name).read_bytes())
    if name.endswith("legacy.pth"):
        start = data.index(b"collections")  # inside the main pickle
        data[start - 40:start + 200] = bytes(240)
    else:  # data.pkl is stored uncompressed; zipfile's CRC check catches the damage
        start = data.index(b"collections")
        data[start:start + 50] = b"\xff" * 50
    path = tmp_path / name
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match=name):
        load_weights(path)


def test_missing_storage_record(tmp_path):
    path = tmp_path / "m.pth"
    write_torch_file(path, {"w": Tensor(np.ones(3, np.float32))}, "zip")
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist() if "/data/" not in n}
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(WeightsFileError, match="missing from the archive"):
        load_weights(path)


def test_tensor_past_the_end_of_its_storage(tmp_path):
    bad = {"w": Tensor(Storage(np.ones(6, np.float32)), 2, (3, 2), (2, 1))}
    for fmt in ("zip", "legacy"):
        with pytest.raises(WeightsFileError, match="past the end"):
            load_weights(write_torch_file(tmp_path / f"b_{fmt}.pth", bad, fmt))


def test_legacy_storage_count_mismatch(tmp_path):
    path = write_torch_file(tmp_path / "l.pth", {"w": Tensor(np.ones(3, np.float32))}, "legacy")
    data = path.read_bytes()
    at = data.rindex(struct.pack("<q", 3))
    path.write_bytes(data[:at] + struct.pack("<q", 4) + data[at + 8:])
    with pytest.raises(WeightsFileError, match="says 4 elements"):
        load_weights(path)


def test_legacy_wrong_protocol(tmp_path):
    path = tmp_path / "p.pth"
    path.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(999, protocol=2))
    with pytest.raises(WeightsFileError, match="protocol 999"):
        load_weights(path)


def test_unknown_storage_type(tmp_path):
    s = Storage(np.ones(2, np.float32))
    s.dtype = "complex"
    from support import fixture_specs
    fixture_specs._STORAGE_OF["complex"] = "ComplexFloatStorage"
    try:
        path = write_torch_file(tmp_path / "c.pth", {"w": Tensor(s, 0, (2,), (1,))}, "zip")
    finally:
        del fixture_specs._STORAGE_OF["complex"]
    with pytest.raises(UnsafePickleError, match="ComplexFloatStorage"):
        load_weights(path)


def test_global_helper_is_what_torch_writes():
    """The crafted files use the same globals torch writes (see the fixtures for the real thing)."""
    assert Global("torch._utils", "_rebuild_tensor_v2").name == "_rebuild_tensor_v2"
