"""What the ``fastalex`` commands share: the parser class, option types and groups, the one
way to print an error, usage errors (exit 2), and the model of a command's options (chosen by
:func:`fastalex.load_model`; the command line decides nothing of it itself)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from .. import __version__
from ..errors import FastalexError

__all__ = ["PROG", "UsageError", "Parser", "positive_int", "variants", "backends", "presets", "add_weight_dtype",
           "add_preprocess", "err", "printable", "usage_errors", "model_choices", "load_model", "model_recipe",
           "compile_note", "check_batch_memory", "bf16_note", "RANDOM_WARNING"]

PROG = "fastalex"


class UsageError(FastalexError):
    """Bad options or missing/unavailable weights: exit status 2."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"{PROG} {__version__}")


def number_type(cast, accept, expected):
    """An argparse ``type=``: the text as ``cast`` (``int`` or ``float``), refused with
    "expected <expected>, got '<text>'" when it does not parse or ``accept(value)`` is false."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = number_type(int, lambda v: v >= 1, "a positive integer")


def variants():
    from ..specs import VARIANTS
    return list(VARIANTS)


def backends():
    from ..backends import BACKENDS
    return list(BACKENDS)


def presets():
    from ..images import PRESETS
    return list(PRESETS)


def add_model_choice(p):
    """``--variant``, ``--weights`` | ``--random-weights`` and ``--num-classes``: the model
    ``fastalex.load_model`` builds, for the commands that run one on photos (classify, embed,
    serve)."""
    p.add_argument("--variant", choices=variants(), default=None,
                   help="model variant (default: torchvision, or whatever the --weights file holds)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="FILE|URL|imagenet", default="imagenet",
                   help="weights file (.npz/.pth), a URL of one, an .onnx model, or 'imagenet' (default)")
    w.add_argument("--random-weights", action="store_true",
                   help="seeded random weights (for testing: the labels are meaningless)")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help="classes of the model (with --random-weights; otherwise read from the weights)")


def add_weight_dtype(p):
    from ..lowp import PRECISIONS, WEIGHT_DTYPES
    p.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="float32",
                   help="storage of the dense layers' weights: float32 (default), bfloat16 (half the "
                        "bytes, faster at small batches) or int8 (per-channel scales); convolutions "
                        "stay float32")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="how convolutions and dense layers compute: float32 (default, exact) or "
                        "bfloat16 (inputs and weights rounded to bfloat16, float32 sums; on AMX or "
                        "AVX512-BF16 where the CPU has them)")


def add_preprocess(p):
    p.add_argument("--preprocess", choices=presets(), default=None,
                   help="image preprocessing: torchvision (RGB, [0,1], ImageNet mean/std) or caffe "
                        "(BGR, 0-255, mean 104/117/123 subtracted); default: the model's own "
                        "(torchvision for .onnx files)")


def bf16_note(model) -> str:
    """``", bfloat16 products on amx"`` (the path that runs) or ``""`` for float32."""
    path = model.bf16_path
    return "" if path is None else f", bfloat16 products on {path}"


def err(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text):
    """``text`` with control characters (a newline in a file name) escaped: one record, one line."""
    return text.translate(_CONTROL)


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
    from ..loading import choose_model
    with usage_errors():
        choice = choose_model(**model_choices(args))
        if choice.kind == "random":
            err(RANDOM_WARNING)
        return choice.load()


def model_recipe(args):
    """What the workers of a distributed run build (:func:`fastalex.distributed.model_recipe`):
    local workers (--workers) share this machine's cache, so the published weights are
    downloaded here first."""
    from ..distributed import model_recipe
    with usage_errors():
        recipe = model_recipe(**model_choices(args), fill_cache=bool(getattr(args, "workers", None)))
    if args.random_weights:
        err(RANDOM_WARNING)
    return recipe


def compile_note(backend):
    """Say once on stderr that the first run compiles the Numba kernels (cold cache only), and
    start the helper process that compiles them alongside (``_numba_cache.start_helper``)."""
    from .. import _numba_cache
    from ..backends import get_backend_name
    if (backend or get_backend_name()) == "numba" and _numba_cache.kernels_cached() is False:
        _numba_cache.start_helper()
        err(_numba_cache.COMPILE_NOTE)


def check_batch_memory(model, batch_size):
    """--batch-size too large for this machine's memory: exit 2 before allocating anything."""
    from ..profiling import check_batch_memory
    try:
        check_batch_memory(model, batch_size, "--batch-size")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
