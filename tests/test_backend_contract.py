"""Every registered backend fits the contract of fastalex/backends/contract.py, and the
contract's checks catch what a backend could get wrong."""

import types

import pytest

from fastalex.backends import BACKENDS, get_backend
from fastalex.backends import contract as C
from support import AVAILABLE_BACKENDS


def test_every_registered_backend_can_be_checked():
    assert set(AVAILABLE_BACKENDS) == set(BACKENDS), "a registered backend whose module is missing"


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_fits_the_contract(name):
    module = get_backend(name)
    assert C.check_backend(module) == [], name
    assert isinstance(module, C.Backend)
    assert module.NAME == name


def test_required_functions_are_the_ops():
    assert set(C.REQUIRED) == {"conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                               "local_response_norm", "linear", "linear_lowp", "relu"}


def test_the_numba_backend_declares_its_hooks():
    fast = get_backend("numba")
    for name, protocol in C.OPTIONAL_HOOKS.items():
        assert C.hook(fast, name) is not None, name
        assert isinstance(fast, protocol), name
    reference = get_backend("numpy")
    assert all(C.hook(reference, name) is None for name in C.OPTIONAL_HOOKS)


def _fake(**overrides):
    """A module with every required function of the right shape, then ``overrides``."""
    module = types.ModuleType("fake_backend")
    module.NAME = "fake"
    for name in C.REQUIRED:
        spec = getattr(C.Backend, name)
        params = [p for p in __import__("inspect").signature(spec).parameters if p != "self"]
        namespace = {}
        exec(f"def {name}({', '.join(params)}): pass", namespace)
        setattr(module, name, namespace[name])
    for key, value in overrides.items():
        if value is None:
            delattr(module, key)
        else:
            setattr(module, key, value)
    return module


def test_check_backend_names_what_is_wrong():
    assert C.check_backend(_fake()) == []
    assert C.check_backend(_fake(relu=None)) == ["relu: missing"]
    problems = C.check_backend(_fake(linear=lambda x, w, b, relu: x))
    assert problems == ["linear: parameters (x, w, b, relu), the contract's are (x, weight, bias, relu)"]
    problems = C.check_backend(_fake(describe_plan=lambda: ""))
    assert problems == ["describe_plan: parameters (), the contract's are (plan)"]
    assert C.check_backend(_fake(NAME=None)) == ["NAME: missing (the backend's registered name, a str)"]


def test_hook_refuses_unknown_names():
    with pytest.raises(ValueError, match="'prepare_conv' is not a backend hook"):
        C.hook(get_backend("numpy"), "prepare_conv")


def test_forward_pass_hook_runs_around_a_model_pass(monkeypatch):
    import contextlib

    import numpy as np

    import fastalex
    fast = get_backend("numba")
    entered = []

    @contextlib.contextmanager
    def forward_pass():
        entered.append(True)
        yield

    monkeypatch.setattr(fast, "forward_pass", forward_pass)
    net = fastalex.Sequential([fastalex.layers.ReLU()])
    net.backend = "numba"
    net(np.zeros((1, 1, 2, 2), np.float32))
    assert entered == [True]
    net.backend = "numpy"
    net(np.zeros((1, 1, 2, 2), np.float32))
    assert entered == [True]
