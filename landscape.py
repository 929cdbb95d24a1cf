"""The Python API: loss landscapes of an in-memory model and data, in a notebook or a script.

    import landscape
    s = landscape.surface(net, (images, labels), x=(-1, 1, 21), y=(-1, 1, 21))
    s.values["train_loss"]            # (21, 21) array, [i, j] = loss at (x_i, y_j)

    line = landscape.interpolate(net_a, net_b, (images, labels), x=(-0.5, 1.5, 41))

``model`` is any ``torch.nn.Module`` (it is copied, never modified); ``data`` is an
``(images, labels)`` pair of tensors or arrays, a ``torch.utils.data.Dataset`` of
``(image, label)`` items, or a ``DataLoader`` (read once into memory); ``test_data``
likewise adds ``test_loss``/``test_acc``. For a HuggingFace model (lm.py) ``data`` is token
ids: a 1-D stream (cut into windows of min(256, context) tokens), (N, T) windows of a causal
LM (loss and accuracy of next-token prediction, token-weighted), or ``(input_ids, labels)``
for a sequence classifier. ``loss`` is ``"crossentropy"``, ``"mse"`` or
any callable ``loss(outputs, targets)`` returning per-sample losses (shape (B,)) or
their batch mean. Values are exact means over the whole set, the model in eval mode.

Directions: filter-normalized Gaussian directions (``norm``, ``ignore``, ``seed``,
``idx`` as the command line's ``--xnorm/--xignore/--seed/--idx``), or the line/plane to
``model2``/``model3`` (θ2 − θ1, θ3 − θ1), or an existing direction file (``dir_file``).
``dir_type="states"`` moves BatchNorm statistics too.

Bad inputs raise ``errors.UserError`` with a one-line message, the command line's checks
(``spec.RunSpec.make``), before anything is written; a shuffled DataLoader is refused (its
order, and so the data hash, changes at every pass). The run itself is the command line's
(``grid.prepare_loaded``): the same direction files, with their recipe, and settings.

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
import lm
import mpi4pytorch
from errors import UserError
from evaluation import get_loss_fn, summed_loss
import model_loader
from spec import RunSpec

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
    """Loss and accuracy of ``model`` moved along one direction (``y=None``) or two.

    Bad inputs raise ``errors.UserError`` with a one-line message (the command line's checks)."""
    import time
    t0 = time.perf_counter()
    _check_model(model, "model")
    if model3 is not None and y is None:
        raise UserError("model3 sets the y direction: give y too")
    loss_name = (getattr(loss, "__qualname__", None) or type(loss).__name__) if callable(loss) else loss
    spec = RunSpec.make(model=type(model).__name__, loss_name=str(loss_name), dir_file=dir_file or "",
                        dir_type=dir_type, xnorm=norm, ynorm=norm, xignore=ignore, yignore=ignore, seed=seed,
                        idx=idx, x=x, y=y, test=test_data is not None, batch_size=batch_size,
                        precision=precision, surf_file=surf_file or "", overwrite=overwrite,
                        save_every=save_every, progress=progress)
    loss_fn = summed_loss(loss, loss_name) if callable(loss) else get_loss_fn(loss)
    comm = mpi4pytorch.setup(mpi4pytorch.launched_size() > 1)
    rank = mpi4pytorch.rank(comm)
    loaded = _loaded(model, model2, model3, data, test_data, _device(device, comm), loss_fn)
    metrics = grid.metrics_for(spec.splits)
    run = grid.prepare_loaded(spec, comm, loaded, metrics, t0=t0, dir_file=dir_file or "",
                              surf_file=surf_file or "")
    compute = grid.loss_compute(run, loss_fn, spec.splits, batch_size, precision)
    grid.execute(run, compute, save_every=save_every, progress=progress and rank == 0, exit_on_signal=False)
    values = mpi4pytorch.bcast(comm, run.writer.values if rank == 0 else None)
    return SurfaceResult(run.xcoords, run.ycoords, values, surf_file, dir_file, run.settings)


def interpolate(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Any,
                loss: str | Callable = "crossentropy", *, x: Range = (-0.5, 1.5, 41),
                dir_type: str = "states", **kw: Any) -> SurfaceResult:
    """The line θ_a + α(θ_b − θ_a) (Goodfellow et al. 2015); BN statistics too by default."""
    return surface(model_a, data, loss, x=x, model2=model_b, dir_type=dir_type, **kw)


# ------------------------------------------------------------------------- helpers
def _check_model(model: Any, name: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise UserError(f"{name} has parameters on the meta device (no values: '{meta[0]}'); load its "
                        "weights first (e.g. model.to_empty(device=...) and load_state_dict)")


def _device(device: Any, comm: Any) -> torch.device:
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"device: {device!r} is not a torch device ({str(e).splitlines()[0][:120]}); "
                        "use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {device!r} asks for a GPU but torch sees none; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device: {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and comm is not None:
        dev = mpi4pytorch.device_for(comm, True)
    return dev


def _loaded(model: torch.nn.Module, model2: Any, model3: Any, data: Any, test_data: Any,
            device: torch.device, loss_fn: Callable) -> grid.Loaded:
    """The API's inputs as the runtime's Loaded: copies of the models (never modified),
    the data in memory, and their content hashes as identity; every one checked."""
    net = copy.deepcopy(model).eval()
    grid.check_finite(net, "model")
    identity = {"model": type(model).__name__, "model_hash": dataloader.tensor_hash(*net.state_dict().values()),
                "model_file": "", "model_file2": "", "model_file3": ""}
    others = {}
    for i, other in ((2, model2), (3, model3)):
        if other is not None:
            _check_model(other, f"model{i}")
            model_loader.check_same_architecture(net, other, f"model{i}")
            grid.check_finite(other, f"model{i}")
            others[f"model_file{i}"] = other
            identity[f"model_hash{i}"] = dataloader.tensor_hash(*other.state_dict().values())
    if lm.is_hf_model(net):
        net.config.use_cache = False  # the copy: no key/value cache to build at every evaluation
        loaded_data = lm.as_token_data(net, data, test_data)
    else:
        loaded_data = _as_data(data, test_data)
    model_loader.check_fits(net, loaded_data, None, loss_fn=loss_fn, loss_name="loss")
    return grid.Loaded(device, loaded_data, net, others, identity)


def _as_data(train, test):
    tx, ty = _pair(train, "train")
    vx, vy = _pair(test, "test") if test is not None else (tx[:0], ty[:0])
    return dataloader.Data(tx, ty, vx, vy, "in-memory", int(max(ty.max(), vy.max() if len(vy) else 0)) + 1)


def _read_loader(loader: Any, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole of a DataLoader of (images, labels) batches, concatenated."""
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            keys = f" with keys {list(batch)}" if isinstance(batch, dict) else ""
            raise UserError(f"the {which} DataLoader must yield (images, labels) batches, not "
                            f"{type(batch).__name__}{keys}")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    try:
        return torch.cat(xs), torch.cat(ys)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"the {which} DataLoader's batches do not stack ({str(e).splitlines()[0][:120]})")


def _pair(d, which):
    """(images, labels) tensors from a pair, a Dataset or a DataLoader (read once)."""
    if isinstance(d, torch.utils.data.DataLoader):
        if isinstance(d.sampler, torch.utils.data.RandomSampler):
            raise UserError(f"the {which} DataLoader shuffles (shuffle=True): its order changes at every "
                            "pass, so the data hash -- and a resume -- could never match; give a "
                            "DataLoader with shuffle=False, or the Dataset itself")
        d = _read_loader(d, which)
    return dataloader.as_tensors(d, "landscape.surface data", which)
