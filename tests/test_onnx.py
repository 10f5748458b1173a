"""``fastalex.load_onnx``: committed ONNX files (made by ``make_onnx_fixtures.py``) against ONNX
Runtime's outputs stored next to them, on both backends; the model's spec, state dict and
extraction; and the errors (unsupported op, wrong input rank, unsafe external data, truncated
files). Needs the onnx package. The full-size cases (about 25 s each) need ONNX Runtime (and
torch for the export) and run only with ``FASTALEX_FULL_SIZE=1``."""

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import fastalex  # noqa: E402
from fastalex import layers as L  # noqa: E402
from fastalex.onnx_import import SUPPORTED_OPS, OnnxError, read_onnx  # noqa: E402
from support import assert_agree  # noqa: E402
from support.fixture_specs import FIXTURES, fixture_input  # noqa: E402
from support.onnx_graphs import (TORCH_LRN, TORCH_LRN_INPUT, TORCH_LRN_NETS, TORCH_LRN_STEMS,  # noqa: E402
                         caffe_alexnet, single_op)
from support.onnx_graphs import bad_number_graphs as _bad_number_graphs  # noqa: E402
from support.onnx_graphs import conv_bn_graph as _conv_bn_graph, external as _external  # noqa: E402
from support.onnx_graphs import save as _save, then_flatten as _then_flatten  # noqa: E402

ONNX_DIR = FIXTURES / "onnx"
STEMS = ["original_reduced_op9", "original_reduced_op17", "torchvision_reduced_op9",
         "torchvision_reduced_op17", "vgg_bn_op9", "vgg_bn_op17", "caffe_alexnet", "caffenet"]


@functools.lru_cache(maxsize=None)
def expected():
    return dict(np.load(ONNX_DIR / "expected.npz"))


@functools.lru_cache(maxsize=None)
def model(stem):
    return fastalex.load_onnx(ONNX_DIR / f"{stem}.onnx")


def inputs(m, n):
    h, w = m.input_shape[1:]
    return fixture_input(expected()[f"q_{h}x{w}"][:n])


@pytest.mark.parametrize("stem", STEMS)
def test_outputs_match_onnxruntime(stem, backend):
    m = model(stem)
    ref = expected()[stem]
    m.backend = backend
    try:
        assert_agree(m(inputs(m, len(ref))), ref, f"{stem} on {backend}")
        if f"{stem}.fc8_1" in expected():  # the Caffe graphs end in Softmax: check the logits too
            logits = expected()[f"{stem}.fc8_1"]
            assert_agree(m.extract(inputs(m, 1), "fc8_1")["fc8_1"], logits, f"{stem} logits on {backend}")
    finally:
        m.backend = None


def test_caffe_graph_structure_and_predict():
    m = model("caffe_alexnet")
    kinds = [(name, type(layer).__name__) for name, layer in m.named_layers()]
    assert kinds[:4] == [("conv1_1", "Conv2D"), ("conv1_2", "ReLU"), ("norm1_1", "LocalResponseNorm"),
                         ("pool1_1", "MaxPool2D")]
    assert m["conv2_1"].groups == 2 and m["conv4_1"].groups == 2
    assert m["pool5_1"].padding == (0, 1, 0, 1)  # ONNX pads [0, 0, 1, 1] as (left, right, top, bottom)
    assert type(m["OC2_DUMMY_0"]) is L.Flatten  # the Reshape to (1, -1)
    assert type(m["prob_1"]) is L.Softmax
    assert m.input_shape == (3, 224, 224) and m.num_classes == 10
    x = inputs(m, 1)
    probs, idx = m.predict(x, top=10)  # the graph's Softmax is not applied twice
    np.testing.assert_allclose(probs[0], m(x)[0][idx[0]], rtol=1e-6)
    assert "Softmax" in m.summary() and "ONNX model caffe_alexnet.onnx (opset 12)" in m.summary()
    names = [name for name, _ in model("caffenet").named_layers()]
    assert names[:4] == ["conv1_1", "conv1_2", "pool1_1", "norm1_1"]  # CaffeNet pools before LRN


def test_batchnorm_is_folded_and_weights_round_trip(tmp_path):
    m = model("vgg_bn_op17")
    types = [type(layer).__name__ for _, layer in m.named_layers()]
    assert types.count("Conv2D") == 4 and "BatchNorm" not in " ".join(types)
    assert all(layer.bias is not None for _, layer in m.named_layers() if isinstance(layer, L.Conv2D))
    state = m.state_dict()
    assert len(state) == 12  # 4 convs and 2 dense layers, weight and bias each
    fastalex.save_weights(m, tmp_path / "vgg.npz")
    again = fastalex.build(m.spec, seed=None)
    again.load_state_dict(fastalex.load_weights(tmp_path / "vgg.npz"))
    x = inputs(m, 2)
    np.testing.assert_array_equal(again(x), m(x))
    out = m.extract(x, ["14_GlobalAveragePool", "logits"])
    assert out["14_GlobalAveragePool"].shape == (2, 16, 1, 1) and out["logits"].shape == (2, 10)


def test_preprocess_presets_take_the_graph_input_size():
    path = ONNX_DIR / "vgg_bn_op9.onnx"
    caffe = fastalex.load_onnx(path, preprocess="caffe").preprocess
    assert caffe["channel_order"] == "BGR" and caffe["pixel_max"] == 255.0 and caffe["crop"] == (30, 33)
    assert tuple(caffe["mean"]) == (104.0, 117.0, 123.0)
    torchvision = fastalex.load_onnx(path).preprocess
    assert torchvision.get("channel_order", "RGB") == "RGB" and torchvision["crop"] == (30, 33)
    spec, state = read_onnx(ONNX_DIR / "caffe_alexnet.onnx", preprocess="caffe")
    assert spec["preprocess"]["crop"] == 224 and spec["preprocess"]["resize"] == 256
    with pytest.raises(ValueError, match="caffe"):
        fastalex.load_onnx(path, preprocess="opencv")


# ----------------------------------------------------------------------------- graphs built here

def test_uneven_conv_pads_and_auto_pad(tmp_path, backend):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    F = fastalex.functional
    cases = [
        (dict(pads=[0, 1, 2, 0]), F.pad(x, (1, 0, 0, 2))),                   # [top, left, bottom, right]
        (dict(auto_pad="SAME_UPPER", strides=[2, 2]), F.pad(x, (0, 0, 1, 1))),  # 9 -> 5 rows, 8 -> 4 columns
        (dict(auto_pad="SAME_LOWER"), F.pad(x, (1, 0, 1, 1))),
        (dict(auto_pad="VALID"), x),
    ]
    for attrs, padded in cases:
        path = _save(single_op("Conv", (2, 3, 9, 8), inits=[("w", w)], kernel_shape=[3, 2], **attrs),
                     tmp_path / "conv.onnx")
        with pytest.raises(OnnxError, match="end in class scores"):
            fastalex.load_onnx(path)  # an image out is not a classifier...
        proto = _then_flatten(onnx.load(str(path)))
        m = fastalex.load_onnx(_save(proto, tmp_path / "conv_flat.onnx"), backend=backend)  # ...this is
        stride = attrs.get("strides", [1, 1])
        ref = F.conv2d(padded, w, stride=tuple(stride), backend="numpy").reshape(2, -1)
        assert_agree(m(x), ref, f"Conv {attrs}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            continue
        assert_agree(m(x), _ort_run(tmp_path / "conv_flat.onnx", x), f"Conv {attrs} vs ONNX Runtime")


def test_pools_with_onnx_pads_match_onnxruntime(tmp_path, backend):
    """MaxPool/AveragePool with uneven pads, ceil_mode and count_include_pad, imported and run,
    against ONNX Runtime on the same graph."""
    pytest.importorskip("onnxruntime")
    x = np.random.default_rng(8).standard_normal((2, 3, 7, 8)).astype(np.float32)
    for op, kernel, strides, pads, ceil_mode, cip in [
            ("MaxPool", [3, 3], [2, 2], [0, 0, 1, 1], 0, 0), ("MaxPool", [2, 3], [2, 1], [1, 0, 0, 2], 1, 0),
            ("AveragePool", [3, 3], [2, 2], [1, 1, 2, 2], 0, 0), ("AveragePool", [3, 2], [2, 2], [2, 0, 0, 1], 1, 1),
            ("AveragePool", [3, 3], [2, 2], [0, 1, 2, 0], 1, 0), ("AveragePool", [2, 2], [2, 2], [1, 1, 1, 1], 1, 1)]:
        attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode)
        if op == "AveragePool":
            attrs["count_include_pad"] = cip
        path = _save(_then_flatten(single_op(op, (2, 3, 7, 8), **attrs)), tmp_path / "pool.onnx")
        m = fastalex.load_onnx(path, backend=backend)
        assert_agree(m(x), _ort_run(path, x), f"{op} {attrs}")


def test_gemm_alpha_beta_matmul_add(tmp_path):
    rng = np.random.default_rng(4)
    b = rng.standard_normal((5, 7)).astype(np.float32)
    c = rng.standard_normal((1, 7)).astype(np.float32)
    x = rng.standard_normal((3, 2, 1, 5)).astype(np.float32)
    flat = x.reshape(3, -1)
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "B", "C"], ["g"], alpha=0.5, beta=2.0),
             helper.make_node("MatMul", ["g", "M"], ["h"]),
             helper.make_node("Add", ["bias", "h"], ["y"])]
    m_w = rng.standard_normal((7, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("B", np.concatenate([b, b])), ("C", c),
                                                          ("M", m_w), ("bias", bias))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m = fastalex.load_onnx(_save(proto, tmp_path / "dense.onnx"))
    ref = (0.5 * flat @ np.concatenate([b, b]) + 2.0 * c) @ m_w + bias
    np.testing.assert_allclose(m(x), ref, rtol=1e-5, atol=1e-5)
    assert [type(layer).__name__ for _, layer in m.named_layers()] == ["Flatten", "Dense", "Dense"]


@pytest.mark.parametrize("opset", [3, 6, 9])
def test_old_opsets_give_the_same_model(tmp_path, opset):
    """Opset-3/6 spellings (IR 3 with initializers as inputs, Reshape's shape attribute, Dropout's
    is_test, Gemm's broadcast; Softmax's axis=1 default) load as the opset-12 graph does."""
    new = fastalex.load_onnx(_save(caffe_alexnet(div=16, hidden=32, num_classes=5, seed=9), tmp_path / "new.onnx"))
    old = fastalex.load_onnx(_save(caffe_alexnet(div=16, hidden=32, num_classes=5, seed=9, opset=opset),
                                   tmp_path / f"op{opset}.onnx"))
    assert [type(layer) for _, layer in old.named_layers()] == [type(layer) for _, layer in new.named_layers()]
    x = np.random.default_rng(9).standard_normal((2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(old(x), new(x))
    assert old.spec["opset"] == opset


def test_unsupported_op_names_the_node_and_the_supported_list(tmp_path):
    path = _save(single_op("Sigmoid", name="act1"), tmp_path / "sigmoid.onnx")
    with pytest.raises(OnnxError) as info:
        fastalex.load_onnx(path)
    message = str(info.value)
    assert str(path) in message and "'act1' (Sigmoid)" in message
    assert ", ".join(SUPPORTED_OPS) in message


def test_wrong_input_rank(tmp_path):
    path = _save(single_op("Relu", input_shape=(1, 10), output_shape=(1, 10)), tmp_path / "rank2.onnx")
    with pytest.raises(OnnxError, match=r"rank 4, got rank 2"):
        fastalex.load_onnx(path)


def test_not_a_chain(tmp_path):
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "dag.onnx")
    with pytest.raises(OnnxError, match="not a chain"):
        fastalex.load_onnx(path)


def test_truncated_and_garbage_files(tmp_path):
    data = (ONNX_DIR / "caffe_alexnet.onnx").read_bytes()
    for size in (len(data) // 2, len(data) - 3, 40, 0):
        path = tmp_path / f"cut{size}.onnx"
        path.write_bytes(data[:size])
        with pytest.raises(OnnxError, match=str(path)):
            fastalex.load_onnx(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(ValueError, match="garbage.onnx"):
        fastalex.load_onnx(garbage)
    with pytest.raises(OnnxError, match="no such file"):
        fastalex.load_onnx(tmp_path / "missing.onnx")


def test_external_data_inside_the_folder_is_read(tmp_path):
    raw, w = _external(tmp_path / "m.onnx", "weights/w.bin", offset=8)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"\0" * 8 + raw)
    m = fastalex.load_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(m.state_dict()["y.weight"], w)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "short", "length", "missing"])
def test_external_data_outside_the_folder_or_wrong_size_is_refused(tmp_path, case):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "secret.bin"
    raw, _ = _external(folder / "m.onnx", "w.bin")
    outside.write_bytes(raw)
    location, length, message = "w.bin", None, None
    if case == "dotdot":
        location, message = "../secret.bin", "relative path inside"
    elif case == "absolute":
        location, message = str(outside), "relative path inside"
    elif case == "symlink":
        os.symlink(outside, folder / "link.bin")
        location, message = "link.bin", "outside the model's folder"
    elif case == "short":
        (folder / "w.bin").write_bytes(raw[:-4])
        message = "too short"
    elif case == "length":
        (folder / "w.bin").write_bytes(raw)
        length, message = len(raw) - 4, "does not match"
    else:
        message = "not a file"
    _external(folder / "m.onnx", location, length=length)
    with pytest.raises(OnnxError, match=message) as info:
        fastalex.load_onnx(folder / "m.onnx")
    assert str(folder / "m.onnx") in str(info.value)


def test_missing_onnx_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastalex\[onnx\]'"):
        fastalex.load_onnx(ONNX_DIR / "caffe_alexnet.onnx")


# ----------------------------------------------------------------------------- full size (optional)

full_size = pytest.mark.skipif(os.environ.get("FASTALEX_FULL_SIZE") != "1",
                               reason="full-size ONNX models: set FASTALEX_FULL_SIZE=1")


def _ort_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@full_size
def test_full_size_caffe_alexnet_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    path = _save(caffe_alexnet(seed=5), tmp_path / "bvlcalexnet_like.onnx")
    x = np.random.default_rng(5).uniform(-30, 30, (1, 3, 224, 224)).astype(np.float32)
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("fc8_1", onnx.TensorProto.FLOAT, None))
    logits_path = _save(proto, tmp_path / "with_logits.onnx")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(logits_path), providers=["CPUExecutionProvider"])
    probs, logits = session.run(None, {"data_0": x})
    m = fastalex.load_onnx(path, preprocess="caffe")
    assert m.num_params == 60_965_224
    for backend in ("numpy", "numba"):
        m.backend = backend
        assert_agree(m.extract(x, "fc8_1")["fc8_1"], logits, f"full-size logits on {backend}")
        assert_agree(m(x), probs, f"full-size probabilities on {backend}")


@full_size
def test_full_size_torchvision_export_matches_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).parent))
    from tools.make_fixtures import torch_model
    from fastalex.specs import torchvision_spec
    torch.manual_seed(0)
    net = torch_model(torchvision_spec())
    path = tmp_path / "alexnet.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), opset_version=17, dynamo=False)
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = _ort_run(path, x)
    m = fastalex.load_onnx(path)
    for backend in ("numpy", "numba"):
        m.backend = backend
        assert_agree(m(x), ref, f"torchvision AlexNet via ONNX on {backend}")


# ----------------------------------------------------------------------------- issue 19: folded names, sizes, bad numbers

def test_extract_refuses_the_tensor_before_a_folded_batchnorm(tmp_path, backend):
    """Item 5: the Conv's own output 'conv_out' (and its node's name 'conv') is not computed
    once the BatchNorm is folded into the weights: extract() refuses it, naming the BN tensor to
    take instead, which is ONNX Runtime's value of that tensor."""
    path, a = _conv_bn_graph(tmp_path / "conv_bn.onnx")
    m = fastalex.load_onnx(path, backend=backend)
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 7)).astype(np.float32) * 3
    for name in ("conv_out", "conv"):
        with pytest.raises(ValueError, match=rf"'{name}' is the output of a Conv2D layer before the "
                                             r"BatchNormalization 'bn'.*extract 'bn'"):
            m.extract(x, [name])
    conv = fastalex.functional.conv2d(x, a["w"], a["b"], backend="numpy")
    bn = ((conv - a["m"][:, None, None]) / np.sqrt(a["v"][:, None, None] + 1e-5) * a["s"][:, None, None]
          + a["sh"][:, None, None])
    out = m.extract(x, ["bn_out", "bn", "act"])
    assert_agree(out["bn_out"], bn, "after the folded BatchNorm")
    assert_agree(out["bn"], bn, "the BatchNorm node's name")
    assert_agree(out["act"], np.maximum(bn, 0), "after the ReLU")
    assert [name for name, _ in m.named_layers()] == ["bn", "act", "z"]
    assert sorted(m.state_dict()) == ["bn.bias", "bn.weight"]
    try:
        import onnxruntime as ort
    except ImportError:
        return
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("bn_out", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_agree(out["bn_out"], session.run(["bn_out"], {"x": x})[0], "bn_out vs ONNX Runtime")


def test_non_square_graph_input_gives_a_non_square_crop(tmp_path):
    """Item 6: a graph declaring (3, 32, 48) gets 32x48 images from load_image/classify (the
    shorter side resized to cover the crop, the centre cropped), and the model refuses inputs of
    another size, as ONNX Runtime does."""
    from PIL import Image
    w = np.random.default_rng(6).standard_normal((4, 3, 3, 3)).astype(np.float32)
    proto = _then_flatten(single_op("Conv", (1, 3, 32, 48), inits=[("w", w)], kernel_shape=[3, 3], strides=[2, 2]))
    m = fastalex.load_onnx(_save(proto, tmp_path / "wide.onnx"))
    assert m.input_shape == (3, 32, 48) and m.preprocess["crop"] == (32, 48)
    pixels = np.random.default_rng(7).integers(0, 256, (100, 60, 3), dtype=np.uint8)  # a tall photo
    photo = tmp_path / "tall.png"
    Image.fromarray(pixels).save(photo)
    x = fastalex.load_image(photo, m)
    assert x.shape == (3, 32, 48)
    # the same numbers as torchvision's Resize(55) then CenterCrop((32, 48)) on this photo
    small = Image.fromarray(pixels).resize((55, 91), Image.BILINEAR).crop((4, 30, 52, 62))  # round(3.5), round(29.5)
    mean, std = np.array(m.preprocess["mean"], np.float32), np.array(m.preprocess["std"], np.float32)
    ref = ((np.asarray(small).astype(np.float32) / np.float32(255) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert fastalex.load_images([photo, photo], m).shape == (2, 3, 32, 48)
    assert fastalex.load_images([], m).shape == (0, 3, 32, 48)
    [pred] = fastalex.classify(str(photo), model=m, labels=False, top=3)
    assert pred.error is None
    np.testing.assert_allclose(pred.probabilities, m.predict(x, top=3)[0], rtol=1e-5)
    for bad in ((1, 3, 32, 32), (1, 3, 48, 32)):
        with pytest.raises(ValueError, match=r"must be 32x48"):
            m(np.zeros(bad, np.float32))
    caffe = fastalex.load_onnx(tmp_path / "wide.onnx", preprocess="caffe")
    assert fastalex.load_image(photo, caffe).shape == (3, 32, 48)


def test_bad_numbers_are_onnx_errors_naming_the_file(tmp_path, recwarn):
    """Item 14: BatchNorm var = epsilon = 0, folding that overflows, a Gemm alpha that overflows,
    a NUL byte in an external location, dims whose product overflows int64: each an OnnxError
    naming the file and the cause, and no numpy RuntimeWarning."""
    import warnings
    warnings.simplefilter("always")
    for case, (path, message) in _bad_number_graphs(tmp_path).items():
        with pytest.raises(OnnxError, match=message) as info:
            fastalex.load_onnx(path)
        assert info.value.path == str(path), case
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


def test_constant_with_external_data_is_read_from_the_model_folder(tmp_path, monkeypatch):
    """Item 15: a Constant node's external data is found in the model's folder, whatever the
    working directory (the checker used to look in the working directory and refuse the file)."""
    from onnx import TensorProto, helper
    folder = tmp_path / "model"
    folder.mkdir()
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 50
    value = onnx.numpy_helper.from_array(w, "w")
    raw = value.raw_data
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    for key, v in (("location", "const.bin"), ("offset", "0"), ("length", str(len(raw)))):
        entry = value.external_data.add()
        entry.key, entry.value = key, v
    (folder / "const.bin").write_bytes(raw)
    proto = _then_flatten(single_op("Conv", (1, 3, 5, 5), extra_inputs=["w"], kernel_shape=[3, 3]))
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=value))
    path = _save(proto, folder / "m.onnx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    m = fastalex.load_onnx(path)
    np.testing.assert_array_equal(m.state_dict()["y.weight"], w)
    (folder / "const.bin").write_bytes(raw[:-4])  # still checked: a short file is refused, naming the model
    with pytest.raises(OnnxError, match="too short") as info:
        fastalex.load_onnx(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- issue 19 item 25: LRN as torch exports it

@pytest.mark.parametrize("stem", TORCH_LRN_STEMS)
def test_torch_spelled_out_lrn_is_one_layer_matching_onnxruntime(stem, backend):
    """torch.onnx.export writes nn.LocalResponseNorm as Mul/Reshape/Pad/AveragePool/Squeeze/Mul/
    Add/Pow/Div plus shape computations (each opset and exporter its own way): read as one
    LocalResponseNorm with the module's size, alpha, beta and k, giving ONNX Runtime's output."""
    m = fastalex.load_onnx(ONNX_DIR / f"{stem}.onnx", backend=backend)
    layers = [layer for _, layer in m.named_layers()]
    assert [type(layer).__name__ for layer in layers] == ["LocalResponseNorm", "Flatten"]
    size = 4 if "size4" in stem else TORCH_LRN["size"]
    assert (layers[0].size, layers[0].alpha, layers[0].beta, layers[0].k) == (
        size, TORCH_LRN["alpha"], TORCH_LRN["beta"], TORCH_LRN["k"])
    x = expected()["lrn_input"]
    assert x.shape == TORCH_LRN_INPUT
    assert_agree(m(x), expected()[stem], f"{stem} on {backend}")
    if "static" not in stem:  # a dynamic batch: any batch size
        assert_agree(m(x[:1]), expected()[stem][:1], f"{stem}, batch 1, on {backend}")


@pytest.mark.parametrize("stem", TORCH_LRN_NETS)
def test_torch_exported_2012_alexnet_matches_onnxruntime(stem, backend):
    """The 2012 AlexNet (narrow) exported with torch's own LRN, TorchScript (opsets 9, 17) and
    dynamo: both LRNs recognized, the whole network agrees with ONNX Runtime."""
    m = model(stem)
    lrns = [layer for _, layer in m.named_layers() if isinstance(layer, L.LocalResponseNorm)]
    assert [(n.size, n.alpha, n.beta, n.k) for n in lrns] == [(5, 1e-4, 0.75, 2.0)] * 2
    kinds = [type(layer).__name__ for _, layer in m.named_layers()]
    assert kinds[:4] == ["Conv2D", "ReLU", "LocalResponseNorm", "MaxPool2D"] and kinds.count("Dense") == 3
    ref = expected()[stem]
    m.backend = backend
    try:
        assert_agree(m(inputs(m, len(ref))), ref, f"{stem} on {backend}")
    finally:
        m.backend = None


def test_tensors_inside_a_spelled_out_lrn_are_refused_by_extract():
    m = model("original_torchlrn_op17")
    proto = onnx.load(str(ONNX_DIR / "original_torchlrn_op17.onnx"))
    inner = next(n.output[0] for n in proto.graph.node if n.op_type == "Pow")
    lrn = next(name for name, layer in m.named_layers() if isinstance(layer, L.LocalResponseNorm))
    with pytest.raises(ValueError, match=rf"is inside the LocalResponseNorm .* extract '{lrn}'"):
        m.extract(inputs(m, 1), [inner])
    div = next(n.output[0] for n in proto.graph.node if n.op_type == "Div")
    assert m.extract(inputs(m, 1), [div])[div].shape[1] == 6  # the LRN's own output is there


def _lrn_graph(stem="lrn_dynamo_static"):
    return onnx.load(str(ONNX_DIR / f"{stem}.onnx"))


def _node(proto, op, k=0):
    return [n for n in proto.graph.node if n.op_type == op][k]


def _set_init(proto, name, array):
    from onnx import numpy_helper
    for i, t in enumerate(proto.graph.initializer):
        if t.name == name:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(array), name))
            return
    raise KeyError(name)


def _set_attr(node, name, value):
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _mutations():
    """(what, mutate(proto) -> proto, the reason in the error): graphs that are not torch's LRN."""
    def kernel(p):
        _set_attr(_node(p, "AveragePool"), "kernel_shape", [5, 1, 1])
        return p

    def placement(p):
        _set_init(p, _node(p, "Pad").input[1], np.array([0, 0, 2, 0, 0, 0, 0, 0, 0, 0], np.int64))
        return p

    def other_axis(p):
        _set_init(p, _node(p, "Pad").input[1], np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], np.int64))
        return p

    def per_channel_alpha(p):
        _set_init(p, _node(p, "Mul", 1).input[1], np.full((6, 1, 1), 0.05, np.float32))
        return p

    def not_a_square(p):
        _set_init(p, _node(p, "Mul", 1).input[1], np.array(0.05, np.float32))
        sq = _node(p, "Mul", 0)
        sq.input[1] = _node(p, "Mul", 1).input[1]
        return p

    def subtract(p):
        _node(p, "Add").op_type = "Sub"
        return p

    def strides(p):
        _set_attr(_node(p, "AveragePool"), "strides", [1, 2, 1])
        return p

    def used_outside(p):
        p.graph.output.append(onnx.helper.make_tensor_value_info(_node(p, "Pow").output[0], onnx.TensorProto.FLOAT,
                                                                 list(TORCH_LRN_INPUT)))
        return p

    def squeeze_axis(p):
        _set_init(p, _node(p, "Squeeze").input[1], np.array([0], np.int64))
        return p

    def order(p):  # k added before alpha multiplies
        mul, add = _node(p, "Mul", 1), _node(p, "Add")
        sq_in, mul_out, add_out = mul.input[0], mul.output[0], add.output[0]
        add.input[0], add.output[0] = sq_in, mul_out
        mul.input[0], mul.output[0] = mul_out, add_out
        nodes = list(p.graph.node)
        i, j = nodes.index(mul), nodes.index(add)
        nodes[i], nodes[j] = nodes[j], nodes[i]
        del p.graph.node[:]
        p.graph.node.extend(nodes)
        return p

    return [("kernel", kernel, r"kernel \[5, 1, 1\] is not \(3, 1, 1\)"),
            ("placement", placement, r"spans 2 channels before and 0 after; torch's LocalResponseNorm\(3\) spans 1 and 1"),
            ("other axis", other_axis, r"pad more than the channel axis"),
            ("per-channel alpha", per_channel_alpha, r"the Mul's constant is not a floating-point scalar"),
            ("not a square", not_a_square, r"the square is Mul"),
            ("subtract", subtract, r"its denominator also uses Sub"),
            ("strides", strides, r"strides, pads or dilations"),
            ("used outside", used_outside, r"is also used outside it"),
            ("squeeze axis", squeeze_axis, r"Squeeze of axes \[0\]"),
            ("order", order, r"comes where torch's LRN has no")]


@pytest.mark.parametrize("what, mutate, reason", _mutations(), ids=[m[0] for m in _mutations()])
def test_lrn_lookalikes_are_refused_with_the_reason(tmp_path, what, mutate, reason):
    """Each step's operator, attributes and constants are checked: a graph that differs from
    torch's LRN in any of them is refused (never run as an LRN it is not)."""
    path = _save(mutate(_lrn_graph()), tmp_path / "lookalike.onnx")
    with pytest.raises(OnnxError, match="looks like torch's spelled-out LocalResponseNorm") as info:
        fastalex.load_onnx(path)
    assert str(path) in str(info.value)
    assert __import__("re").search(reason, str(info.value)), str(info.value)


def test_lrn_lookalike_with_dynamic_shapes_is_refused(tmp_path):
    """Opset 13's If(shape[1] == 1, Squeeze, Identity) is evaluated, not assumed: with the
    condition's constant changed the Identity branch is taken, which is not torch's LRN; a
    reshape target computed from the input's shape is evaluated too."""
    proto = _lrn_graph("lrn_op13")
    equal = _node(proto, "Equal")
    const = next(n for n in proto.graph.node if n.output[0] == equal.input[1])
    _set_attr(const, "value", onnx.numpy_helper.from_array(np.array([2], np.int64)))
    with pytest.raises(OnnxError, match=r"Reshape .* comes where torch's LRN has no Reshape \(after the pooled step\)"):
        fastalex.load_onnx(_save(proto, tmp_path / "if.onnx"))
    proto = _lrn_graph("lrn_op13")
    concat = _node(proto, "Concat")  # (N, 1, C, H, -1) -> (N, 2, C, H, -1)
    const = next(n for n in proto.graph.node if n.output[0] == concat.input[1])
    _set_attr(const, "value", onnx.numpy_helper.from_array(np.array([2], np.int64)))
    with pytest.raises(OnnxError, match=r"Reshape target .* does not fit|is reshaped to"):
        fastalex.load_onnx(_save(proto, tmp_path / "view.onnx"))


def test_torch_exports_at_every_opset_match_torch(tmp_path, backend):
    """With torch installed: nn.LocalResponseNorm exported live at opsets 9 to 17 (dynamic and
    fixed batch) and by the dynamo exporter, recognized and equal to torch's output."""
    torch = pytest.importorskip("torch")
    import logging
    import warnings
    logging.disable(logging.WARNING)
    try:
        net = torch.nn.Sequential(torch.nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0), torch.nn.Flatten()).eval()
        x = np.random.default_rng(25).standard_normal((2, 7, 4, 3)).astype(np.float32) * 10
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        for opset in [*range(9, 18), "dynamo"]:
            for dynamic in (True, False):
                path = tmp_path / f"lrn_{opset}_{dynamic}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if opset == "dynamo":
                        pytest.importorskip("onnxscript")
                        kw = dict(dynamic_shapes=({0: torch.export.Dim("N")},)) if dynamic else {}
                        torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=True, external_data=False, **kw)
                    else:
                        kw = dict(dynamic_axes={"x": {0: "N"}}) if dynamic else {}
                        torch.onnx.export(net, (torch.from_numpy(x),), str(path), opset_version=opset, dynamo=False,
                                          input_names=["x"], **kw)
                m = fastalex.load_onnx(path, backend=backend)
                assert [type(layer).__name__ for _, layer in m.named_layers()] == ["LocalResponseNorm", "Flatten"]
                assert_agree(m(x), ref, f"opset {opset}, dynamic batch {dynamic}")
    finally:
        logging.disable(logging.NOTSET)


@full_size
def test_full_size_torch_exported_2012_alexnet_matches_onnxruntime(tmp_path):
    """The 2012 AlexNet built in torch (nn.LocalResponseNorm) and exported as torch does, at
    opset 17: fastalex reads both spelled-out LRNs and agrees with ONNX Runtime."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).parent))
    from make_fixtures import torch_model
    from fastalex.specs import original_spec
    torch.manual_seed(0)
    net = torch_model(original_spec())
    path = tmp_path / "alexnet2012.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 227, 227),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    x = np.random.default_rng(7).standard_normal((2, 3, 227, 227)).astype(np.float32)
    ref = _ort_run(path, x)
    m = fastalex.load_onnx(path)
    assert m.num_params == 60_965_224
    assert sum(isinstance(layer, L.LocalResponseNorm) for _, layer in m.named_layers()) == 2
    for backend in ("numpy", "numba"):
        m.backend = backend
        assert_agree(m(x), ref, f"the 2012 AlexNet exported by torch, on {backend}")


def test_a_constant_shared_with_the_rest_of_the_graph_stays(tmp_path):
    """A Constant node the LRN shares with a later node (here its k, as a Gemm's bias) is read by
    both: the LRN is still recognized and the constant still feeds the Gemm."""
    from onnx import helper, numpy_helper
    proto = _lrn_graph("lrn_op13")
    k_const = _node(proto, "Add").input[1]
    assert any(n.op_type == "Constant" and n.output[0] == k_const for n in proto.graph.node)
    flat = proto.graph.output[0].name
    features = int(np.prod(TORCH_LRN_INPUT[1:]))
    b = np.random.default_rng(26).standard_normal((features, 3)).astype(np.float32) / 10
    proto.graph.initializer.append(numpy_helper.from_array(b, "B"))
    proto.graph.node.append(helper.make_node("Gemm", [flat, "B", k_const], ["scores"]))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 3]))
    m = fastalex.load_onnx(_save(proto, tmp_path / "shared.onnx"))
    assert [type(layer).__name__ for _, layer in m.named_layers()] == ["LocalResponseNorm", "Flatten", "Dense"]
    x = expected()["lrn_input"]
    assert_agree(m(x), expected()["lrn_op13"] @ b + TORCH_LRN["k"], "LRN, then a Gemm sharing the LRN's k")
