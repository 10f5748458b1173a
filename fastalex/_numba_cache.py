"""Is Numba's on-disk cache warm for fastalex's kernels? (for the CLI's "compiling" note)

The kernels are ``@njit(cache=True)``: the first run in a fresh install (or after an upgrade,
or with a new ``NUMBA_CACHE_DIR``) compiles them and times their schedules, 15-20 s for a
classify on 2 CPUs; later runs load them. Numba
keeps an index file per kernel; reading the indexes (a few ms) tells whether any compiled
kernel matching the current source is on disk.

On a cold cache the command line also starts a helper process (:func:`start_helper`,
:mod:`fastalex.backends._precompile`) that runs :func:`compile_all`: every kernel, compiled
into the same cache from the other end of a forward pass, so that two cores compile.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["kernels_cached", "COMPILE_NOTE", "start_helper", "compile_all"]

COMPILE_NOTE = "compiling kernels and timing their schedules, once: ~20 s"


def _cached_dispatchers():
    from numba.core.registry import CPUDispatcher
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("fastalex.backends"):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, CPUDispatcher) and hasattr(getattr(value, "_cache", None), "_cache_file"):
                yield value


def kernels_cached() -> bool | None:
    """True if compiled fastalex kernels for this source are in Numba's cache, False if none
    are (the next run compiles), None if it cannot tell (the numba backend is not imported,
    or Numba's internals changed)."""
    try:
        dispatchers = list(_cached_dispatchers())
        if not dispatchers:
            return None
        return any(d._cache._cache_file._load_index() for d in dispatchers)
    except Exception:  # private Numba API: never let the note break a run
        return None


def start_helper():
    """Start the process that compiles the kernels alongside this one (see
    :mod:`fastalex.backends._precompile`; ``FASTALEX_PRECOMPILE=0`` turns it off)."""
    from .backends import _precompile
    return _precompile.start(["-m", __name__])


def compile_all() -> None:
    """Run every kernel a forward pass of either AlexNet can need, on tiny inputs, through the
    layers a model uses (so Numba compiles the same signatures: planned parameters read-only,
    the same Python types), each schedule forced in turn (:func:`._tune.forced`), roughly in the
    reverse of the order a forward pass meets them."""
    import numpy as np

    from . import layers
    from .backends import _tune

    def run(layer, x, op=None, schedule=None, **kwargs):
        layer.backend = "numba"
        with _tune.forced(op, schedule) if op else contextlib.nullcontext():
            layer(x, **kwargs)

    features = np.linspace(-1, 1, 5 * 40, dtype=np.float32).reshape(5, 40)
    x = np.linspace(-1, 1, 32 * 13 * 13, dtype=np.float32).reshape(1, 32, 13, 13)
    dense = layers.Dense(40, 24, activation="relu", rng=0)
    conv = layers.Conv2D(32, 32, 3, padding=1, rng=0)
    # the classifier of one image (one sample: 4 rows x 1; five: a 4 x 4 tile and one left
    # over), the pooling and the chunked convolutions a forward pass meets after its first
    # layer, then what fewer runs need: the dense micro-kernel (batches), LRN (the 2012
    # network, whose first LRN the main process meets early anyway), and last the fused
    # convolution, which a forward pass usually meets first
    run(dense, features[:1], "linear", "tiled")
    run(dense, features, "linear", "tiled")
    run(layers.MaxPool2D(3, 2), x)
    run(conv, x, "conv2d", "winograd-chunked-4x4", activation="relu")
    run(dense, features, "linear", "microkernel")
    run(layers.LocalResponseNorm(5, 1e-4, 0.75, 2.0), x)
    run(conv, x, "conv2d", "winograd-fused-4x4", activation="relu")


if __name__ == "__main__":
    compile_all()
