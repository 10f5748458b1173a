"""The backend registry: the one place that maps a backend name to its implementation.

Every backend is a module exposing the same functions with the same signatures:

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
:func:`set_backend` changes it.
"""

from __future__ import annotations

import importlib
import os
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
