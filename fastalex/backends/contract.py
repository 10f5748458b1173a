"""What a backend is: the functions every backend module defines, and the optional hooks.

A backend is a module registered in :data:`fastalex.backends.BACKENDS`. It receives validated
input only (:mod:`fastalex.functional` checks every argument first): C-contiguous float32
arrays (NCHW for images, ``(N, F)`` for ``linear``), weights in torch's layouts, ``bias`` a
float32 vector or ``None``, pair arguments as ``(h, w)`` tuples of ints, ``padding`` a pair
(uneven padding is applied by ``functional`` before the call) and ``relu`` a bool. It returns
a new float32 array and never checks arguments itself.

:class:`Backend` lists the required functions. The optional hooks each have a protocol of
their own; callers find them with :func:`hook`, which only knows the names in
:data:`OPTIONAL_HOOKS` (so a misspelt hook is an error, not a silently missing feature):

- ``prepare_conv2d(weight, bias, stride, dilation, groups)``: transform a convolution's
  weights once; the result comes back to ``conv2d`` as ``plan`` (:class:`PreparesConv2d`).
- ``describe_plan(plan)``: one line saying how a prepared convolution runs, for
  ``Model.summary()`` (:class:`DescribesPlan`).
- ``forward_pass()``: a context manager entered around a model's whole forward pass
  (the numba backend keeps the other cores awake between its kernels) (:class:`WrapsForwardPass`).
- ``describe_runtime()``: lines saying how the kernels run (threading layer, threads, CPU,
  instruction set, tuned dense schedules), for ``Model.summary()`` (:class:`DescribesRuntime`).

``tests/test_backend_contract.py`` checks every registered backend against this module.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "PreparesConv2d", "DescribesPlan", "WrapsForwardPass", "DescribesRuntime", "REQUIRED",
           "OPTIONAL_HOOKS",
           "hook", "check_backend"]


@runtime_checkable
class Backend(Protocol):
    """The functions every backend module defines (module-level functions, no ``self``)."""

    NAME: str

    def conv2d(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple, padding: tuple,
               dilation: tuple, groups: int, relu: bool, plan: Any = None) -> np.ndarray: ...

    def max_pool2d(self, x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple,
                   ceil_mode: bool) -> np.ndarray: ...

    def avg_pool2d(self, x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, ceil_mode: bool,
                   count_include_pad: bool) -> np.ndarray: ...

    def adaptive_avg_pool2d(self, x: np.ndarray, output_size: tuple) -> np.ndarray: ...

    def local_response_norm(self, x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray: ...

    def linear(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray: ...

    def linear_lowp(self, x: np.ndarray, weight: Any, bias: np.ndarray | None, relu: bool) -> np.ndarray:
        """``weight`` a :class:`fastalex.lowp.LowpWeight` (bfloat16 or int8 storage)."""

    def relu(self, x: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class PreparesConv2d(Protocol):
    def prepare_conv2d(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple, dilation: tuple,
                       groups: int) -> Any: ...


@runtime_checkable
class DescribesPlan(Protocol):
    def describe_plan(self, plan: Any) -> str: ...


@runtime_checkable
class WrapsForwardPass(Protocol):
    def forward_pass(self) -> AbstractContextManager: ...


@runtime_checkable
class DescribesRuntime(Protocol):
    def describe_runtime(self) -> str: ...


#: the required functions, from :class:`Backend`
REQUIRED = tuple(name for name, value in vars(Backend).items() if inspect.isfunction(value) and name[0] != "_")
#: hook name -> the protocol that declares it
OPTIONAL_HOOKS = {"prepare_conv2d": PreparesConv2d, "describe_plan": DescribesPlan,
                  "forward_pass": WrapsForwardPass, "describe_runtime": DescribesRuntime}


def hook(backend: ModuleType, name: str) -> Callable | None:
    """The optional hook ``name`` of a backend module, or None when it does not define it."""
    if name not in OPTIONAL_HOOKS:
        raise ValueError(f"hook: {name!r} is not a backend hook; the hooks are {', '.join(OPTIONAL_HOOKS)}")
    return getattr(backend, name, None)


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


def check_backend(backend: ModuleType) -> list[str]:
    """What ``backend`` (a module) gets wrong against the contract: missing required functions,
    parameters that differ from the protocol's (names and order), hooks with the wrong
    parameters. An empty list: it fits."""
    problems = []
    if not isinstance(getattr(backend, "NAME", None), str):
        problems.append("NAME: missing (the backend's registered name, a str)")
    declared = [(name, getattr(Backend, name), True) for name in REQUIRED]
    declared += [(name, getattr(protocol, name), False) for name, protocol in OPTIONAL_HOOKS.items()]
    for name, spec, required in declared:
        function = getattr(backend, name, None)
        if function is None:
            if required:
                problems.append(f"{name}: missing")
            continue
        if not callable(function):
            problems.append(f"{name}: not a function")
            continue
        want, got = _parameters(spec), _parameters(function)
        if want != got:
            problems.append(f"{name}: parameters ({', '.join(got)}), the contract's are ({', '.join(want)})")
    return problems
