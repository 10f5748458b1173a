"""``fastalex summary`` and ``fastalex weights download|path``: a model's layers, and the cache
of the published weights."""

from __future__ import annotations

from .common import PROG, UsageError, positive_int, usage_errors, variants


def add_commands(sub):
    """Add ``summary`` and ``weights`` to the ``fastalex`` subcommands ``sub``."""
    from .common import Parser
    p = sub.add_parser("summary", help="print the model's layers, shapes, parameters and MACs",
                       description="Print a model summary.")
    p.add_argument("--variant", choices=variants(), default=None, help="model variant (default torchvision)")
    p.add_argument("--num-classes", type=positive_int, default=None, metavar="N", help="classes (default 1000)")
    p.add_argument("--weights", metavar="FILE.onnx", default=None,
                   help="summarize an .onnx model (its architecture) instead of a variant")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("weights", help="download the ImageNet weights or show where they are cached",
                       description="Manage the cached ImageNet weights.")
    wsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    wsub.required = True
    d = wsub.add_parser("download", help="download torchvision's ImageNet weights into the cache",
                        description="Download torchvision's AlexNet ImageNet weights and cache them as .npz.")
    d.add_argument("--url", help="download from this URL instead (default: $FASTALEX_WEIGHTS_URL or torchvision's)")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=cmd_weights_download)
    d = wsub.add_parser("path", help="print the cache directory and the cached weights file",
                        description="Print the cache directory ($FASTALEX_HOME) and the cached weights, if any.")
    d.set_defaults(func=cmd_weights_path)


def cmd_summary(args):
    from ..loading import is_onnx, load_model
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
    from .. import hub
    try:
        path = hub.download_imagenet(url=args.url, progress=None, force=args.force)
    except hub.WeightsUnavailableError as exc:  # the same failure as classify's: exit 2
        raise UsageError(str(exc)) from None
    print(path)
    return 0


def cmd_weights_path(args):
    """The cache directory and the ImageNet weights' entry, checked as ``classify`` checks it."""
    from .. import hub as W
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
