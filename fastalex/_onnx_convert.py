"""An ONNX graph of the AlexNet family -> a fastalex spec and a state dict, in one walk along the
chain: each supported node becomes a layer spec (``Conv`` -> ``Conv2D``, ``Gemm`` -> ``Dense``,
...), ``BatchNormalization`` and constant ``Add``s folded into the layer before them, torch's
spelled-out LRN recognized (:mod:`fastalex._onnx_lrn`). See :mod:`fastalex.onnx_import`."""

from __future__ import annotations

import os
import re

import numpy as np

from ._onnx_tensors import tensor_to_array
from .checks import count_nonfinite
from .errors import OnnxError

__all__ = ["Converter", "SUPPORTED_OPS"]

#: the operators a graph may use (``Constant`` nodes may hold weights and shapes)
SUPPORTED_OPS = ("Conv", "Relu", "LRN", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm",
                 "MatMul", "Add", "Flatten", "Reshape", "Dropout", "Softmax", "Identity",
                 "BatchNormalization", "Constant")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _f32(value):
    """An ONNX float attribute (stored as float32) as the short decimal it was written as (1e-4, not
    9.999999747378752e-05)."""
    return float(str(np.float32(value)))


def _sanitize(text):
    """A node's name as a layer name: no '.' (it separates layer and parameter in state dicts)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")


class Converter:
    """Walks the chain once, keeping the per-sample shape, and appends layer specs and weights."""

    def __init__(self, path, proto):
        self.path, self.proto, self.graph = path, proto, proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.entries, self.state, self.aliases, self.names = [], {}, {}, set()
        self.unavailable = {}  # tensor/node name -> why extract() cannot give it (see _refold)
        self.last = None  # (name, kind) of the conv/dense layer producing the current tensor, if any

    def fail(self, reason, node=None):
        if node is not None:
            reason = f"node {node.name or node.output[0]!r} ({node.op_type}): {reason}"
        raise OnnxError(self.path, reason)

    # -- graph structure
    def convert(self, preprocess):
        from .images import preprocess_preset
        g = self.graph
        self.consts = {t.name: t for t in g.initializer}
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _attrs(node).get("value")
                if value is None:
                    self.fail("only tensor-valued Constant nodes are supported", node)
                self.consts[node.output[0]] = value
        self.nodes = self._recognize_lrns(list(g.node))
        for node in self.nodes:  # every op checked first: the error names what is not supported
            if node.domain == "fastalex" and node.op_type == "TorchLRN":
                continue
            if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
                self.fail(f"operator {node.domain + '.' if node.domain else ''}{node.op_type} is not "
                          f"supported; supported: {', '.join(SUPPORTED_OPS)}", node)
        current, self.shape = self._input()
        input_shape = self.shape
        outputs = [o.name for o in g.output]
        uses, seen = {}, {current}
        for node in self.nodes:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            data = [i for i in node.input if i and i not in self.consts]
            if data != [current] or (node.input[0] != current and node.op_type != "Add"):
                self.fail(f"the graph is not a chain: this node takes {list(node.input)}, expected "
                          f"{current!r} first and constants otherwise", node)
            if uses.get(current, 0) != 1:
                self.fail(f"the graph is not a chain: tensor {current!r} is used {uses.get(current, 0)} times")
            for extra in node.output[1:]:
                if extra and uses.get(extra):
                    self.fail(f"its output {extra!r} is used; only the first output may be", node)
            getattr(self, "op_" + node.op_type)(node, _attrs(node))
            current = node.output[0]
            seen.add(current)
            if self.entries:
                self.aliases.setdefault(current, self.entries[-1][0])
                if node.name:
                    self.aliases.setdefault(node.name, self.entries[-1][0])
        if current not in outputs:
            self.fail(f"the chain ends at {current!r}, which is not a graph output ({', '.join(outputs)})")
        inner = [o for o in outputs if o not in seen]
        if inner:  # further outputs may only show tensors of the chain (use extract() for those)
            self.fail(f"graph outputs {inner} are not tensors of the chain")
        if not self.entries or len(self.shape) != 1:
            self.fail(f"the graph must end in class scores (N, classes); it gives per-sample shape {self.shape}")
        logits = [n for n, (kind, _) in self.entries if kind != "Softmax"]
        if logits:
            self.aliases.setdefault("logits", logits[-1])
        aliases = {k: v for k, v in self.aliases.items() if k != v}
        if preprocess is None or isinstance(preprocess, str):
            preprocess = preprocess_preset(preprocess or "torchvision", crop=input_shape[1:])
        stem = os.path.splitext(os.path.basename(self.path))[0]
        spec = {"variant": f"onnx:{stem}", "title": f"ONNX model {os.path.basename(self.path)} (opset {self.opset})",
                "input_shape": input_shape, "preprocess": dict(preprocess),
                "aliases": aliases, "unavailable": dict(self.unavailable), "layers": self.entries, "source": os.path.abspath(self.path),
                "opset": self.opset, "fixed_input_size": True}
        return spec, self.state

    def _recognize_lrns(self, nodes):
        """``nodes`` with each LocalResponseNorm that torch spelled out (see :mod:`._onnx_lrn`)
        replaced by one ``fastalex.TorchLRN`` node, checked when the walk reaches it."""
        from onnx import helper

        from . import _onnx_lrn
        try:
            regions, taken = _onnx_lrn.find(nodes, lambda name: name in self.consts,
                                            {o.name for o in self.graph.output})
        except _onnx_lrn.PatternError as exc:
            self.fail(f"looks like torch's spelled-out LocalResponseNorm, but {exc}", exc.node)
        self.lrns = {}
        at = {r.index: r for r in regions}
        out = []
        for i, node in enumerate(nodes):
            region = at.get(i)
            if region is not None:
                scope = re.match(r"^(.*)/[^/]*$", region.div.name or "")
                name = scope.group(1) if scope and scope.group(1) else region.div.name
                out.append(helper.make_node("TorchLRN", [region.x], [region.div.output[0]], name=name,
                                            domain="fastalex"))
                self.lrns[region.div.output[0]] = region
            elif i not in taken:
                out.append(node)
        return out

    def _input(self):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            self.fail(f"the graph must have one input (an image batch), it has {len(inputs)}: "
                      f"{[i.name for i in inputs]}")
        value = inputs[0]
        ttype = value.type.tensor_type
        if ttype.elem_type != 1:
            self.fail(f"input {value.name!r} must be float32, its type is {ttype.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in ttype.shape.dim]
        if len(dims) != 4:
            self.fail(f"input {value.name!r} must be an image batch (N, C, H, W) of rank 4, got rank "
                      f"{len(dims)} ({', '.join(map(str, dims))})")
        if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            self.fail(f"input {value.name!r} must have a fixed (C, H, W), got {tuple(dims)}")
        self.batch = dims[0]
        return value.name, tuple(dims[1:])

    def const(self, name, node, what):
        if name not in self.consts:
            self.fail(f"{what} {name!r} must be an initializer or a Constant", node)
        value = self.consts[name]
        if not isinstance(value, np.ndarray):
            value = self.consts[name] = tensor_to_array(self.path, value)
        return value

    def weight(self, name, node, what):
        arr = self.const(name, node, what)
        if not np.issubdtype(arr.dtype, np.floating):
            self.fail(f"{what} {name!r} must be floating point, got {arr.dtype}", node)
        arr = arr.astype(np.float32)
        if count_nonfinite(arr):
            self.fail(f"{what} {name!r} contains NaN/inf values", node)
        return arr

    def finite(self, arr, node, what):
        """``arr`` as float32 if every value is finite there, else an error naming ``what``
        (folding constants must not overflow float32)."""
        with np.errstate(all="ignore"):
            arr = np.asarray(arr).astype(np.float32)
        if count_nonfinite(arr):
            self.fail(f"{what} overflows float32 (inf or NaN values)", node)
        return arr

    # -- adding layers
    def add(self, node, kind, kwargs, params=None):
        from .models import LAYER_TYPES
        name = self._unique(_sanitize(node.name or node.output[0]) or f"{node.op_type.lower()}{len(self.entries)}")
        entry = (name, (kind, kwargs))
        try:
            extra = {"rng": None} if kind in ("Conv2D", "Dense") else {}  # zero placeholders: only the shape is wanted
            layer = LAYER_TYPES[kind](**kwargs, **extra)
            self.shape = tuple(layer.output_shape(self.shape))
        except (ValueError, TypeError) as exc:
            self.fail(str(exc), node)
        self.entries.append(entry)
        for p, arr in (params or {}).items():
            self.state[f"{name}.{p}"] = np.ascontiguousarray(arr, dtype=np.float32)
        self.last = (name, kind) if kind in ("Conv2D", "Dense") else None
        return name

    def image(self, node):
        if len(self.shape) != 3:
            self.fail(f"expects an image tensor (N, C, H, W), gets per-sample shape {self.shape}", node)
        return self.shape

    def features(self, node):
        if len(self.shape) != 1:
            self.fail(f"expects a 2-D tensor (N, features), gets per-sample shape {self.shape} "
                      f"(flatten it first)", node)
        return self.shape[0]

    def pads(self, node, a, kernel, strides, dilations):
        """ONNX ``pads``/``auto_pad`` -> our padding: an ``(h, w)`` pair or ``(left, right, top, bottom)``."""
        auto = _decode(a.get("auto_pad", "NOTSET")) or "NOTSET"
        _, H, W = self.shape
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            sides = []
            for n, k, s, d in zip((H, W), kernel, strides, dilations):
                out = -(-n // s)
                total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
                small = total // 2
                sides.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
            (top, bottom), (left, right) = sides
        elif auto in ("NOTSET", "VALID"):
            pads = list(a.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
            if len(pads) != 4:
                self.fail(f"pads must have 4 values for a 2-D op, got {pads}", node)
            top, left, bottom, right = (int(p) for p in pads)
        else:
            self.fail(f"unknown auto_pad {auto!r}", node)
        if min(top, left, bottom, right) < 0:
            self.fail(f"negative pads {[top, left, bottom, right]} are not supported", node)
        if top == bottom and left == right:
            return (top, left)
        return (left, right, top, bottom)

    def window(self, node, a, kernel):
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        dilations = tuple(int(d) for d in a.get("dilations", (1, 1)))
        if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2:
            self.fail(f"only 2-D windows are supported (kernel {tuple(kernel)}, strides {strides})", node)
        return strides, dilations, self.pads(node, a, kernel, strides, dilations)

    # -- operators
    def op_Conv(self, node, a):
        c, _, _ = self.image(node)
        w = self.weight(node.input[1], node, "weight")
        if w.ndim != 4:
            self.fail(f"only 2-D convolutions are supported, weight has shape {w.shape}", node)
        kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
        if kernel != w.shape[2:]:
            self.fail(f"kernel_shape {kernel} does not match the weight {w.shape}", node)
        group = int(a.get("group", 1))
        if w.shape[1] * group != c:
            self.fail(f"weight {w.shape} with group={group} expects {w.shape[1] * group} input channels, "
                      f"the input has {c}", node)
        strides, dilations, padding = self.window(node, a, kernel)
        params = {"weight": w}
        if len(node.input) > 2 and node.input[2]:
            b = self.weight(node.input[2], node, "bias")
            if b.shape != (w.shape[0],):
                self.fail(f"bias must have shape ({w.shape[0]},), got {b.shape}", node)
            params["bias"] = b
        self.add(node, "Conv2D", dict(in_channels=c, out_channels=int(w.shape[0]), kernel_size=kernel,
                                      stride=strides, padding=padding, dilation=dilations, groups=group,
                                      bias="bias" in params), params)

    def _pool(self, node, a, kind):
        self.image(node)
        kernel = tuple(int(k) for k in a.get("kernel_shape", ()))
        strides, dilations, padding = self.window(node, a, kernel)
        if dilations != (1, 1):
            self.fail(f"pooling with dilations {dilations} is not supported", node)
        if len(padding) == 2 and (padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2):
            padding = (padding[1], padding[1], padding[0], padding[0])  # ONNX allows up to kernel - 1
        kwargs = dict(kernel_size=kernel, stride=strides, padding=padding,
                      ceil_mode=bool(a.get("ceil_mode", 0)))
        if kind == "AvgPool2D":
            kwargs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        self.add(node, kind, kwargs)

    def op_MaxPool(self, node, a):
        if int(a.get("storage_order", 0)) != 0 and len(node.output) > 1 and node.output[1]:
            self.fail("storage_order=1 indices are not supported", node)
        self._pool(node, a, "MaxPool2D")

    def op_AveragePool(self, node, a):
        self._pool(node, a, "AvgPool2D")

    def op_GlobalAveragePool(self, node, a):
        self.image(node)
        self.add(node, "AdaptiveAvgPool2D", dict(output_size=1))

    def op_LRN(self, node, a):
        self.image(node)
        size = int(a["size"])
        if size % 2 == 0:  # ONNX and torch place an even window differently
            self.fail(f"LRN with an even size ({size}) is not supported", node)
        self.add(node, "LocalResponseNorm", dict(size=size, alpha=_f32(a.get("alpha", 1e-4)),
                                                 beta=_f32(a.get("beta", 0.75)), k=_f32(a.get("bias", 1.0))))

    def op_TorchLRN(self, node, a):
        from . import _onnx_lrn
        c, h, w = self.image(node)
        region = self.lrns[node.output[0]]
        batches = [self.batch] if isinstance(self.batch, int) and self.batch > 0 else [1, 2]

        def constant(name):
            return self.const(name, node, "constant") if name in self.consts else None
        try:  # the shape computations are evaluated per batch size: the same LRN for each
            found = {_onnx_lrn.match(region, constant, (n, c, h, w)) for n in batches}
        except _onnx_lrn.Mismatch as exc:
            self.fail(f"looks like torch's spelled-out LocalResponseNorm (Mul, Reshape, Pad, AveragePool, "
                      f"Squeeze, Mul, Add, Pow, Div), but {exc}; only that exact pattern is read as an LRN",
                      region.div)
        if len(found) != 1:
            self.fail(f"a spelled-out LocalResponseNorm whose constants depend on the batch size {found}", region.div)
        size, alpha, beta, k = found.pop()
        name = self.add(node, "LocalResponseNorm", dict(size=size, alpha=_f32(alpha), beta=_f32(beta), k=_f32(k)))
        why = (f"is inside the LocalResponseNorm that torch spelled out as primitive ops; fastalex runs it "
               f"as the one layer {name!r}, so this tensor is never computed: extract {name!r} (its output)")
        for inner in region.nodes:
            for key in [o for o in inner.output if o] + ([inner.name] if inner.name else []):
                self.unavailable.setdefault(key, why)

    def op_Relu(self, node, a):
        self.add(node, "ReLU", {})

    def op_Identity(self, node, a):
        pass

    def op_Dropout(self, node, a):
        ratio = _f32(a.get("ratio", 0.5))
        if self.opset >= 12 and len(node.input) > 1 and node.input[1]:
            ratio = float(np.asarray(self.const(node.input[1], node, "ratio")).reshape(-1)[0])
        if len(node.input) > 2 and node.input[2] and bool(np.asarray(self.const(node.input[2], node, "training_mode")).any()):
            self.fail("training_mode=True is not supported (fastalex runs inference)", node)
        self.add(node, "Dropout", dict(p=min(max(ratio, 0.0), 1.0)))

    def op_Flatten(self, node, a):
        rank = len(self.shape) + 1
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += rank
        if axis != 1:
            self.fail(f"only Flatten with axis=1 (keeping the batch axis) is supported, got axis={a.get('axis')}", node)
        self.add(node, "Flatten", {})

    def op_Reshape(self, node, a):
        if len(node.input) > 1 and node.input[1]:
            shape = self.const(node.input[1], node, "shape")
        elif "shape" in a:  # Reshape-1 and -4 keep the shape in an attribute
            shape = np.asarray(a["shape"])
        else:
            self.fail("no target shape", node)
        shape = [int(s) for s in np.asarray(shape).reshape(-1)]
        features = int(np.prod(self.shape))
        batch_ok = (0, -1) + ((self.batch,) if isinstance(self.batch, int) else ())
        if (len(shape) != 2 or shape[0] not in batch_ok or shape[1] not in (-1, features)
                or (shape[0] == -1 and shape[1] != features)):
            self.fail(f"only a Reshape to (N, -1) = (N, {features}) is supported, got shape {shape}", node)
        self.add(node, "Flatten", {})

    def op_Softmax(self, node, a):
        self.features(node)
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        if axis not in (1, -1):
            self.fail(f"only Softmax over the classes (axis 1 or -1) is supported, got axis={axis}", node)
        self.add(node, "Softmax", dict(axis=-1))

    def _dense(self, node, weight, bias):
        params = {"weight": weight}
        if bias is not None:
            params["bias"] = bias
        self.add(node, "Dense", dict(in_features=int(weight.shape[1]), out_features=int(weight.shape[0]),
                                     bias=bias is not None), params)

    def op_Gemm(self, node, a):
        k = self.features(node)
        if int(a.get("transA", 0)):
            self.fail("transA=1 (a transposed batch) is not supported", node)
        b = self.weight(node.input[1], node, "B")
        if b.ndim != 2:
            self.fail(f"B must be 2-D, got shape {b.shape}", node)
        w = b if int(a.get("transB", 0)) else b.T
        if w.shape[1] != k:
            self.fail(f"B {b.shape} (transB={int(a.get('transB', 0))}) does not take {k} features", node)
        alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
        w = self.finite(w * np.float32(alpha), node, f"B * alpha (alpha={_f32(alpha):g})")
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self.weight(node.input[2], node, "C")
            if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                self.fail(f"C of shape {c.shape} is not a bias of {w.shape[0]} outputs", node)
            bias = self.finite(np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.float32(beta), node,
                               f"C * beta (beta={_f32(beta):g})")
        self._dense(node, w, bias)

    def op_MatMul(self, node, a):
        k = self.features(node)
        b = self.weight(node.input[1], node, "B")
        if b.ndim != 2 or b.shape[0] != k:
            self.fail(f"B must be ({k}, outputs) to take {k} features, got shape {b.shape}", node)
        self._dense(node, b.T, None)

    def _folded_into(self, node, what):
        """The conv/dense layer this node's constant is folded into (it must come right before).

        The layer then computes this node's output, not its own node's: it is renamed after this
        node, and the names of the tensor before the fold (the layer's old name, its node's name
        and output tensors) become :attr:`unavailable`, so ``extract()`` refuses them instead of
        giving values after the fold (ONNX Runtime's value of that tensor is the one before)."""
        if self.last is None:
            self.fail(f"{what} is only supported right after a Conv, Gemm or MatMul", node)
        old, kind = self.last
        new = self._unique(_sanitize(node.name or node.output[0]) or f"{node.op_type.lower()}{len(self.entries)}")
        stale = [old] + [k for k, v in self.aliases.items() if v == old]
        for key in stale:
            self.aliases.pop(key, None)
            self.unavailable[key] = (
                f"is the output of a {kind} layer before the {node.op_type} {node.name or node.output[0]!r} "
                f"that was folded into its weights: fastalex never computes that tensor; "
                f"extract {new!r} (after the {node.op_type}) instead")
        self.names.discard(old)
        self.entries = [(new if n == old else n, body) for n, body in self.entries]
        self.state = {(f"{new}.{k.split('.', 1)[1]}" if k.split(".", 1)[0] == old else k): v
                      for k, v in self.state.items()}
        self.last = (new, kind)
        return self.last

    def _unique(self, base):
        name, k = base, 2
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def op_Add(self, node, a):
        name, kind = self._folded_into(node, "adding a constant")
        other = node.input[1] if node.input[0] not in self.consts else node.input[0]
        value = self.weight(other, node, "addend")
        out = self.shape[0]
        per_channel = {"Dense": [(), (1,), (out,), (1, out)],
                       "Conv2D": [(), (1,), (out, 1, 1), (1, out, 1, 1)]}[kind]
        if value.shape not in per_channel:
            self.fail(f"only a bias per output channel can be added, got shape {value.shape}", node)
        bias = self.state.get(f"{name}.bias", 0.0) + np.broadcast_to(value.reshape(-1), (out,))
        self._set_bias(name, self.finite(bias, node, f"the bias of {name!r} plus the addend"))

    def op_BatchNormalization(self, node, a):
        name, kind = self._folded_into(node, "BatchNormalization")
        if int(a.get("spatial", 1)) != 1:
            self.fail("spatial=0 is not supported", node)
        if int(a.get("training_mode", 0)):
            self.fail("training_mode=1 is not supported", node)
        out = self.shape[0]
        scale, shift, mean, var = (self.weight(n, node, what).astype(np.float64) for n, what in
                                   zip(node.input[1:5], ("scale", "B", "mean", "var")))
        for arr, what in ((scale, "scale"), (shift, "B"), (mean, "mean"), (var, "var")):
            if arr.shape != (out,):
                self.fail(f"{what} must have shape ({out},), got {arr.shape}", node)
        epsilon = float(a.get("epsilon", 1e-5))
        if not (var + epsilon > 0).all():  # var >= 0 in any trained model; epsilon keeps var = 0 finite
            bad = int(np.argmin(var + epsilon))
            self.fail(f"var + epsilon must be positive, got var[{bad}] = {var[bad]:g} with epsilon = "
                      f"{epsilon:g} (division by zero or the root of a negative number)", node)
        factor = scale / np.sqrt(var + epsilon)
        w = self.state[f"{name}.weight"].astype(np.float64)
        folded = (w * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        self.state[f"{name}.weight"] = self.finite(folded, node, f"the weight of {name!r} folded with it")
        bias = self.state.get(f"{name}.bias", np.zeros(out, np.float32)).astype(np.float64)
        self._set_bias(name, self.finite((bias - mean) * factor + shift, node, f"the bias of {name!r} folded with it"))

    def _set_bias(self, name, bias):
        self.state[f"{name}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
        for entry_name, (kind, kwargs) in self.entries:
            if entry_name == name:
                kwargs["bias"] = True
