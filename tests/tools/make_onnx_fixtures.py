"""Build the committed ONNX fixtures in ``tests/fixtures/onnx/``. Run by hand, with the peers::

    pip install torch==2.13.0 onnx onnxruntime onnxscript
    python tests/tools/make_onnx_fixtures.py [FOLDER]   # default: tests/fixtures/onnx

The tests only read what this script wrote (they need onnx, not torch or ONNX Runtime). It writes:

* ``<variant>_reduced_op9.onnx`` / ``_op17.onnx``: the narrow AlexNets of
  :func:`support.fixture_specs.reduced_spec` (both variants) built in torch and exported with
  ``torch.onnx.export`` (the TorchScript exporter, which covers opset 9) at opsets 9 and 17,
  LRN exported as one ``LRN`` node (:class:`ExportableLRN`; torch spells it out otherwise);
* ``vgg_bn_op9.onnx`` / ``_op17.onnx``: a small VGG-style net with BatchNorm (folded on import),
  ceil-mode max pooling, average pooling with ``count_include_pad=False``, global average
  pooling and an odd 3x30x33 input (opset 9 has no ``ceil_mode``: torch spells it as pads);
* ``caffe_alexnet.onnx``: :func:`support.onnx_graphs.caffe_alexnet` with conv widths / 16, 64 hidden units (the zoo's
  bvlcalexnet structure: LRN, group=2, pads [0,0,1,1], Reshape, Gemm transB=1, Softmax);
* ``caffenet.onnx``: the same with CaffeNet's order (pooling before LRN);
* ``lrn_*.onnx`` (:data:`onnx_graphs.TORCH_LRN_STEMS`): ``nn.LocalResponseNorm`` then ``Flatten``,
  exported as torch does (LRN spelled out as Mul/Reshape/Pad/AveragePool/Squeeze/Mul/Add/Pow/Div,
  with the shape computations each opset and exporter adds), for :data:`onnx_graphs.TORCH_LRN`;
  fastalex recognizes that pattern as one LRN;
* ``original_torchlrn_*.onnx`` (:data:`onnx_graphs.TORCH_LRN_NETS`): the 2012 AlexNet, narrow
  (``reduced_spec("original", hidden=16)``), exported with torch's own LRN (TorchScript at
  opsets 9 and 17, dynamo), a dynamic batch;
* ``expected.npz``: inputs (uint8 ``q_<H>x<W>``, for 227, 224 and 30x33, the float input is
  ``support.fixture_specs.fixture_input(q)``) and ONNX Runtime's outputs on them: ``<stem>`` for the
  graph's output, ``<stem>.<tensor>`` for inner tensors (the Caffe graphs' ``fc8_1`` logits);
  ``lrn_input``, the float input of the ``lrn_*`` graphs. ONNX Runtime's outputs of the graphs
  torch spells LRN out in are checked against torch's own here.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/
from support.fixture_specs import FIXTURES, fixture_input, reduced_spec  # noqa: E402
from tools.make_fixtures import torch_model  # noqa: E402
from support.onnx_graphs import TORCH_LRN, TORCH_LRN_INPUT, caffe_alexnet  # noqa: E402

OUT = FIXTURES / "onnx"
BATCH = 2
OPSETS = (9, 17)


class _LRN(torch.autograd.Function):
    """torch's LRN, exported as one ONNX ``LRN`` node (torch's exporter otherwise spells it out
    as Mul/Pad/AveragePool/Pow/Div, which is not a chain)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class ExportableLRN(nn.LocalResponseNorm):
    def forward(self, x):
        return _LRN.apply(x, self.size, self.alpha, self.beta, self.k)


def with_onnx_lrn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.LocalResponseNorm:
                setattr(module, name, ExportableLRN(child.size, child.alpha, child.beta, child.k))
    return model


def vgg_bn() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(
        *block(3, 8), *block(8, 8), nn.MaxPool2d(2, 2, ceil_mode=True),
        *block(8, 16), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        *block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))
    for m in model.modules():  # running statistics and affine parameters that are not trivial
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def smooth_input(rng, size):
    """uint8 ``(BATCH, 3, H, W)``: random values in 3x3 blocks (small once compressed)."""
    h, w = size
    coarse = rng.integers(64, 192, size=(BATCH, 3, -(-h // 3), -(-w // 3)), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(coarse, np.ones((1, 1, 3, 3), np.uint8))[:, :, :h, :w])


def export(model, shape, path, opset, dynamic=True):
    """The TorchScript exporter (``opset``) or, for ``opset="dynamo"``, the dynamo exporter."""
    x = torch.zeros((BATCH, *shape))
    if opset == "dynamo":
        kw = dict(dynamic_shapes=({0: torch.export.Dim("N")},)) if dynamic else {}
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, input_names=["input"],
                          output_names=["logits"], **kw)
        return
    kw = dict(dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}) if dynamic else {}
    torch.onnx.export(model, (x,), str(path), opset_version=opset, dynamo=False, input_names=["input"],
                      output_names=["logits"], **kw)


def torch_lrn_fixtures(out, expected, q227):
    """The graphs in which torch spells LRN out, and ONNX Runtime's outputs (checked against torch's)."""
    x = np.random.default_rng(19).standard_normal(TORCH_LRN_INPUT).astype(np.float32) * 4
    expected["lrn_input"] = x
    for stem, size, opset, dynamic in [("lrn_op9", None, 9, True), ("lrn_op11", None, 11, True),
                                       ("lrn_op13", None, 13, True), ("lrn_op17", None, 17, True),
                                       ("lrn_op17_static", None, 17, False), ("lrn_dynamo", None, "dynamo", True),
                                       ("lrn_dynamo_static", None, "dynamo", False), ("lrn_size4_op13", 4, 13, True)]:
        cfg = dict(TORCH_LRN, size=size or TORCH_LRN["size"])
        model = nn.Sequential(nn.LocalResponseNorm(**cfg), nn.Flatten()).eval()
        export(model, TORCH_LRN_INPUT[1:], out / f"{stem}.onnx", opset, dynamic)
        expected[stem] = ort_outputs(out / f"{stem}.onnx", x)[0]
        with torch.no_grad():
            np.testing.assert_allclose(expected[stem], model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    torch.manual_seed(1230)
    model = torch_model(reduced_spec("original", hidden=16))
    x = fixture_input(q227)
    for opset in (9, 17, "dynamo"):
        stem = f"original_torchlrn_{'op' if opset != 'dynamo' else ''}{opset}"
        export(model, (3, 227, 227), out / f"{stem}.onnx", opset)
        expected[stem] = ort_outputs(out / f"{stem}.onnx", x)[0]
        with torch.no_grad():
            np.testing.assert_allclose(expected[stem], model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def ort_outputs(path, x, extra=()):
    """ONNX Runtime's outputs: the graph's, then the inner tensors ``extra`` (added as outputs)."""
    model = onnx.load(str(path))
    if extra:
        model = copy.deepcopy(model)
        for name in extra:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})


def main(out=OUT):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    expected = {}
    q = {size: smooth_input(rng, size) for size in ((227, 227), (224, 224), (30, 33))}
    for (h, w), arr in q.items():
        expected[f"q_{h}x{w}"] = arr
    q224 = q[224, 224]

    for i, variant in enumerate(("original", "torchvision")):
        torch.manual_seed(1200 + i)
        model = with_onnx_lrn(torch_model(reduced_spec(variant)))
        size = reduced_spec(variant)["input_shape"][1:]
        for opset in OPSETS:
            stem = f"{variant}_reduced_op{opset}"
            export(model, (3, *size), out / f"{stem}.onnx", opset)
            expected[stem] = ort_outputs(out / f"{stem}.onnx", fixture_input(q[size]))[0]

    torch.manual_seed(1210)
    model = vgg_bn()
    for opset in OPSETS:
        stem = f"vgg_bn_op{opset}"
        export(model, (3, 30, 33), out / f"{stem}.onnx", opset)
        expected[stem] = ort_outputs(out / f"{stem}.onnx", fixture_input(q[30, 33]))[0]

    for stem, lrn_first in (("caffe_alexnet", True), ("caffenet", False)):
        proto = caffe_alexnet(div=16, num_classes=10, seed=1220 + lrn_first, lrn_first=lrn_first, hidden=64)
        onnx.save(proto, str(out / f"{stem}.onnx"))
        prob, logits = ort_outputs(out / f"{stem}.onnx", fixture_input(q224[:1]), extra=["fc8_1"])
        expected[stem], expected[f"{stem}.fc8_1"] = prob, logits

    torch_lrn_fixtures(out, expected, q[227, 227])

    np.savez_compressed(out / "expected.npz", **expected)
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:>10,}  {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
