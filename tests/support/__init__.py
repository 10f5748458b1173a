"""Helpers shared by the tests (imported as ``support``: pytest puts ``tests/`` on sys.path).

Modules: :mod:`support.fixture_specs` (the reduced AlexNets of the committed fixtures, torch
files written without torch), :mod:`support.naive_ops` (loop-level reference ops),
:mod:`support.onnx_graphs` (hand-built ONNX graphs; needs onnx), :mod:`support.download`
(a local HTTP server for the download tests), :mod:`support.docs` (the runner of the code
blocks in README.md and docs/). Test modules import from here, never from each other.
"""

import importlib.util

import numpy as np

from fastalex.backends import BACKENDS

__all__ = ["AVAILABLE_BACKENDS", "assert_agree"]


def _available_backends():
    """Every registered backend whose module exists; an existing one that fails to import fails loudly."""
    return [name for name, module in BACKENDS.items() if importlib.util.find_spec(module) is not None]


AVAILABLE_BACKENDS = _available_backends()


def assert_agree(actual, reference, what=""):
    """``|actual - reference| <= 1e-4 * max|reference| + 1e-5`` everywhere (DESIGN.md's tolerance)."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    tol = 1e-4 * (np.abs(reference).max() if reference.size else 0.0) + 1e-5
    err = np.abs(actual.astype(np.float64) - reference).max() if reference.size else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"


def assert_same_results(got, expected):
    """Classification records (``to_dict()`` or JSON lines) that agree: the same paths, errors,
    classes and labels, in order, and the same probabilities up to float32 rounding. Two runs of
    the same model in batches of other sizes, or in a process whose BLAS has another thread
    count (a Dask worker), may sum in another order: OpenBLAS blocks its sums by both on some
    CPUs (seen: 1e-7 apart on an AMD Zen 5, bit-identical on an Intel Xeon)."""
    import copy
    got, expected = copy.deepcopy(list(got)), copy.deepcopy(list(expected))
    assert [r.get("path") for r in got] == [r.get("path") for r in expected]
    for g, e in zip(got, expected):
        probs_g = [t.pop("probability") for t in g.get("top", [])]
        probs_e = [t.pop("probability") for t in e.get("top", [])]
        assert g == e
        np.testing.assert_allclose(probs_g, probs_e, rtol=1e-5, atol=1e-7, err_msg=str(g.get("path")))
