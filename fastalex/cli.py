"""The ``fastalex`` command: classify images, show a model, manage weights, time the backends,
and see inside the network (``show``, ``explain``, ``profile``: :mod:`fastalex.cli_insight`).

Every error ends as one ``fastalex: error: ...`` line on stderr and an exit code, never a
traceback: 0 success, 1 some inputs failed (or an unexpected error), 2 usage errors (bad
options, missing or unavailable weights, bad labels file), 130 interrupted, 141 stdout closed
(e.g. piped into ``head``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings

from . import __version__
from .errors import FastalexError, WeightsFileError

PROG = "fastalex"
PROGRESS_MIN_IMAGES = 8  # show a progress bar above this many images (and only on a terminal)

CLASSIFY_EPILOG = """\
weights: by default torchvision's ImageNet weights, downloaded once and cached
(`fastalex weights download`); --weights FILE loads a .npz/.pth state dict (the variant and
the number of classes are read from the file) or an .onnx model (its architecture too; say
--preprocess caffe for Caffe-converted models such as the ONNX zoo's bvlcalexnet and
caffenet); --random-weights runs without weights.
offline: --weights FILE, or fill the cache with
`fastalex weights download --url file:///path/to/alexnet-owt-7be5be79.pth`.

with --workers N or --scheduler ADDRESS the batches run on a Dask cluster; its workers read
the images and load the weights themselves (a path or URL they can reach, or 'imagenet' from
their own cache, $FASTALEX_HOME). --output FILE with --resume continues an interrupted run.

exit status: 0 all images classified, 1 some could not be read, 2 usage error,
130 interrupted (rerun with --resume to continue an --output)."""

EMBED_EPILOG = """\
weights as for `fastalex classify`. The vectors are float32, in input order; images that
cannot be read are reported on stderr and left out (--resume tries them again). While running,
vectors go to FILE.journal; the output is written (to a temporary name, then renamed) when the
run ends, so an interruption never leaves a torn file: rerun with --resume to continue. A
resume must use the settings of the run it continues (layer, --normalize, weights, precision,
preprocessing); one run at a time writes FILE (FILE.lock).

exit status: 0 all images embedded, 1 some could not be read, 2 usage error, 130 interrupted."""


class UsageError(FastalexError):
    """Bad options or missing/unavailable weights: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"{PROG} {__version__}")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _variants():
    from .specs import VARIANTS
    return list(VARIANTS)


def _backends():
    from .backends import BACKENDS
    return list(BACKENDS)


def _add_model_options(p):
    p.add_argument("--variant", choices=_variants(), default=None,
                   help="model variant (default: torchvision, or whatever the --weights file holds)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="FILE|URL|imagenet", default="imagenet",
                   help="weights file (.npz/.pth), a URL of one, an .onnx model, or 'imagenet' (default)")
    w.add_argument("--random-weights", action="store_true",
                   help="seeded random weights (for testing: the labels are meaningless)")
    p.add_argument("--num-classes", type=_positive_int, metavar="N",
                   help="classes of the model (with --random-weights; otherwise read from the weights)")
    p.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                   help="images per forward pass, and per task on a cluster (default 16)")
    p.add_argument("--backend", choices=_backends(), default=None,
                   help="compute backend (default: numba, or $FASTALEX_BACKEND)")
    _add_weight_dtype(p)


def _add_run_options(p):
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: skip the paths already in --output")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run on a local Dask cluster of N worker processes (needs fastalex[dask])")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler, e.g. tcp://host:8786 (needs fastalex[dask])")
    p.add_argument("--timings", action="store_true", help="print where the time went on stderr")


def _add_weight_dtype(p):
    from .lowp import PRECISIONS, WEIGHT_DTYPES
    p.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="float32",
                   help="storage of the dense layers' weights: float32 (default), bfloat16 (half the "
                        "bytes, faster at small batches) or int8 (per-channel scales); convolutions "
                        "stay float32")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="how convolutions and dense layers compute: float32 (default, exact) or "
                        "bfloat16 (inputs and weights rounded to bfloat16, float32 sums; on AMX or "
                        "AVX512-BF16 where the CPU has them)")


def bf16_note(model) -> str:
    """``", bfloat16 products on amx"`` (the path that runs) or ``""`` for float32."""
    path = model.bf16_path
    return "" if path is None else f", bfloat16 products on {path}"


def _presets():
    from .images import PRESETS
    return list(PRESETS)


def _add_preprocess(p):
    p.add_argument("--preprocess", choices=_presets(), default=None,
                   help="image preprocessing: torchvision (RGB, [0,1], ImageNet mean/std) or caffe "
                        "(BGR, 0-255, mean 104/117/123 subtracted); default: the model's own "
                        "(torchvision for .onnx files)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="AlexNet inference on the CPU (NumPy reference and Numba fast path).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("classify", help="classify image files or folders",
                       description="Classify images: files, or folders searched recursively.",
                       epilog=CLASSIFY_EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or URLs")
    _add_model_options(p)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (for non-ImageNet weights)")
    p.add_argument("--top", type=_positive_int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line per image")
    p.add_argument("--output", metavar="FILE",
                   help="write JSON lines to FILE (appended and fsynced a batch at a time) instead of stdout")
    _add_run_options(p)
    _add_preprocess(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", help="write feature vectors (fc7, ...) of images to a file",
                       description="Write one feature vector per image (a layer's output, flattened) "
                                   "to FILE: .npy (plus FILE-stem.paths.jsonl), .npz (paths, vectors) or "
                                   ".parquet (columns path, path_bytes, vector; needs pyarrow).",
                       epilog=EMBED_EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or URLs")
    p.add_argument("--layer", default="fc7", metavar="NAME",
                   help="pool5, fc6, fc7 (after ReLU, as in Caffe), fc8/logits, or a layer name such as "
                        "features.7 (default fc7)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="FILE.npy, FILE.npz or FILE.parquet")
    p.add_argument("--normalize", action="store_true", help="unit-length (L2-normalized) vectors")
    _add_model_options(p)
    _add_run_options(p)
    _add_preprocess(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("summary", help="print the model's layers, shapes, parameters and MACs",
                       description="Print a model summary.")
    p.add_argument("--variant", choices=_variants(), default=None, help="model variant (default torchvision)")
    p.add_argument("--num-classes", type=_positive_int, default=None, metavar="N", help="classes (default 1000)")
    p.add_argument("--weights", metavar="FILE.onnx", default=None,
                   help="summarize an .onnx model (its architecture) instead of a variant")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("weights", help="download the ImageNet weights or show where they are cached",
                       description="Manage the cached ImageNet weights.")
    wsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    wsub.required = True
    d = wsub.add_parser("download", help="download torchvision's ImageNet weights into the cache",
                        description="Download torchvision's AlexNet ImageNet weights and cache them as .npz.")
    d.add_argument("--url", help="download from this URL instead (default: $FASTALEX_WEIGHTS_URL or torchvision's)")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=cmd_weights_download)
    d = wsub.add_parser("path", help="print the cache directory and the cached weights file",
                        description="Print the cache directory ($FASTALEX_HOME) and the cached weights, if any.")
    d.set_defaults(func=cmd_weights_path)

    p = sub.add_parser("bench", help="time the whole model on random input",
                       description="Time a forward pass of the whole model (random weights and input): "
                                   "median and min of several runs after a warm-up.")
    p.add_argument("--variant", choices=_variants(), default=None, help="model variant (default torchvision)")
    p.add_argument("--weights", metavar="FILE.onnx", default=None,
                   help="time an .onnx model instead of a variant, and ONNX Runtime on the same file "
                        "if installed (--peers does not apply)")
    p.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--backend", choices=_backends() + ["all"], default="all", help="backend(s) to time (default all)")
    p.add_argument("--repeat", type=_positive_int, default=5, metavar="N", help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)")
    _add_weight_dtype(p)
    p.add_argument("--peers", choices=["auto", "none"], default="auto",
                   help="auto (default): also time PyTorch and ONNX Runtime on the same model, weights, "
                        "input and number of threads, when they are installed; none: only fastalex")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="measure the fastest schedule of every layer on this machine, ahead of time",
                       description="Run the first forward passes now: the fast backend measures which schedule "
                                   "runs each convolution and dense layer fastest on this machine at each batch "
                                   "size, and keeps the winners on disk for every later run.")
    p.add_argument("--variant", choices=_variants() + ["all"], default="all", help="model variant (default all)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 16), metavar="N,N,...",
                   help="batch sizes to tune for (default 1,16)")
    p.add_argument("--again", action="store_true", help="forget what was measured before and measure anew")
    p.set_defaults(func=cmd_tune)

    from .cli_insight import add_commands
    add_commands(sub)  # show filters|activations, explain, profile
    from .serve.command import add_command as add_serve
    add_serve(sub)  # serve: the HTTP API and the page (fastalex[serve])
    return parser


# ----------------------------------------------------------------------------- helpers

def _err(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def usage_errors(*kinds):
    """Library errors of ``kinds`` (default: every FastalexError, and ImportError for a missing
    extra) are usage errors: exit 2, with the library's message printed as it is."""
    try:
        yield
    except kinds or (FastalexError, ImportError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(str(exc)) from None


RANDOM_WARNING = ("WARNING: --random-weights: the model has random weights; its predictions and labels "
                  "are MEANINGLESS (use this only to test the pipeline)")


def model_choices(args) -> dict:
    """The options of a command as the arguments of :func:`fastalex.load_model` (commands
    without some of the options get its defaults)."""
    random = bool(getattr(args, "random_weights", False))
    backend = getattr(args, "backend", None)
    return dict(weights=None if random else getattr(args, "weights", None), variant=getattr(args, "variant", None),
                num_classes=getattr(args, "num_classes", None), random_weights=random,
                precision=getattr(args, "precision", "float32"), weight_dtype=getattr(args, "weight_dtype", "float32"),
                backend=None if backend == "all" else backend, preprocess=getattr(args, "preprocess", None))


def load_model(args):
    """The model of the command's options, as :func:`fastalex.load_model` chooses it (the
    choices are checked before the random-weights warning, which comes before any loading)."""
    from .loading import choose_model
    with usage_errors():
        choice = choose_model(**model_choices(args))
        if choice.kind == "random":
            _err(RANDOM_WARNING)
        return choice.load()


def model_recipe(args):
    """What the workers of a distributed run build (:func:`fastalex.distributed.model_recipe`):
    local workers (--workers) share this machine's cache, so the published weights are
    downloaded here first."""
    from .distributed import model_recipe
    with usage_errors():
        recipe = model_recipe(**model_choices(args), fill_cache=bool(getattr(args, "workers", None)))
    if args.random_weights:
        _err(RANDOM_WARNING)
    return recipe


def _compile_note(backend):
    """Say once on stderr that the first run compiles the Numba kernels (cold cache only)."""
    from . import _numba_cache
    from .backends import get_backend_name
    if (backend or get_backend_name()) == "numba" and _numba_cache.kernels_cached() is False:
        _err(_numba_cache.COMPILE_NOTE)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def _printable(text):
    """``text`` with control characters (a newline in a file name) escaped: one record, one line."""
    return text.translate(_CONTROL)


def _format_prediction(pred, width):
    lines = [_printable(pred.path) if pred.path is not None else f"<input {pred.input}>"]
    for rank, (index, label, p) in enumerate(zip(pred.indices, pred.labels, pred.probabilities), 1):
        name = label if label is not None else f"class {index}"
        lines.append(f"  {rank:>{width}}. {p * 100:6.2f}%  {name}")
    return "\n".join(lines)


def _json_safe(d):
    for entry in d.get("top", ()):
        if not math.isfinite(entry["probability"]):
            entry["probability"] = None
    # ASCII-only: a file name that is not valid UTF-8 comes out as a \udcXX escape (valid JSON,
    # and os.fsencode() of the parsed string gives the original bytes back)
    return json.dumps(d, ensure_ascii=True)


# ----------------------------------------------------------------------------- commands

def cmd_classify(args):
    return _run_images(args, "classify")


def cmd_embed(args):
    return _run_images(args, "embed")


def _cluster(args):
    """A context manager giving a Dask client (``--workers``/``--scheduler``) or None."""
    import contextlib
    if not args.workers and args.scheduler is None:  # --scheduler "" is refused below, never local
        return contextlib.nullcontext(None)
    from . import distributed
    try:
        distributed.require_dask()
        if args.scheduler is not None:
            return _connect(distributed.check_address(args.scheduler))  # a bad address: before anything slow
    except (ImportError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    # Only CRITICAL logs from the workers: a failed image is reported by the command itself,
    # and a heartbeat cut off while the cluster shuts down logged an ERROR with a traceback
    # (a race in Dask's teardown, harmless: never a traceback from the command).
    import logging
    return distributed.local_cluster(args.workers, silence_logs=logging.CRITICAL)


@contextlib.contextmanager
def _connect(address):
    """``distributed.connect(address)``, where no scheduler answering is a usage error (exit 2)."""
    from . import distributed
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(distributed.connect(address))
        except distributed.SchedulerError as exc:
            raise UsageError(str(exc)) from None
        yield client


def _check_inputs_exist(paths):
    """A PATH that does not exist is a usage error (exit 2), found before the weights are loaded;
    a file that exists but cannot be read is a failed input (exit 1)."""
    from ._files import is_url
    missing = [p for p in paths if not is_url(p) and not os.path.exists(p)]
    if missing:
        raise UsageError("no such file or directory: " + ", ".join(_printable(p) for p in missing))


def _file_digest(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _embed_run(args, model):
    """What an embed output records of this run: the settings that change the vectors, which
    --resume must match (compared by value; the weights by their file's digest)."""
    from .images import get_preprocess
    if hasattr(model, "resolve_layer"):
        skel, preprocess = model, get_preprocess(model)
    else:  # a recipe (--workers/--scheduler)
        from .distributed import skeleton
        skel = skeleton(model)
        preprocess = model.get("preprocess") or skel.preprocess
    if args.random_weights:
        weights, shown = "random (seed 0)", "--random-weights"
    elif args.weights == "imagenet":
        weights = shown = "imagenet"
    else:
        from .hub import weights_file
        with usage_errors():
            local = weights_file(args.weights)
        weights, shown = _file_digest(local), args.weights
    return {"layer": skel.resolve_layer(args.layer), "normalize": bool(args.normalize), "weights": weights,
            "weights_shown": shown, "weight_dtype": getattr(args, "weight_dtype", "float32"),
            "precision": getattr(args, "precision", "float32"),
            "preprocess": json.loads(json.dumps(preprocess)), "variant": skel.variant,
            "num_classes": skel.num_classes}


def _open_output(args, kind, model=None):
    from .outputs import DiskFullError, JsonLinesOutput, VectorOutput
    try:
        if kind == "embed":
            return VectorOutput(args.output, resume=args.resume, flush_every=args.batch_size,
                                run=_embed_run(args, model))
        return JsonLinesOutput(args.output, resume=args.resume, flush_every=args.batch_size)
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    except DiskFullError:
        raise  # exit 1, as a full disk later in the run
    except OSError as exc:
        raise UsageError(f"cannot open the output {args.output}: {exc.strerror or exc}") from None


def _run_images(args, kind):
    """classify and embed: one loop for inputs, model, cluster, output, progress and errors."""
    from PIL import Image

    from .classify import SkippedFolderWarning, expand_inputs, iter_classify
    from .labels import LabelsError, load_labels

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse those images ourselves
    warnings.filterwarnings("ignore", module="PIL")  # EXIF/palette chatter; bad files are reported below
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE (the file to continue)")
    distributed = bool(args.workers or args.scheduler)
    cluster = _cluster(args)  # checks that Dask is installed before anything slow
    if kind == "embed":
        from .outputs import check_vector_path
        try:
            check_vector_path(args.output)  # the format (and pyarrow for .parquet), before anything slow
        except (ValueError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    if args.output:
        from .outputs import OutputError, check_output_path
        try:
            check_output_path(args.output, "--output")  # not a folder, in a folder that exists
        except OutputError as exc:
            raise UsageError(str(exc)) from None
    _check_inputs_exist(args.paths)
    t_start = time.perf_counter()
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", SkippedFolderWarning)
        items = expand_inputs(args.paths)
    for w in skipped:
        if issubclass(w.category, SkippedFolderWarning):
            _err(f"warning: {_printable(str(w.message))}")
    if not items:
        raise UsageError("no images found in " + ", ".join(args.paths)
                         + " (searched recursively for image file extensions)")
    t0 = time.perf_counter()
    model = model_recipe(args) if distributed else load_model(args)
    t_model = time.perf_counter() - t0
    num_classes = model.num_classes if not distributed else _recipe_classes(model)
    labels = None
    if kind == "classify":
        if args.labels:
            try:
                labels = load_labels(args.labels, num_classes)
            except LabelsError as exc:
                raise UsageError(str(exc)) from None
        elif num_classes != 1000:
            labels = False  # print class indices
    else:
        from .embedding import check_layer
        try:
            check_layer(model, args.layer)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    t0 = time.perf_counter()
    if not distributed:
        from .backends import get_backend
        get_backend(args.backend)  # import (and for numba, load the compiled kernels' module) up front
    t_backend = time.perf_counter() - t0
    _compile_note(args.backend)

    output = _open_output(args, kind, model) if args.output else None
    total = len(items)
    if output is not None and output.done:
        items = [item for item in items if item.path not in output.done]
        _err(f"resuming: {total - len(items)} of {total} inputs are already in {args.output}")

    from tqdm import tqdm
    show_bar = len(items) > PROGRESS_MIN_IMAGES and sys.stderr.isatty()
    bar = tqdm(total=len(items), unit="img", file=sys.stderr, disable=not show_bar, dynamic_ncols=True,
               leave=False)
    write = (lambda s, file: tqdm.write(s, file=file)) if show_bar else (lambda s, file: print(s, file=file))
    timings = {}
    failed = 0
    width = len(str(getattr(args, "top", 1)))
    finished = False
    from .distributed import ModelLoadError
    try:
        with cluster as client:
            if kind == "classify":
                results = iter_classify(items, model=model, top=args.top, batch_size=args.batch_size,
                                        labels=labels, timings=timings, client=client)
            else:
                from .embedding import iter_embed
                results = iter_embed(items, model=model, layer=args.layer, normalize=args.normalize,
                                     batch_size=args.batch_size, timings=timings, client=client)
            with contextlib.closing(results):  # on Ctrl-C: cancel queued batches before the cluster closes
                for r in results:
                    if r.error:
                        failed += 1
                        write(f"{PROG}: cannot {kind} {_printable(str(r.path))}: {_printable(r.error)}", sys.stderr)
                    if kind == "embed":
                        if r.ok:
                            output.write(r.path, r.vector)
                    elif output is not None:
                        output.write(_json_safe(r.to_dict()))
                    elif args.json:
                        write(_json_safe(r.to_dict()), sys.stdout)
                    elif r.ok:
                        write(_format_prediction(r, width), sys.stdout)
                    bar.update(1)
        if output is not None:
            output.finish()
        finished = True
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        if output is not None:
            _err(f"interrupted: what is done is kept; rerun with --resume to continue {args.output}")
        raise
    finally:
        bar.close()
        if output is not None and not finished:
            output.close()
    if args.timings:
        elapsed = time.perf_counter() - t_start
        if distributed:
            _err(f"timings: model setup {t_model:.3f}s, waited for the cluster {timings.get('wait', 0):.3f}s "
                 f"over {timings.get('batches', 0)} batches, total {elapsed:.3f}s for {len(items)} inputs")
        else:
            _err(f"timings: model+weights {t_model:.3f}s, backend import {t_backend:.3f}s, "
                 f"decode {timings.get('decode', 0):.3f}s (waited {timings.get('wait', 0):.3f}s), "
                 f"forward {timings.get('forward', 0):.3f}s, total {elapsed:.3f}s for {len(items)} inputs")
    if failed:
        _err(f"{failed} of {len(items)} inputs could not be {'classified' if kind == 'classify' else 'embedded'}")
    return 1 if failed else 0


def _recipe_classes(recipe):
    from .distributed import skeleton
    return skeleton(recipe).num_classes


def cmd_summary(args):
    from .loading import is_onnx, load_model
    if args.weights is not None and not is_onnx(args.weights):
        raise UsageError(f"summary --weights takes an .onnx model, got {args.weights}")
    with usage_errors():
        if args.weights is not None:
            model = load_model(onnx=args.weights, variant=args.variant, num_classes=args.num_classes)
        else:
            model = load_model(random_weights=True, variant=args.variant, num_classes=args.num_classes)
    print(model.summary())
    return 0


def cmd_weights_download(args):
    from . import hub
    try:
        path = hub.download_imagenet(url=args.url, progress=None, force=args.force)
    except hub.WeightsUnavailableError as exc:  # the same failure as classify's: exit 2
        raise UsageError(str(exc)) from None
    print(path)
    return 0


def cmd_weights_path(args):
    """The cache directory and the ImageNet weights' entry, checked as ``classify`` checks it."""
    from . import hub as W
    print(f"cache directory: {W.cache_dir()}")
    found = W.IMAGENET1K_V1.cached()  # a damaged entry raises, with how to clear it
    if found is not None:
        print(f"cached weights:  {found} ({found.stat().st_size / 2**20:.1f} MiB, verified)")
    else:
        paths = W.IMAGENET1K_V1.paths()
        problem = W.IMAGENET1K_V1.raw_problem()  # a hand-copied .pth: checked as classify checks it
        if problem is not None:
            raise UsageError(problem)
        if paths["raw"].is_file():
            hint = f"{paths['raw'].name} is there (its hash checks out) and will be converted on first use"
        elif paths["npz"].is_file():
            hint = (f"{paths['npz'].name} has no recorded digest (an older fastalex?), so it cannot "
                    f"be verified; `{PROG} weights download` replaces it")
        else:
            hint = f"run `{PROG} weights download`"
        print(f"cached weights:  none ({hint})")
    return 0


def _bench_runners(model, names, peers):
    """``(name, run or None, note)`` for each fastalex backend, then each installed peer."""
    import numba

    from . import peers as P
    for name in names:
        def run(x, name=name):
            model.backend = name
            return model(x)
        yield name, run, ""
    if peers == "none":
        return
    threads = numba.get_num_threads()
    for name, build, package in (("torch", P.torch_model, "torch"),
                                 ("onnxruntime", lambda m, t: P.onnx_session(m, t, m.input_shape),
                                  "onnxruntime onnx")):
        try:
            yield name, build(model, threads), f"{threads} threads"
        except ImportError:
            yield name, None, f"not installed (pip install {package})"
        except NotImplementedError as exc:
            yield name, None, f"cannot run this model: {exc}"


def _batch_sizes(text):
    sizes = [part.strip() for part in text.split(",")]
    if not sizes or not all(p.isdigit() and int(p) >= 1 for p in sizes):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return tuple(int(p) for p in sizes)


def cmd_tune(args):
    from .tuning import tune
    variants = ["torchvision", "original"] if args.variant == "all" else [args.variant]
    try:
        result = tune(variants, args.batch_sizes, again=args.again)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"{'variant':<12} {'batch':>5}  {'layer':<14} {'schedule':<34} origin")
    for r in result["rows"]:
        print(f"{r['variant']:<12} {r['batch']:>5}  {r['layer']:<14} {r['schedule'][:34]:<34} {r['origin']}")
    print(f"kept in {result['wisdom']}")
    return 0


def cmd_bench(args):
    import numpy as np

    from .backends import BACKENDS
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    names.sort(key=lambda n: n != "numba")  # numba first
    if "numba" in names:
        from .backends import get_backend
        try:
            get_backend("numba")
            _compile_note("numba")
        except ImportError:
            pass
    from .loading import is_onnx, load_model
    if args.weights is not None and not is_onnx(args.weights):
        raise UsageError(f"bench --weights takes an .onnx model, got {args.weights}")
    with usage_errors():
        if args.weights is not None:
            model = load_model(onnx=args.weights, weight_dtype=args.weight_dtype, precision=args.precision)
            title = args.weights
        else:
            variant = args.variant or "torchvision"
            model = load_model(random_weights=True, variant=variant, weight_dtype=args.weight_dtype,
                               precision=args.precision)
            title = f"AlexNet ({variant})"
    precision = args.precision
    _check_batch_memory(model, args.batch_size)
    x = np.random.default_rng(0).standard_normal((args.batch_size, *model.input_shape)).astype(np.float32)
    model.backend = names[0]
    path = bf16_note(model)
    model.backend = None
    print(f"{title}, batch {args.batch_size} x {model.input_shape}, {args.weight_dtype} dense weights, "
          f"{precision} precision{path + f' ({names[0]})' if path else ''}, "
          f"median and min of {args.repeat} runs after {args.warmup} warm-up")
    header = (f"{'engine':<12} {'median/batch':>13} {'min/batch':>10} {'median/image':>13} {'images/s':>9}"
              f"  {'vs numba':>8}")
    print(header)
    print("-" * len(header))
    outputs, medians = {}, {}
    runners = (_onnx_file_runners(model, names, args.weights) if args.weights is not None
               else _bench_runners(model, names, args.peers))
    for name, run, note in runners:
        if run is None:
            print(f"{name:<12} {note}", flush=True)
            continue
        try:
            for _ in range(max(0, args.warmup)):
                outputs[name] = run(x)
        except ImportError as exc:
            print(f"{name:<12} unavailable: {exc}", flush=True)
            continue
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            outputs[name] = run(x)
            times.append(time.perf_counter() - t0)
        med, best = float(np.median(times)), min(times)
        medians[name] = med
        ratio = f"{med / medians['numba']:7.2f}x" if "numba" in medians else ""
        print(f"{name:<12} {med:>11.3f} s {best:>8.3f} s {med / args.batch_size * 1e3:>10.1f} ms "
              f"{args.batch_size / med:>9.1f}  {ratio:>8}", flush=True)
    model.backend = None
    base = "numpy" if "numpy" in outputs else next(iter(outputs), None)
    for name, y in outputs.items():
        if name != base:
            rel = float(np.abs(y - outputs[base]).max() / max(np.abs(outputs[base]).max(), 1e-30))
            print(f"agreement: max |{name} - {base}| / max |{base}| = {rel:.2e}")
    if "numba" in medians:
        from .backends import describe_runtime
        print(describe_runtime())
    return 0


def _check_batch_memory(model, batch_size):
    """--batch-size too large for this machine's memory: exit 2 before allocating anything."""
    from .profiling import check_batch_memory
    try:
        check_batch_memory(model, batch_size, "--batch-size")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _onnx_file_runners(model, names, path):
    """fastalex's backends on an .onnx model, then ONNX Runtime on that very file (same threads)."""
    import numba
    yield from _bench_runners(model, names, "none")
    threads = numba.get_num_threads()
    try:
        yield "onnxruntime", _onnx_file_session(path, threads), f"{threads} threads"
    except ImportError:
        yield "onnxruntime", None, "not installed (pip install onnxruntime)"
    except Exception as exc:  # ONNX Runtime's own errors: report, keep the fastalex rows
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        yield "onnxruntime", None, f"cannot run this file: {text}"


def _onnx_file_session(path, threads):
    """``run(x)`` with ONNX Runtime on the .onnx file ``path``; a graph with a fixed batch size
    (the zoo's are 1) runs the batch in pieces of that size."""
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    output = session.get_outputs()[0].name

    def run(x):
        if not isinstance(fixed, int) or fixed in (0, x.shape[0]):
            return session.run([output], {name: x})[0]
        if x.shape[0] % fixed:
            raise ValueError(f"the graph's batch size {fixed} does not divide --batch-size {x.shape[0]}")
        return np.concatenate([session.run([output], {name: x[i:i + fixed]})[0]
                               for i in range(0, x.shape[0], fixed)])

    return run


# ----------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # print any file name, even one that is not UTF-8
        try:
            stream.reconfigure(errors="surrogateescape" if stream is sys.stdout else "backslashreplace")
        except (AttributeError, ValueError):  # not a TextIOWrapper (e.g. captured by a test)
            pass
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if args.command != "weights":  # a bad FASTALEX_BACKEND is a usage error, reported first
            from .backends import get_backend_name
            try:
                get_backend_name()
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        from .backends import configure_threads
        configure_threads()  # Numba's TBB layer (else workqueue), unless NUMBA_THREADING_LAYER says otherwise
        status = args.func(args)
        sys.stdout.flush()
        return status
    except (UsageError, WeightsFileError) as exc:
        _err(f"error: {_printable(str(exc))}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`fastalex classify ... | head`): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except MemoryError:
        _err("error: out of memory (a smaller --batch-size needs less)")
        return 1
    except Exception as exc:  # never a traceback
        message = str(exc) or type(exc).__name__
        _err(f"error: {message}" if isinstance(exc, (ValueError, OSError)) else
             f"error: {type(exc).__name__}: {message}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
