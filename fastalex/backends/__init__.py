"""The backend registry: the one place that maps a backend name to its implementation.

Every backend is a module exposing the same functions with the same signatures (the contract,
with its optional hooks, is :mod:`fastalex.backends.contract`; a test checks every backend):

``conv2d(x, weight, bias, stride, padding, dilation, groups, relu, plan=None)``
``prepare_conv2d(weight, bias, stride, dilation, groups)`` (optional: weights transformed once,
passed back to ``conv2d`` as ``plan``)
``max_pool2d(x, kernel, stride, padding, ceil_mode)``
``avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)``
``adaptive_avg_pool2d(x, output_size)``
``local_response_norm(x, size, alpha, beta, k)``
``linear(x, weight, bias, relu)``
``linear_lowp(x, weight, bias, relu)`` (``weight`` a :class:`fastalex.lowp.LowpWeight`)
``relu(x)``

They receive validated input only: C-contiguous float32 arrays (NCHW for images, ``(N, F)``
for ``linear``), weights in torch's layouts, ``bias`` a float32 vector or ``None``, pair
arguments as ``(h, w)`` tuples of ints and ``relu`` a bool. ``fastalex.functional`` does
the checking; backends only compute.

The default backend is ``numba``; the environment variable ``FASTALEX_BACKEND`` or
:func:`set_backend` changes it. :func:`configure_threads` is the one function that changes a
process-wide Numba setting, and only when called.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType

#: name -> module implementing it (imported on first use: Numba is slow to import).
BACKENDS = {
    "numpy": "fastalex.backends.reference",
    "numba": "fastalex.backends.fast",
}
DEFAULT_BACKEND = "numba"

_default: str | None = None
_loaded: dict[str, ModuleType] = {}


def _check_name(name, source="backend"):
    if not isinstance(name, str) or name not in BACKENDS:
        valid = ", ".join(repr(n) for n in BACKENDS)
        raise ValueError(f"unknown {source} {name!r}; valid backends are {valid}")
    return name


def get_backend_name() -> str:
    """The name of the backend used when an op is called with ``backend=None``."""
    global _default
    if _default is None:
        env = os.environ.get("FASTALEX_BACKEND")
        _default = _check_name(env, "backend in FASTALEX_BACKEND") if env else DEFAULT_BACKEND
    return _default


def set_backend(name: str) -> None:
    """Make ``name`` (``"numba"`` or ``"numpy"``) the default backend of this process."""
    global _default
    _default = _check_name(name)


def get_backend(name: str | None = None) -> ModuleType:
    """The module implementing backend ``name`` (the default one when ``name`` is None)."""
    name = get_backend_name() if name is None else _check_name(name)
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(BACKENDS[name])
    return module


# ----------------------------------------------------------------------------- threads

#: Numba's threading layers (``NUMBA_THREADING_LAYER``'s values naming one layer).
THREADING_LAYERS = ("workqueue", "omp", "tbb")
_threading_layer: str | None = None  # chosen by configure_threads(), None: Numba's own choice


def tbb_available() -> bool:
    """Whether Numba can run its ``tbb`` layer here (the ``tbb`` package, TBB 2021.6 or newer:
    a dependency of fastalex on x86-64)."""
    try:
        from numba.np.ufunc import parallel
        parallel._check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401  (loads libtbb; starts no thread)
    except (ImportError, OSError, ValueError, AttributeError):
        return False
    return True


def configure_threads(layer: str | None = None) -> str:
    """Choose the threading layer Numba starts its worker threads with, for the whole process.

    fastalex changes no process-wide setting by itself: without this call Numba picks its layer
    as it always does (``NUMBA_THREADING_LAYER``, else TBB, OpenMP or workqueue, whichever is
    installed first). The ``fastalex`` command calls ``configure_threads()`` when it starts.

    ``layer=None`` leaves an explicit ``NUMBA_THREADING_LAYER`` to Numba, and otherwise means
    ``"tbb"`` where TBB is installed, else ``"workqueue"``. Both survive ``fork()``
    (``multiprocessing``'s default start method on Linux; under GNU OpenMP, Numba aborts such a
    child), and their idle threads do not spin against OpenBLAS's. TBB also starts a kernel in
    ~2 us where workqueue wakes its sleeping threads in ~80 us (measured here, in a VM): a
    forward pass launches 15-90 kernels, and TBB ran AlexNet 15-30% faster.

    The layer applies to every Numba library in the process, and only before Numba starts its
    threads (the first parallel kernel anyone runs): at once if Numba is imported, else when
    fastalex's numba backend is. Raises ``RuntimeError`` if Numba's threads already run on
    another layer. Returns the layer.
    """
    if layer is None and os.environ.get("NUMBA_THREADING_LAYER"):
        return os.environ["NUMBA_THREADING_LAYER"]
    if layer is None:
        layer = "tbb" if tbb_available() else "workqueue"
    if layer not in THREADING_LAYERS:
        valid = ", ".join(repr(n) for n in THREADING_LAYERS)
        raise ValueError(f"configure_threads: unknown threading layer {layer!r}; valid layers are {valid}")
    global _threading_layer
    _threading_layer = layer
    if "numba" in sys.modules:
        _apply_threading_layer(strict=True)
    return layer


def _apply_threading_layer(strict=False):
    """Hand the layer :func:`configure_threads` chose (if any) to Numba, before its threads start.

    Too late (Numba's threads run another layer): ``RuntimeError`` if ``strict``, else a warning
    (the fast backend's import, after something else started Numba's threads).
    """
    if _threading_layer is None:
        return
    import numba
    try:
        active = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer can still be chosen
        numba.config.THREADING_LAYER = _threading_layer
        return
    if active != _threading_layer:
        message = (f"configure_threads: Numba's threads already run on the {active!r} layer, "
                   f"{_threading_layer!r} cannot be chosen any more; call configure_threads() "
                   f"before any parallel Numba code runs, or set NUMBA_THREADING_LAYER")
        if strict:
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
