"""One place that turns the usual choices (weights, variant, ONNX, precision, backend) into a model.

::

    model = fastalex.load_model()                                   # torchvision's, ImageNet weights
    model = fastalex.load_model("my-alexnet.pth")                   # variant and classes from the file
    model = fastalex.load_model("bvlcalexnet-12.onnx", preprocess="caffe")
    model = fastalex.load_model(random_weights=True, variant="original")   # offline, for testing

The command line decides nothing of this itself: ``fastalex classify``, ``embed``, ``show``,
``explain``, ``serve``, ``summary`` and ``bench`` all call :func:`load_model`, and a run on a Dask
cluster calls :func:`fastalex.distributed.model_recipe`, which makes the same choices. What does
not go together raises :class:`ModelChoiceError`; weights that do not fit raise
:class:`~fastalex.WeightsMismatchError`, weights that cannot be had
:class:`~fastalex.WeightsFileError` or :class:`~fastalex.WeightsUnavailableError`, an ONNX file
that cannot be used :class:`~fastalex.OnnxError`: all :class:`~fastalex.FastalexError`, with
messages meant to be printed as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ModelChoiceError
from .hub import published_weights
from .images import PRESETS, preprocess_preset
from .lowp import PRECISIONS, WEIGHT_DTYPES
from .specs import VARIANTS

__all__ = ["load_model", "ModelChoice", "choose_model", "ModelChoiceError", "is_onnx"]


def is_onnx(path) -> bool:
    """Whether ``path`` names an ONNX model (by its extension, ``.onnx``)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".onnx")


@dataclass(frozen=True)
class ModelChoice:
    """Checked choices, and what they come to: ``kind`` is ``"random"`` (seeded random weights),
    ``"published"`` (``weights`` is a :class:`~fastalex.hub.PublishedWeights`), ``"onnx"``
    (``weights`` is the file) or ``"weights"`` (a file, a URL or a state dict)."""

    kind: str
    weights: object
    variant: str | None
    num_classes: int | None
    seed: int | None
    precision: str
    weight_dtype: str
    backend: str | None
    preprocess: str | None

    def load(self):
        """The model these choices make (see :func:`load_model`)."""
        from .models import alexnet
        if self.kind == "onnx":
            from .onnx_import import load_onnx
            model = load_onnx(self.weights, backend=self.backend, preprocess=self.preprocess or "torchvision")
            if self.num_classes is not None and self.num_classes != model.num_classes:
                raise ModelChoiceError(f"the ONNX model {os.fspath(self.weights)} has {model.num_classes} "
                                       f"classes, not {self.num_classes}")
            model.set_weight_dtype(self.weight_dtype, keep_float32=False)
        elif self.kind == "random":
            model = alexnet(self.variant or "torchvision", num_classes=self.num_classes or 1000,
                            backend=self.backend, seed=self.seed, weight_dtype=self.weight_dtype)
        else:
            model = alexnet(self.variant, num_classes=self.num_classes, weights=self.weights,
                            backend=self.backend, weight_dtype=self.weight_dtype)
        model.set_precision(self.precision)
        if self.preprocess is not None:
            model.preprocess = preprocess_preset(self.preprocess, crop=model.input_shape[1:])
        return model


def choose_model(weights=None, *, variant=None, num_classes=None, onnx=None, random_weights=False,
                 precision="float32", weight_dtype="float32", backend=None, preprocess=None,
                 seed=0) -> ModelChoice:
    """The choices of :func:`load_model`, checked (nothing is read or downloaded)."""
    if onnx is not None and weights is not None:
        raise ModelChoiceError(f"give an ONNX model ({os.fspath(onnx)}) or weights ({_shown(weights)}), not both")
    if random_weights and (weights is not None or onnx is not None):
        raise ModelChoiceError(f"random weights cannot be combined with the weights "
                               f"{_shown(weights if onnx is None else onnx)}; choose one")
    if variant is not None and variant not in VARIANTS:
        raise ModelChoiceError(f"unknown variant {variant!r}; valid variants are "
                               + ", ".join(repr(v) for v in VARIANTS))
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise ModelChoiceError(f"the number of classes must be a positive int, got {num_classes!r}")
    if precision not in PRECISIONS:
        raise ModelChoiceError(f"unknown precision {precision!r}; valid precisions are "
                               + ", ".join(repr(p) for p in PRECISIONS))
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelChoiceError(f"unknown weight dtype {weight_dtype!r}; valid weight dtypes are "
                               + ", ".join(repr(d) for d in WEIGHT_DTYPES))
    if precision == "bfloat16" and weight_dtype == "int8":
        raise ModelChoiceError("precision bfloat16 rounds every weight to bfloat16 itself, so it cannot use int8 "
                               "weights (weight_dtype='int8', --weight-dtype int8); store them as float32 or "
                               "bfloat16")
    if preprocess is not None and preprocess not in PRESETS:
        raise ModelChoiceError(f"unknown preprocess preset {preprocess!r}; valid presets are "
                               + ", ".join(repr(p) for p in PRESETS))
    if onnx is None and is_onnx(weights):  # an .onnx file given as the weights brings its architecture
        onnx, weights = weights, None
    common = dict(num_classes=num_classes, precision=precision, weight_dtype=weight_dtype, backend=backend,
                  preprocess=preprocess)
    if onnx is not None:
        if variant is not None:
            raise ModelChoiceError(f"the variant {variant!r} cannot be combined with an ONNX model "
                                   f"({os.fspath(onnx)} brings its own architecture)")
        return ModelChoice("onnx", onnx, None, seed=None, **common)
    if random_weights:
        return ModelChoice("random", None, variant, seed=seed, **common)
    meta = published_weights("imagenet" if weights is None else weights)
    if meta is not None:
        meta.check_fits(variant, num_classes)
        return ModelChoice("published", meta, variant, seed=None, **common)
    if not isinstance(weights, (str, os.PathLike, Mapping)):
        raise ModelChoiceError(f"weights must be 'imagenet', a path or URL of a .npz/.pth/.onnx file or a "
                               f"state dict, got {type(weights).__name__}")
    return ModelChoice("weights", weights, variant, seed=None, **common)


def load_model(weights=None, *, variant=None, num_classes=None, onnx=None, random_weights=False,
               precision="float32", weight_dtype="float32", backend=None, preprocess=None, seed=0):
    """A :class:`~fastalex.Model` from the usual choices, decided as the command line decides them.

    ``weights``: None or ``"imagenet"`` (torchvision's published weights, downloaded once and
    cached), a ``.npz``/``.pth`` file or its URL (the variant and the number of classes are read
    from it), a state dict, or an ``.onnx`` file (which brings its architecture too; ``onnx=``
    names one whatever its extension). ``random_weights``: seeded random weights (``seed``)
    instead, which needs no file and no network (the predictions mean nothing: for testing).
    ``variant`` (``"torchvision"``, ``"original"``) and ``num_classes`` are checked against the
    weights, or chosen with random weights (default ``"torchvision"``, 1000). ``precision``,
    ``weight_dtype`` and ``backend`` as for :func:`~fastalex.alexnet`. ``preprocess``: a preset
    (``"torchvision"``, ``"caffe"``) replacing the model's own preprocessing, cropped to its input.

    Raises :class:`ModelChoiceError` for choices that do not go together, and the weights' own
    errors (:class:`~fastalex.WeightsMismatchError`, :class:`~fastalex.WeightsFileError`,
    :class:`~fastalex.WeightsUnavailableError`, :class:`~fastalex.OnnxError`).
    """
    return choose_model(weights, variant=variant, num_classes=num_classes, onnx=onnx,
                        random_weights=random_weights, precision=precision, weight_dtype=weight_dtype,
                        backend=backend, preprocess=preprocess, seed=seed).load()


def _shown(weights) -> str:
    return "(a state dict)" if isinstance(weights, Mapping) else os.fspath(weights)
