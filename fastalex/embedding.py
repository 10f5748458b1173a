"""Feature vectors of images: a layer's output (``fc7`` by default), one vector per image.

::

    results = fastalex.embed(["photos/"], model=model, layer="fc7", normalize=True)
    vectors = np.stack([e.vector for e in results if e.ok])     # (N, 4096) float32

The same pipeline as :func:`fastalex.classify` (:mod:`fastalex.pipeline`: discovery, batching,
prefetching, per-file errors, ``client=`` for a Dask cluster); only the batch step differs: it runs
:meth:`~fastalex.Model.extract` up to ``layer`` and flattens each image's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pipeline import check_positive, expand_inputs, iter_results

__all__ = ["Embedding", "EmbedTask", "embed", "iter_embed", "check_layer"]


@dataclass
class Embedding:
    """The result for one input: its ``path`` (None for in-memory inputs), ``input`` (its
    position in the expanded input list) and ``vector`` (float32, 1-D), or ``error``."""

    path: str | None
    input: int
    vector: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class EmbedTask:
    """The flattened output of ``layer`` per image, L2-normalized if ``normalize``."""

    name = "embed"

    def __init__(self, layer, normalize=False):
        self.layer, self.normalize = layer, bool(normalize)

    def result(self, path, input):
        return Embedding(path, input)

    def compute(self, model, x):
        v = model.extract(x, self.layer)[self.layer]
        v = np.ascontiguousarray(v.reshape(len(x), -1), dtype=np.float32)
        if self.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64)).astype(np.float32)
            v /= np.maximum(norms, np.float32(1e-30))[:, None]  # an all-zero vector stays zero
        return v

    def fill(self, e, outputs, row):
        e.vector = outputs[row].copy()  # not a view: a kept vector does not keep its whole batch


def check_layer(model, layer):
    """Raise ValueError/TypeError now, not per image, if ``model`` has no layer ``layer``.
    ``model`` may be a recipe (checked on a weightless copy of its spec)."""
    if model is None or not hasattr(model, "resolve_layer"):
        from .distributed import recipe_of, skeleton
        model = skeleton(recipe_of(model))
    model.resolve_layer(layer)


def iter_embed(inputs, model=None, layer="fc7", normalize=False, batch_size=16, prefetch=True,
               timings=None, client=None):
    """Like :func:`embed` but a generator of :class:`Embedding`, in input order, as batches finish."""
    batch_size = check_positive("batch_size", batch_size)
    check_layer(model, layer)
    runner = None
    if client is not None:  # the Dask runner, handed to the pipeline
        from .distributed import runner as dask_runner
        runner = dask_runner(client)
    yield from iter_results(inputs, model, EmbedTask(layer, normalize), batch_size, prefetch, timings, runner)


def embed(inputs, model=None, layer="fc7", normalize=False, batch_size=16, progress=False, client=None):
    """Embed images: a list of :class:`Embedding`, one per input, in order.

    ``inputs`` as for :func:`fastalex.classify` (paths, folders, URLs, PIL images, arrays).
    ``layer``: an alias (``pool5``, ``fc6``, ``fc7`` (after their ReLU, as Caffe's blobs),
    ``fc8``/``logits``) or a dotted layer name (``"features.7"``); its output is flattened, so
    ``pool5`` gives 9216 values per image. ``normalize``: unit-length (L2) vectors. ``model``:
    default torchvision's AlexNet with the ImageNet weights. ``client``: a
    ``dask.distributed.Client`` to run on its workers (see :mod:`fastalex.distributed`).
    Vectors equal ``model.extract(x, layer)[layer]`` of the preprocessed images.
    """
    items = expand_inputs(inputs)
    results = iter_embed(items, model=model, layer=layer, normalize=normalize, batch_size=batch_size,
                         client=client)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(items), unit="img", desc="embed")
    return list(results)
