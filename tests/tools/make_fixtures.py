"""Build the committed torch fixtures in ``tests/fixtures/``. Run by hand, with torch::

    pip install torch==2.13.0
    python tests/tools/make_fixtures.py

fastalex never imports torch; the tests only read what this script wrote. It writes:

* ``<variant>_reduced.pth`` (zip format) and ``<variant>_reduced_legacy.pth`` (legacy format):
  the state dict of a narrow AlexNet of each variant (:func:`support.fixture_specs.reduced_spec`: the
  real kernels, strides, padding, groups, LRN and pooling, channels / 16, a 64-unit
  classifier, 10 classes), built in torch with a fixed seed;
* ``<variant>_reduced_io.npz``: inputs (uint8 ``q_<C>x<H>x<W>``, the float input being
  ``q * X_SCALE + X_OFFSET``) and torch's logits ``logits_<C>x<H>x<W>`` for them;
* ``tensors.pth`` / ``tensors_legacy.pth``: float16, bfloat16, float64, int, bool, 0-d,
  empty, transposed, sliced (storage offset), strided, expanded (stride 0), channels-last,
  shared-storage tensors and an ``nn.Parameter``; ``tensors_expected.npz``: each as
  ``tensor.float().numpy()`` (integer/bool ones as they are);
* ``checkpoint.pth`` / ``checkpoint_legacy.pth``: a training checkpoint
  ``{"epoch", "arch", "state_dict": {"module.<key>": ...}, "optimizer": {...}}``.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/
from support.fixture_specs import BATCH, FIXTURES, REDUCED, X_OFFSET, X_SCALE, fixture_input, reduced_spec  # noqa: E402


def torch_layer(kind, kw):
    if kind == "Conv2D":
        return nn.Conv2d(kw["in_channels"], kw["out_channels"], kw["kernel_size"], stride=kw.get("stride", 1),
                         padding=kw.get("padding", 0), dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
    if kind == "Dense":
        return nn.Linear(kw["in_features"], kw["out_features"])
    if kind == "MaxPool2D":
        return nn.MaxPool2d(kw["kernel_size"], stride=kw.get("stride"), padding=kw.get("padding", 0),
                            ceil_mode=kw.get("ceil_mode", False))
    if kind == "LocalResponseNorm":
        return nn.LocalResponseNorm(kw["size"], alpha=kw["alpha"], beta=kw["beta"], k=kw["k"])
    if kind == "AdaptiveAvgPool2D":
        return nn.AdaptiveAvgPool2d(kw["output_size"])
    return {"ReLU": nn.ReLU, "Flatten": nn.Flatten, "Dropout": nn.Dropout}[kind]()


def torch_model(spec) -> nn.Module:
    """The torch twin of a fastalex spec: same nesting, so the state-dict keys are the same."""
    top = collections.OrderedDict()
    for name, body in spec["layers"]:
        if isinstance(body, list):
            top[name] = nn.Sequential(*(torch_layer(k, kw) for k, kw in body))
        else:
            top[name] = torch_layer(*body)
    model = nn.Sequential(top)
    for module in model.modules():  # He-normal weights and visible biases keep logits O(1)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return model.eval()


def save_both(obj, stem):
    torch.save(obj, FIXTURES / f"{stem}.pth")
    torch.save(obj, FIXTURES / f"{stem}_legacy.pth", _use_new_zipfile_serialization=False)


def make_models():
    for i, variant in enumerate(REDUCED):
        torch.manual_seed(1000 + i)
        rng = np.random.default_rng(2000 + i)
        model = torch_model(reduced_spec(variant))
        save_both(model.state_dict(), f"{variant}_reduced")
        io = {"x_scale": np.float32(X_SCALE), "x_offset": np.float32(X_OFFSET)}
        for shape in REDUCED[variant]["inputs"]:
            tag = "x".join(map(str, shape))
            q = rng.integers(64, 192, size=(BATCH, *shape), dtype=np.uint8)  # x in [-2, 2)
            with torch.no_grad():
                logits = model(torch.from_numpy(fixture_input(q))).numpy()
            io[f"q_{tag}"], io[f"logits_{tag}"] = q, logits
        np.savez(FIXTURES / f"{variant}_reduced_io.npz", **io)


def make_tensors():
    torch.manual_seed(7)
    base = torch.randn(4, 4)
    long_row = torch.randn(20)
    tensors = collections.OrderedDict(
        f32=torch.randn(3, 4),
        f16=torch.randn(5).half(),
        bf16=torch.randn(2, 3).bfloat16(),
        bf16_special=torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e-40, 3e38]).bfloat16(),
        f64=torch.randn(4, 2).double(),
        i64=torch.arange(-3, 5),
        i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
        u8=torch.arange(250, 256, dtype=torch.uint8),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        num_batches_tracked=torch.tensor(12),
        empty=torch.zeros(0, 3),
        transposed=torch.randn(3, 5).t(),
        sliced=long_row[2:7],  # storage offset 2 into a storage of 20
        strided=long_row[1::3],  # stride 3, offset 1
        expanded=torch.randn(3, 1).expand(3, 4),  # stride 0
        channels_last=torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        half_transposed=torch.randn(4, 3).half().t(),
        shared_row=base[1],
        shared_col=base[:, 2],
        param=nn.Parameter(torch.randn(2, 2)),
    )
    save_both(tensors, "tensors")
    expected = {k: (v.detach().float() if v.is_floating_point() else v).numpy() for k, v in tensors.items()}
    np.savez(FIXTURES / "tensors_expected.npz", **expected)


def make_checkpoint():
    torch.manual_seed(11)
    layer = nn.Linear(3, 2)
    sd = collections.OrderedDict((f"module.{k}", v) for k, v in layer.state_dict().items())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    checkpoint = {"epoch": 3, "arch": "linear", "best_acc1": 0.5, "state_dict": sd,
                  "optimizer": optimizer.state_dict()}
    save_both(checkpoint, "checkpoint")


def main():
    FIXTURES.mkdir(exist_ok=True)
    make_models()
    make_tensors()
    make_checkpoint()
    for path in sorted(FIXTURES.iterdir()):
        print(f"{path.stat().st_size:>10,}  {path.relative_to(FIXTURES.parent.parent)}")


if __name__ == "__main__":
    main()
