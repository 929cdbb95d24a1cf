"""Straight lines between (aligned) models: loss and accuracy along them, with BatchNorm
statistics re-estimated at each point or not, their barrier heights, and merged models.

A path's barrier heights are those of mode_connectivity.py (curves.barrier_heights):
``barrier_max`` = max_t L(t) − max(L(0), L(1)), ``barrier_interp`` = max_t [L(t) −
((1−t) L(0) + t L(1))], of the loss and of the error 100 − accuracy (%).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from curves import barrier_heights, has_batchnorm, line_state, update_bn


def mean_state(states: list) -> dict:
    """The average of state_dicts (integer entries: those of the first)."""
    return {k: (sum(s[k] for s in states) / len(states)) if v.is_floating_point() else v.clone()
            for k, v in states[0].items()}


def at(net: nn.Module, state: dict, bn_x: torch.Tensor | None, batch_size: int) -> nn.Module:
    """``net`` holding ``state``, BatchNorm statistics re-estimated on ``bn_x`` if given; eval mode."""
    net.load_state_dict(state)
    if bn_x is not None and len(bn_x) and has_batchnorm(net):
        update_bn(net, bn_x, batch_size)
    return net.eval()


def line(net: nn.Module, state_a: dict, state_b: dict, ts: np.ndarray, evaluators: dict,
         bn_x: torch.Tensor | None, batch_size: int) -> dict:
    """{'<split>_loss': [...], '<split>_acc': [...]} at each t of (1−t)·A + t·B."""
    out: dict = {}
    for t in ts:
        at(net, line_state(state_a, state_b, float(t)), bn_x, batch_size)
        for split, evaluate in evaluators.items():
            loss, acc = evaluate()
            out.setdefault(f"{split}_loss", []).append(loss)
            out.setdefault(f"{split}_acc", []).append(acc)
    return out


def barriers(ts: np.ndarray, values: dict) -> dict:
    """Both barrier heights of the loss and of the error (100 − accuracy) per split."""
    out = {}
    for key, v in values.items():
        split, what = key.rsplit("_", 1)
        if what == "loss":
            out[f"{split}_loss"] = barrier_heights(ts, v)
        else:
            out[f"{split}_error"] = barrier_heights(ts, 100.0 - np.asarray(v, dtype=np.float64))
    return out


def barrier_table(net: nn.Module, state_a: dict, paths: dict, ts: np.ndarray, evaluators: dict,
                  bn_x: torch.Tensor | None, batch_size: int,
                  progress: Callable[[str], None] | None = None) -> dict:
    """For each named path {name: (end state, re-estimate BN?)}: the values along the line
    from ``state_a`` and their barrier heights."""
    table = {}
    for name, (state_b, bn) in paths.items():
        values = line(net, state_a, state_b, ts, evaluators, bn_x if bn else None, batch_size)
        table[name] = {"values": values, "barriers": barriers(ts, values)}
        if progress:
            progress(name)
    return table
