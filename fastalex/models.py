"""Models as data: a spec (a list of named layer specs, see :mod:`fastalex.specs`) becomes a
:class:`Model`.

The two AlexNets' specs are in :mod:`fastalex.specs`; :func:`alexnet` builds one by name, with
weights (published ones come from :mod:`fastalex.hub`). A new variant is a new spec, not new
code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from . import functional as F
from . import layers as L
from . import specs
from ._files import is_url
from ._moved import moved
from .images import expand_preset
from .lowp import check_precision_and_weights
from .sequential import LoadResult, Sequential  # noqa: F401  (LoadResult: importable here, as before)

__all__ = ["Sequential", "Model", "build", "alexnet", "detect_variant", "param_shapes",
           "WeightsMismatchError"]

LAYER_TYPES = {cls.__name__: cls for cls in (
    L.Conv2D, L.MaxPool2D, L.AvgPool2D, L.AdaptiveAvgPool2D, L.LocalResponseNorm, L.Dense,
    L.ReLU, L.Softmax, L.Flatten, L.Dropout)}


# ----------------------------------------------------------------------------- models

def _build_layer(spec, rng):
    kind, kwargs = spec
    if kind not in LAYER_TYPES:
        raise ValueError(f"model spec: unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    cls = LAYER_TYPES[kind]
    if cls in (L.Conv2D, L.Dense):
        kwargs = {**kwargs, "rng": rng}
    return cls(**kwargs)


def _build_children(entries, rng):
    """Entries are layer specs ``(type, kwargs)``, named by position like ``torch.nn.Sequential``,
    or named entries ``(name, [entries...])`` (a nested Sequential) / ``(name, (type, kwargs))``."""
    children = []
    for index, entry in enumerate(entries):
        name, body = entry
        if isinstance(body, dict):
            children.append((str(index), _build_layer(entry, rng)))
        elif isinstance(body, list):
            children.append((name, Sequential(_build_children(body, rng))))
        else:
            children.append((name, _build_layer(body, rng)))
    return children


class Model(Sequential):
    """A :class:`Sequential` built from a spec, with prediction, a summary and preprocessing info."""

    def __init__(self, spec, seed=0, backend=None, weight_dtype="float32", precision="float32"):
        # seed=None: zero placeholders for weights that are about to be loaded (no 1 s of RNG)
        rng = None if seed is None else np.random.default_rng(seed)
        super().__init__(_build_children(spec["layers"], rng))
        self.spec = spec
        self.variant = spec.get("variant", "custom")
        self.input_shape = tuple(spec["input_shape"])
        self.preprocess = expand_preset(spec.get("preprocess", {}))
        self.backend = backend
        _load_backend(backend)
        self.num_classes = self.output_shape(self.input_shape)[0]
        check_precision_and_weights(precision, weight_dtype, "Model")
        self.set_weight_dtype(weight_dtype, keep_float32=False)  # built for that precision
        self.set_precision(precision)
        #: how to build this model again elsewhere (a Dask worker): spec, seed and weights
        #: source; None once its weights came from arrays (see fastalex.distributed.recipe_of)
        self.recipe = None if seed is None else {"spec": spec, "seed": seed, "weights": None}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict, assign)
        self.recipe = None  # the weights now come from arrays the recipe does not know
        return result

    load_state_dict.__doc__ = Sequential.load_state_dict.__doc__

    def _batch(self, x):
        """``(batch, squeezed)``: ``x`` as ``(N, C, H, W)``, checked against the model's input."""
        x = np.asarray(x)
        squeezed = x.ndim == 3
        if x.ndim not in (3, 4):
            raise ValueError(f"{self.variant} AlexNet: input must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
        if x.shape[-3] != self.input_shape[0]:
            raise ValueError(f"{self.variant} AlexNet: input must have {self.input_shape[0]} channels, "
                             f"got shape {x.shape}")
        if self.spec.get("fixed_input_size") and tuple(x.shape[-2:]) != tuple(self.input_shape[1:]):
            h, w = self.input_shape[1:]  # e.g. an ONNX graph's declared input, as ONNX Runtime refuses others
            raise ValueError(f"{self.variant}: input must be {h}x{w} (the size the model declares), "
                             f"got shape {x.shape}")
        try:
            self.output_shape(x.shape[-3:])
        except ValueError as exc:
            raise ValueError(f"{self.variant} AlexNet: input of shape {x.shape} does not fit the model "
                             f"(expects {self.input_shape}): {exc}") from None
        return (x[None] if squeezed else x), squeezed

    def __call__(self, x):
        """Logits ``(N, num_classes)`` for a float32 batch ``(N, 3, H, W)`` or ``(num_classes,)`` for one image."""
        x, squeezed = self._batch(x)
        if len(x) == 0:  # empty in, empty out
            return np.zeros((0, *self.output_shape(x.shape[1:])), np.float32)
        y = self.forward(x)
        return y[0] if squeezed else y

    @property
    def aliases(self) -> dict:
        """Short layer names accepted by :meth:`extract` (``pool5``, ``fc6``, ``fc7``, ``fc8``, ``logits``)."""
        return dict(self.spec.get("aliases", {}))

    def resolve_layer(self, name) -> str:
        """The dotted leaf-layer name for ``name``: an alias, a leaf (``"features.7"``) or a
        container (``"features"``: its last layer's output)."""
        if not isinstance(name, str):
            raise TypeError(f"extract: layer names must be strings, got {name!r}")
        name = self.aliases.get(name, name)
        leaves = [n for n, _ in self.named_layers()]
        if name in leaves:
            return name
        inside = [n for n in leaves if n.startswith(name + ".")]
        if inside:
            return inside[-1]
        unavailable = self.spec.get("unavailable", {})  # e.g. an ONNX tensor before a folded BatchNorm
        if name in unavailable:
            raise ValueError(f"extract: {name!r} {unavailable[name]}")
        raise ValueError(f"extract: unknown layer {name!r}; valid names are the aliases "
                         f"{', '.join(self.aliases) or '(none)'} and the layers {', '.join(leaves)}")

    def extract(self, x, layers) -> dict:
        """``{name: output}`` of the named layers for the batch (or single image) ``x``.

        ``layers`` is a name or a list of names: dotted layer names as in :meth:`summary`
        (``"features.7"``, ``"classifier.5"``), containers (``"features"``) or the aliases
        ``pool5``, ``fc6``, ``fc7`` (after their ReLU, as Caffe's blobs), ``fc8``/``logits``.
        The forward pass stops after the deepest layer asked for. Outputs keep the batch axis
        unless ``x`` was a single ``(C, H, W)`` image. Arrays are the model's own outputs, not
        views of each other.
        """
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("extract: name at least one layer")
        wanted = {name: self.resolve_layer(name) for name in names}
        x, squeezed = self._batch(x)
        if len(x) == 0:  # empty in, empty out: each layer's output shape with no rows
            shapes = {r["name"]: r["output_shape"] for r in self.layer_table(x.shape[1:])}
            return {name: np.zeros((0, *shapes[leaf]), np.float32) for name, leaf in wanted.items()}
        targets = set(wanted.values())
        found = {}
        with self._awake():
            for covered, layer, activation in self._plan(keep=targets):
                x = layer(x, activation) if activation else layer(x)
                for leaf in covered:
                    if leaf in targets:
                        found[leaf] = x
                if len(found) == len(targets):
                    break
        return {name: (found[leaf][0] if squeezed else found[leaf]) for name, leaf in wanted.items()}

    def predict(self, x, top=5):
        """``(probabilities, indices)``, each ``(N, top)`` (or ``(top,)`` for one image), best first.
        ``top``: a positive int (more than the classes gives them all)."""
        if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
            raise ValueError(f"predict: top must be a positive int, got {top!r}")
        logits = self(x)
        if logits.ndim == 2 and len(logits) == 0:
            k = min(int(top), self.num_classes)
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.intp)
        last = list(self.named_layers())[-1][1]
        ends_in_softmax = isinstance(last, L.Softmax)  # e.g. an ONNX zoo graph: already probabilities
        probs = logits if ends_in_softmax else F.softmax(logits, axis=-1)
        top = min(int(top), self.num_classes)
        idx = np.argsort(-probs, axis=-1, kind="stable")[..., :top]
        return np.take_along_axis(probs, idx, axis=-1), idx

    def profile(self, x, repeat=5, warmup=1) -> list:
        """One forward pass on ``x`` timed step by step (median of ``repeat`` runs): a list of
        row dicts (name, layers, type, output_shape, macs, seconds, gflops, share); a fused
        conv/dense + ReLU is one row. See :func:`fastalex.profiling.profile`."""
        from .profiling import profile
        return profile(self, x, repeat=repeat, warmup=warmup)

    def layer_table(self, input_shape=None):
        """One dict per leaf layer: name, type, output shape, params, MACs (per image)."""
        shape = tuple(input_shape or self.input_shape)
        rows = []
        for name, layer in self.named_layers():
            macs = layer.macs(shape)
            shape = layer.output_shape(shape)
            rows.append({"name": name, "type": type(layer).__name__, "output_shape": shape,
                         "params": layer.num_params, "macs": macs, "layer": layer})
        return rows

    def summary(self, input_shape=None) -> str:
        """A Keras-style table: one row per layer with output shape, parameters and MACs, then totals."""
        shape = tuple(input_shape or self.input_shape)
        rows = self.layer_table(shape)
        header = ("Layer", "Type", "Output shape", "Params", "MACs")
        body = [(r["name"], r["type"], "(" + ", ".join(map(str, r["output_shape"])) + ")",
                 f"{r['params']:,}", f"{r['macs']:,}") for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        fmt = "  ".join(["{:<%d}" % widths[0], "{:<%d}" % widths[1], "{:<%d}" % widths[2],
                         "{:>%d}" % widths[3], "{:>%d}" % widths[4]])
        rule = "-" * len(fmt.format(*header))
        total_params = sum(r["params"] for r in rows)
        total_macs = sum(r["macs"] for r in rows)
        title = self.spec.get("title") or f'AlexNet ("{self.variant}")'
        lines = [f"{title}, input {shape}", rule, fmt.format(*header), rule]
        lines += [fmt.format(*b) for b in body]
        lines += [rule,
                  f"Total params: {total_params:,} ({total_params * 4 / 2**20:.1f} MiB as float32)",
                  f"Total MACs:   {total_macs:,} ({total_macs / 1e9:.2f} G per image)"]
        dense = [r["layer"] for r in rows if isinstance(r["layer"], L.Dense)]
        if any(d.weight_dtype != "float32" for d in dense):
            stored = sum(d.stored_weight.nbytes for d in dense)
            lines.append(f"Dense weights: {self.weight_dtype} ({stored / 2**20:.1f} MiB stored)")
        if self.precision != "float32":
            lines.append(f"Precision: {self.precision} products, float32 sums; path: {self.bf16_path}")
        lines.append(rule)
        lines += self._plan_lines()
        return "\n".join(lines)

    @property
    def bf16_path(self) -> str | None:
        """The path bfloat16 products run on (``"amx"``, ``"avx512_bf16"`` or ``"emulation"``)
        on this model's backend; None when the model computes in float32."""
        if self.precision == "float32":
            return None
        from .backends import get_backend
        return get_backend(self.backend).bf16_path()

    def _plan_lines(self):
        """How the backend runs each convolution (its plan, made once), when it says."""
        from .backends import get_backend, get_backend_name
        from .backends.contract import hook
        name = self.backend or get_backend_name()
        try:
            describe = hook(get_backend(name), "describe_plan")
        except ImportError:
            return []
        if describe is None:
            return []
        lines = [f"Convolutions on the {name} backend (weights prepared once, when first used; the "
                 f"schedule for each batch size measured on its first pass):"]
        for layer_name, layer in self.named_layers():
            if isinstance(layer, L.Conv2D):
                plan = layer.plan()
                text = (get_backend(name).describe_bf16(plan.data) if plan.precision == "bfloat16"
                        else describe(plan.data))
                lines.append(f"  {layer_name:<12} {text}")
        runtime = hook(get_backend(name), "describe_runtime")
        if runtime is not None:
            lines += runtime().splitlines()
        return lines

    def extra_repr(self):
        return self.variant


def _load_backend(name):
    """Import the backend a model will run on, now: the fast backend makes its process-wide
    choices (Numba's threading layer) when imported, and must make them before anything starts
    Numba's threads (``numba.set_num_threads`` in the user's program, say)."""
    from .backends import get_backend
    try:
        get_backend(name)
    except ImportError:  # reported when the model runs, with the backend's own message
        pass


def build(spec, seed=0, backend=None, weight_dtype="float32", precision="float32") -> Model:
    """A :class:`Model` from a spec dict (see :func:`fastalex.specs.original_spec` for the format)."""
    return Model(spec, seed=seed, backend=backend, weight_dtype=weight_dtype, precision=precision)


from .errors import WeightsMismatchError  # noqa: E402  (defined with the other exceptions)


def param_shapes(variant, num_classes=1000) -> dict[str, tuple]:
    """``{key: shape}`` of a variant's state dict (no weights are initialized)."""
    model = Model(specs.VARIANTS[variant](num_classes), seed=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _classes_of(state) -> int:
    last = state.get("classifier.6.weight")
    shape = tuple(np.shape(last)) if last is not None else ()
    return int(shape[0]) if len(shape) == 2 and shape[0] >= 1 else 1000


def detect_variant(state) -> tuple[str, int] | None:
    """``(variant, num_classes)`` of the AlexNet whose parameters have exactly the keys and
    shapes of ``state`` (a state dict), or None if no variant fits.

    >>> detect_variant(alexnet("torchvision", num_classes=7).state_dict())
    ('torchvision', 7)
    """
    n = _classes_of(state)
    for variant in specs.VARIANTS:
        shapes = param_shapes(variant, n)
        if set(shapes) == set(state) and all(tuple(np.shape(state[k])) == s for k, s in shapes.items()):
            return variant, n
    return None


def _closest_variant(state) -> str:
    """The variant sharing the most keys (with the same shapes) with ``state``."""
    n = _classes_of(state)

    def score(variant):
        return sum(1 for k, s in param_shapes(variant, n).items()
                   if k in state and tuple(np.shape(state[k])) == s)
    return max(specs.VARIANTS, key=score)


def _describe_weights(weights) -> str:
    if isinstance(weights, (str, os.PathLike)):
        return f"weights file '{os.fspath(weights)}'"
    return "the state dict"


def alexnet(variant=None, num_classes=None, weights=None, backend=None, seed=0,
            weight_dtype="float32", precision="float32") -> Model:
    """An AlexNet.

    ``variant``: ``"original"`` (the 2012 paper: LRN, groups, 227x227) or ``"torchvision"``
    (224x224, the published ImageNet weights). ``weights``: None (He-normal init from ``seed``),
    ``"imagenet"`` (torchvision's published weights, :data:`fastalex.hub.IMAGENET1K_V1`,
    downloaded once and cached), a path to a ``.npz``/``.pth`` file, or a state dict.
    ``backend``: ``"numba"``, ``"numpy"`` or None (the process default). ``weight_dtype``: how
    the dense layers store their weights, ``"float32"`` (default), ``"bfloat16"`` or ``"int8"``
    (per-output-channel scales); they are converted once, after loading, and the convolutions
    stay float32 (see :mod:`fastalex.lowp`). ``precision``: how convolutions and dense layers
    compute, ``"float32"`` (default) or ``"bfloat16"`` (inputs and weights rounded to bfloat16,
    float32 sums, on AMX or AVX512-BF16 where the CPU has them; see docs/precision.md); it goes
    with ``weight_dtype`` ``"float32"`` or ``"bfloat16"``.

    ``variant`` and ``num_classes`` default to what the weights fit (read from their keys and
    shapes: :func:`detect_variant`); without weights, to ``"original"`` and 1000. Naming a
    variant or a class count the weights do not fit raises :class:`WeightsMismatchError` (a
    ``ValueError``) that names the variant and class count they do fit.
    """
    if variant is not None and variant not in specs.VARIANTS:
        raise ValueError(f"alexnet: unknown variant {variant!r}; valid variants are "
                         + ", ".join(repr(v) for v in specs.VARIANTS))
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise ValueError(f"alexnet: num_classes must be a positive int, got {num_classes!r}")
    check_precision_and_weights(precision, weight_dtype, "alexnet")
    if weights is None:
        return Model(specs.VARIANTS[variant or "original"](num_classes or 1000), seed=seed, backend=backend,
                     weight_dtype=weight_dtype, precision=precision)
    from .hub import published_weights, resolve_weights
    meta = published_weights(weights)
    if meta is not None:
        meta.check_fits(variant, num_classes)  # before downloading
        state = resolve_weights(meta)
        source, fits = f"the published {meta.name} weights", (meta.variant, meta.num_classes)
    else:
        state = resolve_weights(weights)
        source, fits = _describe_weights(weights), detect_variant(state)
    # a state dict read from a file just now is nobody else's: the model may keep its arrays
    assign = not isinstance(weights, Mapping)
    if fits is None:
        target = variant or _closest_variant(state)
        model = Model(specs.VARIANTS[target](num_classes or _classes_of(state)), seed=None, backend=backend)
        try:
            model.load_state_dict(state, assign=assign)
        except ValueError as exc:
            raise WeightsMismatchError(
                f"{source} does not fit any AlexNet variant (against the {target} AlexNet: {exc})", source,
                detail=f"against the {target} AlexNet: {exc}") from None
        return model.set_weight_dtype(weight_dtype, keep_float32=False).set_precision(precision)
    fit_variant, fit_classes = fits
    if variant is not None and variant != fit_variant:
        raise WeightsMismatchError(
            f"{source} fits the {fit_variant!r} AlexNet ({fit_classes} classes), not the {variant!r} one; "
            f"use the {fit_variant!r} variant, or leave the variant out", source, fits)
    if num_classes is not None and num_classes != fit_classes:
        raise WeightsMismatchError(f"{source} has {fit_classes} classes, not {num_classes}", source, fits)
    model = Model(specs.VARIANTS[fit_variant](fit_classes), seed=None, backend=backend)
    model.load_state_dict(state, assign=assign)  # strict: every parameter is replaced
    if meta is not None:  # how other processes (Dask workers) get the same weights
        model.recipe = {"spec": model.spec, "seed": None, "weights": meta.name}
    elif isinstance(weights, (str, os.PathLike)):  # a file or URL they can load again
        where = os.fspath(weights)
        model.recipe = {"spec": model.spec, "seed": None,
                        "weights": where if is_url(where) else os.path.abspath(where)}
    return model.set_weight_dtype(weight_dtype, keep_float32=False).set_precision(precision)


#: moved in 0.2: the specs to fastalex.specs, the ImageNet statistics to fastalex.images
__getattr__ = moved("fastalex.models", {
    "VARIANTS": "fastalex.specs", "original_spec": "fastalex.specs", "torchvision_spec": "fastalex.specs",
    "IMAGENET_MEAN": "fastalex.images", "IMAGENET_STD": "fastalex.images"})
