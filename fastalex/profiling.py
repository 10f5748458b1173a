"""Where the time goes: one forward pass timed step by step, and a bar chart of it.

:func:`profile` (also :meth:`Model.profile`) times the steps the model really runs: its plan
(:meth:`Sequential._plan`), in which a convolution or dense layer and the ``ReLU`` after it
are one fused step. Such a step is one row naming both layers (``"features.0+1"``, type
``"Conv2D+ReLU"``); its time is not split, since the ReLU costs nothing apart from the
convolution. Every leaf layer is in exactly one row (``row["layers"]``).

Each run executes the whole forward pass with a clock read between steps, so the steps see
the inputs, caches and thread pools they see in a plain forward pass; a row's time is the
median over ``repeat`` runs after ``warmup`` untimed ones, and the rows add up to about one
whole forward pass (:func:`time_forward` measures that for comparison).

:func:`plot_profile` draws rows as a horizontal bar chart with matplotlib (the optional extra
``fastalex[plot]``), through its object API and Agg canvas: no window, no change to pyplot's
global state.
"""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["profile", "time_forward", "plot_profile", "step_name", "PLOT_INSTALL", "forward_bytes",
           "available_memory", "check_batch_memory"]

PLOT_INSTALL = "pip install 'fastalex[plot]'"


def forward_bytes(model, batch) -> int:
    """A lower bound of the memory a forward pass of ``batch`` images needs, from the model's
    shapes: the float32 input, plus the largest input and output of any one layer (both are
    alive while it runs). Workspaces (an unfolded convolution input) come on top."""
    shape = tuple(model.input_shape)
    per_image = peak = int(np.prod(shape))
    for row in model.layer_table(shape):
        out = int(np.prod(row["output_shape"]))
        peak, per_image = max(peak, per_image + out), out
    return 4 * int(batch) * (int(np.prod(shape)) + peak)


def available_memory():
    """Bytes of memory available to a new allocation without swapping (Linux ``MemAvailable``;
    elsewhere the free physical pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_memory(model, batch, option="batch"):
    """ValueError, before anything is allocated, when ``batch`` images cannot fit in the memory
    available (see :func:`forward_bytes`); the message says which batch size would."""
    need, have = forward_bytes(model, batch), available_memory()
    if have is not None and need > have:
        per = forward_bytes(model, 1)
        raise ValueError(f"{option} {batch}: a forward pass needs at least {need / 2**30:.1f} GiB "
                         f"({per / 2**20:.1f} MiB per image) but {have / 2**30:.1f} GiB of memory is available; "
                         f"use a smaller {option} (below {have // per}, less the backend's workspace)")


def step_name(names) -> str:
    """A row's name: ``("features.0", "features.1") -> "features.0+1"``; one layer keeps its name."""
    first, rest = names[0], names[1:]
    prefix = first.rsplit(".", 1)[0] + "." if "." in first else ""
    return "+".join([first] + [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in rest])


def _check_runs(repeat, warmup):
    if not isinstance(repeat, (int, np.integer)) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"profile: repeat must be a positive int, got {repeat!r}")
    if not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"profile: warmup must be a non-negative int, got {warmup!r}")
    return int(repeat), int(warmup)


def profile(model, x, repeat=5, warmup=1) -> list[dict]:
    """Time one forward pass of ``model`` on the batch ``x`` ``(N, C, H, W)`` (or one image
    ``(C, H, W)``) step by step; one dict per step of the model's plan, in order:

    ``name`` (``"features.0+1"``), ``layers`` (the leaf layers it covers), ``type``
    (``"Conv2D+ReLU"``), ``output_shape`` (per image), ``macs`` (per image, as
    :meth:`Model.summary` counts them), ``seconds`` (median), ``gflops`` (``2 * macs * N /
    seconds / 1e9``), ``share`` (of the rows' total).
    """
    repeat, warmup = _check_runs(repeat, warmup)
    x, _ = model._batch(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    steps = model._plan()
    table = {r["name"]: r for r in model.layer_table(x.shape[1:])}
    times = np.zeros((repeat, len(steps)))
    clock = time.perf_counter
    for run in range(warmup + repeat):
        y = x
        with model._awake():  # as in a forward pass (Sequential.forward)
            t_prev = clock()
            for i, (_, layer, activation) in enumerate(steps):
                y = layer(y, activation) if activation else layer(y)
                t_now = clock()
                if run >= warmup:
                    times[run - warmup, i] = t_now - t_prev
                t_prev = t_now
    medians = np.median(times, axis=0)
    total = float(medians.sum())
    rows = []
    for (names, _, _), seconds in zip(steps, medians):
        info = [table[name] for name in names]
        macs = sum(r["macs"] for r in info)
        seconds = float(seconds)
        rows.append({
            "name": step_name(names),
            "layers": list(names),
            "type": "+".join(r["type"] for r in info),
            "output_shape": tuple(info[-1]["output_shape"]),
            "macs": int(macs),
            "seconds": seconds,
            "gflops": 2.0 * macs * n / seconds / 1e9 if seconds > 0 else 0.0,
            "share": seconds / total if total > 0 else 0.0,
        })
    return rows


def time_forward(model, x, repeat=5, warmup=1) -> float:
    """Median seconds of ``repeat`` whole forward passes ``model(x)`` after ``warmup`` untimed ones."""
    repeat, warmup = _check_runs(repeat, warmup)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _matplotlib_figure():
    """matplotlib's ``Figure`` class, or an ImportError that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"drawing the profile chart needs matplotlib: {PLOT_INSTALL}") from None
    return Figure


def plot_profile(profiles: dict, path, title=None) -> None:
    """Write a horizontal bar chart of step times to ``path`` (format from its extension).

    ``profiles``: ``{backend name: rows from profile()}``, the rows of every backend for the
    same model (bars side by side per step, first step at the top). Raises ImportError naming
    ``pip install 'fastalex[plot]'`` without matplotlib.
    """
    Figure = _matplotlib_figure()
    if not profiles:
        raise ValueError("plot_profile: no profiles to draw")
    names = [r["name"] + "  " + r["type"] for r in next(iter(profiles.values()))]
    k = len(profiles)
    height = 0.8 / k
    fig = Figure(figsize=(8, 0.28 * len(names) * max(1, k * 0.7) + 1.2), dpi=80)
    ax = fig.add_subplot()
    ypos = np.arange(len(names))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for j, (backend, rows) in enumerate(profiles.items()):
        ms = np.array([r["seconds"] * 1e3 for r in rows])
        offset = (j - (k - 1) / 2) * height
        bars = ax.barh(ypos + offset, ms, height=height, label=f"{backend} ({ms.sum():.1f} ms)",
                       color=colors[j % len(colors)])
        labels = [f"{v:.1f}" if v >= 0.05 else "" for v in ms]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.set_yticks(ypos, names, fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per forward pass (median)")
    ax.margins(x=0.12)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
