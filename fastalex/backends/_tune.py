"""Schedules chosen by measurement on the user's machine, and kept on disk.

A convolution or dense layer can run several ways (Winograd in one launch or in cache-sized
chunks, im2col and BLAS, a register-tiled kernel or the micro-kernel, ...), and which is
fastest depends on the CPU, its caches, the thread count and the shape: the same layer won
with one schedule on one cloud machine and lost 2x with it on another of the same kind. So
the first call of each shape times the candidates on the real input (each once to warm up,
then :data:`REPEATS` rounds, interleaved, keeping each one's best time) and remembers the
winner: in memory, and in a JSON file per compile target (FFTW's "wisdom", cuDNN's benchmark
mode). Later processes read the file and measure nothing.

* ``FASTALEX_TUNE=0``: no measuring and no file; each op uses its heuristic default
  (deterministic, the same on every machine).
* :data:`FORCE`: tests pin a schedule per op (``{"conv2d": "winograd-fused"}``); :func:`forced`
  does it for a block (the first run's compile helper runs every schedule so).
* ``fastalex tune`` measures a model's shapes ahead of time (and ``--again`` re-measures).

The file lives in ``$FASTALEX_TUNE_DIR``, else next to Numba's cache when ``NUMBA_CACHE_DIR``
is set, else in fastalex's cache folder (``$FASTALEX_HOME``, ``$XDG_CACHE_HOME/fastalex`` or
``~/.cache/fastalex``), under ``tuning/<target>.json``. An unreadable or foreign file is
ignored (and rewritten); a file that cannot be written only costs the next process a
measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from .._home import CACHE_HOME_VARIABLES, cache_home
from . import _precompile, _target
from .tunables import TUNE_MAX_REPEATS as MAX_REPEATS
from .tunables import TUNE_MAX_SECONDS
from .tunables import TUNE_REPEATS as REPEATS
from .tunables import TUNE_SETTLE_SECONDS

#: op -> schedule name (or names, the first that applies), forced (tests, :func:`forced`); an op
#: not listed is tuned as usual
FORCE: dict = {}
#: bump when the candidates change meaning: older files are then ignored
VERSION = 2

_lock = threading.Lock()
_memory: dict = {}        # key string -> schedule name (this process)
_loaded_file = None       # the path _memory was read from
_origin: dict = {}        # key string -> "measured" | "file" | "default" | "forced"


def enabled() -> bool:
    """Whether schedules are measured (``FASTALEX_TUNE`` unset or on)."""
    return _target.env_flag("FASTALEX_TUNE", True)


def tuning_dir() -> Path:
    """The folder of the wisdom files (see the module's docstring)."""
    explicit = os.environ.get("FASTALEX_TUNE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    numba_cache = os.environ.get("NUMBA_CACHE_DIR")
    if numba_cache:
        return Path(numba_cache).expanduser() / "fastalex-tuning"
    return cache_home() / "tuning"


_ENV_OF_PATH = ("FASTALEX_TUNE_DIR", "NUMBA_CACHE_DIR") + CACHE_HOME_VARIABLES  # what tuning_dir() reads
_path_memo: tuple = (None, None)  # (the variables above, the path they gave)


def wisdom_path() -> Path:
    """The wisdom file of this target: worked out again only when one of the variables that
    choose the folder changed (every tuned call asks, and building the path costs more than
    a small layer's kernel)."""
    global _path_memo
    env = tuple(os.environ.get(name) for name in _ENV_OF_PATH)
    if _path_memo[0] != env:
        _path_memo = (env, tuning_dir() / f"{_target.key()}.json")
    return _path_memo[1]


def _load():
    """Read the wisdom file of this target once (or again if the folder changed)."""
    global _loaded_file
    path = wisdom_path()
    if _loaded_file == path:
        return
    _loaded_file = path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return
    entries = data.get("schedules")
    if isinstance(entries, dict):
        for k, v in entries.items():
            if isinstance(k, str) and isinstance(v, str):
                _memory.setdefault(k, v)
                _origin.setdefault(k, "file")


def _save():
    path = wisdom_path()
    measured = {k: v for k, v in _memory.items() if _origin.get(k) in ("measured", "file")}
    payload = {"version": VERSION, "target": _target.target().describe(), "schedules": measured}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".wisdom-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home, full disk: the next process measures again


@contextlib.contextmanager
def forced(op: str, schedule: str):
    """Run ``op`` with ``schedule`` (see :data:`FORCE`) inside the block, as before it after."""
    before = FORCE.get(op)
    FORCE[op] = schedule
    try:
        yield
    finally:
        if before is None:
            FORCE.pop(op, None)
        else:
            FORCE[op] = before


def make_key(op: str, *parts) -> str:
    """The key of one op's shape: the op, its arguments' shapes and the thread count."""
    return f"{op}|" + "|".join(str(p) for p in parts) + f"|t{_target.threads()}"


def lookup(key: str):
    """``(schedule, origin)`` chosen for ``key`` so far, or ``(None, None)``."""
    with _lock:
        if enabled():
            _load()
        return _memory.get(key), _origin.get(key)


def run(op: str, key: str, candidates: dict, default: str):
    """The result of the schedule chosen for ``key`` among ``candidates`` (name -> zero-argument
    function returning the result): forced, else remembered, else measured now (when tuning
    is on), else ``default``."""
    forced = FORCE.get(op)
    if forced is not None:
        wanted = (forced,) if isinstance(forced, str) else tuple(forced)
        usable = [name for name in wanted if name in candidates]
        if not usable:
            raise ValueError(f"{op}: schedule {forced!r} does not apply here; candidates: {sorted(candidates)}")
        _origin[key], _memory[key] = "forced", usable[0]
        return candidates[usable[0]]()
    if len(candidates) == 1 or not enabled():
        name = default if default in candidates else next(iter(candidates))
        with _lock:
            if key not in _memory:
                _memory[key], _origin[key] = name, "default"
        return candidates[name]()
    name, origin = lookup(key)
    if name in candidates and origin != "default":
        return candidates[name]()
    name, result = _measure(candidates)
    with _lock:
        _memory[key], _origin[key] = name, "measured"
        _save()
    return result


def _measure(candidates: dict):
    """Time every candidate on the real input: one warm-up call each (compiles, page faults),
    then interleaved rounds: :data:`REPEATS` (fewer once past :data:`TUNE_MAX_SECONDS`), and
    more, up to :data:`MAX_REPEATS`, while the timed rounds have taken less than
    :data:`TUNE_SETTLE_SECONDS`. The fastest best time wins; its last result is returned.
    Nothing is timed while a first run's compile helper runs (:func:`._precompile.stop`)."""
    best = {}
    results = {}
    start = time.perf_counter()
    for name, fn in candidates.items():
        results[name] = fn()
    _precompile.stop()  # a first run's compile helper must not share the CPU with the timing
    timed_from = time.perf_counter()
    for rounds in range(1, MAX_REPEATS + 1):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            results[name] = fn()
            dt = time.perf_counter() - t0
            best[name] = min(best.get(name, dt), dt)
        now = time.perf_counter()
        if now - start > TUNE_MAX_SECONDS or (rounds >= REPEATS and now - timed_from >= TUNE_SETTLE_SECONDS):
            break
    winner = min(best, key=best.get)
    return winner, results[winner]


def describe_choices(chosen: dict, name=str) -> str:
    """``"batch 1: winograd-fused (measured), batch 16: ..."`` for a plan's ``chosen`` (batch ->
    ``(schedule, origin)``, see :func:`run_for`); ``name`` spells a schedule."""
    return ", ".join(f"batch {n}: {name(s)} ({origin})" for n, (s, origin) in sorted(chosen.items()))


def run_for(chosen: dict, batch: int, op: str, key: str, candidates: dict, default: str):
    """:func:`run`, then note in ``chosen[batch]`` the ``(schedule, origin)`` that ran: a layer's
    plan keeps one per batch size, for ``Model.summary()``."""
    result = run(op, key, candidates, default)
    chosen[batch] = lookup(key)
    return result


def choices() -> dict:
    """Every schedule chosen in this process: key -> (schedule, origin)."""
    with _lock:
        return {k: (v, _origin.get(k)) for k, v in _memory.items()}


def forget(memory_only: bool = False):
    """Forget the choices made (and the file, unless ``memory_only``): the next call measures."""
    global _loaded_file
    with _lock:
        _memory.clear()
        _origin.clear()
        _loaded_file = None
        if not memory_only:
            try:
                wisdom_path().unlink()
            except OSError:
                pass
