"""``fastalex bench`` and ``fastalex tune``: how fast the model runs here, against PyTorch and
ONNX Runtime on the same model, and the fastest schedules measured ahead of time."""

from __future__ import annotations

import argparse
import time

from .common import (UsageError, add_weight_dtype, backends, bf16_note, check_batch_memory, compile_note,
                     positive_int, usage_errors, variants)


def add_commands(sub):
    """Add ``bench`` and ``tune`` to the ``fastalex`` subcommands ``sub``."""
    p = sub.add_parser("bench", help="time the whole model on random input",
                       description="Time a forward pass of the whole model (random weights and input): "
                                   "median and min of several runs after a warm-up.")
    p.add_argument("--variant", choices=variants(), default=None, help="model variant (default torchvision)")
    p.add_argument("--weights", metavar="FILE.onnx", default=None,
                   help="time an .onnx model instead of a variant, and ONNX Runtime on the same file "
                        "if installed (--peers does not apply)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--backend", choices=backends() + ["all"], default="all", help="backend(s) to time (default all)")
    p.add_argument("--repeat", type=positive_int, default=5, metavar="N", help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)")
    add_weight_dtype(p)
    p.add_argument("--peers", choices=["auto", "none"], default="auto",
                   help="auto (default): also time PyTorch and ONNX Runtime on the same model, weights, "
                        "input and number of threads, when they are installed; none: only fastalex")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="measure the fastest schedule of every layer on this machine, ahead of time",
                       description="Run the first forward passes now: the fast backend measures which schedule "
                                   "runs each convolution and dense layer fastest on this machine at each batch "
                                   "size, and keeps the winners on disk for every later run.")
    p.add_argument("--variant", choices=variants() + ["all"], default="all", help="model variant (default all)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 16), metavar="N,N,...",
                   help="batch sizes to tune for (default 1,16)")
    p.add_argument("--again", action="store_true", help="forget what was measured before and measure anew")
    p.set_defaults(func=cmd_tune)


def _batch_sizes(text):
    sizes = [part.strip() for part in text.split(",")]
    if not sizes or not all(p.isdigit() and int(p) >= 1 for p in sizes):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return tuple(int(p) for p in sizes)


def cmd_bench(args):
    import numpy as np

    from ..backends import BACKENDS
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    names.sort(key=lambda n: n != "numba")  # numba first
    if "numba" in names:
        from ..backends import get_backend
        try:
            get_backend("numba")
            compile_note("numba")
        except ImportError:
            pass
    from ..loading import is_onnx, load_model
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
    check_batch_memory(model, args.batch_size)
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
        from ..backends import describe_runtime
        print(describe_runtime())
    return 0


def _bench_runners(model, names, peers):
    """``(name, run or None, note)`` for each fastalex backend, then each installed peer."""
    import numba

    from .. import peers as P
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


def cmd_tune(args):
    from ..tuning import tune
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
