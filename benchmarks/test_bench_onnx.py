"""One ONNX file, two engines: ``fastalex.load_onnx`` (both backends) against ONNX Runtime on
the very same file, batch 1 and 16.

The file is the ONNX model zoo's bvlcalexnet structure at full size (``tests/support/onnx_graphs.py``:
LRN, group=2, pads [0, 0, 1, 1], Reshape, Gemm transB=1, Softmax; random weights, a dynamic
batch axis), written once per session. Every benchmark first checks its output against the
NumPy backend's (and ONNX Runtime's) logits, then times; it skips without onnx/onnxruntime.

    pytest benchmarks/test_bench_onnx.py --benchmark-group-by=group --benchmark-columns=median,min,rounds
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

import fastalex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

BATCHES = (1, 16)
IMPLS = ("numba", "numpy", "onnxruntime")
OUTPUT = "fc8_1"  # the logits (the graph ends in Softmax, which flattens differences)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from support.onnx_graphs import caffe_alexnet
    proto = caffe_alexnet(batch="N", seed=0)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", 1000]))
    path = tmp_path_factory.mktemp("onnx") / "bvlcalexnet_like.onnx"
    onnx.save(proto, str(path))
    return path


@functools.lru_cache(maxsize=None)
def batch(n):
    return np.random.default_rng(n).uniform(-50, 50, (n, 3, 224, 224)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def fastalex_model(path):
    return fastalex.load_onnx(path, preprocess="caffe")


@functools.lru_cache(maxsize=None)
def reference(path, n):
    m = fastalex_model(path)
    m.backend = "numpy"
    try:
        return m.extract(batch(n), OUTPUT)[OUTPUT]
    finally:
        m.backend = None


def implementation(path, impl):
    if impl in ("numba", "numpy"):
        m = fastalex_model(path)

        def run(x):
            m.backend = impl
            try:
                return m.extract(x, OUTPUT)[OUTPUT]
            finally:
                m.backend = None
        return run
    import numba
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = numba.get_num_threads(), 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT], {"data_0": x})[0]


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_onnx_file(benchmark, assert_agree, onnx_file, n, impl, settle):
    run = implementation(onnx_file, impl)
    x = batch(n)
    ref = reference(onnx_file, n)
    assert_agree(run(x), ref, f"ONNX file batch={n} {impl} vs numpy")
    if impl != "onnxruntime":
        assert_agree(implementation(onnx_file, "onnxruntime")(x), ref, f"ONNX file batch={n} onnxruntime vs numpy")
    benchmark.group = f"onnx file (bvlcalexnet structure) batch={n}"
    benchmark.extra_info.update(batch=n, impl=impl)
    settle()
    if impl == "numpy" and n > 1:
        benchmark.pedantic(run, args=(x,), rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(run, args=(x,), rounds=15 if n == 1 else 5, iterations=1, warmup_rounds=1)
