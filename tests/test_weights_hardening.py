"""Weights hardening (issue 9): loading copies, lying files stay bounded, every failure to read a
weights file is a ``fastalex.WeightsFileError`` naming the file, non-regular files are refused,
and the library (not the CLI) tells which AlexNet a file fits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastalex
from fastalex.models import alexnet, build
from fastalex.weights import WeightsFileError, load_weights, save_weights
from support.fixture_specs import reduced_spec


@pytest.fixture(scope="module")
def small_model():
    return build(reduced_spec("torchvision"), seed=3, backend="numpy")


# ----------------------------------------------------------------------------- item 2: copies

def test_load_state_dict_copies_the_callers_arrays(small_model):
    model = build(reduced_spec("torchvision"), seed=4, backend="numpy")
    sd = {k: np.ascontiguousarray(v, dtype=np.float32).copy() for k, v in small_model.state_dict().items()}
    model.load_state_dict(sd)
    key = "features.0.weight"
    want = sd[key].copy()
    sd[key][...] = np.nan  # the caller changes its dict afterwards
    assert np.array_equal(model.state_dict()[key], want)
    assert not np.shares_memory(model.state_dict()[key], sd[key])
    x = np.random.default_rng(0).standard_normal((1, *model.input_shape)).astype(np.float32)
    assert np.isfinite(model(x)).all()


def test_alexnet_from_a_state_dict_copies():
    sd = {k: v.copy() for k, v in alexnet("torchvision", seed=1).state_dict().items()}
    model = alexnet("torchvision", weights=sd)
    for key in sd:
        assert not np.shares_memory(model.state_dict()[key], sd[key]), key


def test_assign_keeps_arrays_nobody_else_holds_and_copies_the_rest(small_model):
    model = build(reduced_spec("torchvision"), seed=4, backend="numpy")
    sd = {k: np.ascontiguousarray(v, dtype=np.float32).copy() for k, v in small_model.state_dict().items()}
    big = np.zeros(sd["features.0.weight"].size + 8, np.float32)  # a window into a larger buffer
    window = big[:sd["features.0.weight"].size].reshape(sd["features.0.weight"].shape)
    window[...] = sd["features.0.weight"]
    sd["features.0.weight"] = window
    frozen = sd["features.0.bias"].copy()
    frozen.flags.writeable = False
    sd["features.0.bias"] = frozen
    model.load_state_dict(sd, assign=True)
    own = model.state_dict()
    assert not np.shares_memory(own["features.0.weight"], big)
    assert not np.shares_memory(own["features.0.bias"], frozen)
    kept = [k for k in sd if k not in ("features.0.weight", "features.0.bias")]
    assert kept and all(own[k] is sd[k] for k in kept)
    sd[kept[0]] = sd[kept[0]].copy()
    sd[kept[0]].reshape(-1)[-1] = np.inf  # assign checks the values too
    with pytest.raises(ValueError, match=f"{kept[0]} contains NaN/inf"):
        model.load_state_dict(sd, assign=True)


def test_alexnet_from_a_file_still_checks_every_value(tmp_path):
    """Read from a file, the arrays are nobody else's: the model keeps them (no second copy of
    233 MB), and checks every value all the same."""
    path = tmp_path / "w.npz"
    source = alexnet("torchvision", seed=1)
    save_weights(source, path)
    model = alexnet("torchvision", weights=str(path))
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    state = dict(np.load(path))
    state["classifier.1.weight"][0, 0] = np.nan
    np.savez(path, **state)
    with pytest.raises(ValueError, match="classifier.1.weight contains NaN/inf"):
        alexnet("torchvision", weights=str(path))


def test_counting_nonfinite_values_crosses_chunk_boundaries():
    from fastalex import checks
    a = np.ones(3 * checks._FINITE_CHUNK + 5, np.float32)
    a[[0, checks._FINITE_CHUNK - 1, checks._FINITE_CHUNK, a.size - 1]] = [np.nan, np.inf, -np.inf, np.nan]
    assert checks.count_nonfinite(a) == 4
    assert checks.count_nonfinite(a[:10].reshape(2, 5)) == 1 and checks.count_nonfinite(np.ones(0, np.float32)) == 0


# ----------------------------------------------------------------------------- item 7: lying files

import json  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

from support.fixture_specs import LEGACY_MAGIC, Storage, Tensor, write_torch_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Claimed:
    """Storage data that claims ``size`` elements but writes only a few bytes."""

    def __init__(self, size, real=16):
        self.size, self.real = size, real

    def tobytes(self):
        return bytes(self.real)


def _claiming_storage(numel):
    s = Storage(np.zeros(1, np.float32))
    s.data = _Claimed(numel)
    return s


def _deflate_bomb(path, gib=3):
    """A zip-format torch file whose 1-element storage is a deflated member of ``gib`` GiB of zeros
    (the compressed stream is built from one repeated, fully flushed block: quick to write)."""
    write_torch_file(path, {"w": Tensor(Storage(np.ones(1, np.float32)), 0, (1,), (1,))}, "zip")
    chunk = 1 << 24
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    n = gib * (1 << 30) // chunk
    prefix = path.stem
    with zipfile.ZipFile(path) as src:
        members = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename != f"{prefix}/data/0":
                z.writestr(info.filename, data)
                continue
            zi = zipfile.ZipInfo(info.filename)
            zi.compress_type = zipfile.ZIP_DEFLATED
            with z.open(zi, "w", force_zip64=True) as m:
                m._compressor = None  # we write the compressed stream ourselves
                for _ in range(n):
                    m._fileobj.write(block)
                m._fileobj.write(final)
                m._compress_size, m._file_size, m._crc = n * len(block) + len(final), n * chunk, 0
    return path


def _npz_claiming(path, shape):
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", buf.getvalue() + bytes(64))
    return path


def _lying_files(d):
    files = {
        "expanded": write_torch_file(d / "expanded.pth", {"w": Tensor(Storage(np.ones(1, np.float32)), 0,
                                                                      (2**15, 2**15), (0, 0))}, "zip"),
        "legacy-16GiB": write_torch_file(d / "claims16g.pth", {"w": Tensor(_claiming_storage(2**32), 0,
                                                                           (4,), (1,))}, "legacy"),
        "legacy-4TiB": write_torch_file(d / "claims4t.pth", {"w": Tensor(_claiming_storage(2**40), 0,
                                                                         (4,), (1,))}, "legacy"),
        "zip-huge-numel": write_torch_file(d / "numel.pth", {"w": Tensor(_claiming_storage(2**70), 0,
                                                                         (4,), (1,))}, "zip"),
        "deflate-bomb": _deflate_bomb(d / "bomb.pth"),
        "npz-1TB": _npz_claiming(d / "terabyte.npz", (2**38,)),
        "pickle-bytes8": write_torch_file(d / "bytes8.pth", {}, "zip",
                                          pickle_bytes=b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx"),
    }
    legacy_pickle = d / "legacy_bytes8.pth"  # a counted opcode in a legacy file's main pickle
    with open(legacy_pickle, "wb") as f:
        import pickle
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", 2**36) + b"xx")
    files["legacy-pickle-bytes8"] = legacy_pickle
    return files


LOAD_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys
    from fastalex.weights import WeightsFileError, load_weights
    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * resource.getpagesize()
    limit = vsize + (1 << 30)  # 1 GiB more than the interpreter already maps
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for path in sys.argv[1:]:
        try:
            load_weights(path)
            out[path] = "loaded"
        except WeightsFileError as exc:
            out[path] = "WeightsFileError: " + str(exc)
        except BaseException as exc:
            out[path] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_lying_weight_files_are_refused_under_a_memory_limit(tmp_path):
    files = _lying_files(tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT, *map(str, files.values())],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for case, path in files.items():
        got = results[str(path)]
        assert got.startswith("WeightsFileError: "), (case, got)
        assert str(path) in got, (case, got)


def test_expanded_tensors_within_the_limit_still_load(tmp_path):
    path = write_torch_file(tmp_path / "small.pth", {"w": Tensor(Storage(np.arange(3, dtype=np.float32)), 0,
                                                                 (4, 3), (0, 1))}, "zip")
    np.testing.assert_array_equal(load_weights(path)["w"], np.tile(np.arange(3, dtype=np.float32), (4, 1)))


# ----------------------------------------------------------------------------- item 12: one error type

def _patch_zip_flags(path, local_offset, central_offset, value, size=2):
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            data[i + off:i + off + size] = value.to_bytes(size, "little")
            start = i + 4
    path.write_bytes(bytes(data))
    return path


def _npz_with_header(path, text):
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", body + bytes(16))
    return path


def test_every_failure_to_read_is_a_weights_file_error_naming_the_file(tmp_path):
    good = save_weights({"w": np.ones(4, np.float32)}, tmp_path / "good.npz")
    cases = {
        "encrypted": _patch_zip_flags(tmp_path / "enc.npz", 6, 8, 1,) if (tmp_path / "enc.npz").write_bytes(
            good.read_bytes()) else None,
        "compression 99": _patch_zip_flags(tmp_path / "method.npz", 8, 10, 99) if (
            tmp_path / "method.npz").write_bytes(good.read_bytes()) else None,
        "unterminated header": _npz_with_header(tmp_path / "tok.npz",
                                                b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,\n"),
        "non-dict header": _npz_with_header(tmp_path / "list.npz", b"[1, 2, 3]\n"),
        "bad shape": _npz_with_header(tmp_path / "shape.npz",
                                      b"{'descr': '<f4', 'fortran_order': False, 'shape': ('a',)}\n"),
        "negative offset": write_torch_file(tmp_path / "offset.pth", {"w": Tensor(Storage(np.ones(2, np.float32)),
                                                                                  -2, (1,), (1,))}, "zip"),
    }
    for case, path in cases.items():
        with pytest.raises(fastalex.WeightsFileError) as info:
            load_weights(path)
        assert str(path) in str(info.value), (case, str(info.value))
    assert issubclass(fastalex.WeightsFileError, ValueError)


def test_cli_reports_an_unreadable_weights_file_in_one_line(tmp_path, capsys):
    from PIL import Image
    from fastalex import cli
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    bad = write_torch_file(tmp_path / "offset.pth", {"w": Tensor(Storage(np.ones(2, np.float32)), -2, (1,), (1,))})
    assert cli.main(["classify", str(img), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offset.pth" in err and "offset -2" in err


# ----------------------------------------------------------------------------- item 8: FIFOs

LOAD = "import sys; from fastalex.weights import load_weights; load_weights(sys.argv[1])"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(fifo)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1 and "WeightsFileError" in proc.stderr
    assert "FIFO" in proc.stderr and "not a regular file" in proc.stderr
    link = tmp_path / "link.pth"
    link.symlink_to(fifo)
    with pytest.raises(WeightsFileError, match="FIFO"):
        load_weights(link)  # safe in-process: the open does not block
