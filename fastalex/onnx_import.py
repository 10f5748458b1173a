"""ONNX models of the AlexNet family (AlexNet, CaffeNet, ZFNet, VGG) as fastalex models.

::

    model = fastalex.load_onnx("bvlcalexnet-12.onnx", preprocess="caffe")
    print(model.summary())
    probs, classes = model.predict(fastalex.load_image("photo.jpg", model), top=5)

The graph is read with the ``onnx`` package (``pip install 'fastalex[onnx]'``), checked, and
turned into what every fastalex model is: a spec (data: a list of named layer specs, see
:func:`fastalex.models.original_spec`) and a state dict in torch's layouts, put together by
:func:`fastalex.models.build`. So ``summary()``, ``extract()``, ``state_dict()`` and
:func:`fastalex.save_weights` work as for the built-in AlexNets.

Supported graphs are a chain (each node feeds the next; weights are initializers or
``Constant`` nodes) of :data:`SUPPORTED_OPS`. ``BatchNormalization`` and ``Add`` of a
constant are folded into the convolution or dense layer before them; ``Identity`` disappears;
``Gemm``'s ``alpha``/``beta``/``transB`` are folded into the dense weight and bias. The
``LocalResponseNorm`` that ``torch.onnx.export`` spells out as primitive ops (TorchScript
exporter at opsets 9 to 17 and later, dynamo exporter) is recognized as one LRN when every step
matches torch's formula (see :mod:`fastalex._onnx_lrn`); anything else of that shape is refused
with the step that differs. Layers are named after their ONNX nodes (or output tensors); the
names of the tensors in the graph are aliases for :meth:`~fastalex.models.Model.extract`. A
tensor the model never computes (a convolution's output before the BatchNorm folded into it,
the inside of a spelled-out LRN) is refused by ``extract()``, naming the one to take instead.

The graph's declared input ``(C, H, W)`` is the model's: the preprocessing crops ``H x W``
(non-square too) and the model refuses other sizes, as ONNX Runtime does.

External data (weights kept next to the ``.onnx`` file) are read only from regular files inside
the model's own folder (no absolute paths, no ``..``, no symlinks leading out), and only after
their sizes were checked against the tensors' shapes. Every problem with a file raises
:class:`OnnxError` (a ``ValueError``) naming the file.

The pieces: this module reads and checks the file, :mod:`fastalex._onnx_convert` walks the graph,
:mod:`fastalex._onnx_tensors` reads its tensors, :mod:`fastalex._onnx_lrn` recognizes torch's LRN.
"""

from __future__ import annotations

import os

import numpy as np

from ._onnx_convert import SUPPORTED_OPS, Converter
from ._onnx_tensors import without_external_data
from ._optional import install_hint, require

__all__ = ["load_onnx", "read_onnx", "OnnxError", "SUPPORTED_OPS"]

INSTALL_HINT = install_hint("onnx")


from .errors import OnnxError  # noqa: E402  (defined with the other exceptions)


def _onnx():
    return require("onnx", extra="onnx", purpose="reading ONNX models")


# ----------------------------------------------------------------------------- public API

def load_onnx(path, backend=None, preprocess="torchvision", precision="float32"):
    """The :class:`~fastalex.models.Model` of the ONNX file ``path``.

    ``backend``: ``"numba"``, ``"numpy"`` or None (the process default). ``preprocess``: the
    preprocessing :func:`fastalex.load_image` and ``classify`` apply for this model, a preset
    name (``"torchvision"``: RGB, [0, 1], ImageNet mean/std; ``"caffe"``: BGR, [0, 255], mean
    (104, 117, 123) subtracted, as the ONNX zoo's bvlcalexnet and caffenet expect) or a dict;
    the crop is the graph's input size (height x width: a non-square input gets a non-square
    crop, and the model refuses inputs of another size, as ONNX Runtime does). Raises :class:`OnnxError` for unreadable, unsupported
    or unsafe files and ``ImportError`` (naming ``pip install 'fastalex[onnx]'``) without onnx.
    ``precision``: ``"float32"`` (default) or ``"bfloat16"`` (see :meth:`Model.set_precision`).
    """
    from .lowp import check_precision
    from .models import build
    check_precision(precision, "load_onnx")
    spec, state = read_onnx(path, preprocess=preprocess)
    model = build(spec, seed=None, backend=backend)
    model.load_state_dict(state)
    return model.set_precision(precision)


def read_onnx(path, preprocess="torchvision"):
    """``(spec, state_dict)`` of the ONNX file ``path`` (see :func:`load_onnx`)."""
    onnx = _onnx()
    path = os.fspath(path)
    proto = _parse(onnx, path)
    try:
        onnx.checker.check_model(without_external_data(onnx, proto))
    except Exception as exc:  # ValidationError, and whatever a broken proto makes the checker raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(path, f"not a valid ONNX model ({first})") from None
    with np.errstate(all="ignore"):  # folding checks its results (Converter.finite): no RuntimeWarnings
        return Converter(path, proto).convert(preprocess)


def _parse(onnx, path):
    if os.path.isdir(path):
        raise OnnxError(path, "is a directory")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise OnnxError(path, "no such file") from None
    except OSError as exc:
        raise OnnxError(path, f"cannot read ({exc.strerror or exc})") from None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # google.protobuf's DecodeError and friends
        raise OnnxError(path, f"not an ONNX model, or truncated or corrupt (cannot parse it: "
                              f"{str(exc) or type(exc).__name__})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxError(path, "not an ONNX model, or truncated (it has no graph nodes)")
    return proto
