"""A :class:`Sequential`: named layers run in order, the way ``torch.nn.Sequential`` holds them.

It runs its layers (a convolution or dense layer and the ReLU after it as one fused step,
planned once), names its leaves (``features.0``), and holds their parameters as a state dict
in torch's key names, with their storage (``weight_dtype``) and arithmetic (``precision``).
A model is a Sequential built from a spec (:class:`fastalex.models.Model`).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np

from . import layers as L
from .checks import count_nonfinite
from .lowp import check_precision, check_precision_and_weights, check_weight_dtype

__all__ = ["Sequential", "LoadResult"]


def _is_named(entry):
    """A ``(name, layer)`` pair (the name a str or an int; two layers are not a pair)."""
    return (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], (str, int))
            and not isinstance(entry[0], bool) and isinstance(entry[1], L.Layer))


class Sequential(L.Layer):
    """Named layers run in order. Children are layers or nested ``Sequential``s.

    Before running, a convolution or dense layer directly followed by a ``ReLU`` is run as one
    fused op (``activation="relu"``), which saves a pass over the activations; the result is
    the same as running them one by one.
    """

    def __init__(self, *layers):
        """``Sequential(conv, relu, ...)``, ``Sequential([conv, relu, ...])`` (named "0", "1",
        ... by position, as in torch), ``Sequential([("conv", conv), ...])`` or
        ``Sequential({"conv": conv, ...})``; plain layers and pairs may be mixed."""
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], L.Layer) and not _is_named(layers[0]):
            layers = layers[0]  # one list, tuple, dict or other iterable of children
        entries = list(layers.items()) if isinstance(layers, dict) else list(layers)
        children, names = [], set()
        for i, entry in enumerate(entries):
            if isinstance(entry, L.Layer):
                name, layer = str(i), entry
            elif _is_named(entry):
                name, layer = str(entry[0]), entry[1]
            else:
                raise TypeError(f"Sequential: child {i} must be a layer or a (name, layer) pair, "
                                f"got {entry!r}")
            if not name or "." in name or name in names:
                raise ValueError(f"Sequential: child {i} has name {name!r}; names must be unique, "
                                 f"non-empty and without '.'")
            names.add(name)
            children.append((name, layer))
        self.children = children

    # -- running
    def _plan(self, keep=()):
        """The steps to run, planned once: ``(names, layer, activation)`` per step.

        ``names`` are the dotted names of the leaf layers a step covers. A convolution or dense
        layer directly followed by a ``ReLU`` runs as one fused step (``activation="relu"``),
        unless its own output is wanted (``keep``, for :meth:`extract`).
        """
        keep = frozenset(keep)
        cache = self.__dict__.setdefault("_plans", {})
        if keep in cache:
            return cache[keep]
        leaves, steps, i = list(self.named_layers()), [], 0
        while i < len(leaves):
            name, layer = leaves[i]
            fusable = (isinstance(layer, (L.Conv2D, L.Dense)) and layer.activation is None
                       and name not in keep)
            if fusable and i + 1 < len(leaves) and type(leaves[i + 1][1]) is L.ReLU:
                steps.append(((name, leaves[i + 1][0]), layer, "relu"))
                i += 2
            else:
                steps.append(((name,), layer, None))
                i += 1
        cache[keep] = steps = tuple(steps)
        return steps

    def forward(self, x):
        with self._awake():
            for _, layer, activation in self._plan():
                x = layer(x, activation) if activation else layer(x)
        return x

    def _awake(self):
        """The backend's ``forward_pass`` hook around the pass, if it has one (the numba backend
        keeps the other cores from halting between its kernels: see fastalex/backends/contract.py)."""
        from .backends import get_backend
        from .backends.contract import hook
        forward_pass = hook(get_backend(self.backend), "forward_pass")
        return contextlib.nullcontext() if forward_pass is None else forward_pass()

    # -- structure
    def __getitem__(self, key):
        if isinstance(key, int):
            return self.children[key][1]
        for name, layer in self.children:
            if name == key:
                return layer
        raise KeyError(key)

    def __len__(self):
        return len(self.children)

    def named_layers(self, prefix=""):
        """``(dotted_name, layer)`` for every leaf layer, depth first."""
        for name, layer in self.children:
            full = f"{prefix}{name}"
            if isinstance(layer, Sequential):
                yield from layer.named_layers(full + ".")
            else:
                yield full, layer

    @property
    def backend(self):
        return self.__dict__.get("_backend")

    @backend.setter
    def backend(self, name):
        if name is not None:
            from .backends import _check_name
            _check_name(name)
        self.__dict__["_backend"] = name
        for _, layer in self.__dict__.get("children", []):
            layer.backend = name

    @property
    def num_params(self):
        return sum(layer.num_params for _, layer in self.named_layers())

    def output_shape(self, input_shape):
        for _, layer in self.named_layers():
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def macs(self, input_shape):
        total = 0
        for _, layer in self.named_layers():
            total += layer.macs(input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    # -- weights
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"features.0.weight": array, ...}`` in torch's key names and layouts, float32 (no
        copies, except widened ones of bfloat16/int8 dense weights)."""
        return {f"{name}.{p}": arr for name, layer in self.named_layers()
                for p, arr in layer.parameters().items()}

    def load_state_dict(self, state_dict, strict=True, assign=False) -> "LoadResult":
        """Copy matching arrays into the layers (the model never shares memory with
        ``state_dict``'s arrays, so changing them afterwards does not change the model).

        ``assign=True`` (as in PyTorch) hands the arrays themselves to the layers where they are
        already C-contiguous, writable float32 arrays that own their memory, and copies the rest
        (either way every value is checked first):
        for a state dict nobody else holds, such as one just read from a file
        (``alexnet(weights=...)`` does this), it saves a copy of every weight.

        With ``strict`` (the default), any missing key, unexpected key or shape mismatch raises
        one ``ValueError`` listing all of them and nothing is changed. With ``strict=False``
        what matches is loaded and the rest is returned in the :class:`LoadResult`.
        """
        own = {f"{name}.{p}": (layer, p, getattr(layer, p).shape)
               for name, layer in self.named_layers() for p in layer.parameters()}
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [(k, own[k][2], tuple(np.shape(state_dict[k]))) for k in own
                      if k in state_dict and tuple(np.shape(state_dict[k])) != own[k][2]]
        result = LoadResult(missing, unexpected, mismatched)
        if strict and (missing or unexpected or mismatched):
            raise ValueError(f"load_state_dict: the weights do not fit this model: {result.describe()}")
        bad = {k for k, _, _ in mismatched}
        staged = []
        for key, (layer, p, shape) in own.items():  # check every value before assigning any
            if key in state_dict and key not in bad:
                # a copy, unless ``assign`` and nobody else holds the array: the model must not
                # share memory with the caller's arrays (a later change to them would change the
                # model, past this NaN check)
                value = state_dict[key]
                if assign and _adoptable(value):
                    arr = value
                else:
                    arr = np.array(value, dtype=np.float32, order="C", copy=True)
                if count_nonfinite(arr):
                    raise ValueError(f"load_state_dict: {key} contains NaN/inf values")
                staged.append((layer, p, arr))
        for layer, p, arr in staged:  # shapes and values are checked above: assign directly
            object.__setattr__(layer, p, arr)
        return result

    # -- storage of the dense weights
    @property
    def weight_dtype(self) -> str:
        """How the dense layers store their weights (``"mixed"`` if they differ)."""
        kinds = {layer.weight_dtype for _, layer in self.named_layers() if isinstance(layer, L.Dense)}
        return kinds.pop() if len(kinds) == 1 else ("float32" if not kinds else "mixed")

    def set_weight_dtype(self, dtype, keep_float32=True):
        """Store every dense layer's weight as ``dtype`` (``"float32"``, ``"bfloat16"``,
        ``"int8"``, see :mod:`fastalex.lowp`); convolutions stay float32. Returns ``self``.

        Converting float32 weights keeps them (``keep_float32=False`` frees that memory), so a
        later ``set_weight_dtype("float32")`` restores them exactly. A model built with
        ``weight_dtype="bfloat16"``/``"int8"`` (or converted with ``keep_float32=False``) has
        no float32 weights to go back to: converting it raises ``ValueError`` (load the
        weights again) and nothing is changed."""
        check_weight_dtype(dtype, "set_weight_dtype")
        for _, layer in self.named_layers():
            if isinstance(layer, L.Dense):
                check_precision_and_weights(layer.precision, dtype, "set_weight_dtype")
        dense = [(name, layer) for name, layer in self.named_layers() if isinstance(layer, L.Dense)]
        lost = [name for name, layer in dense
                if layer.weight_dtype not in ("float32", dtype) and not layer.keeps_float32]
        if lost:
            raise ValueError(f"set_weight_dtype: the dense weights of {', '.join(lost)} are stored as "
                             f"{self.weight_dtype} and their float32 values were not kept (the model was built "
                             f"with weight_dtype=, or converted with keep_float32=False), so they cannot become "
                             f"{dtype} without their rounding; load the weights again, e.g. "
                             f"alexnet(..., weights=..., weight_dtype={dtype!r})")
        for _, layer in dense:
            layer.set_weight_dtype(dtype, keep_float32=keep_float32)
        return self

    # -- how products are computed
    @property
    def precision(self) -> str:
        """How the convolutions and dense layers compute (``"mixed"`` if they differ)."""
        kinds = {layer.precision for _, layer in self.named_layers() if isinstance(layer, (L.Conv2D, L.Dense))}
        return kinds.pop() if len(kinds) == 1 else ("float32" if not kinds else "mixed")

    def set_precision(self, precision):
        """Compute every convolution and dense layer in ``precision``: ``"float32"`` (exact
        float32 products) or ``"bfloat16"`` (inputs and weights rounded to bfloat16, float32
        sums, on the CPU's AMX or AVX512-BF16 units where it has them: see
        :func:`fastalex.bf16_paths`). Bias, ReLU, pooling, LRN and softmax stay float32.
        Returns ``self``."""
        check_precision(precision, "set_precision")
        layers = [layer for _, layer in self.named_layers() if isinstance(layer, (L.Conv2D, L.Dense))]
        for layer in layers:
            if isinstance(layer, L.Dense):
                check_precision_and_weights(precision, layer.weight_dtype, "set_precision")
        for layer in layers:
            layer.set_precision(precision)
        return self

    def extra_repr(self):
        return ", ".join(name for name, _ in self.children)

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, layer in self.children:
            body = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _adoptable(value) -> bool:
    """Whether ``load_state_dict(assign=True)`` may keep ``value`` itself: a C-contiguous,
    writable float32 array holding all of its memory (or a reshaped view of one array of the
    same size, as ``np.load`` returns), never a window into a larger buffer."""
    if not (isinstance(value, np.ndarray) and value.dtype == np.float32 and value.flags.c_contiguous
            and value.flags.writeable):
        return False
    base = value.base
    return base is None or (isinstance(base, np.ndarray) and base.base is None and base.nbytes == value.nbytes)


class LoadResult(NamedTuple):
    """What :meth:`Sequential.load_state_dict` could not load."""

    missing_keys: list
    unexpected_keys: list
    mismatched: list  # (key, expected shape, given shape)

    def describe(self) -> str:
        parts = []
        if self.missing_keys:
            parts.append("missing keys: " + ", ".join(self.missing_keys))
        if self.unexpected_keys:
            parts.append("unexpected keys: " + ", ".join(self.unexpected_keys))
        if self.mismatched:
            parts.append("shape mismatches: " + ", ".join(
                f"{k} expects {e} but got {g}" for k, e, g in self.mismatched))
        return "; ".join(parts) if parts else "all keys matched"
