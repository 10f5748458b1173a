"""Classify and embed on a Dask cluster, with the same pipeline as in one process.

::

    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")          # or fastalex.distributed.local_cluster(2)
    model = fastalex.alexnet("torchvision", weights="/shared/alexnet.npz")
    results = fastalex.classify(["s3://bucket/photos/"], model=model, client=client)
    # or, as batches finish: fastalex.classify.iter_classify / fastalex.embedding.iter_embed

How it works:

* The client lists the inputs (local folders with ``os.walk``, folder URLs with fsspec) and cuts
  them into batches of ``batch_size`` paths. Only paths travel to the workers; **workers read
  the images themselves** (local paths on a shared file system, or fsspec URLs).
* The model travels as a *recipe* (:func:`recipe_of`): its spec (a small dict), its seed and
  where its weights are (a path or URL the workers can read, or ``"imagenet"``), never the
  arrays. Each worker process builds the model once and keeps it (:func:`load_model`, a cache
  keyed by weights + spec + seed + backend), so 233 MB of weights are read once per process,
  not once per task.
* Batches are submitted a window at a time (a few per worker thread) and their results are
  yielded in input order as they arrive. A worker that dies loses its running and finished
  batches; the scheduler runs them again elsewhere, and since every batch's result is read by
  the client exactly once, every input comes back exactly once.
* Per-image errors are results, as in one process. A model that cannot be loaded on a worker
  raises :class:`ModelLoadError` on the client.

Dask is optional: ``pip install 'fastalex[dask]'``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
import uuid

from ._files import is_url
from .backends._target import usable_cpus
from ._moved import moved
from ._optional import install_hint, require

__all__ = ["DASK_HINT", "require_dask", "recipe_of", "model_recipe", "load_model", "skeleton", "runner",
           "iter_distributed",
           "local_cluster", "connect", "check_address", "SchedulerError", "BadSchedulerAddress",
           "ModelLoadError", "loads"]

DASK_HINT = install_hint("dask")


from .errors import FastalexError, ModelLoadError  # noqa: E402  (defined with the other exceptions)


def require_dask():
    """Import ``dask.distributed`` or raise ImportError naming the extra to install."""
    return require("distributed", extra="dask", purpose="a distributed run", package="Dask")


# ----------------------------------------------------------------------------- recipes

def recipe_of(model) -> dict:
    """How a worker builds ``model``: ``{"spec", "seed", "weights", "backend", "preprocess",
    "weight_dtype"}``.

    ``model`` may be a :class:`~fastalex.Model` made by :func:`~fastalex.alexnet` or
    :func:`~fastalex.build` (they remember their spec, seed and weights file), a recipe dict
    (returned as is), or None (torchvision's AlexNet with the ImageNet weights). A model whose
    weights were given as arrays (or changed with ``load_state_dict``) has no recipe: save the
    weights to a file the workers can read and load the model from it.
    """
    if model is None:
        from .specs import torchvision_spec
        return {"spec": torchvision_spec(1000), "seed": None, "weights": "imagenet", "backend": None}
    if isinstance(model, dict) and "spec" in model:
        return {"seed": None, "weights": None, "backend": None, **model}
    recipe = getattr(model, "recipe", None)
    if recipe is None:
        if hasattr(model, "spec"):
            raise ValueError("client=: this model's weights were given as arrays, so the workers cannot "
                             "load it themselves; save them (fastalex.save_weights) to a path or URL the "
                             "workers can read and pass alexnet(variant, weights=that_path)")
        raise TypeError(f"client=: model must be a fastalex Model or None, got {type(model).__name__}")
    dense = [layer for _, layer in model.named_layers() if hasattr(layer, "weight_dtype")]
    return {**recipe, "backend": model.backend, "preprocess": dict(model.preprocess),
            "weight_dtype": dense[0].weight_dtype if dense else "float32"}


def model_recipe(weights=None, *, variant=None, num_classes=None, onnx=None, random_weights=False,
                 precision="float32", weight_dtype="float32", backend=None, preprocess=None, seed=0,
                 fill_cache=False) -> dict:
    """The recipe of the model :func:`fastalex.load_model` makes of the same choices (checked the
    same way, by :func:`fastalex.loading.choose_model`), without loading here what the workers
    load themselves: random weights travel as their seed, published weights as their name (each
    worker's cache; ``fill_cache``: download them here first, for local workers sharing this
    machine's cache), a weights file or URL as its path, read once here to check that it fits
    (a file the workers read elsewhere is not checked by this). ``backend`` None: this process's
    default, so the workers compute as it would."""
    from .backends import get_backend_name
    from .errors import ModelChoiceError
    from .loading import choose_model
    from .specs import VARIANTS
    choice = choose_model(weights, variant=variant, num_classes=num_classes, onnx=onnx,
                          random_weights=random_weights, precision=precision, weight_dtype=weight_dtype,
                          backend=backend, preprocess=preprocess, seed=seed)
    if choice.kind == "onnx":
        raise ModelChoiceError("an ONNX model cannot run on a Dask cluster yet: convert it once "
                               "(fastalex.save_weights(fastalex.load_onnx(FILE), 'model.npz')) and pass the .npz")
    if choice.kind == "random":
        recipe = {"spec": VARIANTS[variant or "torchvision"](num_classes or 1000), "seed": seed, "weights": None}
    elif choice.kind == "published":
        meta = choice.weights
        if fill_cache:
            meta.fetch()
        recipe = {"spec": VARIANTS[meta.variant](meta.num_classes), "seed": None, "weights": meta.name}
    else:  # a file or URL: read once here, to check that it fits and learn its spec
        import dataclasses
        model = dataclasses.replace(choice, precision="float32", weight_dtype="float32", preprocess=None).load()
        recipe = recipe_of(model)
        recipe = {"spec": recipe["spec"], "seed": None, "weights": recipe["weights"]}
    recipe.update(backend=backend or get_backend_name(), weight_dtype=weight_dtype, precision=precision)
    if preprocess is not None:
        from .images import preprocess_preset
        recipe["preprocess"] = preprocess_preset(preprocess, crop=recipe["spec"]["input_shape"][1:])
    return recipe


def _key(recipe):
    """Weights (with the file's size and mtime, so a file replaced on a long-lived cluster is
    read again), spec, seed and backend."""
    weights = recipe.get("weights")
    try:
        st = os.stat(weights) if isinstance(weights, str) and not is_url(weights) else None
        stamp = (st.st_size, st.st_mtime_ns) if st else None
    except OSError:
        stamp = None
    return (str(weights), stamp, repr(recipe["spec"]), recipe.get("seed"), recipe.get("backend"),
            repr(recipe.get("preprocess")), recipe.get("weight_dtype"), recipe.get("precision"))


_MODELS: dict = {}
_LOCK = threading.Lock()
#: how many times this process built each model (a test checks: once per worker process)
_LOADS: collections.Counter = collections.Counter()


def loads() -> dict:
    """``{weights: times built}`` in this process (run it on workers with ``client.run``)."""
    out = collections.Counter()
    for key, n in _LOADS.items():
        out[key[0]] += n
    return dict(out)


def load_model(recipe):
    """The model of ``recipe``, built once per process and kept (thread-safe)."""
    key = _key(recipe)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _build(recipe)
            _MODELS[key] = model
            _LOADS[key] += 1
    return model


def _build(recipe):
    from .models import Model
    weights = recipe.get("weights")
    try:
        if weights is None:
            model = Model(recipe["spec"], seed=recipe.get("seed", 0), backend=recipe.get("backend"))
        else:
            from .hub import resolve_weights
            state = resolve_weights(weights, variant=recipe["spec"].get("variant", "torchvision"))
            model = Model(recipe["spec"], seed=None, backend=recipe.get("backend"))
            model.load_state_dict(state)
        if recipe.get("preprocess"):  # e.g. --preprocess caffe
            model.preprocess = dict(recipe["preprocess"])
        if recipe.get("weight_dtype", "float32") != "float32":  # e.g. --weight-dtype bfloat16
            model.set_weight_dtype(recipe["weight_dtype"], keep_float32=False)
        if recipe.get("precision", "float32") != "float32":  # --precision bfloat16
            model.set_precision(recipe["precision"])
        return model
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
    # raised outside the except block: Dask pickles an error with its __context__, and some
    # errors (with required constructor arguments) do not survive that, leaving a bare Exception
    raise ModelLoadError(f"cannot load the model on worker (pid {os.getpid()}, host {_hostname()}) "
                         f"from weights {weights!r}: {reason}")


def _hostname():
    import socket
    return socket.gethostname()


_SKELETONS: dict = {}


def skeleton(recipe):
    """A weightless model of ``recipe``'s spec (zero placeholders, never touched: no memory)
    to check layer names and read ``num_classes`` on the client without loading weights."""
    recipe = recipe_of(recipe) if not isinstance(recipe, dict) else recipe
    key = repr(recipe["spec"])
    if key not in _SKELETONS:
        from .models import Model
        _SKELETONS[key] = Model(recipe["spec"], seed=None)
    return _SKELETONS[key]


# ----------------------------------------------------------------------------- running

#: one forward pass at a time per worker process: its kernels already use all of the worker's
#: cores, so with several task threads one decodes the next batch while another runs the model
#: (the same overlap as the prefetching of a one-process run), instead of two forward passes
#: fighting over the same cores
_FORWARD = threading.Lock()


def _run_on_worker(recipe, task, batch, start):
    """One batch on a worker: the model from this process's cache, decoding outside and the
    forward pass inside the process's forward lock."""
    from .images import get_preprocess
    from .pipeline import decode_batch, forward_batch
    model = load_model(recipe)
    decoded, _ = decode_batch(batch, get_preprocess(model))
    with _FORWARD:
        return forward_batch(task, model, batch, decoded, start)


def _check_items(items):
    for item in items:
        if item.path is None:
            raise TypeError("client=: inputs must be paths or URLs the workers can read, not "
                            "in-memory images or arrays")


def runner(client):
    """The pipeline's runner (see :func:`fastalex.pipeline.iter_results`) for the workers of
    ``client``: ``runner(client)(items, model, task, batch_size, timings)``."""

    def run(items, model, task, batch_size, timings=None):
        return iter_distributed(client, items, model, task, batch_size, timings=timings)

    return run


def iter_distributed(client, items, model, task, batch_size, timings=None, window=None):
    """Run ``task`` over ``items`` on ``client``'s workers; yield the results in input order.

    ``window``: batches in flight at once (default: three per worker thread, at least 4), so
    a million paths are not all submitted at once and results do not pile up unread.
    ``timings``, if a dict, gets ``"wait"`` (seconds the client waited for results) and
    ``"batches"``.
    """
    require_dask()
    _check_items(items)
    recipe = recipe_of(model)
    if recipe.get("backend") is None:  # compute as this process would, whatever the workers' default
        from .backends import get_backend_name
        recipe["backend"] = get_backend_name()
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = max(4, 3 * threads)
    batches = [(start, items[start:start + batch_size]) for start in range(0, len(items), batch_size)]
    if timings is not None:
        timings.setdefault("wait", 0.0)
        timings.setdefault("batches", 0)
    token = uuid.uuid4().hex[:12]
    pending: collections.deque = collections.deque()
    next_batch = 0

    def submit():
        nonlocal next_batch
        start, batch = batches[next_batch]
        future = client.submit(_run_on_worker, recipe, task, batch, start, pure=False, retries=1,
                               key=f"fastalex-{task.name}-{token}-{next_batch}")
        pending.append(future)
        next_batch += 1

    try:
        while next_batch < len(batches) and len(pending) < window:
            submit()
        while pending:
            future = pending.popleft()
            t0 = time.perf_counter()
            results = future.result()
            if timings is not None:
                timings["wait"] += time.perf_counter() - t0
                timings["batches"] += 1
            future.release()
            if next_batch < len(batches):
                submit()
            yield from results
    finally:
        for future in pending:  # interrupted: cancel what is still queued
            future.cancel()


# ----------------------------------------------------------------------------- clusters

@contextlib.contextmanager
def local_cluster(workers, threads_per_worker=None, silence_logs=logging.ERROR, **kwargs):
    """A ``Client`` on a ``LocalCluster`` of ``workers`` processes on 127.0.0.1, closed on exit.

    Each worker gets ``threads_per_worker`` threads (default: cores // workers, at least 1), and
    Numba and BLAS are set to the same number of threads in each worker process, so the workers
    together use every core once. The workers ignore SIGINT (see :mod:`fastalex._dask_preload`):
    Ctrl-C is the client's to handle.
    """
    require_dask()
    import dask
    from distributed import Client, LocalCluster
    threads = threads_per_worker or max(1, usable_cpus() // workers)
    env = {name: str(threads) for name in
           ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # BLAS threads must be set before the worker starts; and no MALLOC_TRIM_THRESHOLD_ (Dask's
    # default): setting it turns off glibc's adaptive mmap threshold, so every large temporary
    # array is a fresh mmap, page-faulted again on every batch (measured: +30% CPU per image)
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), "MALLOC_TRIM_THRESHOLD_": None,
                 **{k: v for k, v in env.items() if k != "NUMBA_NUM_THREADS"}}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=silence_logs,
                               env=env, preload=["fastalex._dask_preload"], **kwargs)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


#: seconds to wait for ``--scheduler ADDRESS`` to answer (connecting and Dask's handshake)
CONNECT_TIMEOUT = 30


class SchedulerError(FastalexError, ConnectionError):
    """The scheduler address is not one (``ValueError`` too), or no Dask scheduler answered
    there in time."""


class BadSchedulerAddress(SchedulerError, ValueError):
    """Not a scheduler address (``garbage``, ``""``, ``foo://x``)."""


def check_address(address) -> str:
    """``address`` if it reads as a Dask scheduler address (``tcp://host:8786``,
    ``host:8786``, ``tls://...``), else :class:`BadSchedulerAddress`. Nothing is contacted."""
    require_dask()
    from distributed.comm.addressing import parse_address, parse_host_port
    text = address.strip() if isinstance(address, str) else ""
    if not text:
        raise BadSchedulerAddress(f"the scheduler address is empty ({address!r}); give one such as "
                                  "tcp://host:8786")
    try:
        scheme, location = parse_address(text)
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < int(port) < 65536:
                raise ValueError(f"no host or port in {text!r}")
        else:
            from distributed.comm.registry import get_backend
            get_backend(scheme)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadSchedulerAddress(f"{address!r} is not a Dask scheduler address ({exc}); give one "
                                  "such as tcp://host:8786") from None
    return text


def _deadline_client(timeout):
    """Dask's ``Client`` whose start (connection *and* handshake) ends within ``timeout`` + 1 s:
    Dask itself bounds only the TCP connection, and waits forever for the handshake of a
    server that accepts connections but says nothing."""
    from distributed import Client

    class DeadlineClient(Client):
        def __init__(self, *args, **kwargs):
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.close(timeout=2)  # stop its event loop thread and connection pool
                raise

        async def _start(self, *args, **kwargs):
            return await asyncio.wait_for(super()._start(*args, **kwargs), timeout + 1)

    return DeadlineClient


@contextlib.contextmanager
def connect(address, timeout=None):
    """A ``Client`` of the running scheduler at ``address`` (``tcp://host:8786``), closed on
    exit. Within ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`) a Dask scheduler must
    have answered there, else :class:`SchedulerError` naming the address."""
    address = check_address(address)
    timeout = timeout or CONNECT_TIMEOUT
    try:
        client = _deadline_client(timeout)(address, timeout=timeout)
    except (TimeoutError, asyncio.TimeoutError):  # connected, but no handshake came back
        raise SchedulerError(f"no Dask scheduler answered at {address} within {timeout:g} s (something "
                             "accepts connections there but does not speak Dask's protocol?)") from None
    except (OSError, ValueError, TypeError) as exc:  # refused, unknown host, TLS not configured
        raise SchedulerError(f"cannot reach the Dask scheduler at {address} ({exc})") from None
    try:
        yield client
    finally:
        client.close()


#: moved in 0.2: fetching weights from URLs is fastalex.hub's
__getattr__ = moved("fastalex.distributed", {"fetch_weights": "fastalex.hub"})
