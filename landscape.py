"""The Python API: loss landscapes of an in-memory model and data, in a notebook or a script.

    import landscape
    s = landscape.surface(net, (images, labels), x=(-1, 1, 21), y=(-1, 1, 21))
    s.values["train_loss"]            # (21, 21) array, [i, j] = loss at (x_i, y_j)

    line = landscape.interpolate(net_a, net_b, (images, labels), x=(-0.5, 1.5, 41))

``model`` is any ``torch.nn.Module`` (it is copied, never modified); ``data`` is an
``(images, labels)`` pair of tensors or arrays, a ``torch.utils.data.Dataset`` of
``(image, label)`` items, or a ``DataLoader`` (read once into memory); ``test_data``
likewise adds ``test_loss``/``test_acc``. ``loss`` is ``"crossentropy"``, ``"mse"`` or
any callable ``loss(outputs, targets)`` returning per-sample losses (shape (B,)) or
their batch mean. Values are exact means over the whole set, the model in eval mode.

Directions: filter-normalized Gaussian directions (``norm``, ``ignore``, ``seed``,
``idx`` as the command line's ``--xnorm/--xignore/--seed/--idx``), or the line/plane to
``model2``/``model3`` (θ2 − θ1, θ3 − θ1), or an existing direction file (``dir_file``).
``dir_type="states"`` moves BatchNorm statistics too.

Files: with ``surf_file`` the surface is written in the toolkit's format (plot it with
plot_1D.py / plot_2D.py / h52vtp.py), saved every ``save_every`` seconds and resumed by
a rerun with the same settings; ``dir_file`` stores (or supplies) the directions. Under
``mpiexec`` the grid is split over the ranks exactly as ``plot_surface.py --mpi`` does;
every rank gets the whole result.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

import dataloader
import grid
import mpi4pytorch
import net_plotter
from errors import UserError
from evaluation import get_loss_fn, summed_loss
from net_plotter import DIR_TYPES, IGNORES, NORMS
from surface import SurfaceWriter

Range = tuple[float, float, int]


@dataclass
class SurfaceResult:
    """The computed surface: coordinates, values (name -> array), and its files."""
    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    surf_file: str | None
    dir_file: str | None
    settings: dict

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


def surface(model: torch.nn.Module, data: Any, loss: str | Callable = "crossentropy", *,
            x: Range = (-1.0, 1.0, 51), y: Range | None = None, test_data: Any = None,
            model2: torch.nn.Module | None = None, model3: torch.nn.Module | None = None,
            dir_type: str = "weights", norm: str = "filter", ignore: str = "biasbn", seed: int = 0,
            idx: int = 0, dir_file: str | None = None, surf_file: str | None = None,
            overwrite: bool = False, batch_size: int = 256, device: str | torch.device | None = None,
            precision: str = "fp32", save_every: float = 10.0, progress: bool = False) -> SurfaceResult:
    """Loss and accuracy of ``model`` moved along one direction (``y=None``) or two."""
    import time
    t0 = time.perf_counter()
    xr, yr = _range(x, "x"), (_range(y, "y") if y is not None else None)
    if dir_type not in DIR_TYPES or norm not in NORMS or ignore not in IGNORES:
        raise UserError(f"dir_type must be one of {DIR_TYPES}, norm one of {NORMS}, ignore one of {IGNORES}")
    if model3 is not None and yr is None:
        raise UserError("model3 sets the y direction: give y too")
    comm = mpi4pytorch.setup(mpi4pytorch.launched_size() > 1)
    rank = mpi4pytorch.rank(comm)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and comm is not None:
        dev = mpi4pytorch.device_for(comm, True)
    net = copy.deepcopy(model).eval()
    data = _as_data(data, test_data)
    splits = ["train"] + (["test"] if test_data is not None else [])
    metrics = grid.metrics_for(splits)
    loss_name = (getattr(loss, "__qualname__", None) or type(loss).__name__) if callable(loss) else loss
    loss_fn = summed_loss(loss, loss_name) if callable(loss) else get_loss_fn(loss)

    xdir, ydir, new = _directions(net, model2, model3, yr is not None, dir_type, norm, ignore, seed, idx, dir_file)
    xcoords = np.linspace(*xr)
    ycoords = np.linspace(*yr) if yr is not None else None
    settings = {
        "kind": "loss", "model": type(model).__name__,
        "model_hash": dataloader.tensor_hash(*net.state_dict().values()),
        **dataloader.data_settings(None, data), "loss_name": loss_name,
        "dir_type": dir_type, "directions_hash": net_plotter.directions_hash(xdir, ydir),
        "xnorm": "" if model2 is not None else norm, "ynorm": "" if model3 is not None else norm,
        "xignore": ignore, "yignore": ignore, "x": list(xr), "y": list(yr) if yr else None,
        "precision": precision, "metrics": metrics,
    }

    def open_files():
        writer = SurfaceWriter(surf_file, xcoords, ycoords, metrics, settings,
                               attrs={"dir_file": dir_file or ""}, overwrite=overwrite)
        if new and dir_file:
            grid.write_directions(dir_file, net, dir_type, xdir, ydir,
                                  {"dir_type": dir_type, "xnorm": settings["xnorm"], "ynorm": settings["ynorm"],
                                   "xignore": ignore, "yignore": ignore})
        writer.save()
        return writer

    writer = mpi4pytorch.check_all(comm, open_files)
    run = grid.start(comm, net, dev, data, xdir, ydir, xcoords, ycoords, dir_type, dir_file or "",
                     surf_file or "(in memory)", writer, settings, t0)
    compute = grid.loss_compute(run, loss_fn, splits, batch_size, precision)
    grid.execute(run, compute, save_every=save_every, progress=progress and rank == 0, exit_on_signal=False)
    values = mpi4pytorch.bcast(comm, writer.values if rank == 0 else None)
    return SurfaceResult(xcoords, ycoords, values, surf_file, dir_file, settings)


def interpolate(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Any,
                loss: str | Callable = "crossentropy", *, x: Range = (-0.5, 1.5, 41),
                dir_type: str = "states", **kw) -> SurfaceResult:
    """The line θ_a + α(θ_b − θ_a) (Goodfellow et al. 2015); BN statistics too by default."""
    return surface(model_a, data, loss, x=x, model2=model_b, dir_type=dir_type, **kw)


# ------------------------------------------------------------------------- helpers
def _range(r, name):
    try:
        lo, hi, n = r
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be (min, max, num), e.g. {name}=(-1, 1, 21); got {r!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)) or int(n) != n or n < 2:
        raise UserError(f"{name}: finite bounds and an integer number of points >= 2, got {r!r}")
    return lo, hi, int(n)


def _as_data(train, test):
    tx, ty = _pair(train, "train")
    vx, vy = _pair(test, "test") if test is not None else (tx[:0], ty[:0])
    return dataloader.Data(tx, ty, vx, vy, "in-memory", int(max(ty.max(), vy.max() if len(vy) else 0)) + 1)


def _pair(d, which):
    """(images, labels) tensors from a pair, a Dataset or a DataLoader (read once)."""
    if isinstance(d, torch.utils.data.DataLoader):
        xs, ys = zip(*[(xb, yb) for xb, yb in d])
        d = (torch.cat([torch.as_tensor(a) for a in xs]), torch.cat([torch.as_tensor(b) for b in ys]))
    return dataloader.as_tensors(d, "landscape.surface data", which)


def _directions(net, model2, model3, two_d, dir_type, norm, ignore, seed, idx, dir_file):
    """(xdir, ydir, new): from dir_file if it exists, else made (new: to be written)."""
    import os
    if dir_file and os.path.exists(dir_file):
        xdir, ydir = net_plotter.read_directions(dir_file, net, dir_type, two_d)
        return xdir, ydir, False
    gen = net_plotter.make_generator(seed, idx)

    def make(other):
        if other is not None:
            return net_plotter.difference_direction(net, other, dir_type)
        return net_plotter.random_direction(net, dir_type, norm, ignore, gen)
    xdir = make(model2)
    ydir = make(model3) if two_d else None
    return xdir, ydir, True
