"""Every exception fastalex raises on purpose, under one base class, :class:`FastalexError`.

``except fastalex.FastalexError`` catches them all. Each also derives from the built-in
exception it always was (``ValueError`` for bad input, ``RuntimeError`` for what could not be
obtained), so existing ``except ValueError`` code keeps working. Their messages are complete
sentences meant for people: the command line prints them as they are.

This module imports nothing from fastalex (it is the bottom layer: see docs/architecture.md).
The classes are also importable from where they were first defined (``fastalex.weights``,
``fastalex.models``, ``fastalex.images``, ...).
"""

from __future__ import annotations

__all__ = ["FastalexError", "WeightsFileError", "UnsafePickleError", "WeightsFileNotFoundError",
           "CachedWeightsError", "WeightsUnavailableError", "WeightsMismatchError", "ImageError",
           "OnnxError", "LabelsError", "ModelLoadError", "ModelChoiceError"]


class FastalexError(Exception):
    """The base class of every exception fastalex defines."""


# ----------------------------------------------------------------------------- weights

class WeightsFileError(FastalexError, ValueError):
    """A weights file that cannot be read: corrupt, truncated, or not weights at all."""


class UnsafePickleError(WeightsFileError):
    """A pickle that asks for something other than tensors and plain containers."""


class WeightsFileNotFoundError(WeightsFileError, FileNotFoundError):
    """The weights file does not exist (a :class:`WeightsFileError` and a ``FileNotFoundError``)."""


class CachedWeightsError(WeightsFileError):
    """A cache entry that fails its check (damaged or replaced after it was written)."""


class WeightsUnavailableError(FastalexError, RuntimeError):
    """Published weights could not be obtained (offline, HTTP error, interrupted, bad checksum)."""


class WeightsMismatchError(FastalexError, ValueError):
    """Weights that do not fit the AlexNet asked for. ``fits`` is ``(variant, num_classes)`` of
    the AlexNet they do fit (None if none), ``source`` names the weights, ``detail`` lists the
    missing/unexpected keys and shape mismatches when none fits."""

    def __init__(self, message, source, fits=None, detail=None):
        super().__init__(message)
        self.source, self.fits, self.detail = source, fits, detail


class ModelChoiceError(FastalexError, ValueError):
    """Model choices that do not go together (:func:`fastalex.load_model`): weights and random
    weights, an ONNX model and a variant, int8 weights computed in bfloat16, ..."""


class ModelLoadError(FastalexError, RuntimeError):
    """A worker could not build the model from its recipe (weights missing or unreadable)."""


# ----------------------------------------------------------------------------- inputs

class ImageError(FastalexError, ValueError):
    """An image could not be read or converted; ``path`` names it and ``reason`` says why."""

    def __init__(self, path, reason):
        self.path = None if path is None else str(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


class OnnxError(FastalexError, ValueError):
    """An ONNX file that cannot be read or run: ``path`` names it, ``reason`` says why; the
    message is "cannot use ONNX model PATH: REASON"."""

    def __init__(self, path, reason):
        self.path, self.reason = str(path), str(reason)
        super().__init__(f"cannot use ONNX model {self.path}: {self.reason}")


class LabelsError(FastalexError, ValueError):
    """A labels file is missing, unreadable or has the wrong number of lines."""
