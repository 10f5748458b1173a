"""``fastalex show``, ``explain`` and ``profile``: see inside the network.

``fastalex show filters`` and ``show activations`` draw a layer's kernels or a photo's
feature maps, ``fastalex explain`` draws occlusion sensitivity over a photo (all in
:mod:`fastalex.viz`), ``fastalex profile`` times one forward pass step by step
(:mod:`fastalex.profiling`). They share ``classify``'s model options, errors and exit codes.
"""

from __future__ import annotations

import json
import os
import sys

from PIL import Image

from . import common

PROFILE_NOTE = "a convolution or dense layer and the ReLU after it run fused, as one step: one row"

MODEL_EPILOG = """\
weights: by default torchvision's ImageNet weights (cached by `fastalex weights download`);
--weights FILE loads a .npz/.pth state dict; --random-weights uses seeded random weights."""


def _add_model_options(p, labels=False):
    p.add_argument("--variant", choices=common.variants(), default=None,
                   help="model variant (default: torchvision, or whatever the --weights file holds)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="FILE|imagenet", default="imagenet",
                   help="weights file (.npz/.pth) or 'imagenet' (default)")
    w.add_argument("--random-weights", action="store_true", help="seeded random weights")
    p.add_argument("--num-classes", type=common.positive_int, metavar="N",
                   help="classes of the model (with --random-weights; otherwise read from the weights)")
    p.add_argument("--backend", choices=common.backends(), default=None,
                   help="compute backend (default: numba, or $FASTALEX_BACKEND)")
    if labels:
        p.add_argument("--labels", metavar="FILE", help="class names, one per line (for non-ImageNet weights)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png",
                   help="image file to write (format from the extension)")


def add_commands(sub):
    """Add ``show``, ``explain`` and ``profile`` to the ``fastalex`` subcommands ``sub``."""
    from .. import viz

    p = sub.add_parser("show", help="draw a layer's kernels or a photo's feature maps",
                       description="Draw a convolution's kernels or a photo's feature maps as an image grid.")
    ssub = p.add_subparsers(dest="what", metavar="WHAT", parser_class=common.Parser)
    ssub.required = True
    f = ssub.add_parser("filters", help="a convolution's kernels as a grid of tiles",
                        description="A convolution's kernels as one image: RGB tiles for the first "
                                    "layer (the 2012 paper's figure 3), grey tiles for deeper ones.",
                        epilog=MODEL_EPILOG)
    f.add_argument("--layer", default=None, metavar="NAME",
                   help="a convolution, e.g. features.3 (default: the first, features.0)")
    f.add_argument("--per-input", action="store_true",
                   help=f"deeper layers: one tile per (output, input) slice, at most {viz.MAX_SLICES}, "
                        f"instead of each kernel's mean over its inputs")
    f.add_argument("--scale", type=common.positive_int, default=None, metavar="N",
                   help="upscale each kernel pixel to N x N (default: tiles of about 40 pixels)")
    _add_model_options(f)
    f.set_defaults(func=cmd_show_filters)

    a = ssub.add_parser("activations", help="a photo's feature maps at a layer",
                        description="A photo's feature maps at one layer: one tile per channel, the "
                                    "photo (as the model sees it) in the top-left corner.",
                        epilog=MODEL_EPILOG)
    a.add_argument("photo", metavar="PHOTO", help="image file")
    a.add_argument("--layer", default="features.1", metavar="NAME",
                   help="layer name (features.N, classifier.N) or alias (pool5, fc6, fc7, fc8); "
                        "default features.1 (conv1 after its ReLU)")
    a.add_argument("--normalize", choices=("layer", "channel"), default="layer",
                   help="one brightness scale for the layer (default) or one per channel")
    a.add_argument("--cmap", choices=list(viz.COLORMAPS), default="gray", help="colour map (default gray)")
    a.add_argument("--max-channels", type=common.positive_int, default=None, metavar="N",
                   help="draw only the first N channels")
    a.add_argument("--scale", type=common.positive_int, default=None, metavar="N",
                   help="upscale each map pixel to N x N (default: tiles of about 48 pixels)")
    _add_model_options(a)
    a.set_defaults(func=cmd_show_activations)

    e = sub.add_parser("explain", help="which part of a photo the prediction rests on (occlusion)",
                       description="Occlusion sensitivity (Zeiler & Fergus 2014): slide a grey patch "
                                   "over the photo, run every occluded copy through the model, and draw "
                                   "how much the class's probability drops as a heat map over the photo. "
                                   "Prints the class and its probability.",
                       epilog=MODEL_EPILOG)
    e.add_argument("photo", metavar="PHOTO", help="image file")
    e.add_argument("--class", dest="target", type=int, default=None, metavar="N",
                   help="class index to explain (default: the top-1 prediction)")
    e.add_argument("--patch", type=common.positive_int, default=viz.DEFAULT_PATCH, metavar="PX",
                   help=f"side of the grey square in input pixels (default {viz.DEFAULT_PATCH})")
    e.add_argument("--stride", type=common.positive_int, default=viz.DEFAULT_STRIDE, metavar="PX",
                   help=f"step between patch positions (default {viz.DEFAULT_STRIDE}: 49 positions on 224)")
    e.add_argument("--batch-size", type=common.positive_int, default=16, metavar="N",
                   help="occluded copies per forward pass (default 16)")
    _add_model_options(e, labels=True)
    e.set_defaults(func=cmd_explain)

    p = sub.add_parser("profile", help="time one forward pass layer by layer",
                       description="Time one forward pass of the model (random weights and input) step "
                                   "by step, median of several runs: output shape, MACs, time, GFLOP/s and "
                                   f"share of the total per step ({PROFILE_NOTE}).")
    p.add_argument("--variant", choices=common.variants(), default="torchvision",
                   help="model variant (default torchvision)")
    p.add_argument("--batch-size", type=common.positive_int, default=1, metavar="N", help="images per batch (default 1)")
    p.add_argument("--backend", choices=common.backends() + ["all"], default=None,
                   help="backend to time, or all side by side with the speed-up (default: numba, or $FASTALEX_BACKEND)")
    p.add_argument("--repeat", type=common.positive_int, default=5, metavar="N", help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the times as a bar chart (needs matplotlib)")
    from ..lowp import PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="how convolutions and dense layers compute: float32 (default) or bfloat16")
    p.set_defaults(func=cmd_profile)


# ----------------------------------------------------------------------------- helpers

def _check_output(path, option="-o"):
    """Fail early (exit 2) on an output file that cannot be written as an image."""
    if os.path.isdir(path):
        raise common.UsageError(f"{option} {path}: is a directory; give a file name such as {option} out.png")
    ext = os.path.splitext(path)[1].lower()
    if ext not in Image.registered_extensions():
        raise common.UsageError(f"{option} {path}: unknown image file extension {ext or '(none)'!r}; use .png")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise common.UsageError(f"{option} {path}: the directory {parent} does not exist")


def _save(img, path):
    """Save the picture and say what was written (on stdout): the file, its pixels and bytes."""
    img.save(path)
    size = os.path.getsize(path)
    print(f"wrote {common.printable(os.fspath(path))} ({img.width}x{img.height} pixels, {size:,} bytes)")


def _photo(path):
    """The decoded photo, or None after one line on stderr (the command then exits 1)."""
    from ..images import ImageError, open_image
    if not os.path.exists(path):  # as for classify: a PATH that does not exist is a usage error
        raise common.UsageError(f"no such file or directory: {common.printable(path)}")
    try:
        return open_image(path)
    except ImageError as exc:
        common.err(f"cannot read {path}: {exc.reason}")
        return None


def _backend_ready(backend):
    """Import the backend up front and say on stderr if the Numba kernels compile first (cold cache)."""
    from ..backends import get_backend
    get_backend(backend)
    common.compile_note(backend)


def _bad_layer(exc):
    return common.UsageError(str(exc))  # the library's message, as it is ("extract: unknown layer ...")


# ----------------------------------------------------------------------------- commands

def cmd_show_filters(args):
    from .. import viz
    _check_output(args.output)
    model = common.load_model(args)
    try:
        img = viz.filters(model, args.layer, scale=args.scale, per_input=args.per_input)
    except (ValueError, TypeError) as exc:
        raise _bad_layer(exc) from None
    _save(img, args.output)
    return 0


def cmd_show_activations(args):
    from .. import viz
    _check_output(args.output)
    photo = _photo(args.photo)
    if photo is None:
        return 1
    model = common.load_model(args)
    try:
        model.resolve_layer(args.layer)
    except (ValueError, TypeError) as exc:
        raise _bad_layer(exc) from None
    _backend_ready(args.backend)
    img = viz.activations(model, photo, args.layer, scale=args.scale, max_channels=args.max_channels,
                          normalize=args.normalize, cmap=args.cmap)
    _save(img, args.output)
    return 0


def cmd_explain(args):
    from tqdm import tqdm

    from .. import viz
    from ..labels import LabelsError, imagenet_labels, load_labels
    _check_output(args.output)
    photo = _photo(args.photo)
    if photo is None:
        return 1
    model = common.load_model(args)
    if args.target is not None and not 0 <= args.target < model.num_classes:
        raise common.UsageError(f"--class {args.target}: the model has classes 0 to {model.num_classes - 1}")
    labels = None
    if args.labels:
        try:
            labels = load_labels(args.labels, model.num_classes)
        except LabelsError as exc:
            raise common.UsageError(str(exc)) from None
    elif model.num_classes == 1000:
        labels = imagenet_labels()
    size = min(model.input_shape[1:])
    if args.patch > size:
        raise common.UsageError(f"--patch {args.patch} is larger than the model's {size}x{size} input")
    _backend_ready(args.backend)
    bar = tqdm(total=None, unit="copy", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
               desc="occlusion")

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:
        x, photo = viz.prepare(model, photo)
        occ = viz.occlusion(model, x, target=args.target, patch=args.patch, stride=args.stride,
                            batch_size=args.batch_size, progress=progress)
    finally:
        bar.close()
    label = viz.class_label(occ.target, labels)
    print(f"{label}: p = {occ.probability:.4f}")
    _save(viz.draw_occlusion(photo, occ, label=label), args.output)
    return 0


def cmd_profile(args):
    import numpy as np

    from ..backends import BACKENDS, get_backend_name
    from ..loading import load_model
    from ..profiling import _matplotlib_figure, plot_profile, time_forward
    if args.plot:
        _check_output(args.plot, "--plot")
        try:
            _matplotlib_figure()
        except ImportError as exc:
            raise common.UsageError(str(exc)) from None
    if args.warmup < 0:
        raise common.UsageError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.backend == "all":
        names = sorted(BACKENDS, key=lambda n: n != "numba")  # numba first
    else:
        names = [args.backend or get_backend_name()]
    if "numba" in names:
        _backend_ready("numba")
    with common.usage_errors():
        model = load_model(random_weights=True, variant=args.variant, precision=args.precision)
    common.check_batch_memory(model, args.batch_size)
    x = np.random.default_rng(0).standard_normal((args.batch_size, *model.input_shape)).astype(np.float32)
    profiles, forward, paths = {}, {}, {}
    for name in names:
        model.backend = name
        paths[name] = model.bf16_path
        profiles[name] = model.profile(x, repeat=args.repeat, warmup=args.warmup)
        forward[name] = time_forward(model, x, repeat=args.repeat, warmup=0)
    precision = args.precision if args.precision == "float32" else (
        "bfloat16 on " + ", ".join(f"{p} ({n})" for n, p in paths.items()))
    title = (f"AlexNet ({args.variant}), batch {args.batch_size} x {model.input_shape}, {precision}: "
             f"median of {args.repeat} runs after {args.warmup} warm-up")
    args.bf16_paths = paths
    if args.json:
        print(json.dumps(_profile_json(args, model, profiles, forward)))
    else:
        print(_profile_table(title, profiles, forward))
        if "numba" in profiles:
            from ..backends import describe_runtime
            print(describe_runtime())
    if args.plot:
        plot_profile(profiles, args.plot, title=f"AlexNet ({args.variant}), batch {args.batch_size}: "
                                                f"time per step (median of {args.repeat})")
    return 0


def _runtime_json(profiles):
    """The threading layer, threads, CPU and ISA the numba rows ran with (None without them)."""
    if "numba" not in profiles:
        return None
    from ..backends import runtime_info
    return runtime_info()


def _profile_json(args, model, profiles, forward):
    first = next(iter(profiles.values()))
    rows = []
    for i, r in enumerate(first):
        row = {k: r[k] for k in ("name", "layers", "type", "macs")}
        row["output_shape"] = list(r["output_shape"])
        for name, prof in profiles.items():
            row[name] = {"ms": prof[i]["seconds"] * 1e3, "gflops": prof[i]["gflops"], "share": prof[i]["share"]}
        if "numba" in profiles and "numpy" in profiles:
            row["speedup"] = _speedup(profiles["numpy"][i], profiles["numba"][i])
        rows.append(row)
    return {"variant": args.variant, "batch_size": args.batch_size, "input_shape": list(model.input_shape),
            "precision": args.precision, "bf16_paths": getattr(args, "bf16_paths", {}),
            "repeat": args.repeat, "warmup": args.warmup, "backends": list(profiles), "note": PROFILE_NOTE,
            "rows": rows, "runtime": _runtime_json(profiles),
            "total": {name: {"sum_ms": sum(r["seconds"] for r in prof) * 1e3, "forward_ms": forward[name] * 1e3}
                      for name, prof in profiles.items()}}


def _speedup(slow, fast):
    return slow["seconds"] / fast["seconds"] if fast["seconds"] > 0 else None


def _profile_table(title, profiles, forward):
    first = next(iter(profiles.values()))
    both = "numba" in profiles and "numpy" in profiles
    header = ["layer", "type", "output shape", "MACs/image"]
    for name in profiles:
        header += [f"{name} ms", "GFLOP/s", "share"]
    if both:
        header.append("speed-up")
    body = []
    for i, r in enumerate(first):
        cells = [r["name"], r["type"], str(tuple(r["output_shape"])), f"{r['macs']:,}"]
        for prof in profiles.values():
            q = prof[i]
            cells += [f"{q['seconds'] * 1e3:.2f}", f"{q['gflops']:.1f}" if q["macs"] else "-", f"{q['share']:.1%}"]
        if both:
            s = _speedup(profiles["numpy"][i], profiles["numba"][i])
            cells.append(f"{s:.1f}x" if s is not None else "-")
        body.append(cells)
    widths = [max(len(h), *(len(b[k]) for b in body)) for k, h in enumerate(header)]
    left = 3  # name, type, shape left-aligned; numbers right-aligned

    def fmt(cells):
        return "  ".join(c.ljust(w) if k < left else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    lines = [title, f"({PROFILE_NOTE})", rule, fmt(header), rule] + [fmt(b) for b in body] + [rule]
    for name, prof in profiles.items():
        lines.append(f"{name}: sum of the rows {sum(r['seconds'] for r in prof) * 1e3:.2f} ms; "
                     f"one whole forward pass {forward[name] * 1e3:.2f} ms (median)")
    if both:
        total = sum(r["seconds"] for r in profiles["numpy"]) / max(sum(r["seconds"] for r in profiles["numba"]), 1e-12)
        lines.append(f"speed-up numba over numpy: {total:.1f}x")
    return "\n".join(lines)
