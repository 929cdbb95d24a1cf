"""An inference-optimized twin of a model whose weights move at every grid point.

``FusedModel(net)`` traces ``net`` once with torch.fx and rewrites the graph: every
eval-mode BatchNorm that directly follows a Conv1d/2d/3d or a Linear layer (and is that
layer's only user) is folded into it, so the pair runs as one convolution with

    w' = w * γ / sqrt(var + eps),    b' = (b - mean) * γ / sqrt(var + eps) + β.

The folded layers are the twin's own modules; every other layer is *shared* with
``net`` (the same module objects), so weights written into ``net`` in place (by
``net_plotter.Perturbation``) reach the twin at once. ``refresh()`` recomputes the folded
weights from ``net``'s current parameters and BN buffers: call it after every move (it
costs a few elementwise operations per layer, nothing next to a forward pass). Both
``--dir_type weights`` and ``states`` stay exact, because the fold reads the statistics
as they are at that point.

Optionally the folded weights are kept in ``channels_last`` memory format (the input
too); a convolution then reads and writes NHWC activations, which oneDNN runs faster on
the CPU for most of the zoo.

Nothing here can fail a run: a model that does not trace, a layer pattern that is not
recognised (BatchNorm before a convolution, as in DenseNet, a BatchNorm whose input has
other users, a custom module), or a twin whose output differs from the eager model on a
probe batch, leaves that part (or the whole model) to eager PyTorch. ``describe()`` says
what ran.

``folded_params(state)`` is the same fold as a pure function of a state dict, for
evaluating several grid points in one pass (``evaluation.Evaluator.evaluate_points``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class _Fold:
    """One folded pair: ``layer`` (net's name) + ``bn`` (net's name) -> ``name`` (twin's)."""
    layer: str
    bn: str
    name: str
    eps: float
    has_bias: bool
    affine: bool


def _is_foldable_bn(m: nn.Module) -> bool:
    return (isinstance(m, _BNS) and m.track_running_stats and m.running_mean is not None
            and m.running_var is not None)


def fold_tensors(w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None,
                 beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w', b') of a conv/linear layer followed by an eval-mode BatchNorm."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = gamma * scale
    shift = -mean * scale if b is None else (b - mean) * scale
    if beta is not None:
        shift = shift + beta
    return w * scale.reshape(-1, *([1] * (w.dim() - 1))), shift


class FusedModel:
    """``net`` with conv/linear + BatchNorm pairs folded (see the module doc)."""

    def __init__(self, net: nn.Module, example: torch.Tensor | None = None,
                 channels_last: bool = False):
        self.net = net
        self.folds: list[_Fold] = []
        self.channels_last = False
        self.reason = ""
        self.gm: nn.Module = net
        self._net_modules: dict[str, nn.Module] = {}
        if net.training:
            self.reason = "model in training mode"
            return
        try:
            gm = torch.fx.symbolic_trace(net)
        except Exception as e:  # any model that does not trace: eager, never a failure
            self.reason = f"does not trace: {type(e).__name__}"
            return
        if example is not None:
            try:
                from torch.fx.passes.shape_prop import ShapeProp
                with torch.no_grad():
                    ShapeProp(gm).propagate(example)
            except Exception as e:
                self.reason = f"traced graph does not run: {type(e).__name__}"
                return
        self._fold(gm)
        if not self.folds:
            self.reason = "no foldable layers"
            return
        self.gm = gm
        self.set_channels_last(channels_last)
        self.refresh()

    # ------------------------------------------------------------------ graph surgery
    def _fold(self, gm: torch.fx.GraphModule) -> None:
        mods = dict(gm.named_modules())
        taken = set(mods) | {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not _is_foldable_bn(mods.get(node.target)):
                continue
            if len(node.args) != 1 or node.kwargs:
                continue
            prev = node.args[0]
            if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
                continue
            layer, bn = mods.get(prev.target), mods[node.target]
            if isinstance(layer, _CONVS):
                if layer.out_channels != bn.num_features:
                    continue
            elif isinstance(layer, nn.Linear):
                shape = prev.meta.get("tensor_meta")
                # BatchNorm1d over a Linear output is per feature only for 2-D outputs
                if shape is None or len(shape.shape) != 2 or layer.out_features != bn.num_features:
                    continue
            else:
                continue
            if layer.weight.dtype != bn.running_mean.dtype or not layer.weight.is_floating_point():
                continue
            i = len(self.folds)
            while f"_fold{i}" in taken:
                i += 1
            name = f"_fold{i}"
            taken.add(name)
            twin = copy.deepcopy(layer)  # same hyper-parameters, own tensors, with a bias
            with torch.no_grad():
                twin.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
                twin.bias = nn.Parameter(torch.zeros(bn.num_features, dtype=layer.weight.dtype,
                                                     device=layer.weight.device), requires_grad=False)
            gm.add_module(name, twin)
            with gm.graph.inserting_before(prev):
                new = gm.graph.call_module(name, prev.args, prev.kwargs)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            gm.graph.erase_node(prev)
            self.folds.append(_Fold(prev.target, node.target, name, float(bn.eps),
                                    layer.bias is not None, bn.affine))
        gm.graph.lint()
        gm.recompile()  # the folded-away modules stay attached, unused: they are the net's own
        self._net_modules = mods

    def set_channels_last(self, on: bool) -> None:
        """Keep the folded 4-D weights (and so the activations) in NHWC memory format."""
        fmt = torch.channels_last if on else torch.contiguous_format
        self.channels_last = bool(on)
        if self.gm is self.net:
            return
        for f in self.folds:
            w = getattr(self.gm, f.name).weight
            if w.dim() == 4:
                w.data = w.data.contiguous(memory_format=fmt)

    # --------------------------------------------------------------------- the fold
    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded weights from the net's current tensors."""
        mods = self._net_modules if self.folds else {}
        for f in self.folds:
            layer, bn, twin = mods[f.layer], mods[f.bn], getattr(self.gm, f.name)
            w, b = fold_tensors(layer.weight, layer.bias, bn.weight, bn.bias,
                                bn.running_mean, bn.running_var, f.eps)
            twin.weight.copy_(w)
            twin.bias.copy_(b)

    def folded_params(self, state: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The twin's folded tensors, {twin name: tensor}, from ``state(net name)``.

        A pure function (works under torch.func.vmap with stacked states)."""
        out = {}
        for f in self.folds:
            bn_w = state(f"{f.bn}.weight") if f.affine else None
            bn_b = state(f"{f.bn}.bias") if f.affine else None
            w, b = fold_tensors(state(f"{f.layer}.weight"),
                                state(f"{f.layer}.bias") if f.has_bias else None, bn_w, bn_b,
                                state(f"{f.bn}.running_mean"), state(f"{f.bn}.running_var"), f.eps)
            out[f"{f.name}.weight"], out[f"{f.name}.bias"] = w, b
        return out

    def folded_names(self) -> set[str]:
        """Names (in the net) of the tensors that only reach the twin through the fold."""
        names = set()
        for f in self.folds:
            names |= {f"{f.layer}.weight", f"{f.layer}.bias", f"{f.bn}.weight", f"{f.bn}.bias",
                      f"{f.bn}.running_mean", f"{f.bn}.running_var", f"{f.bn}.num_batches_tracked"}
        return names

    # -------------------------------------------------------------------- running
    @property
    def fused(self) -> bool:
        return bool(self.folds)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        if not self.folds:
            return f"eager ({self.reason})"
        kinds = {}
        for f in self.folds:
            k = "linear" if isinstance(self._net_modules[f.layer], nn.Linear) else "conv"
            kinds[k] = kinds.get(k, 0) + 1
        text = "fused (" + ", ".join(f"{n} {k}+bn" for k, n in sorted(kinds.items())) + " folded)"
        return text + (", channels_last" if self.channels_last else "")


def named_state(net: nn.Module) -> Mapping[str, torch.Tensor]:
    """{name: tensor} of every parameter and buffer of ``net`` (shared storage)."""
    out = dict(net.named_parameters())
    out.update(net.named_buffers())
    return out
