"""torch's spelled-out LocalResponseNorm in an ONNX graph, recognized as one LRN.

``torch.onnx.export`` has no symbolic for LRN: ``nn.LocalResponseNorm`` (the 2012 AlexNet) on a
4-D input is exported as the primitive ops ``F.local_response_norm`` is written with::

    d = x * x                                     Mul(x, x)
    d = d.view(N, 1, C, H, -1)                    Reshape: the target a constant, or Shape ->
                                                  Gather -> Unsqueeze -> Concat of x's shape
    d = pad(d, (0, 0, 0, 0, size // 2, (size - 1) // 2))
                                                  Pad, zeros on the channel axis: pads an attribute
                                                  (opset < 11) or computed from constants
                                                  (ConstantOfShape, Concat, Reshape, Slice,
                                                  Transpose, Cast); opset 9 adds a second, empty Pad
    d = avg_pool3d(d, (size, 1, 1), stride=1)     AveragePool
    d = d.squeeze(1)                              Squeeze, or If(shape[1] == 1, Squeeze, Identity)
    d = d.view(N, C, H, W)                        Reshape (the TorchScript exporter; dynamo omits it)
    d = d.mul(alpha).add(k).pow(beta)             Mul, Add, Pow with scalar constants
    return x / d                                  Div(x, d)

:func:`find` takes, for each ``Div(x, d)`` whose ``d`` is computed from ``x`` (and constants)
alone through a square of ``x`` and an ``AveragePool``, the nodes computing ``d``: the region.
:func:`match` then runs the region for a concrete input shape: shape computations are evaluated
(small integer arrays), and each data step is checked against the recipe above (operator,
attributes, constants, the shapes in between). Only an exact match is one
``LocalResponseNorm(size, alpha, beta, k)`` with torch's window placement (``size // 2`` channels
before, ``(size - 1) // 2`` after), which is what fastalex's layer computes; anything else raises
:class:`Mismatch` with the reason, and the caller refuses the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import FastalexError

#: the operators a spelled-out LRN is made of (the data path and its shape computations)
OPS = frozenset({"Mul", "Pow", "Reshape", "Pad", "AveragePool", "Squeeze", "Unsqueeze", "If", "Add",
                 "Shape", "Gather", "Concat", "Constant", "ConstantOfShape", "Slice", "Transpose", "Cast",
                 "Equal", "Identity"})


class Mismatch(FastalexError, ValueError):
    """The region is not torch's LRN; the message says which step differs."""


class PatternError(FastalexError, ValueError):
    """A region that looks like torch's LRN but cannot be taken out of the graph as one node."""

    def __init__(self, node, reason):
        self.node = node
        super().__init__(reason)


@dataclass
class Region:
    x: str          # the LRN's input tensor
    div: object     # the final Div node (its output is the LRN's output)
    nodes: list     # the nodes computing Div's denominator, in graph order
    index: int      # Div's position in the graph


def inputs(node) -> list:
    """The tensors a node reads: its inputs and what its subgraphs (If branches) read from outside."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for graph in graphs:
            inner = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
            inner |= {t.name for t in graph.initializer}
            names += [i for n in graph.node for i in inputs(n) if i not in inner]
    return names


def find(nodes, is_const, graph_outputs):
    """``(regions, taken)``: the candidate LRN regions of the node list and the indices of their
    nodes (Div included). ``is_const(name)``: whether a tensor is an initializer or Constant."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users = {}
    for i, n in enumerate(nodes):
        for t in inputs(n):
            users.setdefault(t, set()).add(i)
    regions, taken = [], set()
    for index, div in enumerate(nodes):
        if div.op_type != "Div" or div.domain not in ("", "ai.onnx") or len(div.input) != 2:
            continue
        x, den = div.input
        region, outside, stack = set(), set(), [den]
        while stack:
            t = stack.pop()
            if t == x:
                continue
            if t not in producer:
                if not is_const(t):
                    outside.add(t)
                continue
            i = producer[t]
            if i not in region and i not in taken and i != index:
                region.add(i)
                stack.extend(inputs(nodes[i]))
        squares = any(nodes[i].op_type in ("Mul", "Pow") and x in nodes[i].input for i in region)
        if not squares or not any(nodes[i].op_type == "AveragePool" for i in region):
            continue  # some other division: the converter refuses Div as usual
        unknown = sorted({nodes[i].op_type for i in region} - OPS)
        if unknown:
            raise PatternError(div, f"its denominator also uses {', '.join(unknown)}")
        if outside:
            raise PatternError(div, f"its denominator also reads {sorted(outside)}, not only {x!r}")
        shared = set()  # Constant nodes other nodes read too: they stay in the graph
        for i in region:
            for o in nodes[i].output:
                if o and ((users.get(o, set()) - region - {index}) or o in graph_outputs):
                    if nodes[i].op_type != "Constant":
                        raise PatternError(div, f"its inner tensor {o!r} is also used outside it")
                    shared.add(i)
        regions.append(Region(x=x, div=div, nodes=[nodes[i] for i in sorted(region)], index=index))
        taken |= (region - shared) | {index}
    return regions, taken


# ----------------------------------------------------------------------------- matching

def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _scalar(arr, what):
    arr = np.asarray(arr)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise Mismatch(f"{what} is not a floating-point scalar constant (shape {arr.shape}, {arr.dtype})")
    value = float(arr.reshape(-1)[0])
    if not math.isfinite(value):
        raise Mismatch(f"{what} is {value}")
    return value


def _reshaped(shape, target, allowzero):
    """ONNX Reshape's output shape for an input ``shape`` and a ``target``."""
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    out = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if i >= len(shape):
                raise Mismatch(f"Reshape target {target} copies a dimension {shape} does not have")
            t = shape[i]
        out.append(t)
    total = math.prod(shape)
    if out.count(-1) > 1 or min(out, default=0) < -1:
        raise Mismatch(f"Reshape target {target} is not valid")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise Mismatch(f"Reshape target {target} does not fit {shape}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise Mismatch(f"Reshape target {target} does not fit {shape}")
    return tuple(out)


def _axes(node, a, value, rank):
    """A Squeeze/Unsqueeze's axes (attribute before opset 13, an input since), made non-negative."""
    if len(node.input) > 1 and node.input[1]:
        axes = value(node.input[1])
    elif "axes" in a:
        axes = a["axes"]
    else:
        return None
    return sorted(int(ax) % rank for ax in np.asarray(axes).reshape(-1))


def match(region, constant, shape):
    """``(size, alpha, beta, k)`` of the region for an input of ``shape`` ``(N, C, H, W)``, or
    :class:`Mismatch`. ``constant(name)``: an initializer's or Constant's array, or None."""
    n, c, h, w = shape
    x = region.x
    values = {}                     # shape computations: name -> numpy array
    data = {x: ("x", tuple(shape))}  # data path: name -> (stage, shape)
    consumed = {}                   # data tensor -> the data node that read it
    found = {}

    def value(name):
        if name in values:
            return values[name]
        arr = constant(name)
        if arr is None:
            raise Mismatch(f"{name!r} is neither a constant nor computed from shapes")
        return np.asarray(arr)

    def take(node, name, stages):
        """The data input ``name`` of ``node``: its (stage, shape), checked and marked as read."""
        if name not in data:
            raise Mismatch(f"{node.op_type} reads {name!r}, which is not on the LRN's data path")
        stage, shp = data[name]
        if stage not in stages:
            raise Mismatch(f"{node.op_type} {node.name or node.output[0]!r} comes where torch's LRN has "
                           f"no {node.op_type} (after the {stage} step)")
        if name in consumed and not (name == x and node.op_type == "Div"):
            raise Mismatch(f"{name!r} is read by two nodes")
        consumed[name] = node
        return shp

    def one_data(node):
        names = [i for i in node.input if i in data]
        if len(names) != 1:
            raise Mismatch(f"{node.op_type} {node.name or node.output[0]!r} reads {len(names)} tensors of "
                           f"the data path, expected 1")
        return names[0]

    def scalar_operand(node, name):
        others = [i for i in node.input if i != name]
        if len(others) != 1:
            raise Mismatch(f"{node.op_type} {node.name!r} does not take one constant")
        return _scalar(value(others[0]), f"the {node.op_type}'s constant")

    def run(nodes):
        for node in nodes:
            step(node)

    def step(node):
        op, a, out = node.op_type, _attrs(node), node.output[0]
        if node.domain not in ("", "ai.onnx") or op not in OPS:
            raise Mismatch(f"operator {op} is not part of it")
        if op == "Shape":
            src = node.input[0]
            shp = data[src][1] if src in data else value(src).shape
            values[out] = np.array(shp, np.int64)[a.get("start", 0):a.get("end", None)]
            return
        if op == "If":
            cond = bool(np.asarray(value(node.input[0])).reshape(-1)[0])
            branch = a["then_branch" if cond else "else_branch"]
            run(branch.node)
            result = branch.output[0].name
            if result in data:
                data[out] = data[result]
            else:
                values[out] = value(result)
            return
        if not any(i in data for i in node.input):
            values[out] = _evaluate(node, a, value)
            return
        # -- the data path, step by step
        if op == "Identity":
            data[out] = data[one_data(node)]
            return
        if op in ("Mul", "Pow") and node.input[0] == x:
            if op == "Mul" and list(node.input) != [x, x]:
                raise Mismatch(f"the square is Mul{tuple(node.input)}, not Mul(x, x)")
            if op == "Pow" and _scalar(value(node.input[1]), "the square's exponent") != 2.0:
                raise Mismatch("the square's exponent is not 2")
            data[out] = ("square", take(node, x, ("x",)))
            return
        src = one_data(node)
        if op == "Reshape":
            stage, shp = data[src]
            target = value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("shape")
            if target is None:
                raise Mismatch("a Reshape without a target shape")
            new = _reshaped(take(node, src, ("square", "summed", "unviewed sums")), target,
                            int(a.get("allowzero", 0)))
            if stage == "square":
                if len(new) != 5 or new[:3] != (n, 1, c) or new[3] * new[4] != h * w:
                    raise Mismatch(f"x * x is reshaped to {new}, not to {(n, 1, c, h, w)}")
                data[out] = ("5-D view", new)
            else:
                if new != (n, c, h, w):
                    raise Mismatch(f"the window sums are reshaped to {new}, not to {(n, c, h, w)}")
                data[out] = ("summed", new)
        elif op == "Pad":
            shp = take(node, src, ("5-D view", "padded"))
            mode = a.get("mode", b"constant")
            if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
                raise Mismatch(f"Pad mode {mode!r} is not constant")
            pads = value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("pads")
            fill = (value(node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("value", 0.0))
            if pads is None or np.any(np.asarray(fill) != 0):
                raise Mismatch(f"the Pad's pads {pads} or fill value {fill} differ from torch's zeros")
            pads = [int(p) for p in np.asarray(pads).reshape(-1)]
            axes = list(range(5))
            if len(node.input) > 3 and node.input[3]:
                axes = [int(ax) % 5 for ax in np.asarray(value(node.input[3])).reshape(-1)]
            if len(pads) != 2 * len(axes):
                raise Mismatch(f"Pad has {len(pads)} pads for {len(axes)} axes")
            before = dict(zip(axes, pads[:len(axes)]))
            after = dict(zip(axes, pads[len(axes):]))
            if any(v for ax, v in list(before.items()) + list(after.items()) if ax != 2) or \
                    min(pads, default=0) < 0:
                raise Mismatch(f"Pad pads {pads} pad more than the channel axis")
            b, e = found.get("pads", (0, 0))
            found["pads"] = (b + before.get(2, 0), e + after.get(2, 0))
            data[out] = ("padded", shp[:2] + (shp[2] + before.get(2, 0) + after.get(2, 0),) + shp[3:])
        elif op == "AveragePool":
            shp = take(node, src, ("5-D view", "padded"))
            kernel = [int(k) for k in a.get("kernel_shape", [])]
            b, e = found.get("pads", (0, 0))
            size = b + e + 1
            if kernel != [size, 1, 1]:
                raise Mismatch(f"AveragePool's kernel {kernel} is not ({size}, 1, 1) (after pads {b} and {e})")
            auto = a.get("auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            if (any(int(s) != 1 for s in a.get("strides", [1, 1, 1])) or any(int(p) for p in a.get("pads", []))
                    or any(int(d) != 1 for d in a.get("dilations", [1, 1, 1])) or auto not in ("NOTSET", "VALID")):
                raise Mismatch("AveragePool has strides, pads or dilations that torch's LRN does not")
            if (b, e) != (size // 2, (size - 1) // 2):
                raise Mismatch(f"the window spans {b} channels before and {e} after; torch's "
                               f"LocalResponseNorm({size}) spans {size // 2} and {(size - 1) // 2}")
            found["size"] = size
            data[out] = ("pooled", shp[:2] + (shp[2] - size + 1,) + shp[3:])
        elif op == "Squeeze":
            shp = take(node, src, ("pooled",))
            axes = _axes(node, a, value, len(shp))
            if axes != [1] or shp[1] != 1:
                raise Mismatch(f"Squeeze of axes {axes} of {shp}, not of axis 1")
            new = shp[:1] + shp[2:]
            # (N, C, H, W) when the 5-D view kept H and W; otherwise only a Reshape may follow
            data[out] = ("summed" if new == (n, c, h, w) else "unviewed sums", new)
        elif op == "Mul":
            shp = take(node, src, ("summed",))
            if shp != (n, c, h, w):
                raise Mismatch(f"the window sums have shape {shp}, not {(n, c, h, w)}")
            found["alpha"] = scalar_operand(node, src)
            data[out] = ("scaled", shp)
        elif op == "Add":
            found["k"] = scalar_operand(node, src)
            data[out] = ("shifted", take(node, src, ("scaled",)))
        elif op == "Pow":
            if node.input[0] != src:
                raise Mismatch("Pow's base is a constant")
            found["beta"] = scalar_operand(node, src)
            data[out] = ("denominator", take(node, src, ("shifted",)))
        else:
            raise Mismatch(f"{op} {node.name or out!r} is not a step of torch's LRN")

    run(region.nodes)
    den = region.div.input[1]
    if den not in data or data[den][0] != "denominator" or data[den][1] != (n, c, h, w):
        stage = data[den][0] if den in data else "a constant"
        raise Mismatch(f"x is divided by {stage}, not by (alpha * mean + k) ** beta of its squares")
    consumed[x] = region.div
    return found["size"], found["alpha"], found["beta"], found["k"]


def _evaluate(node, a, value):
    """One shape-computation node on small constant arrays (ONNX semantics)."""
    from onnx import helper, numpy_helper
    op = node.op_type
    args = [value(i) if i else None for i in node.input]
    if op == "Constant":
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key, dtype in (("value_int", np.int64), ("value_ints", np.int64), ("value_float", np.float32),
                           ("value_floats", np.float32)):
            if key in a:
                return np.array(a[key], dtype)
        raise Mismatch("a Constant without a tensor or number value")
    if op == "Identity":
        return args[0]
    if op == "Gather":
        return np.take(args[0], args[1].astype(np.int64), axis=int(a.get("axis", 0)))
    if op == "Unsqueeze":
        axes = _axes(node, a, value, args[0].ndim + len(np.asarray(args[1] if len(args) > 1 else a["axes"]).reshape(-1)))
        out = args[0]
        for ax in axes:
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        axes = _axes(node, a, value, args[0].ndim)
        return np.squeeze(args[0], axis=None if axes is None else tuple(axes))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in args], axis=int(a["axis"]))
    if op == "ConstantOfShape":
        fill = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
        dims = [int(d) for d in args[0].reshape(-1)]
        if math.prod(dims) > 1 << 16:
            raise Mismatch(f"ConstantOfShape of {dims} is not a shape computation")
        return np.full(dims, fill.reshape(-1)[0], fill.dtype)
    if op == "Reshape":
        target = args[1] if len(args) > 1 else a["shape"]
        return args[0].reshape(_reshaped(args[0].shape, target, int(a.get("allowzero", 0))))
    if op == "Slice":
        if len(args) > 1:
            starts, ends = args[1], args[2]
            axes = args[3] if len(args) > 3 and args[3] is not None else range(len(starts))
            steps = args[4] if len(args) > 4 and args[4] is not None else [1] * len(starts)
        else:
            starts, ends = a["starts"], a["ends"]
            axes, steps = a.get("axes", range(len(starts))), [1] * len(starts)
        index = [slice(None)] * args[0].ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            index[int(ax)] = slice(int(s), int(e), int(st))
        return args[0][tuple(index)]
    if op == "Transpose":
        return np.transpose(args[0], a.get("perm"))
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
    if op == "Equal":
        return np.equal(args[0], args[1])
    raise Mismatch(f"{op} {node.name!r} on constants is not a shape computation torch's LRN has")
