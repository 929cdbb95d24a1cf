"""Permutation symmetry of any traceable model: which axes of which tensors move
together, weight and activation matching, and applying a permutation to a state_dict.

Hidden units can be permuted without changing a network's function. ``infer_spec``
finds the permutation groups of a model from its torch.fx graph: every layer output
(linear, conv, embedding) is a unit space; BatchNorm, LayerNorm, elementwise
activations, dropout and pooling pass it through; a residual addition (or any
elementwise op of two tensors) merges the spaces it adds (union-find); a channel
concatenation is a list of blocks; a flatten after a conv turns each channel into a
block of H·W features; a depthwise conv's outputs follow its inputs. The network's
inputs and outputs never move, nor does anything the graph does not explain (an unknown
module, a parameter used directly, a reshape that mixes channels): those axes stay fixed
and ``PermSpec.notes`` says why.

``weight_matching``: coordinate descent over the groups (Ainsworth et al. 2022, Git
Re-Basin), each step a linear assignment (``scipy.optimize.linear_sum_assignment``) on
the summed inner products of the weights that share the group, until no group improves.
``activation_matching``: units paired by the correlation of their activations on data.
``permute_state(state, spec, perms)``: unit i of the result is unit ``perms[g][i]`` of
``state`` in every tensor of group g.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError

FIXED = 0  # the union-find element of every axis that must not move
# A channel axis is laid out as segments [(variable, inner)]: unit u of the variable occupies
# [u·inner, (u+1)·inner) of its block; None: the whole axis is fixed.

_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                        nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                        nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                        nn.AlphaDropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                        nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                        nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
                          F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.dropout, F.dropout1d,
                          F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                          F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                          F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                          F.adaptive_max_pool2d, torch.relu, torch.tanh, torch.sigmoid, F.tanh,
                          F.sigmoid, operator.neg, torch.neg, torch.abs, operator.abs}
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "neg", "abs", "contiguous", "clone",
                        "detach"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
           operator.imul, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_SHAPE_FUNCTIONS = {torch.flatten}
_SHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_CAT = {torch.cat, torch.concat}
_QUERY_METHODS = {"size", "dim", "numel"}  # shape queries: they move nothing
_QUERY_ATTRIBUTES = {"shape", "dtype", "device", "ndim"}


@dataclass
class Group:
    """One permutation: ``size`` units; ``entries`` (key, axis, offset, inner): along
    ``axis`` of state entry ``key``, unit u occupies [offset + u·inner, offset + (u+1)·inner)."""
    size: int
    entries: list = field(default_factory=list)


@dataclass
class PermSpec:
    """The permutation groups of a model (``infer_spec``)."""
    groups: dict                  # group id -> Group
    axes: dict                    # key -> [(axis, [(group id or FIXED, units, inner), ...])]
    probes: dict                  # group id -> [(fx node name, channel axis)] (activation matching)
    notes: list                   # patterns not understood, in words
    keys: list                    # every state_dict key, in order

    def moving_keys(self) -> set:
        return {k for k, axes in self.axes.items()
                if any(g != FIXED for _, segs in axes for g, _, _ in segs)}

    def unpermuted(self, names: Iterable[str]) -> list:
        """The entries of ``names`` none of whose axes moves."""
        moving = self.moving_keys()
        return [k for k in names if k not in moving]


# ============================================================================ tracing
def trace(net: nn.Module, what: str = "the model") -> torch.fx.GraphModule:
    """The torch.fx graph of ``net``; a model fx cannot trace is one UserError."""
    try:
        return torch.fx.symbolic_trace(net)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{what} cannot be traced by torch.fx ({type(e).__name__}: {first}); alignment needs "
                        "a model without data-dependent control flow")


def _shape(node: Any) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_query(node: torch.fx.Node) -> bool:
    """x.size(), x.dim(), x.shape, ...: a question about a tensor, not a use of its values."""
    return (node.op == "call_method" and node.target in _QUERY_METHODS) or \
        (node.op == "call_function" and node.target is getattr and len(node.args) > 1
         and node.args[1] in _QUERY_ATTRIBUTES)


class _Builder:
    """Walks the graph once, assigning a union-find variable to every unit space."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.modules = dict(gm.named_modules())
        self.parent, self.size = [FIXED], [0]
        self.feat: dict = {}      # node -> (channel axis, segments) for tensors
        self.bound: dict = {}     # (key, axis) -> segments
        self.notes: list = []

    # ---------------------------------------------------------------- union-find
    def new(self, n: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(n))
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[a] != self.size[b] and FIXED not in (ra, rb):
            self.parent[ra] = self.parent[rb] = FIXED
            return
        lo, hi = sorted((ra, rb))  # FIXED (0) always wins
        self.parent[hi] = lo

    def fix(self, segs: Any) -> None:
        for v, _ in segs or []:
            self.union(v, FIXED)

    def unify(self, a: Any, b: Any) -> None:
        """Two layouts that must move together (blockwise, same structure); else both fixed."""
        if a is not None and b is not None and len(a) == len(b) and \
                all(ia == ib and self.size[va] == self.size[vb] for (va, ia), (vb, ib) in zip(a, b)):
            for (va, _), (vb, _) in zip(a, b):
                self.union(va, vb)
        else:
            self.fix(a)
            self.fix(b)

    def length(self, segs: Any) -> int:
        return sum(self.size[v] * inner for v, inner in segs)

    def bind(self, key: str, axis: int, segs: Any, n: int) -> None:
        """Axis ``axis`` of state entry ``key`` (of length n) is laid out as ``segs``."""
        if segs is not None and self.length(segs) != n:
            self.notes.append(f"{key}: axis {axis} has {n} entries where {self.length(segs)} were expected")
            self.fix(segs)
            segs = None
        if (key, axis) in self.bound:
            self.unify(self.bound[(key, axis)], segs)
        else:
            self.bound[(key, axis)] = segs

    # ---------------------------------------------------------------- the graph
    def of(self, a: Any) -> Any:
        """(channel axis, segments) of a tensor argument; None for anything else."""
        return self.feat.get(a) if isinstance(a, torch.fx.Node) else None

    def fix_inputs(self, node: torch.fx.Node) -> None:
        for a in node.all_input_nodes:
            if a in self.feat:
                self.fix(self.feat[a][1])

    def visit(self, node: torch.fx.Node) -> None:
        if _is_query(node):
            return
        if node.op in ("placeholder", "get_attr"):
            self._fixed_output(node)
        elif node.op == "output":
            self.fix_inputs(node)
        else:
            handler = self.handler(node)
            if handler is None or not handler(node):
                self.unknown(node)

    def _fixed_output(self, node: torch.fx.Node) -> None:
        if _shape(node) is not None:
            self.feat[node] = (1, None)

    def unknown(self, node: torch.fx.Node) -> None:
        moving = [a for a in node.all_input_nodes if a in self.feat and self.feat[a][1] is not None
                  and any(self.find(v) != FIXED for v, _ in self.feat[a][1])]
        owned = node.op == "call_module" and any(True for _ in self.modules[node.target].parameters())
        if moving or owned:
            what = (f"module {node.target} ({type(self.modules[node.target]).__name__})"
                    if node.op == "call_module" else f"{node.op} {getattr(node.target, '__name__', node.target)}")
            self.notes.append(f"{what} at node {node.name} is not understood: its inputs, outputs and "
                              "parameters stay fixed")
        self.fix_inputs(node)
        self._fixed_output(node)

    def handler(self, node: torch.fx.Node) -> Callable | None:
        t = node.target
        if node.op == "call_module":
            m = self.modules[t]
            table = ((nn.Linear, self.linear), (nn.modules.conv._ConvNd, self.conv),
                     (nn.modules.batchnorm._BatchNorm, self.batchnorm), (nn.LayerNorm, self.layernorm),
                     (nn.Embedding, self.embedding), (_ELEMENTWISE_MODULES, self.passthrough),
                     (nn.Flatten, self.reshape))
            return next((h for types, h in table if isinstance(m, types)), None)
        if node.op == "call_function":
            return (self.passthrough if t in _ELEMENTWISE_FUNCTIONS else self.binary if t in _BINARY
                    else self.reshape if t in _SHAPE_FUNCTIONS else self.reduce if t in _REDUCE_FUNCTIONS
                    else self.cat if t in _CAT else None)
        if node.op == "call_method":
            return (self.passthrough if t in _ELEMENTWISE_METHODS else self.binary if t in _BINARY_METHODS
                    else self.reshape if t in _SHAPE_METHODS else self.reduce if t in _REDUCE_METHODS
                    else None)
        return None

    # ---------------------------------------------------------------- handlers
    def bind_param(self, mod: nn.Module, prefix: str, name: str, axis: int, segs: Any) -> None:
        t = getattr(mod, name, None)
        if torch.is_tensor(t):
            self.bind(f"{prefix}.{name}" if prefix else name, axis, segs, t.shape[axis])

    def _input(self, node: torch.fx.Node, axis_from_end: int | None = None, axis: int | None = None) -> Any:
        """The first argument's segments if its channel axis is where the layer reads it; else
        its segments are fixed and None comes back."""
        f, shape = self.of(node.args[0]), _shape(node.args[0])
        if f is None or shape is None:
            return None
        want = len(shape) + axis_from_end if axis_from_end is not None else axis
        if f[0] != want:
            self.fix(f[1])
            return None
        return f[1]

    def linear(self, node: torch.fx.Node) -> bool:
        m, p = self.modules[node.target], node.target
        segs = self._input(node, axis_from_end=-1)
        self.bind_param(m, p, "weight", 1, segs)
        out = [(self.new(m.out_features), 1)]
        self.bind_param(m, p, "weight", 0, out)
        self.bind_param(m, p, "bias", 0, out)
        self.feat[node] = (len(_shape(node)) - 1, out)
        return True

    def conv(self, node: torch.fx.Node) -> bool:
        m, p = self.modules[node.target], node.target
        if m.transposed:
            return False
        segs = self._input(node, axis=1)
        if m.groups == 1:
            self.bind_param(m, p, "weight", 1, segs)
            out = [(self.new(m.out_channels), 1)]
        elif m.groups == m.in_channels and segs is not None:  # depthwise: outputs follow inputs
            mult = m.out_channels // m.in_channels
            out = [(v, inner * mult) for v, inner in segs]
        else:
            self.fix(segs)
            if m.groups != m.in_channels:
                self.notes.append(f"{p}: grouped convolution ({m.groups} groups): its channels stay fixed")
            out = None
        self.bind_param(m, p, "weight", 0, out)
        self.bind_param(m, p, "bias", 0, out)
        self.feat[node] = (1, out)
        return True

    def batchnorm(self, node: torch.fx.Node) -> bool:
        m, p = self.modules[node.target], node.target
        segs = self._input(node, axis=1)
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.bind_param(m, p, name, 0, segs)
        self.feat[node] = (1, segs)
        return True

    def layernorm(self, node: torch.fx.Node) -> bool:
        m, p = self.modules[node.target], node.target
        segs = self._input(node, axis_from_end=-1) if len(m.normalized_shape) == 1 else None
        if segs is None:
            self.fix_inputs(node)
        for name in ("weight", "bias"):
            self.bind_param(m, p, name, 0, segs)
        self.feat[node] = (len(_shape(node)) - 1, segs)
        return True

    def embedding(self, node: torch.fx.Node) -> bool:
        m, p = self.modules[node.target], node.target
        out = [(self.new(m.embedding_dim), 1)]
        self.bind_param(m, p, "weight", 1, out)
        self.feat[node] = (len(_shape(node)) - 1, out)
        return True

    def passthrough(self, node: torch.fx.Node) -> bool:
        f, si, so = self.of(node.args[0]) if node.args else None, _shape(node.args[0]) if node.args else None, \
            _shape(node)
        if f is None or si is None or so is None or len(si) != len(so) or si[f[0]] != so[f[0]]:
            return False
        self.feat[node] = f
        return True

    def binary(self, node: torch.fx.Node) -> bool:
        tensors = [a for a in node.args[:2] if self.of(a) is not None]
        so = _shape(node)
        if len(tensors) == 1:
            return self.passthrough_of(node, tensors[0])
        if len(tensors) != 2 or so is None:
            return False
        (fa, fb), (sa, sb) = (self.of(a) for a in tensors), (_shape(a) for a in tensors)
        if sa is None or sb is None or len(sa) != len(sb) or fa[0] != fb[0] or len(so) != len(sa):
            return False
        ax = fa[0]
        if sa[ax] == sb[ax]:
            self.unify(fa[1], fb[1])
            self.feat[node] = fa
        elif 1 in (sa[ax], sb[ax]):  # one side broadcast along the channels
            small, big = (fa, fb) if sa[ax] == 1 else (fb, fa)
            self.fix(small[1])
            self.feat[node] = big
        else:
            return False
        return True

    def passthrough_of(self, node: torch.fx.Node, a: torch.fx.Node) -> bool:
        f, si, so = self.of(a), _shape(a), _shape(node)
        if si is None or so is None or si != so:
            return False
        self.feat[node] = f
        return True

    def reshape(self, node: torch.fx.Node) -> bool:
        """Flatten after a conv: channel c becomes the block [c·HW, (c+1)·HW)."""
        f, si, so = self.of(node.args[0]), _shape(node.args[0]), _shape(node)
        if f is None or si is None or so is None:
            return False
        if si == so:
            self.feat[node] = f
            return True
        if f[0] != 1 or len(so) < 2 or so[0] != si[0]:
            return False
        if so[1] == si[1]:  # the spatial dims only are merged or split
            self.feat[node] = f
            return True
        hw = int(np.prod(si[2:], dtype=np.int64))
        if len(so) != 2 or so[1] != si[1] * hw:
            return False
        self.feat[node] = (1, None if f[1] is None else [(v, inner * hw) for v, inner in f[1]])
        return True

    def reduce(self, node: torch.fx.Node) -> bool:
        """A mean/sum over the spatial dimensions keeps the channels."""
        f, si, so = self.of(node.args[0]), _shape(node.args[0]), _shape(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if f is None or si is None or so is None or dims is None or f[0] != 1:
            return False
        dims = [d % len(si) for d in ([dims] if isinstance(dims, int) else dims)]
        if 0 in dims or 1 in dims or len(so) < 2 or tuple(so[:2]) != tuple(si[:2]):
            return False
        self.feat[node] = f
        return True

    def cat(self, node: torch.fx.Node) -> bool:
        """Concatenation along the channels: blocks one after the other; along another
        dimension: the pieces share one layout."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        feats = [self.of(a) for a in parts or []]
        so = _shape(node)
        if not feats or any(f is None for f in feats) or so is None or len({f[0] for f in feats}) != 1:
            return False
        axis = feats[0][0]
        if dim % len(so) == axis:
            if any(f[1] is None for f in feats):
                for f in feats:
                    self.fix(f[1])
                self.feat[node] = (axis, None)
            else:
                self.feat[node] = (axis, [s for f in feats for s in f[1]])
            return True
        for f in feats[1:]:
            self.unify(feats[0][1], f[1])
        self.feat[node] = feats[0]
        return True

    # ---------------------------------------------------------------- the result
    def spec(self, keys: list) -> PermSpec:
        groups: dict = {}
        axes: dict = {}
        for (key, axis), segs in self.bound.items():
            if segs is None:
                continue
            resolved, offset = [], 0
            for v, inner in segs:
                g, n = self.find(v), self.size[v]
                resolved.append((g, n, inner))
                if g != FIXED:
                    groups.setdefault(g, Group(n)).entries.append((key, axis, offset, inner))
                offset += n * inner
            axes.setdefault(key, []).append((axis, resolved))
        probes: dict = {}
        for node, (axis, segs) in self.feat.items():
            if segs is not None and len(segs) == 1 and segs[0][1] == 1 and self.find(segs[0][0]) in groups:
                probes.setdefault(self.find(segs[0][0]), []).append((node.name, axis))
        return PermSpec(groups=groups, axes=axes, probes=probes, notes=list(dict.fromkeys(self.notes)),
                        keys=list(keys))


def infer_spec(net: nn.Module, example: torch.Tensor, what: str = "the model") -> PermSpec:
    """The permutation groups of ``net`` (see the module doc), from its fx graph and the
    shapes of one forward pass on ``example``."""
    from torch.fx.passes.shape_prop import ShapeProp
    gm = trace(net, what)
    was_training = net.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:
        raise UserError(f"{what} cannot run its traced graph on the data ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})")
    finally:
        net.train(was_training)
    builder = _Builder(gm)
    for node in gm.graph.nodes:
        builder.visit(node)
    return builder.spec(list(net.state_dict()))


# ========================================================================= permuting
def _index(segs: list, perms: dict) -> torch.Tensor:
    parts, offset = [], 0
    for g, n, inner in segs:
        p = torch.as_tensor(np.asarray(perms[g]), dtype=torch.long) if g in perms else torch.arange(n)
        parts.append((p[:, None] * inner + torch.arange(inner)[None, :]).reshape(-1) + offset)
        offset += n * inner
    return torch.cat(parts)


def permute_tensor(t: torch.Tensor, axes: list, perms: dict) -> torch.Tensor:
    """``t`` with every axis of ``axes`` ([(axis, segments)]) permuted by ``perms``."""
    for axis, segs in axes:
        if any(g in perms for g, _, _ in segs):
            t = t.index_select(axis, _index(segs, perms).to(t.device))
    return t


def permute_state(state: dict, spec: PermSpec, perms: dict) -> dict:
    """The state_dict with unit i of group g taken from unit ``perms[g][i]`` of ``state``."""
    return {k: permute_tensor(v, spec.axes[k], perms) if k in spec.axes else v for k, v in state.items()}


def identity(spec: PermSpec) -> dict:
    return {g: np.arange(group.size) for g, group in spec.groups.items()}


def inner_product(state_a: dict, state_b: dict, keys: Iterable[str]) -> float:
    """Σ over ``keys`` of <A, B> (the weight-matching objective)."""
    return float(sum((state_a[k].double() * state_b[k].double()).sum() for k in keys))


def distance(state_a: dict, state_b: dict, keys: Iterable[str]) -> float:
    """|A − B| over ``keys``."""
    return float(sum(((state_a[k].double() - state_b[k].double()) ** 2).sum() for k in keys)) ** 0.5


# ========================================================================= matching
def _units(t: torch.Tensor, axis: int, offset: int, n: int, inner: int) -> torch.Tensor:
    """The n units of one block of ``t`` along ``axis`` as rows of a matrix."""
    return t.narrow(axis, offset, n * inner).movedim(axis, 0).reshape(n, -1).double()


def _weight_cost(spec: PermSpec, g: int, state_a: dict, state_b: dict, keys: set, perms: dict) -> np.ndarray:
    """C[i, j] = Σ <unit i of A, unit j of B>, B's other axes in their current permutation."""
    group = spec.groups[g]
    trial = {**perms, g: np.arange(group.size)}
    cost = torch.zeros(group.size, group.size, dtype=torch.float64)
    for key, axis, offset, inner in group.entries:
        if key in keys:
            b = permute_tensor(state_b[key], spec.axes[key], trial)
            cost += _units(state_a[key], axis, offset, group.size, inner) @ \
                _units(b, axis, offset, group.size, inner).T
    return cost.numpy()


def weight_matching(spec: PermSpec, state_a: dict, state_b: dict, keys: Iterable[str], seed: int = 0,
                    max_sweeps: int = 100) -> tuple[dict, int]:
    """Permutations of B's units maximizing Σ_keys <A, π(B)>: coordinate descent over the
    groups in random order, one linear assignment per step, until a sweep improves no
    group. Returns (perms, sweeps)."""
    from scipy.optimize import linear_sum_assignment
    keys = set(keys)
    perms = identity(spec)
    order = [g for g, group in spec.groups.items() if any(e[0] in keys for e in group.entries)]
    rng = np.random.default_rng(seed)
    for sweep in range(1, max_sweeps + 1):
        improved = False
        for g in rng.permutation(np.asarray(order, dtype=np.int64)):
            cost = _weight_cost(spec, int(g), state_a, state_b, keys, perms)
            rows, cols = linear_sum_assignment(cost, maximize=True)
            old, new = cost[np.arange(len(cost)), perms[int(g)]].sum(), cost[rows, cols].sum()
            if new > old + 1e-9 * max(1.0, abs(old)):
                perms[int(g)] = cols
                improved = True
        if not improved:
            return perms, sweep
    return perms, max_sweeps


class _Recorder(torch.fx.Interpreter):
    """Runs a traced model, keeping the outputs of the named nodes."""

    def __init__(self, gm: torch.fx.GraphModule, names: set):
        super().__init__(gm)
        self.names, self.out = names, {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.names:
            self.out[n.name] = result
        return result


def _moments(stats: dict, name: str, a: torch.Tensor, b: torch.Tensor, axis: int) -> None:
    a = a.movedim(axis, -1).reshape(-1, a.shape[axis]).double()
    b = b.movedim(axis, -1).reshape(-1, b.shape[axis]).double()
    s = stats.setdefault(name, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
    s[0] += len(a)
    s[1], s[2] = s[1] + a.sum(0), s[2] + b.sum(0)
    s[3], s[4], s[5] = s[3] + (a * a).sum(0), s[4] + (b * b).sum(0), s[5] + a.T @ b


def _correlation(s: list) -> torch.Tensor:
    n, sa, sb, saa, sbb, sab = s
    ma, mb = sa / n, sb / n
    cov = sab / n - torch.outer(ma, mb)
    sd_a, sd_b = (saa / n - ma ** 2).clamp(min=0).sqrt(), (sbb / n - mb ** 2).clamp(min=0).sqrt()
    return cov / (torch.outer(sd_a, sd_b) + 1e-12)


@torch.no_grad()
def activation_matching(spec: PermSpec, net_a: nn.Module, net_b: nn.Module, x: torch.Tensor,
                        batch_size: int = 128) -> dict:
    """Permutations pairing each unit of A with the unit of B whose activations (eval mode,
    on ``x``) correlate most, summed over every place the group's units appear."""
    from scipy.optimize import linear_sum_assignment
    names = {name for probes in spec.probes.values() for name, _ in probes}
    gms = [trace(net, "the model").eval() for net in (net_a, net_b)]
    stats: dict = {}
    for i in range(0, len(x), batch_size):
        acts = []
        for gm in gms:
            rec = _Recorder(gm, names)
            rec.run(x[i:i + batch_size])
            acts.append(rec.out)
        for probes in spec.probes.values():
            for name, axis in probes:
                _moments(stats, name, acts[0][name], acts[1][name], axis)
    perms = identity(spec)
    for g, probes in spec.probes.items():
        corr = sum(_correlation(stats[name]) for name, _ in probes)
        perms[g] = linear_sum_assignment(corr.numpy(), maximize=True)[1]
    return perms


@torch.no_grad()
def max_logit_difference(net: nn.Module, state_1: dict, state_2: dict, x: torch.Tensor) -> tuple[float, float]:
    """(largest |f_1(x) − f_2(x)|, the same relative to the largest |f_1(x)|) in eval mode."""
    outs = []
    for state in (state_1, state_2):
        net.load_state_dict(state)
        outs.append(net.eval()(x).double())
    diff = float((outs[0] - outs[1]).abs().max())
    return diff, diff / max(float(outs[0].abs().max()), 1e-30)


def moved_fraction(perms: dict) -> float:
    """The fraction of all units that a permutation moves."""
    total = sum(len(p) for p in perms.values())
    return float(sum(int((np.asarray(p) != np.arange(len(p))).sum()) for p in perms.values()) / max(total, 1))
