"""Paths between two states of a model: the straight line between them, BatchNorm
re-estimation at a point (Garipov et al.'s update_bn, REPAIR's simplest form) and the
two barrier heights of a path. Shared by mode_connectivity.py, align.py and the grid's
``--bn_update``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def interpolate_buffers(start: dict, end: dict, keys, t: float) -> dict:
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


def barrier_heights(t, loss) -> dict:
    """Both barrier heights of a path sampled at ``t`` (increasing, from 0 to 1):
    ``barrier_max`` = max_t L(t) − max(L(0), L(1)) and
    ``barrier_interp`` = max_t [L(t) − ((1−t) L(0) + t L(1))], with the t of each maximum."""
    t, loss = np.asarray(t, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    above_max = loss - max(loss[0], loss[-1])
    above_line = loss - ((1 - t) * loss[0] + t * loss[-1])
    i, j = int(np.argmax(above_max)), int(np.argmax(above_line))
    return {"barrier_max": float(above_max[i]), "t_max": float(t[i]),
            "barrier_interp": float(above_line[j]), "t_interp": float(t[j])}
