"""fastalex: AlexNet inference on the CPU.

A readable NumPy reference path and a fast path of parallel Numba kernels behind one API::

    import fastalex
    model = fastalex.alexnet("torchvision", weights="imagenet")
    x = fastalex.load_image("photo.jpg", variant="torchvision")
    probs, classes = model.predict(x, top=5)
"""

from .errors import FastalexError
from . import errors, functional, layers
from .backends import configure_threads, get_backend_name, set_backend
from .precision import bf16_paths, set_bf16_path
from .sequential import Sequential
from .models import Model, WeightsMismatchError, alexnet, build, detect_variant
from .weights import WeightsFileError, WeightsUnavailableError, load_weights, save_weights
from .hub import IMAGENET1K_V1
from .images import ImageError, load_image, load_images
from .labels import imagenet_labels
from .onnx_import import OnnxError, load_onnx
from .classify import classify  # the name is the function; import helpers with ``from fastalex.classify import ...``
from .embedding import embed
from .loading import ModelChoiceError, load_model
from . import viz  # pictures: viz.filters, viz.activations, viz.explain

__version__ = "0.1.0"

import sys as _sys
if "numba" in _sys.modules:  # Numba already imported: choose its threading layer before its threads start
    from .backends import auto_configure_threads as _auto
    _auto()

__all__ = ["FastalexError", "errors", "alexnet", "build", "Model", "Sequential", "functional", "layers", "set_backend", "configure_threads",
           "get_backend_name", "load_weights", "save_weights", "WeightsFileError", "WeightsUnavailableError",
           "WeightsMismatchError", "detect_variant", "IMAGENET1K_V1", "load_image", "load_images", "ImageError",
           "imagenet_labels", "classify", "embed", "load_model", "ModelChoiceError", "load_onnx", "OnnxError", "viz", "bf16_paths", "set_bf16_path",
           "__version__"]
