"""The same fastalex model, with the same weights, in PyTorch and in ONNX Runtime (and, through
the ONNX file :func:`onnx_model` writes, in any engine that reads ONNX: OpenVINO).

Both are built from the model's own layer list, so any spec (both AlexNet variants, or a new
one) gets its peers for free. Neither library is a dependency of fastalex: the builders
import them when called (``ImportError`` when missing); ``fastalex bench`` and the benchmark
suite use them to compare on the same machine.
"""

from __future__ import annotations

import numpy as np

from fastalex import layers as L


def torch_model(model, threads: int):
    """A ``torch.nn.Sequential`` equal to ``model`` (same layers, same weights)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    modules = []
    for _, layer in model.named_layers():
        if isinstance(layer, L.Conv2D):
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                          layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None)
        elif isinstance(layer, L.Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        elif isinstance(layer, L.ReLU):
            m = nn.ReLU(inplace=True)
        elif isinstance(layer, L.LocalResponseNorm):
            m = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        elif isinstance(layer, L.MaxPool2D):
            m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
        elif isinstance(layer, L.AvgPool2D):
            m = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                             layer.count_include_pad)
        elif isinstance(layer, L.AdaptiveAvgPool2D):
            m = nn.AdaptiveAvgPool2d(layer.output_size)
        elif isinstance(layer, L.Flatten):
            m = nn.Flatten()
        elif isinstance(layer, L.Dropout):
            m = nn.Dropout(layer.p)
        else:  # pragma: no cover - a new layer type needs its peer here
            raise NotImplementedError(type(layer).__name__)
        if isinstance(layer, (L.Conv2D, L.Dense)):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.array(layer.weight)))  # a writable copy
                if layer.bias is not None:
                    m.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        modules.append(m)
    net = nn.Sequential(*modules).eval()

    def run(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return run


def onnx_session(model, threads: int, input_shape):
    """An ``onnxruntime.InferenceSession`` running ``model`` (graph written with ``onnx.helper``)."""
    proto = onnx_model(model, input_shape)
    session = ort_session(proto.SerializeToString(), threads)

    def run(x):
        return session.run(None, {"input": x})[0]

    return run


def ort_session(model_bytes_or_path, threads: int):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, one inter-op thread, sequential."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])


def onnx_model(model, input_shape):
    """An ``onnx.ModelProto`` computing ``model`` (same layers, same weights; opset 13), its input
    named ``input``, of shape ``(N, *input_shape)`` with a symbolic batch size."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    prev = "input"
    for i, (name, layer) in enumerate(model.named_layers()):
        out = f"t{i}"
        if isinstance(layer, L.Conv2D):
            w = numpy_helper.from_array(layer.weight, f"{name}.weight")
            b = numpy_helper.from_array(layer.bias, f"{name}.bias")
            inits += [w, b]
            (ph, pw) = layer.padding
            nodes.append(helper.make_node("Conv", [prev, w.name, b.name], [out], kernel_shape=list(layer.kernel_size),
                                          strides=list(layer.stride), pads=[ph, pw, ph, pw],
                                          dilations=list(layer.dilation), group=layer.groups))
        elif isinstance(layer, L.Dense):
            w = numpy_helper.from_array(layer.weight, f"{name}.weight")
            b = numpy_helper.from_array(layer.bias, f"{name}.bias")
            inits += [w, b]
            nodes.append(helper.make_node("Gemm", [prev, w.name, b.name], [out], transB=1))
        elif isinstance(layer, L.ReLU):
            nodes.append(helper.make_node("Relu", [prev], [out]))
        elif isinstance(layer, L.LocalResponseNorm):
            nodes.append(helper.make_node("LRN", [prev], [out], size=layer.size, alpha=layer.alpha,
                                          beta=layer.beta, bias=layer.k))
        elif isinstance(layer, L.MaxPool2D):
            (ph, pw) = layer.padding
            nodes.append(helper.make_node("MaxPool", [prev], [out], kernel_shape=list(layer.kernel_size),
                                          strides=list(layer.stride), pads=[ph, pw, ph, pw],
                                          ceil_mode=int(layer.ceil_mode)))
        elif isinstance(layer, L.AdaptiveAvgPool2D):
            # torchvision's 6x6 output from a 6x6 map (224 input) is the identity
            entering = shape_before(model, name, input_shape)
            if layer.output_shape(entering) != entering:
                raise NotImplementedError("adaptive pooling that changes the size has no ONNX peer here")
            nodes.append(helper.make_node("Identity", [prev], [out]))
        elif isinstance(layer, L.Flatten):
            nodes.append(helper.make_node("Flatten", [prev], [out], axis=1))
        elif isinstance(layer, L.Dropout):
            nodes.append(helper.make_node("Identity", [prev], [out]))
        else:  # pragma: no cover
            raise NotImplementedError(type(layer).__name__)
        prev = out
    graph = helper.make_graph(
        nodes, "fastalex", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", model.num_classes])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def shape_before(model, layer_name, input_shape):
    """The per-sample shape entering layer ``layer_name``."""
    shape = tuple(input_shape)
    for name, layer in model.named_layers():
        if name == layer_name:
            return shape
        shape = layer.output_shape(shape)
    raise KeyError(layer_name)
