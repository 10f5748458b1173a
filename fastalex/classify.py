"""Classify files, folders, PIL images or arrays, in batches, reporting bad inputs instead of failing.

::

    for p in fastalex.classify(["photos/", "cat.jpg"], top=3):
        print(p.path, p.error or list(zip(p.labels, p.probabilities)))

The batch pipeline (finding inputs, decoding on a thread, batching) is
:mod:`fastalex.pipeline`'s; this module is its classification step (:class:`ClassifyTask`),
the labels, and the front door. ``client=`` runs the batches on a Dask cluster
(:mod:`fastalex.distributed`, handed to the pipeline as its runner).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._moved import moved
from .labels import imagenet_labels, load_labels
# the pipeline's names that go with classify(): the inputs it takes and the default model
from .pipeline import SkippedFolderWarning, check_positive, default_model, expand_inputs, iter_results

__all__ = ["Prediction", "classify", "iter_classify", "expand_inputs", "default_model", "SkippedFolderWarning",
           "ClassifyTask", "model_num_classes"]


@dataclass
class Prediction:
    """The result for one input: its ``path`` (None for in-memory inputs) and ``input``
    (its position in the expanded input list), then the top classes best first (``indices``,
    ``labels`` (None entries without labels), ``probabilities``), or ``error`` if it failed."""

    path: str | None
    input: int
    indices: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    probabilities: list = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top(self) -> list[dict]:
        return [{"index": i, "label": l, "probability": p}
                for i, l, p in zip(self.indices, self.labels, self.probabilities)]

    def to_dict(self) -> dict:
        """``{"path": ..., "top": [{"index", "label", "probability"}, ...]}`` or
        ``{"path": ..., "error": ...}`` (``"input": n`` instead of a path for in-memory inputs)."""
        head = {"path": self.path} if self.path is not None else {"input": self.input}
        return {**head, "error": self.error} if self.error else {**head, "top": self.top}


# ----------------------------------------------------------------------------- labels

def _resolve_labels(labels, num_classes):
    if labels is None:
        return imagenet_labels() if num_classes == len(imagenet_labels()) else None
    if labels is False:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return load_labels(labels, num_classes)
    labels = tuple(str(l) for l in labels)
    if len(labels) != num_classes:
        raise ValueError(f"classify: {len(labels)} labels given for a model with {num_classes} classes")
    return labels


class ClassifyTask:
    """The top ``top`` classes of each image (labels are attached by the caller)."""

    name = "classify"

    def __init__(self, top):
        self.top = top

    def result(self, path, input):
        return Prediction(path, input)

    def compute(self, model, x):
        return model.predict(x, top=self.top)

    def fill(self, p, outputs, row):
        probs, idx = outputs
        p.indices = [int(c) for c in idx[row]]
        p.probabilities = [float(v) for v in probs[row]]
        p.labels = [None] * len(p.indices)


def _runner(client):
    """The pipeline's runner for ``client=``: None (here) or the Dask runner."""
    if client is None:
        return None
    from .distributed import runner
    return runner(client)


def model_num_classes(model):
    """``model.num_classes``, also for a model recipe (see :mod:`fastalex.distributed`)."""
    if model is None:
        return 1000
    if hasattr(model, "num_classes"):
        return model.num_classes
    from .distributed import skeleton
    return skeleton(model).num_classes


def iter_classify(inputs, model=None, top=5, batch_size=16, labels=None, prefetch=True, timings=None,
                  client=None):
    """Like :func:`classify` but a generator yielding one :class:`Prediction` per input, in input
    order, as batches finish. ``inputs`` may also be the list from :func:`expand_inputs`.
    ``timings``, if a dict, gets the seconds spent in ``"decode"``, ``"forward"`` and ``"wait"``
    (the time the model waited for decoding, which ``prefetch`` hides behind the forward pass).
    ``client``: a ``dask.distributed.Client`` to run the batches on its workers."""
    top = check_positive("top", top)
    batch_size = check_positive("batch_size", batch_size)
    labels = _resolve_labels(labels, model_num_classes(model))
    for p in iter_results(inputs, model, ClassifyTask(top), batch_size, prefetch, timings, _runner(client)):
        if labels is not None and p.ok:
            p.labels = [labels[c] for c in p.indices]
        yield p


def classify(inputs, model=None, top=5, batch_size=16, labels=None, progress=False, client=None):
    """Classify images; a list of :class:`Prediction`, one per input, in order.

    ``inputs``: a path, a PIL image, an array, or a list of them. Folders are searched
    recursively for image files (by extension, case-insensitive; hidden files skipped); uint8
    arrays are images ``(H, W[, 3|4])``, float arrays ``(3, H, W)`` are taken as already
    preprocessed. Inputs that cannot be read get a Prediction with ``error`` set; the others
    are still classified. ``model``: a :class:`~fastalex.Model` (default: torchvision's AlexNet
    with the ImageNet weights). ``labels``: None (ImageNet names for 1000-class models), a
    labels file, a sequence of names, or False for none. ``progress``: show a tqdm bar on stderr.
    ``client``: a ``dask.distributed.Client``; the batches then run on its workers, which read
    the files and load the model themselves (see :mod:`fastalex.distributed`).
    """
    items = expand_inputs(inputs)
    results = iter_classify(items, model=model, top=top, batch_size=batch_size, labels=labels,
                            client=client)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(items), unit="img", desc="classify")
    return list(results)


#: moved in 0.2: the batch pipeline to fastalex.pipeline, the URL rule to fastalex._files
__getattr__ = moved("fastalex.classify", {"read_url": "fastalex.pipeline", "as_items": "fastalex.pipeline",
                                          "is_url": "fastalex._files"})
