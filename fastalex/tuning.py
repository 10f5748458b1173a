"""Measure the fast backend's schedules ahead of time: ``fastalex tune`` and :func:`tune`.

The fast backend measures, on the first pass of each shape, which schedule runs each
convolution and dense layer fastest on this machine, and keeps the winners on disk (see
``fastalex.backends._tune``). :func:`tune` runs those first passes now, for whole models and
the batch sizes you will use, so that a server or a batch job starts at full speed.
"""

from __future__ import annotations

import numpy as np

from .backends import get_backend
from .models import alexnet

__all__ = ["tune"]


def tune(variants=("torchvision", "original"), batch_sizes=(1, 16), again=False) -> dict:
    """Measure and keep the schedules of each AlexNet ``variant``'s layers at each batch size.

    ``again``: forget what was measured before on this machine (the wisdom file of this
    compile target) and measure anew. Returns ``{"wisdom": path, "rows": [{"variant", "batch",
    "layer", "kind", "schedule", "origin"}, ...]}``. Raises ``ValueError`` when tuning is off
    (``FASTALEX_TUNE=0``) or a batch size is not a positive integer.
    """
    fast = get_backend("numba")
    from .backends import _tune
    if not _tune.enabled():
        raise ValueError("tune: schedule tuning is off (FASTALEX_TUNE=0 in the environment); unset it to measure")
    sizes = []
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"tune: batch sizes must be positive integers, got {b!r}")
        sizes.append(int(b))
    if again:
        _tune.forget()
    rows = []
    rng = np.random.default_rng(0)
    from . import layers as L
    for variant in variants:
        model = alexnet(variant, backend="numba")
        for batch in sizes:
            x = rng.standard_normal((batch, *model.input_shape), dtype=np.float32)
            model(x)
            chosen = _tune.choices()
            for name, layer in model.named_layers():
                if isinstance(layer, L.Conv2D):
                    plan = layer.plan().data
                    picked = (getattr(plan, "chosen", None) or {}).get(batch)
                    if picked is None:
                        picked = (fast.describe_plan(plan), "only one")
                    rows.append({"variant": variant, "batch": batch, "layer": name, "kind": "conv2d",
                                 "schedule": picked[0], "origin": picked[1]})
                elif isinstance(layer, L.Dense) and layer.weight_dtype == "float32":
                    key = _tune.make_key("linear", (batch, layer.in_features), layer.weight.shape)
                    schedule, origin = chosen.get(key, ("tiled", "only one"))
                    rows.append({"variant": variant, "batch": batch, "layer": name, "kind": "dense",
                                 "schedule": schedule, "origin": origin})
    return {"wisdom": str(_tune.wisdom_path()), "rows": rows}
