"""Layers: thin objects that hold parameters and call :mod:`fastalex.functional`.

Every layer is callable (``layer(x)``), knows its ``output_shape(input_shape)``, its
``num_params`` and its multiply-accumulate count ``macs(input_shape)`` without running (MACs
are those of convolutions and dense layers, as torchvision counts them; pooling, LRN and
activations report 0), and
carries a ``backend`` (None = the process default) that it passes to the functional op.
Shapes given to ``output_shape`` / ``macs`` are per-sample, without the batch axis:
``(C, H, W)`` for images, ``(F,)`` after flattening.

Parameters are float32 numpy arrays in torch's layouts; setting one checks its shape and
rejects NaN/inf once, at assignment, instead of on every call. Hyper-parameters (strides,
groups, sizes, ...) are checked when a layer is built, by the functions the functional API
checks them with (``functional.check_*``): same rules, same messages.
``Dense`` may store its weight in bfloat16 or int8 (``weight_dtype``, see
:mod:`fastalex.lowp`); its ``weight`` attribute still reads and writes float32.
``Conv2D`` and ``Dense`` compute in ``precision`` ``"float32"`` (default) or ``"bfloat16"``
(inputs and weights rounded to bfloat16, float32 sums; the weights are rounded and packed once,
when the layer is first run, and again only when they are assigned anew).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import functional as F
from .backends._target import usable_cpus
from .checks import (check_activation, check_conv_args, check_dropout_p, check_groups, check_int, check_lrn_args,
                     check_output_size, check_pair, check_pool_args, count_nonfinite)
from .lowp import check_precision, check_precision_and_weights, check_weight_dtype, pack
from .shapes import conv_output_size, padding_sides

__all__ = [
    "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "AdaptiveAvgPool2D", "LocalResponseNorm",
    "Dense", "ReLU", "Softmax", "Flatten", "Dropout",
]


def _padding_repr(padding):
    return f", padding={padding}" if any(padding) else ""


def _rng(rng_or_seed):
    return rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)


#: values per independent random stream of :func:`he_normal` (fixed: the weights do not depend
#: on the thread count)
HE_CHUNK = 1 << 20


def he_normal(shape, fan_in, rng) -> np.ndarray:
    """He-normal float32 weights, ``N(0, 2 / fan_in)``: one key drawn from ``rng``, then each
    :data:`HE_CHUNK` values from their own stream ``default_rng([key, chunk])``, filled on
    all the CPUs at once (NumPy's generators release the GIL). AlexNet's 61 M random values
    take ~0.6 s on one core, a third of a warm ``classify --random-weights``; the numbers depend
    only on ``rng``, never on the thread count."""
    key = int(_rng(rng).integers(2 ** 63))
    weight = np.empty(shape, np.float32)
    flat, scale = weight.reshape(-1), np.float32(math.sqrt(2.0 / fan_in))

    def fill(i):
        part = flat[i * HE_CHUNK:(i + 1) * HE_CHUNK]
        np.random.default_rng([key, i]).standard_normal(out=part, dtype=np.float32)
        part *= scale

    chunks = -(-flat.size // HE_CHUNK)
    workers = min(usable_cpus(), chunks)
    if workers <= 1:
        for i in range(chunks):
            fill(i)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="fastalex-init") as pool:
            list(pool.map(fill, range(chunks)))
    return weight


def _expect_image(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{layer}: expects a (C, H, W) input, got shape {tuple(input_shape)}")
    return input_shape


class Layer:
    """Base class: no parameters, shape-preserving, free to run."""

    #: names of the parameter attributes, in state-dict order
    param_names: tuple[str, ...] = ()

    def __init__(self):
        self.backend = None

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):  # pragma: no cover - every concrete layer overrides it
        raise NotImplementedError

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape) -> int:
        return 0

    @property
    def num_params(self) -> int:
        return sum(getattr(self, n).size for n in self.param_names if getattr(self, n) is not None)

    def parameters(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in self.param_names if getattr(self, n) is not None}

    def _set_param(self, name, value, shape):
        """Assign a copy of ``value`` after checking its shape and that it is finite (the layer
        owns its parameters: changing the caller's array later does not change the layer)."""
        arr = np.array(value, dtype=np.float32, order="C", copy=True)
        if arr.shape != tuple(shape):
            raise ValueError(f"{self}: {name} must have shape {tuple(shape)}, got {arr.shape}")
        bad = count_nonfinite(arr)
        if bad:
            raise ValueError(f"{self}: {name} contains {bad} NaN/inf value(s)")
        object.__setattr__(self, name, arr)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


class _Parametric(Layer):
    """A layer whose ``weight``/``bias`` are validated whenever they are assigned."""

    param_names = ("weight", "bias")

    def __setattr__(self, name, value):
        if name == "weight":
            self._set_param("weight", value, self.weight_shape)
        elif name == "bias":
            if value is None:
                object.__setattr__(self, "bias", None)
            else:
                self._set_param("bias", value, (self.weight_shape[0],))
        else:
            object.__setattr__(self, name, value)

    def _init_params(self, weight, bias, use_bias, fan_in, rng):
        """He-normal weights from a seeded RNG (``std = sqrt(2 / fan_in)``) and zero biases.

        ``rng=None`` leaves zero placeholders (free until written: the pages are never touched)
        for parameters that are about to be loaded from a weights file.
        """
        if weight is None and rng is None:
            object.__setattr__(self, "weight", np.zeros(self.weight_shape, np.float32))
        else:
            if weight is None:  # a fresh, finite array of the right shape: no copy, no check
                object.__setattr__(self, "weight", he_normal(self.weight_shape, fan_in, rng))
            else:
                self.weight = weight
        if bias is None and use_bias:
            bias = np.zeros(self.weight_shape[0], np.float32)
        self.bias = bias


class Conv2D(_Parametric):
    """2-D convolution over ``(C, H, W)`` maps; weight ``(out, in/groups, kh, kw)``.

    ``Conv2D(3, 96, 11, stride=4, activation="relu")``. Weights are He-normal from ``rng``
    (a seed or a ``numpy.random.Generator``) unless given; ``rng=None`` leaves zeros.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, activation=None, weight=None, bias_value=None, rng=0,
                 precision="float32"):
        super().__init__()
        op = "conv2d"
        self.precision = check_precision(precision, op)
        stride, padding, dilation, groups, _ = check_conv_args(stride, padding, dilation, groups,
                                                                activation, op)
        in_channels = check_int(in_channels, op, "in_channels", 1)
        out_channels = check_int(out_channels, op, "out_channels", 1)
        check_groups(groups, in_channels, out_channels, op)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = check_pair(kernel_size, op, "kernel_size", 1)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = activation
        self.weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self._init_params(weight, bias_value, bias, fan_in, rng)

    def forward(self, x, activation=None):
        """``activation`` (None or ``"relu"``) is applied on top of the layer's own, fused."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, activation or self.activation, backend=self.backend,
                        plan=self.plan(), precision=self.precision)

    def plan(self):
        """The weights prepared by the backend in use (:func:`fastalex.functional.prepare_conv2d`),
        made on first use and kept until ``weight`` or ``bias`` is assigned anew. Planned
        parameters are made read-only, so they cannot change behind the plan's back."""
        from .backends import get_backend_name
        name = self.backend or get_backend_name()
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get((name, self.precision))
        if plan is None or plan.weight is not self.weight or plan.bias is not self.bias:
            for arr in (self.weight, self.bias):
                if arr is not None:
                    arr.flags.writeable = False
            plan = plans[(name, self.precision)] = F.prepare_conv2d(
                self.weight, self.bias, self.stride, self.dilation, self.groups, backend=name,
                precision=self.precision)
        return plan

    def set_precision(self, precision):
        """Compute in ``precision`` (``"float32"`` or ``"bfloat16"``) from now on. Returns ``self``."""
        self.precision = check_precision(precision, "Conv2D")
        return self

    def output_shape(self, input_shape):
        c, h, w = _expect_image(self, input_shape)
        if c != self.in_channels:
            raise ValueError(f"{self}: expects {self.in_channels} input channels, got shape {tuple(input_shape)}")
        hw = [conv_output_size(n, k, s, p[0], d, padding_end=p[1]) for n, k, s, p, d in
              zip((h, w), self.kernel_size, self.stride, padding_sides(self.padding), self.dilation)]
        if min(hw) < 1:
            raise ValueError(f"{self}: input {tuple(input_shape)} is smaller than the kernel")
        return (self.out_channels, *hw)

    def macs(self, input_shape):
        c, h, w = self.output_shape(input_shape)
        return c * h * w * (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += _padding_repr(self.padding)
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.activation:
            s += f", activation={self.activation!r}"
        return s + (f", precision={self.precision!r}" if self.precision != "float32" else "")


class Dense(_Parametric):
    """Fully connected layer, ``y = x @ W.T + b``, weight ``(out, in)``.

    ``weight_dtype`` is how the weight is stored: ``"float32"`` (default), ``"bfloat16"`` or
    ``"int8"`` (per-output-channel scales), see :mod:`fastalex.lowp`. The weight is converted
    once, whenever it is assigned (rounded to nearest even for bfloat16); the product widens it
    and accumulates in float32. ``layer.weight`` is always a float32 ``(out, in)`` array (for
    low-precision storage a widened copy: what the layer computes with), so ``state_dict()``
    and saved weights stay float32; ``layer.stored_weight`` is what is kept and used.

    ``precision`` is how the product is computed: ``"float32"`` (default) or ``"bfloat16"``
    (input and weight rounded to bfloat16, float32 sums, on bf16 units where the CPU has them).
    ``weight_dtype`` only changes how the weight is stored; ``precision="bfloat16"`` keeps its
    own packed bfloat16 copy of the weight, so it goes with ``weight_dtype`` ``"float32"`` or
    ``"bfloat16"`` (int8 is refused).
    """

    def __init__(self, in_features, out_features, bias=True, activation=None, weight=None,
                 bias_value=None, rng=0, weight_dtype="float32", precision="float32"):
        super().__init__()
        op = "linear"
        check_precision_and_weights(precision, weight_dtype, op)
        self.precision = precision
        check_activation(activation, op)
        in_features = check_int(in_features, op, "in_features", 1)
        out_features = check_int(out_features, op, "out_features", 1)
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight_shape = (out_features, in_features)
        self._weight_dtype = "float32"
        self._float32 = None  # the float32 weight a conversion started from, if kept (see set_weight_dtype)
        self._init_params(weight, bias_value, bias, in_features, rng)
        self.set_weight_dtype(weight_dtype, keep_float32=False)  # built for that precision

    @property
    def weight(self):
        stored = self.stored_weight
        return stored if isinstance(stored, np.ndarray) else stored.to_float32()

    @weight.setter
    def weight(self, value):  # reached through _set_param / load_state_dict: value is checked float32
        if self._float32 is not None:  # keeping the float32 weight: the new one is kept instead
            object.__setattr__(self, "_float32", np.ascontiguousarray(value, dtype=np.float32))
        object.__setattr__(self, "stored_weight", pack(value, self._weight_dtype))

    @property
    def weight_dtype(self) -> str:
        return self._weight_dtype

    @property
    def keeps_float32(self) -> bool:
        """Whether a bfloat16/int8 layer still holds the float32 weight it was converted from."""
        return self._float32 is not None

    def set_weight_dtype(self, dtype, keep_float32=True):
        """Store the weight as ``dtype`` from now on.

        Converting a float32 weight to bfloat16/int8 keeps the float32 one (unless
        ``keep_float32=False``, which saves its memory), and every later conversion starts from
        it, so ``set_weight_dtype("float32")`` gives the exact float32 weight back. A layer
        without it (built with ``weight_dtype=``, or converted with ``keep_float32=False``)
        refuses to convert: its float32 values are gone (load the weights again)."""
        dtype = check_weight_dtype(dtype, "Dense")
        check_precision_and_weights(self.precision, dtype, "Dense")
        if dtype == self._weight_dtype:
            if not keep_float32:
                object.__setattr__(self, "_float32", None)
            return self
        if self._weight_dtype == "float32":
            source = self.stored_weight
        elif self._float32 is not None:
            source = self._float32
        else:
            raise ValueError(f"Dense: the weight is stored as {self._weight_dtype} and its float32 values "
                             f"were not kept (built with weight_dtype={self._weight_dtype!r}, or converted "
                             f"with keep_float32=False), so it cannot become {dtype} without the rounding "
                             f"carried over; load the weights again with weight_dtype={dtype!r}")
        self._weight_dtype = dtype
        object.__setattr__(self, "_float32", source if dtype != "float32" and keep_float32 else None)
        object.__setattr__(self, "stored_weight", pack(source, dtype))
        return self

    @property
    def num_params(self) -> int:
        return self.in_features * self.out_features + (0 if self.bias is None else self.bias.size)

    def set_precision(self, precision):
        """Compute in ``precision`` (``"float32"`` or ``"bfloat16"``) from now on. Returns ``self``."""
        check_precision_and_weights(precision, self._weight_dtype, "Dense")
        self.precision = precision
        if precision == "float32":  # writable again where the bf16 plan froze them
            for arr in self.__dict__.pop("_frozen", ()):
                arr.flags.writeable = True
            self.__dict__.pop("_plans", None)
        return self

    def plan(self):
        """For ``precision="bfloat16"``: the weight rounded and packed by the backend in use
        (:func:`fastalex.functional.prepare_linear`), made on first use and kept until ``weight``
        or ``bias`` is assigned anew; None for float32."""
        if self.precision == "float32":
            return None
        from .backends import get_backend_name
        name = self.backend or get_backend_name()
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get((name, self.precision))
        if plan is None or plan.weight is not self.stored_weight or plan.bias is not self.bias:
            frozen = self.__dict__["_frozen"] = []
            for arr in (self.stored_weight, self.bias):  # as Conv2D.plan: no change behind its back
                if isinstance(arr, np.ndarray) and arr.flags.writeable:
                    arr.flags.writeable = False  # (writable again with precision float32)
                    frozen.append(arr)
            plan = plans[(name, self.precision)] = F.prepare_linear(
                self.stored_weight, self.bias, self.precision, backend=name)
        return plan

    def forward(self, x, activation=None):
        """``activation`` (None or ``"relu"``) is applied on top of the layer's own, fused."""
        return F.linear(x, self.stored_weight, self.bias, activation or self.activation,
                        backend=self.backend, precision=self.precision, plan=self.plan())

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self}: expects ({self.in_features},) features, got shape {tuple(input_shape)}")
        return (self.out_features,)

    def macs(self, input_shape):
        self.output_shape(input_shape)
        return self.in_features * self.out_features

    def extra_repr(self):
        s = f"{self.in_features}, {self.out_features}"
        if self.activation:
            s += f", activation={self.activation!r}"
        s += f", weight_dtype={self._weight_dtype!r}" if self._weight_dtype != "float32" else ""
        return s + (f", precision={self.precision!r}" if self.precision != "float32" else "")


class _Pool(Layer):
    op = None  # the functional op's name, set by subclasses

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = check_pool_args(kernel_size, stride, padding, self.op)
        self.ceil_mode = bool(ceil_mode)

    def output_shape(self, input_shape):
        c, h, w = _expect_image(self, input_shape)
        hw = F.pool_output_shape((h, w), self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if min(hw) < 1:
            raise ValueError(f"{self}: input {tuple(input_shape)} is smaller than the window")
        return (c, *hw)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}" + _padding_repr(self.padding)
        return s + (", ceil_mode=True" if self.ceil_mode else "")


class MaxPool2D(_Pool):
    """Max pooling; ``stride=None`` means the kernel size."""

    op = "max_pool2d"

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            backend=self.backend)


class AvgPool2D(_Pool):
    """Average pooling; ``count_include_pad`` as in torch."""

    op = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class AdaptiveAvgPool2D(Layer):
    """Average pooling to a fixed ``output_size`` whatever the input size (torchvision's AlexNet);
    a side given as None keeps the input's size."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = check_output_size(output_size)

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size, backend=self.backend)

    def output_shape(self, input_shape):
        c, h, w = _expect_image(self, input_shape)
        return (c, *(n if s is None else s for s, n in zip(self.output_size, (h, w))))

    def extra_repr(self):
        return f"output_size={self.output_size}"


class LocalResponseNorm(Layer):
    """LRN across channels: ``b_c = a_c / (k + alpha/size * sum a_j^2)^beta``."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = check_lrn_args(size, alpha, beta, k)

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k, backend=self.backend)

    def output_shape(self, input_shape):
        return tuple(_expect_image(self, input_shape))

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ReLU(Layer):
    def forward(self, x):
        return F.relu(x, backend=self.backend)


class Softmax(Layer):
    def __init__(self, axis=-1):
        super().__init__()
        self.axis = check_int(axis, "softmax", "axis", minimum=None)

    def forward(self, x):
        return F.softmax(x, self.axis)


class Flatten(Layer):
    """``(N, C, H, W) -> (N, C*H*W)``."""

    def forward(self, x):
        return F.flatten(x)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Dropout(Layer):
    """Identity at inference (fastalex does not train); ``p`` is kept for the record."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = check_dropout_p(p)

    def forward(self, x):
        return F.dropout(x, self.p, training=False)

    def extra_repr(self):
        return f"p={self.p}"
