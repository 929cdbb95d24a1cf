"""Curves of low loss between two states of any ``nn.Module`` (Garipov et al. 2018,
"Loss surfaces, mode connectivity, and fast ensembling of DNNs"): the curve, its
training step and learning-rate schedule, BatchNorm re-estimation, the barrier heights,
and the files mode_connectivity.py writes (``load_curve`` reads them back).

Written with ``torch.func.functional_call``: the points of a curve are fed to the
unchanged model, so no layer is rewritten. Between θ_A and θ_B a curve θ(t), t in
[0, 1], is parametrized by one bend θ_b, the only trained tensors:

``bezier``     θ(t) = (1−t)² θ_A + 2t(1−t) θ_b + t² θ_B (quadratic Bezier curve)
``polychain``  θ(t) = θ_A + 2t (θ_b − θ_A) for t <= 1/2, θ_b + (2t−1)(θ_B − θ_b) after

Floating buffers (BatchNorm running statistics) are interpolated linearly between the
end points; integer buffers are those of the nearer end point, never interpolated.
θ(0) = θ_A and θ(1) = θ_B exactly.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

import model_loader
from errors import UserError
from fileio import save_torch  # noqa: F401 (curves.save_torch: mode_connectivity's files)

CURVES = ("bezier", "polychain")
# Every file mode_connectivity.py writes carries this mark (a "format" entry of the saved
# dict, an attribute of the HDF5 files): only such files are ever replaced.
FORMAT = "loss-landscape-mode-connectivity"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def aliases(net: nn.Module) -> dict[str, str]:
    """Every parameter name (tied ones included) -> the canonical name of its tensor."""
    canonical, out = {}, {}
    for name, p in net.named_parameters(remove_duplicate=False):
        out[name] = canonical.setdefault(id(p), name)
    return out


class Curve:
    """A Bezier curve or polygonal chain θ(t) between two states of ``net``.

    ``bend`` holds the trainable tensors (one per parameter of ``net``, leaf tensors
    with requires_grad). ``at(t)`` gives parameters and buffers for
    ``functional_call(net, curve.at(t), x)``: differentiable with respect to the bend;
    ``state_at(t)`` gives a detached, complete state_dict (``net.load_state_dict``).
    """

    def __init__(self, net: nn.Module, state_a: dict, state_b: dict, kind: str = "bezier",
                 bend: dict | None = None):
        if kind not in CURVES:
            raise UserError(f"unknown --curve '{kind}'; use {' or '.join(CURVES)}")
        self.kind = kind
        self.alias = aliases(net)
        self.keys = list(net.state_dict().keys())
        self.params = list(dict.fromkeys(self.alias.values()))
        self.buffers = [k for k in self.keys if k not in self.alias]
        own = net.state_dict()
        self.start = {k: state_a.get(k, own[k]).detach().clone() for k in self.keys}
        self.end = {k: state_b.get(k, own[k]).detach().clone() for k in self.keys}
        self.bend = {}
        for k in self.params:
            b = (bend[k] if bend is not None else (self.start[k] + self.end[k]) / 2)
            self.bend[k] = b.detach().clone().to(self.start[k].dtype).requires_grad_(True)

    def to(self, device: torch.device | str) -> Curve:
        self.start = {k: v.to(device) for k, v in self.start.items()}
        self.end = {k: v.to(device) for k, v in self.end.items()}
        self.bend = {k: v.detach().to(device).requires_grad_(True) for k, v in self.bend.items()}
        return self

    def coefficients(self, t: float) -> tuple[float, float, float]:
        """(c_A, c_b, c_B) with θ(t) = c_A θ_A + c_b θ_b + c_B θ_B."""
        t = float(t)
        if self.kind == "bezier":
            return (1 - t) ** 2, 2 * t * (1 - t), t ** 2
        if t <= 0.5:
            return 1 - 2 * t, 2 * t, 0.0
        return 0.0, 2 - 2 * t, 2 * t - 1

    def params_at(self, t: float) -> dict:
        ca, cb, cB = self.coefficients(t)
        return {k: ca * self.start[k] + cb * self.bend[k] + cB * self.end[k] for k in self.params}

    def buffers_at(self, t: float) -> dict:
        return interpolate_buffers(self.start, self.end, self.buffers, t)

    def at(self, t: float) -> dict:
        """Parameters (differentiable in the bend) and buffers (fresh tensors) at t."""
        return {**self.params_at(t), **self.buffers_at(t)}

    def state_at(self, t: float) -> dict:
        """The complete state_dict at t (detached; tied parameters under every name)."""
        with torch.no_grad():
            p = self.params_at(t)
            b = self.buffers_at(t)
        return {k: (p[self.alias[k]] if k in self.alias else b[k]).detach() for k in self.keys}

    def bend_state(self) -> dict:
        """A complete state_dict holding the bend (buffers: those at t = 0.5)."""
        b = self.buffers_at(0.5)
        return {k: (self.bend[self.alias[k]] if k in self.alias else b[k]).detach().clone()
                for k in self.keys}

    def set_bend(self, bend: dict) -> None:
        """Copy saved bend tensors (any device) into the trainable ones."""
        with torch.no_grad():
            for k, v in bend.items():
                self.bend[k].copy_(v)


def interpolate_buffers(start: dict, end: dict, keys: Sequence[str], t: float) -> dict:
    """Floating entries (1−t)·start + t·end; integer ones copied from the nearer end."""
    out = {}
    for k in keys:
        a, b = start[k], end[k]
        if a.is_floating_point():
            out[k] = (1 - t) * a + t * b
        else:
            out[k] = (a if t < 0.5 else b).clone()
    return out


def line_state(start: dict, end: dict, t: float) -> dict:
    """The state_dict at t on the straight line (1−t)θ_A + tθ_B (integer entries: nearer end)."""
    return interpolate_buffers(start, end, list(start), t)


@torch.no_grad()
def update_bn(net: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate BatchNorm running statistics: one pass over ``x`` in train mode, the
    statistics being the exact average of the batch statistics weighted by batch size."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    net.train()
    seen = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        for m in bns:
            m.momentum = len(xb) / (seen + len(xb))
        net(xb)
        seen += len(xb)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.eval()


def lr_factor(epoch: int, epochs: int) -> float:
    """Garipov et al.'s schedule: constant for the first half, then linear down to 1 %
    at 90 % of the epochs. ``epoch`` counts from 1, as in their train.py
    (timgaripov/dnn-mode-connectivity: ``for epoch in range(start_epoch, args.epochs + 1)``
    with ``start_epoch = 1`` and ``learning_rate_schedule(base_lr, epoch, total_epochs)``
    using ``alpha = epoch / total_epochs``), so the last epoch runs at 1 %."""
    alpha = epoch / max(epochs, 1)
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


def make_optimizer(curve: Curve, lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(curve.bend.values()), lr=lr, momentum=momentum)


def check_trainable(net: nn.Module, curve: Curve, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                    loss_name: str) -> None:
    """Refuse a loss with no gradient with respect to the bend (a 0-1 loss, a loss that
    detaches): the curve would be trained on the weight decay alone."""
    net.train()
    with torch.enable_grad():
        loss = loss_fn(functional_call(net, curve.at(0.5), (x,)), y)
    if not loss.requires_grad or loss.grad_fn is None:
        raise UserError(f"--loss_name {loss_name} has no gradient with respect to the weights (a 0-1 loss or a "
                        "loss that detaches its input): the curve cannot be trained on it; use a "
                        "differentiable loss such as crossentropy")


def train_epoch(net: nn.Module, curve: Curve, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, loss_fn: LossFn, epoch: int, epochs: int, lr: float, batch_size: int,
                weight_decay: float, seed: int, stop: Callable[[], bool] = lambda: False) -> float | None:
    """One epoch of curve training; the mean training loss, or None if ``stop()`` said so.

    Deterministic given (seed, epoch): the shuffle and the values of t come from a
    generator seeded with both, so a resumed run repeats an uninterrupted one exactly.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr * lr_factor(epoch, epochs)
    net.train()
    total, n = 0.0, 0
    for idx in torch.randperm(len(y), generator=g).split(batch_size):
        t = float(torch.rand((), generator=g))
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        params = curve.params_at(t)
        out = functional_call(net, {**params, **curve.buffers_at(t)}, (xb,))
        loss = loss_fn(out, yb) / len(yb)
        objective = loss
        if weight_decay:
            objective = loss + 0.5 * weight_decay * sum((p * p).sum() for p in params.values())
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        n += len(yb)
        if stop():
            return None
    return total / max(n, 1)


def barrier_heights(t: Sequence[float], loss: Sequence[float],
                    ends: tuple[float, float] | None = None) -> dict[str, float]:
    """Both barrier heights of a path sampled at ``t`` (increasing, from 0 to 1):
    ``barrier_max`` = max_t L(t) − max(L_0, L_1) and
    ``barrier_interp`` = max_t [L(t) − ((1−t) L_0 + t L_1)], with the t of each maximum.
    L_0, L_1: the end losses ``ends``, by default those of the path itself (L(0), L(1))."""
    t, loss = np.asarray(t, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    l0, l1 = (float(loss[0]), float(loss[-1])) if ends is None else (float(ends[0]), float(ends[1]))
    above_max = loss - max(l0, l1)
    above_line = loss - ((1 - t) * l0 + t * l1)
    i, j = int(np.argmax(above_max)), int(np.argmax(above_line))
    return {"barrier_max": float(above_max[i]), "t_max": float(t[i]),
            "barrier_interp": float(above_line[j]), "t_interp": float(t[j])}


def curve_projection(curve: Curve, ts: Sequence[float]) -> np.ndarray:
    """The curve in the plane of plot_surface.py --model_file A --model_file2 B
    --model_file3 bend.t7: θ(t) = θ_A + c_B(t) (θ_B − θ_A) + c_b(t) (θ_b − θ_A), so
    (x, y) = (c_B(t), c_b(t)), one row per t."""
    return np.array([curve.coefficients(t)[2:0:-1] for t in ts], dtype=np.float64).reshape(-1, 2)


def is_own_file(path: str) -> bool:
    """Was ``path`` written by mode_connectivity.py? (Its mark, or, for files of
    earlier versions, the settings it stored; an HDF5 file: its ``format`` or ``settings``
    attribute naming mode connectivity.)"""
    import h5py
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return (f.attrs.get("format") == FORMAT or "mode_connectivity" in str(f.attrs.get("settings", ""))
                        or "curve in the plane" in str(f.attrs.get("method", "")))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable, damaged, foreign: not ours
        return False
    if not isinstance(obj, dict):
        return False
    settings = obj.get("settings")
    return obj.get("format") == FORMAT or (isinstance(settings, dict)
                                           and str(settings.get("kind", "")).startswith("mode_connectivity"))


def load_curve(path: str, model: str) -> Curve:
    """The curve saved in ``curve.t7`` for zoo model (or factory) ``model``."""
    if not os.path.isfile(path):
        raise UserError(f"curve file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "curve" not in obj:
        raise UserError(f"{path} is not a curve file written by mode_connectivity.py")
    c = obj["curve"]
    net = model_loader.build_model(model)
    return Curve(net, c["start"], c["end"], c["kind"], bend=c["bend"])


def read_results(path: str) -> dict:
    """mode_connectivity.h5: t, every metric, the barrier tables (``barriers``: against
    the path's own ends; ``barriers_checkpoints``: against the checkpoints' own losses,
    absent in files of earlier versions) and the settings."""
    import json

    from surface import read_surface
    surf = read_surface(path)
    out = {"t": surf.x, **surf.values}
    for key in ("barriers", "barriers_checkpoints", "checkpoint_losses"):
        if key in surf.attrs or key == "barriers":
            out[key] = json.loads(surf.attrs.get(key, "{}"))
    out["settings"] = surf.settings
    return out
