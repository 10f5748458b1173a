"""Weights hardening (issue 9): loading copies, lying files stay bounded, every failure to read a
weights file is a ``fastalex.WeightsFileError`` naming the file, non-regular files are refused,
and the library (not the CLI) tells which AlexNet a file fits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastalex
from fastalex.models import alexnet, build
from fastalex.weights import WeightsFileError, load_weights, save_weights
from fixture_specs import reduced_spec


@pytest.fixture(scope="module")
def small_model():
    return build(reduced_spec("torchvision"), seed=3, backend="numpy")


# ----------------------------------------------------------------------------- item 2: copies

def test_load_state_dict_copies_the_callers_arrays(small_model):
    model = build(reduced_spec("torchvision"), seed=4, backend="numpy")
    sd = {k: np.ascontiguousarray(v, dtype=np.float32).copy() for k, v in small_model.state_dict().items()}
    model.load_state_dict(sd)
    key = "features.0.weight"
    want = sd[key].copy()
    sd[key][...] = np.nan  # the caller changes its dict afterwards
    assert np.array_equal(model.state_dict()[key], want)
    assert not np.shares_memory(model.state_dict()[key], sd[key])
    x = np.random.default_rng(0).standard_normal((1, *model.input_shape)).astype(np.float32)
    assert np.isfinite(model(x)).all()


def test_alexnet_from_a_state_dict_copies():
    sd = {k: v.copy() for k, v in alexnet("torchvision", seed=1).state_dict().items()}
    model = alexnet("torchvision", weights=sd)
    for key in sd:
        assert not np.shares_memory(model.state_dict()[key], sd[key]), key
