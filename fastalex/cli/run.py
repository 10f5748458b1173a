"""``fastalex classify`` and ``fastalex embed``: the model over many images, here or on a Dask
cluster, into stdout or an output file that survives interruptions."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings

from .common import (PROG, UsageError, add_model_choice, add_preprocess, add_weight_dtype, backends, compile_note,
                     err, load_model, model_recipe, positive_int, printable, usage_errors)

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


def add_commands(sub):
    """Add ``classify`` and ``embed`` to the ``fastalex`` subcommands ``sub``."""
    p = sub.add_parser("classify", help="classify image files or folders",
                       description="Classify images: files, or folders searched recursively.",
                       epilog=CLASSIFY_EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or URLs")
    _add_model_options(p)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (for non-ImageNet weights)")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line per image")
    p.add_argument("--output", metavar="FILE",
                   help="write JSON lines to FILE (appended and fsynced a batch at a time) instead of stdout")
    _add_run_options(p)
    add_preprocess(p)
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
    add_preprocess(p)
    p.set_defaults(func=cmd_embed)


def _add_model_options(p):
    add_model_choice(p)
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="images per forward pass, and per task on a cluster (default 16)")
    p.add_argument("--backend", choices=backends(), default=None,
                   help="compute backend (default: numba, or $FASTALEX_BACKEND)")
    add_weight_dtype(p)


def _add_run_options(p):
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: skip the paths already in --output")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--workers", type=positive_int, metavar="N",
                   help="run on a local Dask cluster of N worker processes (needs fastalex[dask])")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler, e.g. tcp://host:8786 (needs fastalex[dask])")
    p.add_argument("--timings", action="store_true", help="print where the time went on stderr")


def _format_prediction(pred, width):
    lines = [printable(pred.path) if pred.path is not None else f"<input {pred.input}>"]
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


def cmd_classify(args):
    return _run_images(args, "classify")


def cmd_embed(args):
    return _run_images(args, "embed")


def _cluster(args):
    """A context manager giving a Dask client (``--workers``/``--scheduler``) or None."""
    import contextlib
    if not args.workers and args.scheduler is None:  # --scheduler "" is refused below, never local
        return contextlib.nullcontext(None)
    from .. import distributed
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
    from .. import distributed
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(distributed.connect(address))
        except distributed.SchedulerError as exc:
            raise UsageError(str(exc)) from None
        yield client


def _check_inputs_exist(paths):
    """A PATH that does not exist is a usage error (exit 2), found before the weights are loaded;
    a file that exists but cannot be read is a failed input (exit 1)."""
    from .._files import is_url
    missing = [p for p in paths if not is_url(p) and not os.path.exists(p)]
    if missing:
        raise UsageError("no such file or directory: " + ", ".join(printable(p) for p in missing))


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
    from ..images import get_preprocess
    if hasattr(model, "resolve_layer"):
        skel, preprocess = model, get_preprocess(model)
    else:  # a recipe (--workers/--scheduler)
        from ..distributed import skeleton
        skel = skeleton(model)
        preprocess = model.get("preprocess") or skel.preprocess
    if args.random_weights:
        weights, shown = "random (seed 0)", "--random-weights"
    elif args.weights == "imagenet":
        weights = shown = "imagenet"
    else:
        from ..hub import weights_file
        with usage_errors():
            local = weights_file(args.weights)
        weights, shown = _file_digest(local), args.weights
    return {"layer": skel.resolve_layer(args.layer), "normalize": bool(args.normalize), "weights": weights,
            "weights_shown": shown, "weight_dtype": getattr(args, "weight_dtype", "float32"),
            "precision": getattr(args, "precision", "float32"),
            "preprocess": json.loads(json.dumps(preprocess)), "variant": skel.variant,
            "num_classes": skel.num_classes}


def _open_output(args, kind, model=None):
    from ..outputs import DiskFullError, JsonLinesOutput, VectorOutput
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

    from ..classify import SkippedFolderWarning, expand_inputs, iter_classify
    from ..labels import LabelsError, load_labels

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse those images ourselves
    warnings.filterwarnings("ignore", module="PIL")  # EXIF/palette chatter; bad files are reported below
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE (the file to continue)")
    distributed = bool(args.workers or args.scheduler)
    cluster = _cluster(args)  # checks that Dask is installed before anything slow
    if kind == "embed":
        from ..outputs import check_vector_path
        try:
            check_vector_path(args.output)  # the format (and pyarrow for .parquet), before anything slow
        except (ValueError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    if args.output:
        from ..outputs import OutputError, check_output_path
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
            err(f"warning: {printable(str(w.message))}")
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
        from ..embedding import check_layer
        try:
            check_layer(model, args.layer)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    t0 = time.perf_counter()
    if not distributed:
        from ..backends import get_backend
        get_backend(args.backend)  # import (and for numba, load the compiled kernels' module) up front
    t_backend = time.perf_counter() - t0
    compile_note(args.backend)

    output = _open_output(args, kind, model) if args.output else None
    total = len(items)
    if output is not None and output.done:
        items = [item for item in items if item.path not in output.done]
        err(f"resuming: {total - len(items)} of {total} inputs are already in {args.output}")

    from tqdm import tqdm
    show_bar = len(items) > PROGRESS_MIN_IMAGES and sys.stderr.isatty()
    bar = tqdm(total=len(items), unit="img", file=sys.stderr, disable=not show_bar, dynamic_ncols=True,
               leave=False)
    write = (lambda s, file: tqdm.write(s, file=file)) if show_bar else (lambda s, file: print(s, file=file))
    timings = {}
    failed = 0
    width = len(str(getattr(args, "top", 1)))
    finished = False
    from ..distributed import ModelLoadError
    try:
        with cluster as client:
            if kind == "classify":
                results = iter_classify(items, model=model, top=args.top, batch_size=args.batch_size,
                                        labels=labels, timings=timings, client=client)
            else:
                from ..embedding import iter_embed
                results = iter_embed(items, model=model, layer=args.layer, normalize=args.normalize,
                                     batch_size=args.batch_size, timings=timings, client=client)
            with contextlib.closing(results):  # on Ctrl-C: cancel queued batches before the cluster closes
                for r in results:
                    if r.error:
                        failed += 1
                        write(f"{PROG}: cannot {kind} {printable(str(r.path))}: {printable(r.error)}", sys.stderr)
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
            err(f"interrupted: what is done is kept; rerun with --resume to continue {args.output}")
        raise
    finally:
        bar.close()
        if output is not None and not finished:
            output.close()
    if args.timings:
        elapsed = time.perf_counter() - t_start
        if distributed:
            err(f"timings: model setup {t_model:.3f}s, waited for the cluster {timings.get('wait', 0):.3f}s "
                 f"over {timings.get('batches', 0)} batches, total {elapsed:.3f}s for {len(items)} inputs")
        else:
            err(f"timings: model+weights {t_model:.3f}s, backend import {t_backend:.3f}s, "
                 f"decode {timings.get('decode', 0):.3f}s (waited {timings.get('wait', 0):.3f}s), "
                 f"forward {timings.get('forward', 0):.3f}s, total {elapsed:.3f}s for {len(items)} inputs")
    if failed:
        err(f"{failed} of {len(items)} inputs could not be {'classified' if kind == 'classify' else 'embedded'}")
    return 1 if failed else 0


def _recipe_classes(recipe):
    from ..distributed import skeleton
    return skeleton(recipe).num_classes
