"""fastalex against other CPU engines: the one comparison the README's table comes from.

    python benchmarks/compare.py                       # whole models: both AlexNets, batch 1 and 16
    python benchmarks/compare.py --layers              # every conv layer, and fc6 against NumPy's sgemm
    python benchmarks/compare.py --engines numba,onnxruntime --rounds 5 --json out.json
    python benchmarks/compare.py --engines numba,numba-avx2   # the AVX2 build against the native one

Every engine runs in its own process (``compare.py --worker ENGINE ...``): thread pools that spin
(PyTorch's, ONNX Runtime's, OpenVINO's, Numba's) slow each other down when they share one. The
engines alternate over ``--rounds`` rounds, each engine once per round, the order rotated from
one round to the next, so a slow minute of a shared machine falls on all of them. A worker loads
the model, warms up, then times ``--calls`` calls of each (variant, batch) cell and reports the
median and the minimum. A cell's time in the table is the median of its rounds' medians.

Every engine gets the same weights (He-normal from ``--seed``, small random biases) and the same
random inputs, written once to a temporary directory (``.npz`` weights, an ``.onnx`` file from
:func:`fastalex.peers.onnx_model`, the inputs and fastalex's NumPy reference logits), and every
worker checks its output against that reference: float32 engines must agree within
``1e-4 * max|ref| + 1e-5``; bfloat16 engines report ``max|out - ref| / max|ref|`` (<= 1e-2
expected). fastalex's engines use the library as a user would: no ``configure_threads()`` call,
no environment variable (the threading layer Numba actually ran on is in the table's header).

Engines that are not installed are listed as skipped. Exit status: 0, or 1 when an engine failed
or a float32 engine disagreed with the reference (the table is printed either way).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

#: engine name -> column title, in the table's order
ENGINES = {
    "numba": "fastalex numba",
    "numba-bf16": "fastalex bf16",
    "numba-avx2": "fastalex AVX2 build",
    "numpy": "fastalex numpy",
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "openvino-f32": "OpenVINO f32",
    "openvino": "OpenVINO default",
}
#: engines that compute in bfloat16 (or may: OpenVINO's default is bf16 where the CPU has AMX or
#: AVX512-BF16): reported by their relative error, not held to the float32 tolerance
LOWP_ENGINES = ("numba-bf16", "openvino")
#: the engines of ``--layers`` (conv layers through fastalex's layer API, PyTorch's conv2d + ReLU)
LAYER_ENGINES = ("numba", "numba-bf16", "numba-avx2", "numpy", "torch")
DEFAULT_LAYER_ENGINES = ("numba", "numba-bf16", "torch")
#: engines too slow to time many calls: at most this many calls per cell, one warm-up call
SLOW_ENGINES = {"numpy": 3}
#: ratio columns: (title, numerator engine, denominator engine)
RATIOS = (("fastalex/ORT", "numba", "onnxruntime"),
          ("fastalex-bf16/OV-default", "numba-bf16", "openvino"),
          ("AVX2/native", "numba-avx2", "numba"))
#: fastalex's engines (the numba ones start Numba's threads on the first call)
FASTALEX_ENGINES = ("numba", "numba-bf16", "numba-avx2", "numpy")
NUMBA_ENGINES = ("numba", "numba-bf16", "numba-avx2")
#: variant names on the command line -> fastalex's; "2012" is the paper's network
VARIANT_ALIASES = {"torchvision": "torchvision", "original": "original", "2012": "original"}
VARIANT_TITLES = {"torchvision": "torchvision", "original": "2012"}
#: ISA features worth naming in the header (x86 flags, ARM "Features" names)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8", "asimd", "asimddp", "bf16", "i8mm", "sve", "sve2", "sme")
ISA_NAMES = {"asimd": "neon"}
SGEMM_N = 2048  # NumPy's sgemm rate: an SGEMM_N x SGEMM_N x SGEMM_N product
MARK = "COMPARE-RESULT "  # prefix of the worker's one JSON line on stdout
WORKER_TIMEOUT = 3600  # seconds; a worker that takes longer is reported as failed


class Skip(Exception):
    """The engine cannot run here (not installed, or this fastalex lacks the feature)."""


# ============================================================================ the machine

def cpu_info() -> dict:
    """``{"model": ..., "isa": [...], "cpus": n}`` from /proc/cpuinfo, else from ``platform``."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        flags = {"asimd"}  # NEON is part of every AArch64 CPU
    isa = [ISA_NAMES.get(f, f) for f in ISA_FLAGS if f in flags]
    return {"model": model, "isa": isa, "cpus": os.cpu_count()}


def git_commit() -> str:
    """The short hash of the checkout this script is in, ``+dirty`` with uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ============================================================================ shared data

def _cell_name(variant, batch):
    return f"{variant}_b{batch}"


def _rng(seed, *parts):
    return np.random.default_rng([seed, *parts])


def _conv_layers(model):
    """``(short name, dotted name, layer, per-sample input shape)`` of each convolution."""
    from fastalex import layers as L
    from fastalex.peers import shape_before
    convs = [(n, l) for n, l in model.named_layers() if isinstance(l, L.Conv2D)]
    return [(f"conv{i + 1}", name, layer, shape_before(model, name, model.input_shape))
            for i, (name, layer) in enumerate(convs)]


def prepare(data, variants, batches, seed, layers, fc_batch):
    """Write the weights, the ONNX files, the inputs and the NumPy reference outputs to ``data``."""
    import fastalex
    import fastalex.functional as F
    from fastalex import layers as L

    meta = {"variants": {}, "onnx": None, "layers": []}
    for vi, variant in enumerate(variants):
        model = fastalex.alexnet(variant, seed=seed, backend="numpy")
        state = model.state_dict()
        rng = _rng(seed, 1, vi)
        for key, value in state.items():  # small random biases, so that a lost bias shows
            if key.endswith(".bias"):
                state[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        model.load_state_dict(state)
        fastalex.save_weights(model, os.path.join(data, f"{variant}.npz"))
        meta["variants"][variant] = {"input_shape": list(model.input_shape)}
        try:
            from fastalex.peers import onnx_model
            proto = onnx_model(model, model.input_shape)
            with open(os.path.join(data, f"{variant}.onnx"), "wb") as f:
                f.write(proto.SerializeToString())
            meta["onnx"] = True
        except ImportError as exc:
            meta["onnx"] = f"the onnx package is needed to write the model file ({exc})"
        if not layers:
            for batch in batches:
                x = _rng(seed, 2, vi, batch).standard_normal((batch, *model.input_shape), dtype=np.float32)
                np.save(os.path.join(data, f"x_{_cell_name(variant, batch)}.npy"), x)
                np.save(os.path.join(data, f"ref_{_cell_name(variant, batch)}.npy"), model(x))
            continue
        arrays = {}
        for short, name, layer, shape in _conv_layers(model):
            key = f"{variant}.{short}"
            arrays[f"{key}.weight"], arrays[f"{key}.bias"] = layer.weight, layer.bias
            meta["layers"].append({"key": key, "variant": variant, "layer": short, "name": name,
                                   "input_shape": list(shape), "weight_shape": list(layer.weight.shape),
                                   "stride": list(layer.stride), "padding": list(layer.padding),
                                   "groups": layer.groups, "out_shape": list(layer.output_shape(tuple(shape)))})
            for batch in batches:
                x = _rng(seed, 3, vi, batch, len(arrays)).standard_normal((batch, *shape), dtype=np.float32)
                arrays[f"{key}.x{batch}"] = x
                arrays[f"{key}.ref{batch}"] = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding,
                                                       groups=layer.groups, activation="relu", backend="numpy")
        np.savez(os.path.join(data, f"layers_{variant}.npz"), **arrays)
    if layers:  # fc6: 9216 -> 4096 with its ReLU, the first variant's weights
        variant = variants[0]
        state = fastalex.load_weights(os.path.join(data, f"{variant}.npz"))
        dense = [(n, l) for n, l in fastalex.alexnet(variant, seed=None).named_layers() if isinstance(l, L.Dense)]
        name = dense[0][0]
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        x = _rng(seed, 4, fc_batch).standard_normal((fc_batch, w.shape[1]), dtype=np.float32)
        ref = F.linear(x, w, b, activation="relu", backend="numpy")
        np.savez(os.path.join(data, "fc6.npz"), weight=w, bias=b, x=x, ref=ref)
        meta["fc6"] = {"variant": variant, "name": name, "batch": fc_batch, "weight_shape": list(w.shape)}
    with open(os.path.join(data, "meta.json"), "w") as f:
        json.dump(meta, f)
    return meta


def check(out, ref, engine) -> dict:
    """How ``out`` compares with the NumPy reference ``ref``: max abs error, the float32 bound,
    ``max|out - ref| / max|ref|``, and whether it agrees (float32 engines: within the bound;
    bfloat16 engines: relative error <= 1e-2)."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"agree": False, "error": f"output shape {list(out.shape)} != reference {list(ref.shape)}"}
    if not np.all(np.isfinite(out)):
        return {"agree": False, "error": "output has NaN or infinity"}
    scale = float(np.abs(ref).max(initial=0.0))
    err = float(np.abs(out - ref).max(initial=0.0))
    bound = 1e-4 * scale + 1e-5
    rel = err / scale if scale else err
    lowp = engine in LOWP_ENGINES
    return {"max_abs_err": err, "bound": bound, "max_rel_err": rel, "lowp": lowp,
            "agree": bool(rel <= 1e-2 if lowp else err <= bound)}


# ============================================================================ workers

def _time(fn, x, warmup, calls):
    """``(seconds of each timed call, output of the last call)`` after ``warmup`` calls."""
    out = None
    for _ in range(warmup):
        out = fn(x)
    gc.collect()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - t0)
    return times, out


def _check_avx2_build():
    """``Skip`` unless this CPU runs AVX2 code and the kernels are being compiled for AVX2."""
    from fastalex.backends import _target
    host = _target.host_features()
    if not (host.get("avx2") and host.get("fma")):
        raise Skip("this CPU has no AVX2 + FMA: an AVX2 build cannot run here")
    t = _target.target()
    if t.isa != "avx2":
        raise Skip(f"the kernels compile for {t.cpu_name} ({t.isa}), not AVX2: "
                   "set NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= (compare.py does)")


def _has_precision(callable_):
    try:
        return "precision" in inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return False


class FastalexEngine:
    """fastalex as a user runs it: the default backend settings, no configure_threads()."""

    def __init__(self, engine, threads):
        import fastalex
        import numba
        self.fastalex, self.numba = fastalex, numba
        self.backend = "numpy" if engine == "numpy" else "numba"
        self.kwargs = {}
        if engine == "numba-avx2":
            _check_avx2_build()
        if engine == "numba-bf16":
            if not _has_precision(fastalex.alexnet):
                raise Skip("this fastalex's alexnet() has no precision= argument (bfloat16 not built yet)")
            self.kwargs = {"precision": "bfloat16"}
        self.threads, self.threads_set = threads, False

    def _set_threads(self):
        # Numba's threads start with the first parallel kernel, on the layer fastalex (or Numba)
        # chooses then; setting the count before would start them on Numba's own choice. So the
        # count is set after the first call (a warm-up call), where it only changes the count.
        if not self.threads_set and self.backend == "numba":
            if self.numba.get_num_threads() != self.threads:
                self.numba.set_num_threads(self.threads)
            self.threads_set = True

    def _calling(self, fn):
        """``fn`` as the timed call: each call sets the thread count once its threads run."""
        def run(x):
            out = fn(x)
            self._set_threads()
            return out
        return run

    def model(self, variant, data):
        model = self.fastalex.alexnet(variant, weights=os.path.join(data, f"{variant}.npz"),
                                      backend=self.backend, **self.kwargs)
        return self._calling(model)

    def conv(self, spec, weight, bias):
        layers = self.fastalex.layers
        kwargs = dict(self.kwargs)
        if kwargs and not _has_precision(layers.Conv2D):
            raise Skip("this fastalex's Conv2D has no precision= argument")
        (out_c, cin_g, kh, kw) = spec["weight_shape"]
        layer = layers.Conv2D(spec["input_shape"][0], out_c, (kh, kw), stride=tuple(spec["stride"]),
                              padding=tuple(spec["padding"]), groups=spec["groups"], activation="relu",
                              weight=weight, bias_value=bias, **kwargs)
        layer.backend = self.backend
        return self._calling(layer)

    def dense(self, weight, bias):
        layers = self.fastalex.layers
        kwargs = dict(self.kwargs)
        if kwargs and not _has_precision(layers.Dense):
            raise Skip("this fastalex's Dense has no precision= argument")
        layer = layers.Dense(weight.shape[1], weight.shape[0], activation="relu", weight=weight,
                             bias_value=bias, **kwargs)
        layer.backend = self.backend
        return self._calling(layer)

    def info(self):
        numba = self.numba
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel ran
            layer = None
        import llvmlite
        info = {"version": f"fastalex {self.fastalex.__version__} (numba {numba.__version__}, "
                           f"llvmlite {llvmlite.__version__}, numpy {np.__version__})",
                "threading_layer": layer, "numba_threads": numba.get_num_threads()}
        if self.backend == "numba":
            from fastalex.backends import _target
            t = _target.target()
            info["kernels"] = f"{t.cpu_name}, {t.isa}, micro-kernel {t.mr}x{t.nr}"
        try:
            from threadpoolctl import threadpool_info
            info["blas"] = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
                            for p in threadpool_info() if p.get("user_api") == "blas"]
        except ImportError:
            pass
        return info


class TorchEngine:
    def __init__(self, engine, threads):
        try:
            import torch
        except ImportError as exc:
            raise Skip(f"torch is not installed ({exc})") from None
        self.torch, self.threads = torch, threads
        torch.set_num_threads(threads)

    def model(self, variant, data):
        import fastalex
        from fastalex.peers import torch_model
        return torch_model(fastalex.alexnet(variant, weights=os.path.join(data, f"{variant}.npz"), backend="numpy"),
                           self.threads)

    def conv(self, spec, weight, bias):
        torch = self.torch
        w, b = torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())
        stride, padding, groups = tuple(spec["stride"]), tuple(spec["padding"]), spec["groups"]

        def run(x):
            with torch.inference_mode():
                y = torch.nn.functional.conv2d(torch.from_numpy(x), w, b, stride, padding, 1, groups)
                return torch.relu_(y).numpy()
        return run

    def dense(self, weight, bias):
        torch = self.torch
        w, b = torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())

        def run(x):
            with torch.inference_mode():
                return torch.relu_(torch.nn.functional.linear(torch.from_numpy(x), w, b)).numpy()
        return run

    def info(self):
        return {"version": f"PyTorch {self.torch.__version__}", "threads": self.torch.get_num_threads()}


class OrtEngine:
    def __init__(self, engine, threads):
        try:
            import onnxruntime
        except ImportError as exc:
            raise Skip(f"onnxruntime is not installed ({exc})") from None
        self.ort, self.threads = onnxruntime, threads

    def model(self, variant, data):
        from fastalex.peers import ort_session
        path = os.path.join(data, f"{variant}.onnx")
        if not os.path.exists(path):
            raise Skip("no ONNX file (the onnx package is not installed)")
        session = ort_session(path, self.threads)

        def run(x):
            return session.run(None, {"input": x})[0]
        return run

    def info(self):
        return {"version": f"ONNX Runtime {self.ort.__version__}"}


class OpenVinoEngine:
    """OpenVINO's CPU plugin on the ONNX file, reshaped to the batch (a static shape, as deployed);
    ``openvino-f32`` asks for f32 (``INFERENCE_PRECISION_HINT``), ``openvino`` keeps the default
    (bf16 on CPUs with AMX or AVX512-BF16)."""

    def __init__(self, engine, threads):
        try:
            import openvino
        except ImportError as exc:
            raise Skip(f"openvino is not installed ({exc})") from None
        self.ov, self.core = openvino, openvino.Core()
        self.config = {"INFERENCE_NUM_THREADS": threads}
        if engine == "openvino-f32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self.precision = None

    def model(self, variant, data):
        path = os.path.join(data, f"{variant}.onnx")
        if not os.path.exists(path):
            raise Skip("no ONNX file (the onnx package is not installed)")
        compiled = {}

        def run(x):
            request = compiled.get(x.shape)
            if request is None:
                net = self.core.read_model(path)
                net.reshape({net.inputs[0].get_any_name(): list(x.shape)})
                model = self.core.compile_model(net, "CPU", self.config)
                hint = model.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
                self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
                request = compiled[x.shape] = model.create_infer_request()
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        return run

    def info(self):
        version = getattr(self.ov, "__version__", None) or self.ov.get_version()
        return {"version": f"OpenVINO {version.split('-')[0]}", "precision": self.precision}


ENGINE_CLASSES = {"numba": FastalexEngine, "numba-bf16": FastalexEngine, "numba-avx2": FastalexEngine,
                  "numpy": FastalexEngine,
                  "torch": TorchEngine, "onnxruntime": OrtEngine, "openvino-f32": OpenVinoEngine,
                  "openvino": OpenVinoEngine}


def sgemm_rate(repeat=5) -> float:
    """NumPy's sgemm rate in GFLOP/s on an ``SGEMM_N``-cube product: the best of ``repeat``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    b = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    out = np.empty_like(a)
    times, _ = _time(lambda _: np.matmul(a, b, out=out), None, 1, repeat)
    return 2 * SGEMM_N ** 3 / min(times) / 1e9


def _cell(engine, fn, x, ref, warmup, calls):
    try:
        times, out = _time(fn, x, warmup, calls)
    except Skip:
        raise
    except Exception as exc:  # one cell failing does not lose the others
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "median_ms": float(np.median(times)) * 1e3, "min_ms": min(times) * 1e3,
            "calls": calls, "check": check(out, ref, engine)}


def worker(args) -> dict:
    """One engine's run in this process: every cell of the grid, timed."""
    data, engine = args.data, args.worker
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    calls, warmup = args.calls, args.warmup
    if engine in SLOW_ENGINES:
        calls, warmup = max(1, min(calls, SLOW_ENGINES[engine])), min(warmup, 1)
    if engine in NUMBA_ENGINES:
        warmup = max(warmup, 1)  # the call where Numba's threads start, before their count is set
    try:
        runner = ENGINE_CLASSES[engine](engine, args.threads)
    except Skip as exc:
        return {"engine": engine, "status": "skipped", "reason": str(exc)}
    cells = {}
    result = {"engine": engine, "status": "ok", "cells": cells, "calls": calls, "warmup": warmup}
    try:
        if not args.layers:
            for variant in meta["variants"]:
                fn = runner.model(variant, data)
                for batch in args.batches:
                    name = _cell_name(variant, batch)
                    x = np.load(os.path.join(data, f"x_{name}.npy"))
                    ref = np.load(os.path.join(data, f"ref_{name}.npy"))
                    cells[name] = _cell(engine, fn, x, ref, warmup, calls)
                del fn
                gc.collect()
        else:
            if not hasattr(runner, "conv"):
                raise Skip("no layer API here (--layers compares fastalex's layers with PyTorch's)")
            for spec in meta["layers"]:
                arrays = np.load(os.path.join(data, f"layers_{spec['variant']}.npz"))
                key = spec["key"]
                fn = runner.conv(spec, arrays[f"{key}.weight"], arrays[f"{key}.bias"])
                for batch in args.batches:
                    cells[f"{key}_b{batch}"] = _cell(engine, fn, arrays[f"{key}.x{batch}"],
                                                     arrays[f"{key}.ref{batch}"], warmup, calls)
            fc = np.load(os.path.join(data, "fc6.npz"))
            fn = runner.dense(fc["weight"], fc["bias"])
            cells[f"fc6_b{meta['fc6']['batch']}"] = _cell(engine, fn, fc["x"], fc["ref"], warmup, calls)
            # in this process, just after fc6: OpenBLAS's threads spin on for a while after a
            # product, and fc6 timed right after it took 14 ms a call instead of 8 for its
            # first dozen calls (Zen 4); the best of several products is not hurt the other way
            result["sgemm_gflops"] = sgemm_rate()
    except Skip as exc:
        return {"engine": engine, "status": "skipped", "reason": str(exc)}
    result.update(runner.info())
    return result


# ============================================================================ the parent

def avx2_env(data) -> dict:
    """The environment of the ``numba-avx2`` worker: kernels compiled for an AVX2 CPU
    (``haswell``, its own features only: without the empty feature string Numba would keep the
    host's AVX-512), in a Numba cache of its own that starts empty in each comparison (under the
    data directory; the rounds after the first reuse it)."""
    return {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "",
            "NUMBA_CACHE_DIR": os.path.join(data, "numba-cache-avx2")}


def run_worker(args, engine, data, extra_env=None) -> dict:
    """Run ``compare.py --worker ENGINE`` in a new process; its JSON report, or an error report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--data", data,
           "--threads", str(args.threads), "--calls", str(args.calls), "--warmup", str(args.warmup),
           "--batches", ",".join(map(str, args.batches))]
    if args.layers:
        cmd.append("--layers")
    env = dict(os.environ, **(extra_env or {}))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "status": "error", "error": f"timed out after {WORKER_TIMEOUT} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {"engine": engine, "status": "error", "error": tail[0][:300]}
    report = json.loads(lines[-1][len(MARK):])
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if proc.stderr.strip():
        report["stderr"] = proc.stderr.strip()[-2000:]  # warnings the engine printed
    return report


def rotated(engines, round_index):
    """The engines' order in round ``round_index`` (0-based): rotated by one each round."""
    k = round_index % len(engines) if engines else 0
    return list(engines[k:]) + list(engines[:k])


def combine(reports) -> dict:
    """One engine's rounds -> ``{"status", "cells": {name: {median_ms, min_ms, rounds, check}}, ...}``.

    A cell's ``median_ms`` is the median of its rounds' medians, ``min_ms`` the minimum of their
    minima; its check is the worst round's (largest error)."""
    first = reports[0]
    if first["status"] != "ok":
        return dict(first)
    out = {k: v for k, v in first.items() if k not in ("cells", "seconds", "stderr")}
    out["rounds"] = len(reports)
    stderr = [r["stderr"] for r in reports if r.get("stderr")]
    if stderr:
        out["stderr"] = stderr[-1]
    layers = sorted({r.get("threading_layer") for r in reports if r.get("threading_layer")})
    if layers:
        out["threading_layer"] = ", ".join(layers)
    if any("sgemm_gflops" in r for r in reports):
        out["sgemm_gflops"] = float(np.median([r["sgemm_gflops"] for r in reports if "sgemm_gflops" in r]))
    cells = {}
    for name in first["cells"]:
        runs = [r["cells"].get(name, {}) for r in reports if r["status"] == "ok"]
        ok = [c for c in runs if c.get("status") == "ok"]
        if not ok:
            cells[name] = {"status": "error", "error": runs[0].get("error", "no result")}
            continue
        checks = [c["check"] for c in ok]
        worst = max(checks, key=lambda c: (not c["agree"], c.get("max_abs_err", float("inf"))))
        cells[name] = {"status": "ok", "median_ms": float(np.median([c["median_ms"] for c in ok])),
                       "min_ms": min(c["min_ms"] for c in ok), "round_medians_ms": [c["median_ms"] for c in ok],
                       "calls": ok[0]["calls"], "check": worst}
    out["cells"] = cells
    return out


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _cell_ms(results, engine, name):
    cell = results.get(engine, {}).get("cells", {}).get(name)
    return cell["median_ms"] if cell and cell.get("status") == "ok" else None


def _header(meta, results, title) -> list[str]:
    cpu = meta["cpu"]
    ok = {e: r for e, r in results.items() if r.get("status") == "ok"}
    versions = list(dict.fromkeys(r["version"] for r in ok.values() if r.get("version")))
    if ok.get("openvino", {}).get("precision"):
        versions.append(f"OpenVINO's default precision here: {ok['openvino']['precision']}")
    fast = [results[e] for e in FASTALEX_ENGINES if results.get(e, {}).get("status") == "ok"]
    tl = ", ".join(sorted({r["threading_layer"] for r in fast if r.get("threading_layer")})) or "-"
    kernels = [f"{ENGINES[e]}: {results[e]['kernels']}" for e in FASTALEX_ENGINES
               if results.get(e, {}).get("status") == "ok" and results[e].get("kernels")]
    lines = [f"### {title}", "",
             f"- CPU: {cpu['model']} ({cpu['cpus']} logical CPUs); ISA: {' '.join(cpu['isa']) or '-'}",
             f"- threads: {meta['threads']} per engine; fastalex's threading layer as it ran: {tl}",
             *([f"- fastalex's kernels compiled for: {'; '.join(kernels)}"] if kernels else []),
             f"- date: {meta['date']}; commit: {meta['commit']}",
             f"- versions: {'; '.join(versions) or '-'}",
             f"- method: each engine in its own process, {meta['rounds']} round(s), order rotated each round; "
             f"median of the rounds' medians of {meta['calls']} calls "
             f"({', '.join(f'{e}: {n}' for e, n in SLOW_ENGINES.items())}) after {meta['warmup']} warm-up "
             f"call(s); same weights (seed {meta['seed']}) and inputs for every engine"]
    skipped = [f"{ENGINES[e]} ({r.get('reason', '')})" for e, r in results.items() if r.get("status") == "skipped"]
    if skipped:
        lines.append(f"- skipped: {'; '.join(skipped)}")
    failed = [f"{ENGINES[e]} ({r.get('error', '')})" for e, r in results.items() if r.get("status") == "error"]
    if failed:
        lines.append(f"- FAILED: {'; '.join(failed)}")
    printed = [f"{ENGINES[e]}: `{_first_warning(r['stderr'])}`" for e, r in ok.items() if r.get("stderr")]
    if printed:
        lines.append(f"- printed on stderr (whole text in the JSON): {'; '.join(printed)}")
    return lines + [""]


def _first_warning(text, width=110):
    """The line of a worker's stderr worth showing: the first naming a warning, else the first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    line = next((line for line in lines if "Warning" in line), lines[0])
    line = line[line.find(": ", line.find("Warning")) + 2:] if "Warning: " in line else line
    return line if len(line) <= width else line[:width - 3] + "..."


def _footer(results, names) -> list[str]:
    """Agreement notes: float32 engines outside the tolerance, bf16 engines' relative errors."""
    notes, bad = [], []
    for engine, r in results.items():
        if r.get("status") != "ok":
            continue
        checks = {n: c["check"] for n, c in r["cells"].items() if c.get("status") == "ok"}
        errors = [f"{n}: {c['error']}" for n, c in r["cells"].items() if c.get("status") != "ok"]
        if errors:
            bad.append(f"{ENGINES[engine]} failed on {'; '.join(errors)}")
        if engine in LOWP_ENGINES and checks:
            worst = max(c.get("max_rel_err", float("inf")) for c in checks.values())
            notes.append(f"{ENGINES[engine]}: max |out - ref| / max|ref| = {worst:.2g}"
                         + ("" if all(c["agree"] for c in checks.values()) else " (over 1e-2!)"))
        elif checks:
            off = [f"{names.get(n, n)} ({c.get('error') or format(c['max_abs_err'], '.2g') + ' > ' + format(c['bound'], '.2g')})"
                   for n, c in checks.items() if not c["agree"]]
            if off:
                bad.append(f"{ENGINES[engine]} disagrees with the reference: {', '.join(off)}")
    lines = ["", "Agreement with fastalex's NumPy reference: float32 engines within 1e-4·max|ref| + 1e-5"
             + (" (all)." if not bad else "; marked `!` where not.")]
    if notes:
        lines.append("bfloat16 engines: " + "; ".join(notes) + ".")
    lines += [f"- {b}" for b in bad]
    return lines


def _mark(results, engine, name):
    cell = results.get(engine, {}).get("cells", {}).get(name)
    if not cell:
        return "-"
    if cell.get("status") != "ok":
        return "error"
    return _fmt_ms(cell["median_ms"]) + ("" if cell["check"]["agree"] else " !")


def model_table(meta, results) -> str:
    """The Markdown table of a whole-model run: header lines, rows variant x batch."""
    engines = [e for e in ENGINES if results.get(e, {}).get("status") == "ok"]
    ratios = [(t, a, b) for t, a, b in RATIOS if a in engines and b in engines]
    lines = _header(meta, results, "fastalex and other CPU engines: median ms per batch (lower is better)")
    lines.append("| model | batch | " + " | ".join(ENGINES[e] for e in engines)
                 + "".join(f" | {t}" for t, _, _ in ratios) + " |")
    lines.append("|---|---:|" + "---:|" * (len(engines) + len(ratios)))
    names = {}
    for variant in meta["variants"]:
        for batch in meta["batches"]:
            name = _cell_name(variant, batch)
            names[name] = f"{VARIANT_TITLES[variant]} / {batch}"
            cells = [_mark(results, e, name) for e in engines]
            rs = []
            for _, a, b in ratios:
                va, vb = _cell_ms(results, a, name), _cell_ms(results, b, name)
                rs.append(f"{va / vb:.2f}x" if va and vb else "-")
            lines.append(f"| {VARIANT_TITLES[variant]} | {batch} | " + " | ".join(cells)
                         + "".join(f" | {r}" for r in rs) + " |")
    return "\n".join(lines + _footer(results, names))


def _gflops(flops, ms):
    return flops / (ms * 1e-3) / 1e9 if ms else None


def layer_table(meta, results, data_meta) -> str:
    """The Markdown table of a ``--layers`` run: each conv layer (and fc6) by batch."""
    engines = [e for e in LAYER_ENGINES if results.get(e, {}).get("status") == "ok"]
    main = "numba" if "numba" in engines else (engines[0] if engines else None)
    torch = "torch" in engines
    lines = _header(meta, results, "Layers: fastalex's layer API and PyTorch's conv2d + ReLU, median ms (lower is better)")
    sgemm = results.get(main, {}).get("sgemm_gflops") if main else None
    if sgemm:
        lines.insert(-1, f"- NumPy sgemm ({SGEMM_N}³ float32) in the {ENGINES[main]} worker: {sgemm:.0f} GFLOP/s")
    head = ["layer", "batch", *[ENGINES[e] for e in engines]]
    if main and torch and main != "torch":
        head.append(f"{ENGINES[main]}/PyTorch")
    if main and main != "torch":
        head += [f"{ENGINES[main]} GFLOP/s", "of sgemm"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---:|" + "---:|" * (len(head) - 2))
    rows, names = [], {}
    for spec in data_meta["layers"]:
        out_c, cin_g, kh, kw = spec["weight_shape"]
        ho, wo = spec["out_shape"][1:]
        title = f"{VARIANT_TITLES[spec['variant']]} {spec['layer']} ({spec['input_shape'][0]}->{out_c}, "\
                f"{kh}x{kw}/{spec['stride'][0]}" + (f", groups {spec['groups']}" if spec["groups"] > 1 else "") + ")"
        for batch in meta["batches"]:
            flops = 2 * batch * out_c * ho * wo * cin_g * kh * kw
            rows.append((title, batch, f"{spec['key']}_b{batch}", flops))
    fc = data_meta["fc6"]
    fc_name = f"fc6_b{fc['batch']}"
    rows.append((f"fc6 ({fc['weight_shape'][1]}->{fc['weight_shape'][0]}, + ReLU)", fc["batch"], fc_name,
                 2 * fc["batch"] * fc["weight_shape"][0] * fc["weight_shape"][1]))
    for title, batch, name, flops in rows:
        names[name] = f"{title} / {batch}"
        cells = [title, str(batch), *[_mark(results, e, name) for e in engines]]
        if main and torch and main != "torch":
            a, b = _cell_ms(results, main, name), _cell_ms(results, "torch", name)
            cells.append(f"{a / b:.2f}x" if a and b else "-")
        if main and main != "torch":
            g = _gflops(flops, _cell_ms(results, main, name))
            cells += [f"{g:.0f}" if g else "-", f"{g / sgemm:.0%}" if g and sgemm else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("GFLOP/s count a convolution's direct multiply-adds (2 flops each), whatever algorithm ran "
                 "(Winograd does fewer); `of sgemm` is that rate over NumPy's sgemm rate measured in the "
                 "same worker process.")
    return "\n".join(lines + _footer(results, names))


def _csv(kind):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]
    return parse


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _engine(text):
    if text not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {text!r}; engines: {', '.join(ENGINES)}")
    return text


def _variant(text):
    if text not in VARIANT_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r}; variants: torchvision, original (or 2012)")
    return VARIANT_ALIASES[text]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="engines: " + ", ".join(f"{k} ({v})" for k, v in ENGINES.items()))
    p.add_argument("--engines", type=_csv(_engine), default=None,
                   help="comma-separated engines (default: all; with --layers: "
                        + ",".join(DEFAULT_LAYER_ENGINES) + ")")
    p.add_argument("--rounds", type=_positive, default=3, help="alternating rounds (default 3)")
    p.add_argument("--calls", type=_positive, default=20,
                   help="timed calls per cell and round (default 20; the numpy engine: at most 3)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls first (default 3; numpy: at most 1; fastalex numba: at least 1)")
    p.add_argument("--batches", type=_csv(_positive), default=[1, 16], help="batch sizes (default 1,16)")
    p.add_argument("--variants", type=_csv(_variant), default=["torchvision", "original"],
                   help="torchvision, original (= 2012); default both")
    p.add_argument("--threads", type=_positive, default=2, help="threads per engine (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    p.add_argument("--layers", action="store_true",
                   help="time every conv layer of the variants (and fc6) instead of whole models")
    p.add_argument("--fc-batch", type=_positive, default=16, help="fc6's batch size in --layers (default 16)")
    p.add_argument("--json", metavar="PATH", help="also write every result to this JSON file")
    p.add_argument("--markdown", metavar="PATH", help="also write the table to this Markdown file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one engine in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.batches = list(dict.fromkeys(args.batches))
    args.variants = list(dict.fromkeys(args.variants))
    if args.engines is None:
        args.engines = list(DEFAULT_LAYER_ENGINES if args.layers else ENGINES)
    args.engines = list(dict.fromkeys(args.engines))
    if args.layers and not args.worker:
        wrong = [e for e in args.engines if e not in LAYER_ENGINES]
        if wrong:
            p.error(f"--layers runs the engines {', '.join(LAYER_ENGINES)}, not {', '.join(wrong)}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        if args.worker == "prepare":
            report = prepare(args.data, args.variants, args.batches, args.seed, args.layers, args.fc_batch)
        else:
            report = worker(args)
        print(MARK + json.dumps(report), flush=True)
        return 0

    def say(text):
        print(f"[compare] {text}", file=sys.stderr, flush=True)

    data = tempfile.mkdtemp(prefix="fastalex-compare-")
    try:
        say(f"writing weights, inputs and reference outputs to {data}")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "prepare", "--data", data,
               "--variants", ",".join(args.variants), "--batches", ",".join(map(str, args.batches)),
               "--seed", str(args.seed), "--fc-batch", str(args.fc_batch)] + (["--layers"] if args.layers else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            print(f"compare.py: preparing the data failed: {tail}", file=sys.stderr)
            return 1
        data_meta = json.loads(lines[-1][len(MARK):])
        # Numba starts at most NUMBA_NUM_THREADS threads (the CPU count by default): more need the variable
        extra_env = {"NUMBA_NUM_THREADS": str(args.threads)} if args.threads > (os.cpu_count() or 1) else {}
        reports = {e: [] for e in args.engines}
        active = list(args.engines)
        for r in range(args.rounds):
            for engine in rotated(active, r):
                t0 = time.perf_counter()
                env = dict(extra_env) if engine in FASTALEX_ENGINES else {}
                if engine == "numba-avx2":
                    env.update(avx2_env(data))
                report = run_worker(args, engine, data, env)
                reports[engine].append(report)
                status = report["status"] if report["status"] == "ok" else \
                    f"{report['status']}: {report.get('reason') or report.get('error')}"
                say(f"round {r + 1}/{args.rounds} {engine}: {status} ({time.perf_counter() - t0:.1f} s)")
            # an engine that is not installed or failed in a round is not tried again
            active = [e for e in active if reports[e][-1]["status"] == "ok"]
        results = {e: combine(reports[e]) for e in args.engines}
    finally:
        shutil.rmtree(data, ignore_errors=True)
    meta = {"cpu": cpu_info(), "threads": args.threads, "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "rounds": args.rounds, "calls": args.calls,
            "warmup": args.warmup, "seed": args.seed, "batches": args.batches, "variants": args.variants,
            "engines": args.engines, "mode": "layers" if args.layers else "models",
            "python": platform.python_version(), "platform": platform.platform()}
    table = layer_table(meta, results, data_meta) if args.layers else model_table(meta, results)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "data": data_meta, "results": results, "table": table}, f, indent=1)
    failed = any(r["status"] == "error" for r in results.values()) or any(
        c.get("status") != "ok" or not c["check"]["agree"]
        for r in results.values() if r["status"] == "ok" for c in r["cells"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
