"""Shared test helpers: the agreement tolerance and the list of backends that can run here."""

import importlib.util
import os
import tempfile

import numpy as np
import pytest

import fastalex
from fastalex.backends import BACKENDS

# Schedules by the deterministic heuristics (no measuring, no wisdom file) unless a test asks
# for the tuner (tests/test_tune.py); subprocesses inherit both.
os.environ.setdefault("FASTALEX_TUNE", "0")
os.environ.setdefault("FASTALEX_TUNE_DIR", tempfile.mkdtemp(prefix="fastalex-tune-"))

# This process forks (multiprocessing pools, the fork tests): Numba's fork-safe layer, chosen
# explicitly as the command line does (the library itself leaves the choice to Numba).
fastalex.configure_threads()


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


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request):
    """Each backend importable on this machine."""
    return request.param
