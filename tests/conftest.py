"""Fixtures for every test. Helpers to import live in ``tests/support/`` (``from support import assert_agree``)."""

import os
import tempfile

import pytest

import fastalex
from support import AVAILABLE_BACKENDS, assert_agree  # noqa: F401  (assert_agree: for old imports)

# Schedules by the deterministic heuristics (no measuring, no wisdom file) unless a test asks
# for the tuner (tests/test_tune.py); subprocesses inherit both.
os.environ.setdefault("FASTALEX_TUNE", "0")
os.environ.setdefault("FASTALEX_TUNE_DIR", tempfile.mkdtemp(prefix="fastalex-tune-"))
# No compile helper processes beside the tests (a cold cache in CI would start one per command
# run in-process, competing with the tests for the CPU); tests/test_precompile.py turns it on.
os.environ.setdefault("FASTALEX_PRECOMPILE", "0")

# This process forks (multiprocessing pools, the fork tests): Numba's fork-safe layer, chosen
# explicitly as the command line does (the library itself leaves the choice to Numba).
fastalex.configure_threads()


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request):
    """Each backend importable on this machine."""
    return request.param
