"""ONNX graphs built by hand with ``onnx.helper`` (needs onnx only; no torch, no ONNX Runtime).

* :func:`caffe_alexnet`: the 2012 network as the ONNX model zoo's ``bvlcalexnet``/``caffenet``
  files have it (converted from Caffe): LRN before pooling (CaffeNet's order is pool then LRN,
  ``lrn_first=False``), ``group=2``, pooling with pads ``[0, 0, 1, 1]`` (Caffe's rounding up,
  spelled as explicit pads), ``Reshape`` with a shape initializer, ``Gemm`` with ``transB=1``,
  ``Dropout`` and ``Softmax`` at the end, a fixed batch of 1 and a 224x224 input. ``div``
  narrows every layer (the committed fixture is tiny; the benchmark uses ``div=1``). Below
  opset 7 it is written as the zoo's oldest files are: IR version 3 with the initializers
  also listed as graph inputs, ``Reshape``'s shape as an attribute (opset < 5), ``Dropout``
  with ``is_test`` and ``Gemm`` with ``broadcast``.
* :func:`single_op`: a one-node graph, for error tests.
"""

from __future__ import annotations

import numpy as np
import onnx as _onnx
from onnx import TensorProto, helper, numpy_helper


#: the LocalResponseNorm of the committed ``lrn_*.onnx`` fixtures (torch spells it out as primitive
#: ops on export): a window, alpha and k far enough from the defaults that a wrong one shows
TORCH_LRN = dict(size=3, alpha=0.05, beta=0.6, k=1.5)
#: and its input ``(N, C, H, W)`` (non-square, so H and W cannot be swapped unnoticed)
TORCH_LRN_INPUT = (2, 6, 5, 7)
#: the stems of the ``lrn_*.onnx`` fixtures: TorchScript exporter at opsets 9 to 17 with a
#: dynamic batch (shapes computed with Shape/Gather/Unsqueeze/Concat, opset 11+ pads computed and
#: squeeze spelled as If), with a fixed batch (shapes as constants), the dynamo exporter (both),
#: and an even window (torch places it differently from ONNX's LRN)
TORCH_LRN_STEMS = ["lrn_op9", "lrn_op11", "lrn_op13", "lrn_op17", "lrn_op17_static", "lrn_dynamo",
                   "lrn_dynamo_static", "lrn_size4_op13"]
#: the 2012 AlexNet (``reduced_spec("original", hidden=16)``) exported with torch's own LRN
TORCH_LRN_NETS = ["original_torchlrn_op9", "original_torchlrn_op17", "original_torchlrn_dynamo"]


def _he(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))).astype(np.float32)


def caffe_alexnet(div=1, num_classes=1000, input_size=224, batch=1, seed=0, opset=12, lrn_first=True,
                  hidden=None):
    """A Caffe-converted AlexNet as a ``ModelProto`` (input ``data_0``, output ``prob_1``);
    ``hidden`` (default ``4096 // div``) is the width of fc6 and fc7."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    c1, c2, c3, hidden = 96 // div, 256 // div, 384 // div, hidden or 4096 // div
    prev = "data_0"

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        return name

    def conv(name, cin, cout, k, stride=1, pad=0, group=1):
        nonlocal prev
        w = init(f"{name}_w_0", _he(rng, (cout, cin // group, k, k)))
        b = init(f"{name}_b_0", rng.uniform(-0.1, 0.1, cout).astype(np.float32))
        nodes.append(helper.make_node("Conv", [prev, w, b], [f"{name}_1"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4, group=group))
        nodes.append(helper.make_node("Relu", [f"{name}_1"], [f"{name}_2"]))
        prev = f"{name}_2"

    def lrn(name):
        nonlocal prev
        nodes.append(helper.make_node("LRN", [prev], [f"{name}_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0))
        prev = f"{name}_1"

    def pool(name, pads):
        nonlocal prev
        nodes.append(helper.make_node("MaxPool", [prev], [f"{name}_1"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=pads))
        prev = f"{name}_1"

    def fc(name, fin, fout, relu=True, dropout=True):
        nonlocal prev
        w = init(f"{name}_w_0", _he(rng, (fout, fin)))
        b = init(f"{name}_b_0", rng.uniform(-0.1, 0.1, fout).astype(np.float32))
        old = {"broadcast": 1} if opset < 7 else {}
        nodes.append(helper.make_node("Gemm", [prev, w, b], [f"{name}_1"], transB=1, **old))
        prev = f"{name}_1"
        if relu:
            nodes.append(helper.make_node("Relu", [prev], [f"{name}_2"]))
            prev = f"{name}_2"
        if dropout:
            if opset >= 12:
                ratio = init(f"{name}_ratio", np.array(0.5, np.float32))
                nodes.append(helper.make_node("Dropout", [prev, ratio], [f"{name}_3"]))
            elif opset < 7:
                nodes.append(helper.make_node("Dropout", [prev], [f"{name}_3"], ratio=0.5, is_test=1))
            else:
                nodes.append(helper.make_node("Dropout", [prev], [f"{name}_3"], ratio=0.5))
            prev = f"{name}_3"

    def stage(name, pool_pads):
        if lrn_first:
            lrn(f"norm{name}")
            pool(f"pool{name}", pool_pads)
        else:
            pool(f"pool{name}", pool_pads)
            lrn(f"norm{name}")

    conv("conv1", 3, c1, 11, stride=4)
    stage("1", [0, 0, 1, 1])
    conv("conv2", c1, c2, 5, pad=2, group=2)
    stage("2", [0, 0, 1, 1])
    conv("conv3", c2, c3, 3, pad=1)
    conv("conv4", c3, c3, 3, pad=1, group=2)
    conv("conv5", c3, c2, 3, pad=1, group=2)
    pool("pool5", [0, 0, 1, 1])
    target = [batch if isinstance(batch, int) else 0, -1]
    if opset < 5:
        nodes.append(helper.make_node("Reshape", [prev], ["OC2_DUMMY_0"], shape=target))
    else:
        shape = init("OC2_DUMMY_1", np.array(target, np.int64))
        nodes.append(helper.make_node("Reshape", [prev, shape], ["OC2_DUMMY_0"]))
    prev = "OC2_DUMMY_0"
    features = c2 * 6 * 6
    fc("fc6", features, hidden)
    fc("fc7", hidden, hidden)
    fc("fc8", hidden, num_classes, relu=False, dropout=False)
    nodes.append(helper.make_node("Softmax", [prev], ["prob_1"]))
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [batch, 3, input_size, input_size])]
    if opset < 7:  # IR version 3: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        nodes, "caffe_alexnet", inputs,
        [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [batch, num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fastalex-tests")
    model.ir_version = 3 if opset < 7 else 7
    return model


def single_op(op_type, input_shape=(1, 3, 8, 8), output_shape=("N", "C", "H", "W"), inits=(), extra_inputs=(), opset=13,
              **attrs):
    """A graph ``x -> op_type -> y`` with optional initializers ``[(name, array), ...]`` as the
    node's further inputs."""
    tensors = [numpy_helper.from_array(np.array(a, order="C"), n) for n, a in inits]
    node = helper.make_node(op_type, ["x", *[n for n, _ in inits], *extra_inputs], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "single", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


# ----------------------------------------------------------------------------- small graphs of tests/test_onnx.py
# (also used by tests/test_cli_onnx.py)

def save(proto, path):
    _onnx.save(proto, str(path))
    return path


def then_flatten(proto):
    """``proto`` (one image output ``y``) with a Flatten to ``z`` after it: a classifier's shape."""
    proto.graph.node.append(helper.make_node("Flatten", ["y"], ["z"]))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "K"]))
    return proto


def external(path, location, offset=0, length=None, data=None):
    """A Conv+Flatten graph whose weight lives in external data at ``location``."""
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 50
    proto = then_flatten(single_op("Conv", (1, 3, 5, 5), inits=[("w", w)], kernel_shape=[3, 3]))
    tensor = proto.graph.initializer[0]
    raw = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(len(raw) if length is None else length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    save(proto, path)
    return raw if data is None else data, w


def conv_bn_graph(path, var=(0.5, 2.0), epsilon=1e-5, scale=(3.0, -0.5)):
    """x (1, 3, 6, 7) -> Conv 'conv' (output 'conv_out') -> BatchNormalization 'bn' ('bn_out')
    -> Relu ('act') -> Flatten ('z')."""
    rng = np.random.default_rng(19)
    arrays = {"w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "b": np.array([0.5, -1.0], np.float32),
              "s": np.array(scale, np.float32), "sh": np.array([10.0, -7.0], np.float32),
              "m": np.array([4.0, -3.0], np.float32), "v": np.array(var, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["conv_out", "s", "sh", "m", "v"], ["bn_out"], name="bn",
                              epsilon=epsilon),
             helper.make_node("Relu", ["bn_out"], ["act"]), helper.make_node("Flatten", ["act"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 40])],
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path), arrays


def bad_number_graphs(tmp_path):
    """Item 14: {case: (path, message)} for the files whose numbers cannot be folded or read."""
    cases = {}
    path, _ = conv_bn_graph(tmp_path / "bn_var0.onnx", var=(0.0, 1.0), epsilon=0.0)
    cases["bn_var0"] = (path, r"var \+ epsilon must be positive, got var\[0\] = 0 with epsilon = 0")
    path, _ = conv_bn_graph(tmp_path / "bn_overflow.onnx", scale=(3e38, 1.0), var=(1e-30, 1.0))
    cases["bn_overflow"] = (path, r"'bn' \(BatchNormalization\): the weight of 'bn' folded with it overflows float32")
    proto = then_flatten(single_op("Conv", (1, 3, 4, 4), inits=[("w", np.ones((2, 3, 3, 3), np.float32))],
                                    kernel_shape=[3, 3]))
    proto.graph.node.append(helper.make_node("Gemm", ["z", "B"], ["g"], name="fc", alpha=1e30))
    proto.graph.initializer.append(numpy_helper.from_array(np.full((8, 2), 1e20, np.float32), "B"))
    proto.graph.output[0].name = "g"
    cases["gemm_alpha"] = (save(proto, tmp_path / "gemm_alpha.onnx"), r"'fc' \(Gemm\): B \* alpha \(alpha=1e\+30\) overflows")
    folder = tmp_path / "ext"
    folder.mkdir()
    raw, _ = external(folder / "nul.onnx", "w\0.bin")
    (folder / "w").write_bytes(raw)
    cases["nul"] = (folder / "nul.onnx", r"external data 'w\\x00.bin' contains a NUL byte")
    (folder / "w.bin").write_bytes(raw)
    external(folder / "dims.onnx", "w.bin")
    proto = _onnx.load(str(folder / "dims.onnx"), load_external_data=False)
    del proto.graph.initializer[0].dims[:]
    proto.graph.initializer[0].dims.extend([2 ** 62, 2 ** 62, 3, 3])
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = "0"
    cases["dims"] = (save(proto, folder / "dims.onnx"), r"whose product overflows int64")
    return cases
