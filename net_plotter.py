"""Directions in weight space: creation, normalization, the direction file, and
moving a model along them.

A *direction* is a list of tensors, one per entry of the model: its parameters
(``dir_type='weights'``) or its whole state_dict, BatchNorm running statistics
included (``dir_type='states'``). Integer entries (``num_batches_tracked``) always get
a zero direction and are never perturbed.

Random directions are Gaussian per entry, then normalized (``norm``):
``filter``  each filter (output unit: a slice along dim 0; a column of transformers'
            Conv1D, whose weight is (in, out)) scaled to the norm of the matching weight
            filter (zero-norm filters get a zero direction) -- the paper's method;
``layer``   the whole entry scaled to the entry's norm;  ``weight``  d * w;
``dfilter`` each slice along dim 0 to unit norm;  ``dlayer``  the entry to unit norm;
``''``      left as drawn.
Entries with <= 1 dimension (biases, BN, LayerNorm/RMSNorm weights) are zeroed with ``ignore='biasbn'`` and
otherwise set to the weights themselves, as in the original code.

Direction file (HDF5): groups ``xdirection`` and, for 2D, ``ydirection``, each holding
one dataset per entry named "0", "1", ... in model order (the original layout, so the
original code reads our files and we read theirs), plus the group attribute ``names``
(JSON list of entry names) so that directions are applied by name. Root attributes:
``format`` = "loss-landscape-directions", ``format_version``, ``dir_type`` and the
settings that made the directions. PCA direction files (projection.py) also hold
``explained_variance_ratio_``, ``singular_values_`` and ``explained_variance_``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from errors import UserError
from direction_options import DIR_TYPES, IGNORES, NORMS, check_norm  # noqa: F401 -- owned here
from fileio import h5_written_atomically, open_h5

FORMAT = "loss-landscape-directions"
FORMAT_VERSION = 2


def get_entries(net: torch.nn.Module, dir_type: str) -> list[tuple[str, torch.Tensor]]:
    """[(name, tensor)] that a direction of ``dir_type`` covers, in model order.

    The tensors share storage with the model: writing into them moves the model. A tensor
    the model holds under two names (tied weights: GPT-2's ``lm_head`` is its ``wte``) is
    one entry, under its first name, as ``named_parameters`` gives it.
    """
    if dir_type == "weights":
        return [(n, p.data) for n, p in net.named_parameters()]
    if dir_type == "states":
        seen, out = set(), []
        for n, t in net.state_dict().items():
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
            if key is None or key not in seen:
                out.append((n, t))
                seen.add(key)
        return out
    raise UserError(f"unknown --dir_type '{dir_type}'; use weights or states")


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str, axis: int = 0) -> torch.Tensor:
    """Scale direction entry ``d`` (in place) to weight entry ``w`` by ``norm``; the filters
    are the slices along ``axis`` (lm.filter_axis: 1 for a (in, out) Conv1D weight)."""
    if axis and (norm == "filter" or norm == "dfilter"):
        normalize_direction(d.movedim(axis, 0), w.movedim(axis, 0), norm)  # a view: d is scaled in place
        return d
    if norm == "filter" or norm == "dfilter":
        dn = d.reshape(len(d), -1).norm(dim=1)
        target = w.reshape(len(w), -1).norm(dim=1) if norm == "filter" else torch.ones_like(dn)
        scale = torch.where(dn > 0, target / torch.where(dn > 0, dn, 1), torch.zeros_like(dn))
        d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
    elif norm == "layer" or norm == "dlayer":
        dn = d.norm()
        target = w.norm() if norm == "layer" else 1.0
        d.mul_(target / dn if dn > 0 else 0.0)
    elif norm == "weight":
        d.mul_(w)
    else:
        check_norm(norm)
    return d


def random_direction(net: torch.nn.Module, dir_type: str = "weights", norm: str = "filter", ignore: str = "biasbn",
                     generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A normalized Gaussian direction for every entry of ``net``."""
    from lm import filter_axis
    out = []
    for name, w in get_entries(net, dir_type):
        if not w.is_floating_point():
            out.append(torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.dtype)
        if d.dim() <= 1:
            d = torch.zeros_like(w) if ignore == "biasbn" else w.detach().clone()
        else:
            normalize_direction(d, w, norm, filter_axis(net, name))
        out.append(d)
    return out


def difference_direction(net: torch.nn.Module, net2: torch.nn.Module, dir_type: str) -> list[torch.Tensor]:
    """θ2 − θ1 for every entry (integer entries: zero)."""
    e1, e2 = get_entries(net, dir_type), dict(get_entries(net2, dir_type))
    return [(e2[n] - w) if w.is_floating_point() else torch.zeros_like(w) for n, w in e1]


def make_generator(seed: int, idx: int) -> torch.Generator:
    """The random stream of directions: set by --seed and --idx, not by the rank count."""
    s = np.random.SeedSequence([int(seed), int(idx)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))


def write_directions(path: str, names: Sequence[str], xdir: Sequence[torch.Tensor],
                     ydir: Sequence[torch.Tensor] | None = None, attrs: Mapping[str, Any] | None = None,
                     extra: Mapping[str, Any] | None = None) -> None:
    """Write a direction file (see the module doc for the layout)."""
    with h5_written_atomically(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for gname, direction in (("xdirection", xdir), ("ydirection", ydir)):
            if direction is None:
                continue
            g = f.create_group(gname)
            g.attrs["names"] = json.dumps(list(names))
            for i, t in enumerate(direction):
                g[str(i)] = t.detach().cpu().numpy()
        for k, v in (extra or {}).items():
            f[k] = np.asarray(v)


def read_direction_attrs(path: str) -> dict[str, Any]:
    """The root attributes of a direction file (bytes decoded to str)."""
    with open_h5(path, "direction file") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def read_directions(path: str, net: torch.nn.Module, dir_type: str,
                    need_y: bool) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """(xdir, ydir) from a direction file, aligned to ``get_entries(net, dir_type)``.

    Our files are matched by entry name; original files by position (including legacy
    files written before BatchNorm had ``num_batches_tracked``).
    """
    entries = get_entries(net, dir_type)
    with open_h5(path, "direction file") as f:
        if "xdirection" not in f:
            raise UserError(f"{path} is not a direction file (no 'xdirection' group)")
        if need_y and "ydirection" not in f:
            raise UserError(f"{path} holds only an x direction but this run has --y; give a 2D "
                            "direction file or drop --y")
        dirs = [_read_group(f[g], entries, path, dir_type) if g in f else None
                for g in ("xdirection", "ydirection")]
    return dirs[0], (dirs[1] if need_y else None)


def _read_group(g, entries, path, dir_type):
    n = len(g.keys())
    missing = [str(i) for i in range(n) if str(i) not in g]
    if missing:
        raise UserError(f"{path}: group {g.name} holds {n} entries but not entry '{missing[0]}' (entries "
                        "must be named 0, 1, ... in model order); the file is damaged or not a direction "
                        "file; make it again")
    try:
        arrays = [np.asarray(g[str(i)][()]) for i in range(n)]
    except (OSError, TypeError, ValueError) as e:
        raise UserError(f"{path}: cannot read the directions of {g.name} ({e}); make the file again")
    if "names" in g.attrs:
        stored = dict(zip(json.loads(g.attrs["names"]), arrays))
        missing = [name for name, w in entries if name not in stored and w.is_floating_point()]
        if missing:
            raise UserError(f"{path} has no direction for {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}; it was made for another "
                            "model or --dir_type")
        by_name = [stored.get(name) for name, _ in entries]
    elif n == len(entries):
        by_name = arrays
    else:
        floats = [name for name, w in entries if not name.endswith("num_batches_tracked")]
        if n != len(floats):
            raise UserError(f"{path} holds {n} direction entries but the model has "
                            f"{len(entries)} ({dir_type}); it was made for another model or "
                            "--dir_type")
        lookup = dict(zip(floats, arrays))
        by_name = [lookup.get(name) for name, _ in entries]
    out = []
    for (name, w), a in zip(entries, by_name):
        if a is None or not w.is_floating_point():
            out.append(torch.zeros_like(w))
            continue
        t = torch.from_numpy(np.array(a)).to(w.dtype)
        if t.shape != w.shape:
            raise UserError(f"{path}: direction for {name} has shape {tuple(t.shape)}, the model "
                            f"has {tuple(w.shape)}; it was made for another model")
        out.append(t)
    return out


def directions_hash(*directions: Sequence[torch.Tensor] | None) -> str:
    """Content hash of directions: identifies them in a surface file's settings."""
    h = hashlib.sha256()
    for direction in directions:
        for t in direction or []:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Perturbation:
    """Moves a model to θ0 + x·dx (+ y·dy), writing the weights in place.

    θ0 and the directions live on the model's device; entries whose directions are
    all zero are left alone. Running variances are kept >= 0 (a direction can never
    make a BatchNorm variance negative).
    """

    def __init__(self, net: torch.nn.Module, dir_type: str, xdir: Sequence[torch.Tensor],
                 ydir: Sequence[torch.Tensor] | None = None) -> None:
        self.targets, self.base, self.dx, self.dy, self.variances = [], [], [], [], []
        for (name, w), dx, dy in zip(get_entries(net, dir_type), xdir,
                                     ydir if ydir is not None else [None] * len(xdir)):
            if not w.is_floating_point():
                continue
            dx = dx.to(w.device, w.dtype)
            dy = dy.to(w.device, w.dtype) if dy is not None else torch.zeros_like(w)
            if not (dx.any() or dy.any()):
                continue
            self.targets.append(w)
            self.base.append(w.detach().clone())
            self.dx.append(dx)
            self.dy.append(dy)
            if name.endswith("running_var"):
                self.variances.append(w)

    @torch.no_grad()
    def set(self, x: float, y: float = 0.0) -> None:
        """Move the model to θ0 + x·dx + y·dy."""
        if not self.targets:
            return
        torch._foreach_copy_(self.targets, self.base)
        if x:
            torch._foreach_add_(self.targets, self.dx, alpha=float(x))
        if y:
            torch._foreach_add_(self.targets, self.dy, alpha=float(y))
        for v in self.variances:
            v.clamp_(min=0)

    @torch.no_grad()
    def stacked(self, points: Sequence[tuple[float, float]]) -> list[torch.Tensor]:
        """For each target, the (K, *shape) stack of its values at the K grid points
        ``points`` [(x, y)], computed exactly as ``set(x, y)`` writes them; the model
        is not moved (for evaluating several points in one pass)."""
        k = len(points)
        out = [torch.empty((k, *t.shape), dtype=t.dtype, device=t.device) for t in self.targets]
        for j, (x, y) in enumerate(points):
            rows = [s[j] for s in out]
            torch._foreach_copy_(rows, self.base)
            if x:
                torch._foreach_add_(rows, self.dx, alpha=float(x))
            if y:
                torch._foreach_add_(rows, self.dy, alpha=float(y))
        for s, t in zip(out, self.targets):
            if any(t is v for v in self.variances):
                s.clamp_(min=0)
        return out
