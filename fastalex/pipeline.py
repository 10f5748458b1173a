"""The batch pipeline every front door shares: find the inputs, decode them a batch at a time
on a thread, run a batch step on each, one result per input, in order.

::

    items = expand_inputs(["photos/", "cat.jpg"])       # nothing decoded yet
    for result in iter_results(items, model, task, batch_size=16):
        ...

One pipeline for :func:`fastalex.classify`, :func:`fastalex.embed` and the Dask runner
(:mod:`fastalex.distributed`): inputs are expanded into items (files, folders searched
recursively, URLs, PIL images, arrays), cut into batches of ``batch_size``, each batch is
decoded (bad inputs become error strings, never exceptions) and handed to a *task* that runs
the model on it and makes one result per item. A task is a small picklable object, so a Dask
worker can run the same batch step (:func:`decode_batch`, then :func:`forward_batch`)::

    task.result(path, input)   -> a fresh result (``path``, ``input``, ``error`` attributes)
    task.compute(model, x)     -> per-row outputs for a stacked batch ``x``
    task.fill(result, outputs, row)

Here, images are decoded by one worker thread that decodes the next batch while the model runs
on the current one (Pillow releases the GIL while decoding and resizing), so at most about two
batches of decoded images are in memory however many files there are. Elsewhere, a *runner*
(``runner=``, e.g. :func:`fastalex.distributed.runner`) is handed the batches instead; this
module never imports one.
"""

from __future__ import annotations

import functools
import io
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import _files
from ._files import is_url
from .images import ImageError, _describe, get_preprocess, is_image_file, open_image, preprocess_image

__all__ = ["expand_inputs", "as_items", "SkippedFolderWarning", "read_url", "decode_batch", "forward_batch",
           "iter_results", "default_model", "check_positive"]


@dataclass
class _Item:
    path: str | None
    source: object = None  # what to decode: a path, a PIL image, an array
    error: str | None = None


# ----------------------------------------------------------------------------- inputs

class SkippedFolderWarning(UserWarning):
    """A folder reached again while searching (a symlink loop, or two links to one folder):
    skipped so that nothing is searched twice and a loop cannot run forever."""


def _walk(directory: str):
    """Image files under ``directory``, recursively, sorted, hidden entries skipped. Symlinked
    folders are followed; one that leads to a folder already searched (a loop) is skipped
    with a :class:`SkippedFolderWarning`."""
    errors = []
    try:
        st = os.stat(directory)
        seen = {(st.st_dev, st.st_ino): directory}
    except OSError:
        seen = {}
    for root, dirs, files in os.walk(directory, onerror=errors.append, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            full = os.path.join(root, d)
            try:
                st = os.stat(full)
            except OSError as exc:
                errors.append(exc)
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                warnings.warn(SkippedFolderWarning(
                    f"{full}: skipped, it leads to {seen[key]}, which is already searched"
                    + (" (a symlink loop)" if full.startswith(seen[key] + os.sep) else "")), stacklevel=2)
                continue
            seen[key] = full
            keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            if not name.startswith(".") and is_image_file(name):
                yield _Item(os.path.join(root, name), os.path.join(root, name))
        while errors:
            exc = errors.pop(0)
            yield _Item(exc.filename or directory, error=f"cannot list directory ({exc.strerror or exc})")
    while errors:
        exc = errors.pop(0)
        yield _Item(exc.filename or directory, error=f"cannot list directory ({exc.strerror or exc})")


def _expand_one(x):
    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        if is_url(path):
            yield from _expand_url(path)
        elif os.path.isdir(path):
            yield from _walk(path)
        elif os.path.exists(path):
            yield _Item(path, path)  # a file named explicitly is tried whatever its extension
        else:
            yield _Item(path, error="no such file or directory")
    elif isinstance(x, Image.Image):
        yield _Item(None, x)
    elif isinstance(x, np.ndarray):
        if x.ndim == 4:  # a batch: of preprocessed tensors (float) or of uint8 images
            for a in x:
                yield _Item(None, a)
        else:
            yield _Item(None, x)
    else:
        raise TypeError(f"classify: inputs must be paths, PIL images or arrays, got {type(x).__name__}")


def _expand_url(url):
    """A URL names one image, except a folder URL (ending in ``/``), which is listed with
    fsspec (recursively, image extensions only, sorted), as local folders are."""
    if not url.endswith("/") or _files.scheme_of(url) in ("http", "https"):
        yield _Item(url, url)
        return
    try:
        fs, root = _files.fsspec_for(url).core.url_to_fs(url)
        names = sorted(fs.find(root))
    except Exception as exc:
        yield _Item(url, error=f"cannot list directory ({type(exc).__name__}: {exc})")
        return
    protocol = url.split("://", 1)[0]
    for name in names:
        if is_image_file(name) and not any(part.startswith(".") for part in name.split("/")):
            full = name if "://" in name else f"{protocol}://{name}"
            yield _Item(full, full)


def read_url(url) -> bytes:
    """The bytes of the image at ``url`` (``http(s)://`` with urllib, ``file://`` as a local
    path, anything else through fsspec), at most :data:`fastalex._files.MAX_IMAGE_BYTES` of them
    and, over http(s), within :data:`fastalex._files.IMAGE_DEADLINE` seconds in all."""
    return _files.read_bounded(url, _files.MAX_IMAGE_BYTES, _files.IMAGE_DEADLINE)


def expand_inputs(inputs) -> list[_Item]:
    """Paths (files, or folders searched recursively for image extensions, following symlinked
    folders), PIL images and arrays -> a flat list of inputs in order. Nothing is decoded here.
    A folder reached twice (a symlink loop) is skipped with a :class:`SkippedFolderWarning`."""
    if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)):
        inputs = [inputs]
    items = []
    for x in inputs:
        items.extend(_expand_one(x))
    return items


# ----------------------------------------------------------------------------- decoding

def _decode(item: _Item, preprocess: dict) -> np.ndarray:
    src = item.source
    if isinstance(src, np.ndarray) and src.dtype != np.uint8:  # an already preprocessed tensor
        if src.ndim != 3 or src.shape[0] != 3:
            raise ImageError(None, f"a preprocessed array must be (3, H, W), got {src.shape}")
        return np.ascontiguousarray(src, dtype=np.float32)
    if isinstance(src, str) and is_url(src):
        if _files.scheme_of(src) == "file":  # a local file: the same rules as a path
            try:
                path = _files.local_path(src)
            except _files.FileProblem as problem:
                raise ImageError(src, problem.reason) from None
            return preprocess_image(open_image(path), preprocess)
        try:
            data = read_url(src)
        except ImportError as exc:
            raise ImageError(src, str(exc)) from None
        except _files.FileProblem as problem:  # too large, too slow
            raise ImageError(src, problem.reason) from None
        except Exception as exc:
            raise ImageError(src, f"cannot read ({type(exc).__name__}: {exc})") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                return preprocess_image(open_image(img), preprocess)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(src, _describe(exc)) from None
    return preprocess_image(open_image(src), preprocess)


def decode_batch(items, preprocess):
    """Decode a batch: ``(results, seconds)`` with ``results[i]`` an array or an error string."""
    start = time.perf_counter()
    results = []
    for item in items:
        if item.error:
            results.append(item.error)
            continue
        try:
            results.append(_decode(item, preprocess))
        except ImageError as exc:
            results.append(exc.reason)
        except Exception as exc:  # never let one bad input stop the rest
            results.append(f"cannot decode image ({type(exc).__name__}: {exc})")
    return results, time.perf_counter() - start


# ----------------------------------------------------------------------------- the batch step

def forward_batch(task, model, batch, decoded, start):
    """The results of one batch: ``task`` run on the decoded inputs (same-shape inputs stacked
    together), an error string of :func:`decode_batch` becoming that input's ``error``."""
    out = [task.result(item.path, start + i) for i, item in enumerate(batch)]
    groups: dict = {}  # same-shape inputs run together (file inputs all share the crop size)
    for i, d in enumerate(decoded):
        if isinstance(d, str):
            out[i].error = d
        else:
            groups.setdefault(d.shape, []).append(i)
    for shape, members in groups.items():
        x = np.stack([decoded[i] for i in members])
        try:
            outputs = task.compute(model, x)
        except ValueError as exc:  # e.g. a preprocessed array of a size the model cannot take
            for i in members:
                out[i].error = str(exc)
            continue
        for row, i in enumerate(members):
            task.fill(out[i], outputs, row)
    return out


def as_items(inputs) -> list[_Item]:
    """``inputs`` expanded (see :func:`expand_inputs`), or as is if it already is such a list."""
    if isinstance(inputs, list) and inputs and all(isinstance(i, _Item) for i in inputs):
        return inputs
    return expand_inputs(inputs)


def iter_results(inputs, model, task, batch_size=16, prefetch=True, timings=None, runner=None):
    """Run ``task`` over ``inputs`` in batches: one result per input, in input order, as
    batches finish. Here (``model`` None: :func:`default_model`), or by ``runner``, a callable
    ``runner(items, model, task, batch_size, timings)`` yielding the results in order (the Dask
    runner, :func:`fastalex.distributed.runner`, whose workers load the model themselves)."""
    batch_size = check_positive("batch_size", batch_size)
    items = as_items(inputs)
    if runner is not None:
        yield from runner(items, model, task, batch_size, timings)
        return
    model = default_model() if model is None else model
    yield from _iter_local(items, model, task, batch_size, prefetch, timings)


def _iter_local(items, model, task, batch_size, prefetch, timings):
    preprocess = get_preprocess(model)
    for key in ("decode", "forward", "wait"):
        if timings is not None:
            timings.setdefault(key, 0.0)
    batches = [(start, items[start:start + batch_size]) for start in range(0, len(items), batch_size)]
    if not batches:
        return

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastalex-decode") if prefetch else None

    def submit(k):
        if k >= len(batches):
            return None
        if pool is None:
            return _Done(decode_batch(batches[k][1], preprocess))
        return pool.submit(decode_batch, batches[k][1], preprocess)

    try:
        pending = submit(0)
        for k, (start, batch) in enumerate(batches):
            t0 = time.perf_counter()
            decoded, decode_seconds = pending.result()
            waited = time.perf_counter() - t0
            pending = submit(k + 1)  # decode the next batch while this one runs
            t1 = time.perf_counter()
            results = forward_batch(task, model, batch, decoded, start)
            if timings is not None:
                timings["decode"] += decode_seconds
                timings["wait"] += waited
                timings["forward"] += time.perf_counter() - t1
            del decoded
            yield from results
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value



# ----------------------------------------------------------------------------- the model and checks

@functools.lru_cache(maxsize=2)
def default_model(backend=None):
    """torchvision's AlexNet with the ImageNet weights (downloaded once, then cached)."""
    from .models import alexnet
    return alexnet("torchvision", weights="imagenet", backend=backend)


def check_positive(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"classify: {name} must be a positive int, got {value!r}")
    return int(value)
