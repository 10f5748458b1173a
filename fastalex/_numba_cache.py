"""Is Numba's on-disk cache warm for fastalex's kernels? (for the CLI's "compiling" note)

The kernels are ``@njit(cache=True)``: the first run in a fresh install (or after an upgrade,
or with a new ``NUMBA_CACHE_DIR``) compiles them and times their schedules, 15-20 s for a
classify on 2 CPUs; later runs load them. Numba
keeps an index file per kernel; reading the indexes (a few ms) tells whether any compiled
kernel matching the current source is on disk.
"""

from __future__ import annotations

import sys

__all__ = ["kernels_cached", "COMPILE_NOTE"]

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
