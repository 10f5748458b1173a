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
:func:`set_backend` changes it. :func:`configure_threads` is the one function that changes a
process-wide Numba setting; the fast backend makes the same choice when first used, unless
someone else chose (:func:`auto_configure_threads`).
"""

from __future__ import annotations

import importlib
import os
import sys
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
#: ``FASTALEX_THREADING_LAYER``: ``auto`` (the default: TBB where it loads, else workqueue, on
#: the first fast op, unless the user or ``NUMBA_THREADING_LAYER`` chose), ``numba`` (leave the
#: choice to Numba, as a plain Numba program), or one of :data:`THREADING_LAYERS`.
THREADS_ENV = "FASTALEX_THREADING_LAYER"
_threading_layer: str | None = None  # chosen by configure_threads() or on the first fast op
_tbb_loaded: bool | None = None


def _tbb_library_paths():
    """Where the ``tbb`` wheel put its runtime library: pip installs it as data, into
    ``<prefix>/lib`` (``<venv>/lib`` in a virtual environment), which is not on the dynamic
    loader's path, so Numba's ``import tbbpool`` cannot find it by name. The wheel's file list
    says where it is; ``sys.prefix/lib`` is the fallback."""
    names = {"linux": ("libtbb.so.12",), "darwin": ("libtbb.12.dylib",), "win32": ("tbb12.dll",)}
    wanted = names.get(sys.platform, ("libtbb.so.12",))
    paths = []
    try:
        from importlib import metadata
        for f in metadata.files("tbb") or ():
            if f.name in wanted:
                paths.append(str(f.locate()))
    except Exception:  # no tbb distribution, or no RECORD: try the usual place
        pass
    folder = ("Library", "bin") if sys.platform == "win32" else ("lib",)
    for base in (sys.prefix, sys.base_prefix):
        paths += [os.path.join(base, *folder, name) for name in wanted]
    return [p for p in dict.fromkeys(paths) if os.path.isfile(p)]


def _load_tbb() -> bool:
    """Load the TBB runtime by its path, globally, so that Numba's TBB pool (which links
    ``libtbb.so.12`` by name) finds it; once per process. True if a TBB library is loaded."""
    global _tbb_loaded
    if _tbb_loaded is None:
        import ctypes
        _tbb_loaded = False
        for path in _tbb_library_paths():
            try:
                ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            except OSError:
                continue
            _tbb_loaded = True
            break
    return _tbb_loaded


def tbb_available() -> bool:
    """Whether Numba can run its ``tbb`` layer here (the ``tbb`` package, TBB 2021.6 or newer:
    a dependency of fastalex on x86-64), loading the wheel's library by its path if need be."""
    _load_tbb()
    try:
        from numba.np.ufunc import parallel
        parallel._check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401  (links libtbb; starts no thread)
    except (ImportError, OSError, ValueError, AttributeError):
        return False
    return True


def configure_threads(layer: str | None = None) -> str:
    """Choose the threading layer Numba starts its worker threads with, for the whole process.

    You rarely need to call this: the first fast op makes the same choice (see
    :func:`auto_configure_threads`) unless you, ``NUMBA_THREADING_LAYER`` or
    ``FASTALEX_THREADING_LAYER=numba`` chose otherwise. ``layer=None`` leaves an explicit
    ``NUMBA_THREADING_LAYER`` to Numba, and otherwise means ``"tbb"`` where TBB loads (from a
    venv too: the wheel's library is loaded by its path), else ``"workqueue"``. Both survive
    ``fork()`` (under GNU OpenMP, a ``multiprocessing`` child of a process that ran a kernel
    aborts), and their idle threads do not spin against other thread pools. TBB also starts a
    kernel in microseconds where workqueue wakes its sleeping threads (tens of microseconds),
    and a forward pass launches 15-90 kernels.

    The layer applies to every Numba library in the process, and only before Numba starts its
    threads (the first parallel kernel anyone runs). Raises ``RuntimeError`` if Numba's threads
    already run on another layer. Returns the layer.
    """
    if layer is None and os.environ.get("NUMBA_THREADING_LAYER"):
        return os.environ["NUMBA_THREADING_LAYER"]
    if layer is None:
        layer = "tbb" if tbb_available() else "workqueue"
    if layer not in THREADING_LAYERS:
        valid = ", ".join(repr(n) for n in THREADING_LAYERS)
        raise ValueError(f"configure_threads: unknown threading layer {layer!r}; valid layers are {valid}")
    if layer == "tbb":
        _load_tbb()
    global _threading_layer
    _threading_layer = layer
    if "numba" in sys.modules:
        _apply_threading_layer(strict=True)
    return layer


def _threads_started() -> str | None:
    """The layer Numba's threads run on, or None if no parallel kernel has run yet."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def auto_configure_threads() -> str | None:
    """The default, made when the fast backend is first used: :func:`configure_threads`'s choice
    (TBB where it loads, else workqueue), unless a layer was already chosen (this function or
    :func:`configure_threads` before, ``NUMBA_THREADING_LAYER``, ``numba.config.THREADING_LAYER``
    set by the program) or ``FASTALEX_THREADING_LAYER`` says otherwise (``numba``: Numba's own
    choice; a layer name: that layer), or Numba's threads already run. Never a warning. Returns
    the layer chosen, or None if the choice was left to someone else."""
    if _threading_layer is not None:
        _apply_threading_layer()
        return _threading_layer
    wish = os.environ.get(THREADS_ENV, "auto").strip().lower() or "auto"
    if wish == "numba" or os.environ.get("NUMBA_THREADING_LAYER"):
        return None
    import numba
    if numba.config.THREADING_LAYER not in ("default", "", None) or _threads_started() is not None:
        return None
    if wish != "auto" and wish not in THREADING_LAYERS:
        valid = ", ".join(["auto", "numba", *THREADING_LAYERS])
        raise ValueError(f"{THREADS_ENV}={wish!r} is not a threading layer; valid values are {valid}")
    return configure_threads(None if wish == "auto" else wish)


def threading_layer() -> str:
    """The layer fastalex's kernels run on: Numba's active layer once a kernel ran, else the one
    chosen for them (``"default"``: Numba's choice, not made yet)."""
    active = _threads_started() if "numba" in sys.modules else None
    if active:
        return active
    if _threading_layer:
        return _threading_layer
    return os.environ.get("NUMBA_THREADING_LAYER") or "default"


def _apply_threading_layer(strict=False):
    """Hand the layer chosen (if any) to Numba, before its threads start.

    Too late (Numba's threads run another layer): ``RuntimeError`` if ``strict``; otherwise the
    layer Numba runs stays (:func:`threading_layer` and ``summary()`` say which).
    """
    if _threading_layer is None:
        return
    import numba
    active = _threads_started()
    if active is None:  # no parallel kernel has run yet: the layer can still be chosen
        numba.config.THREADING_LAYER = _threading_layer
        return
    if active != _threading_layer and strict:
        raise RuntimeError(
            f"configure_threads: Numba's threads already run on the {active!r} layer, "
            f"{_threading_layer!r} cannot be chosen any more; call configure_threads() "
            f"before any parallel Numba code runs, or set NUMBA_THREADING_LAYER")


def runtime_info() -> dict:
    """What the fast kernels run with: the threading layer, the thread count, the CPU and the
    instruction set they are compiled for (``summary()``, ``bench`` and ``profile`` print it)."""
    import numba
    from . import _target, _tune
    t = _target.target()
    return {"threading_layer": threading_layer(), "threads": numba.get_num_threads(),
            "cpu": t.cpu_model, "compiled_for": t.cpu_name, "isa": t.isa, "bf16_units": list(t.bf16_units),
            "micro_kernel": f"{t.mr}x{t.nr}",
            "tuning": "on" if _tune.enabled() else "off (FASTALEX_TUNE=0)",
            "wisdom": str(_tune.wisdom_path()) if _tune.enabled() else None}


def describe_runtime() -> str:
    """:func:`runtime_info` in two lines."""
    info = runtime_info()
    from . import _target
    tuning = info["tuning"] + (f", kept in {info['wisdom']}" if info["wisdom"] else "")
    return (f"threads: {info['threads']} on Numba's {info['threading_layer']!r} layer; "
            f"schedules tuned: {tuning}\n"
            f"CPU: {_target.target().describe()}")
