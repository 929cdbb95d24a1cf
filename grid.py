"""The grid runtime: from a run specification (spec.RunSpec) to a finished surface file.

A run goes through four steps, the same for plot_surface.py, plot_hessian_eigen.py and
the Python API (landscape.py); the command line and the API differ only in step 1:

1. **Inputs** (``load_inputs`` from the checkpoints; the API builds its ``Loaded`` from
   in-memory models): threads, device, the data (once, into memory), the model at (0, 0)
   and the other checkpoints' models, each with finite weights; the model must fit the
   data. ``Loaded.identity`` is what the files record of the models.
2. **Files** (``prepare_loaded``): the directions (made in memory, or read from the
   direction file), the settings that define the surface (surface.settings_record), and
   the surface store to resume. Every input and output path is checked *before* anything
   is written, so a failed run never leaves a file that blocks the corrected one; then
   rank 0 writes the direction file (if new) and the surface file. A ``--dir_file`` the
   user gave is never modified.
3. **Grid** (``compute_grid``/``execute``: runner.run): every rank takes grid points from
   the shared counter (scheduler.run_grid), moves the weights there in place (``move_to``)
   and computes; rank 0 gathers the results and saves the file periodically and at the end.
4. **Plots** (``plot``): the original's ``--plot``, as function calls.

``Run`` (frozen) holds what a running grid needs; ``loss_compute`` is the per-point
evaluation of loss and accuracy that plot_surface.py and landscape.py share (a
``PointCompute``: the function, how many points it takes per call, and its note).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

import dataloader
from curves import update_bn
import model_loader
import mpi4pytorch
import net_plotter
from errors import UserError
from evaluation import Evaluator, get_loss_fn, keep_freed_memory
from fileio import check_not_input, check_output_path, check_reuse, parse_settings
import runner
from spec import RunSpec
from surface import SurfaceStore, settings_record


@dataclass(frozen=True)
class Loaded:
    """What a run starts from: the device, the data, the model at (0, 0) and the models of
    the other checkpoints (``model_file2``/``model_file3``: their difference directions),
    with the identity of each that the files record (``identity``: model, model_hash,
    model_hash2/3, model_file/2/3, random_init)."""
    device: torch.device
    data: Any
    net: torch.nn.Module
    others: dict[str, torch.nn.Module]
    identity: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """Everything a running grid needs (rank 0 also holds the store)."""
    comm: Any
    rank: int
    spec: RunSpec
    device: torch.device
    data: Any
    net: torch.nn.Module
    dir_file: str
    surf_file: str
    xdir: list
    ydir: list | None
    xcoords: np.ndarray
    ycoords: np.ndarray | None
    writer: SurfaceStore | None
    perturb: net_plotter.Perturbation
    settings: dict
    setup_seconds: float = 0.0

    def point(self, k: int) -> tuple[float, float | None]:
        """(x, y) of flat grid index k (y None for 1D)."""
        if self.ycoords is None:
            return float(self.xcoords[k]), None
        i, j = divmod(int(k), len(self.ycoords))
        return float(self.xcoords[i]), float(self.ycoords[j])


@dataclass(frozen=True)
class PointCompute:
    """``compute`` of the runner for grid points: one point (``chunk`` 1) or a list of
    ``chunk`` points per call; ``note`` says which evaluation path runs (timing line)."""
    fn: Callable
    chunk: int = 1
    note: str = ""

    def __call__(self, k: Any) -> dict:
        return self.fn(k)


# ----------------------------------------------------------------------- file names
def model_stem(args: Any) -> str:
    """The model file, or out/<model> for a freshly initialized one: output names start here."""
    return args.model_file or os.path.join("out", args.model.replace(":", "_"))


def name_direction_file(args: Any) -> str:
    """The original's naming (next to the model file), with the --model_file3 defect fixed."""
    if args.dir_file:
        return args.dir_file
    f1, f2, f3 = args.model_file, args.model_file2, args.model_file3
    name = model_stem(args)
    if f2:
        if os.path.dirname(f1) == os.path.dirname(f2):
            name = f1 + "_" + os.path.basename(f2)
        else:
            prefix = os.path.dirname(os.path.commonprefix([f1, f2]) + "x")
            rel2 = os.path.relpath(os.path.dirname(f2), prefix) if prefix else os.path.dirname(f2)
            name = os.path.dirname(f1) + "_" + os.path.basename(f1) + "_" + \
                rel2.replace(os.sep, "_") + "_" + os.path.basename(f2)
    name += "_" + args.dir_type
    if not f2:
        if args.xignore:
            name += "_xignore=" + args.xignore
        if args.xnorm:
            name += "_xnorm=" + args.xnorm
    if args.y is not None:
        name += _y_name(args, f1, f3)
    if args.idx > 0:
        name += "_idx=" + str(args.idx)
    if args.seed:
        name += "_seed=" + str(args.seed)
    return name + ".h5"


def _y_name(args: Any, f1: str, f3: str) -> str:
    """The y direction's part of a direction file's name."""
    if f3:
        prefix = os.path.dirname(os.path.commonprefix([f1, f3]) + "x")
        return "_" + os.path.relpath(f3, prefix or ".").replace(os.sep, "_")
    name = ""
    if args.yignore:
        name += "_yignore=" + args.yignore
    if args.ynorm:
        name += "_ynorm=" + args.ynorm
    if args.same_dir:
        name += "_same_dir"
    return name


def name_surface_file(args: Any, dir_file: str) -> str:
    """The original's surface file name: the direction file's with the grid ranges."""
    if args.surf_file:
        return args.surf_file
    name = dir_file + "_[%s,%s,%d]" % (args.xmin, args.xmax, args.xnum)
    if args.y is not None:
        name += "x[%s,%s,%d]" % (args.ymin, args.ymax, args.ynum)
    return name + ".h5"


# ------------------------------------------------------------------------ inputs
def _load(spec: Any, path: str) -> torch.nn.Module:
    net = model_loader.load(spec.model, path, spec.unsafe_load)
    check_finite(net, path)
    return net


def check_finite(net: torch.nn.Module, what: str) -> None:
    """Refuse a model holding NaN or infinite weights (before anything is written, so the
    repaired checkpoint is not refused later for a file made from the broken one)."""
    for name, t in net.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{what or 'the model'}: '{name}' holds NaN or infinite values; give a "
                            "checkpoint with finite weights")


def _hash_or_init(spec: Any, path: str) -> str:
    return model_loader.file_hash(path) if path else f"init(seed={spec.seed})"


def _short(path: str) -> str:
    """A checkpoint's folder and file name: enough to tell runs apart in plot labels."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) if path else ""


def set_threads(requested: int, comm: Any) -> int:
    """CPU threads of this rank: --threads, else $OMP_NUM_THREADS, else cores per rank."""
    n = requested or mpi4pytorch.default_threads(comm)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def load_run(args: Any, comm: Any) -> tuple[torch.device, Any, torch.nn.Module]:
    """What every run starts from: threads, device, the data and the model at (0, 0)
    (``args``: a RunSpec or the parsed flags)."""
    for flag in ("model_file", "model_file2", "model_file3"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise UserError(f"checkpoint not found: {path} (--{flag})")
    keep_freed_memory()
    set_threads(args.threads, comm)
    device = mpi4pytorch.device_for(comm, args.cuda)
    data = dataloader.load_data(getattr(args, "data_args", None) or args)
    if not args.model_file:
        if mpi4pytorch.rank(comm) == 0:
            print(f"note: no --model_file: mapping a randomly initialised {args.model} (seed {args.seed}), "
                  "not a trained network", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)  # a freshly initialized model, the same on every rank
    net = _load(args, args.model_file)
    model_loader.check_fits(net, data, args.model, loss_fn=get_loss_fn(args.loss_name), loss_name=args.loss_name)
    return device, data, net


def load_inputs(spec: RunSpec, comm: Any) -> Loaded:
    """The command line's inputs: ``load_run`` and the other checkpoints, all checked."""
    device, data, net = load_run(spec, comm)
    others = {f: _load(spec, getattr(spec, f)) for f in ("model_file2", "model_file3") if getattr(spec, f)}
    identity = {"model": spec.model, "model_hash": _hash_or_init(spec, spec.model_file),
                "model_file": _short(spec.model_file), "model_file2": _short(spec.model_file2),
                "model_file3": _short(spec.model_file3)}
    for i, flag in ((2, "model_file2"), (3, "model_file3")):
        if getattr(spec, flag):
            identity[f"model_hash{i}"] = model_loader.file_hash(getattr(spec, flag))
    if not spec.model_file:
        identity["random_init"] = True
    return Loaded(device, data, net, others, identity)


# ---------------------------------------------------------------------- directions
def direction_recipe(spec: Any, identity: dict) -> dict:
    """What makes the directions; stored in the direction file, checked on reuse."""
    r = {"dir_type": spec.dir_type, "model": identity["model"], "model_hash": identity["model_hash"]}
    if "model_hash2" in identity:
        r["model_hash2"] = identity["model_hash2"]
    else:
        r.update(xnorm=spec.xnorm, xignore=spec.xignore, seed=spec.seed, idx=spec.idx)
    if spec.y is not None:
        if "model_hash3" in identity:
            r["model_hash3"] = identity["model_hash3"]
        else:
            r.update(ynorm=spec.ynorm, yignore=spec.yignore, same_dir=spec.same_dir,
                     seed=spec.seed, idx=spec.idx)
    return r


def _difference(spec: Any, loaded: Loaded, flag: str) -> list:
    d = net_plotter.difference_direction(loaded.net, loaded.others[flag], spec.dir_type)
    if not any(t.is_floating_point() and t.any() for t in d):
        raise UserError(f"--model_file and --{flag} hold the same {spec.dir_type}, so the direction between "
                        "them is zero; give two different checkpoints")
    return d


def _reusable_direction_file(spec: Any, dir_file: str, recipe: dict) -> bool:
    """The one reuse decision of a direction file: a user's own --dir_file is used as it
    is; one named by the toolkit is reused only if made by the same recipe."""
    if not dir_file or not os.path.exists(dir_file):
        return False
    if spec.dir_file:
        return True  # the user's own file is used as it is, never modified

    def stored() -> dict | None:
        made = net_plotter.read_direction_attrs(dir_file).get("recipe")
        return parse_settings(made, dir_file) if made else None
    return check_reuse(dir_file, stored, recipe, "direction file", spec.overwrite,
                       hint="delete it, pass --overwrite, or choose another --idx/--seed/--dir_file")


def directions_for(spec: Any, loaded: Loaded, dir_file: str) -> tuple[list, list | None, dict, bool]:
    """(xdir, ydir, attrs, new): read from ``dir_file`` when it may serve, else made in memory.

    ``new`` says the directions must still be written to ``dir_file``. Nothing is written here.
    """
    recipe = direction_recipe(spec, loaded.identity)
    if _reusable_direction_file(spec, dir_file, recipe):
        xdir, ydir = net_plotter.read_directions(dir_file, loaded.net, spec.dir_type, spec.y is not None)
        return xdir, ydir, net_plotter.read_direction_attrs(dir_file), False
    gen = net_plotter.make_generator(spec.seed, spec.idx)
    if "model_file2" in loaded.others:
        xdir = _difference(spec, loaded, "model_file2")
    else:
        xdir = net_plotter.random_direction(loaded.net, spec.dir_type, spec.xnorm, spec.xignore, gen)
    ydir = None
    if spec.y is not None:
        if "model_file3" in loaded.others:
            ydir = _difference(spec, loaded, "model_file3")
        elif spec.same_dir:
            ydir = xdir
        else:
            ydir = net_plotter.random_direction(loaded.net, spec.dir_type, spec.ynorm, spec.yignore, gen)
    return xdir, ydir, direction_attrs(spec, loaded.others, recipe), True


def direction_attrs(spec: Any, others: dict, recipe: dict) -> dict:
    """The root attributes of a direction file made by a grid run (read by
    net_plotter.read_direction_attrs)."""
    return {"dir_type": spec.dir_type, "recipe": json.dumps(recipe),
            "xnorm": "" if "model_file2" in others else spec.xnorm,
            "ynorm": "" if "model_file3" in others else spec.ynorm,
            "xignore": spec.xignore, "yignore": spec.yignore}


def write_directions(dir_file: str, net: torch.nn.Module, dir_type: str, xdir: list, ydir: list | None,
                     attrs: dict) -> None:
    names = [n for n, _ in net_plotter.get_entries(net, dir_type)]
    net_plotter.write_directions(dir_file, names, xdir, ydir, attrs=attrs)


# --------------------------------------------------------------------------- set-up
def grid_coords(spec: Any) -> tuple[np.ndarray, np.ndarray | None]:
    xcoords = np.linspace(spec.xmin, spec.xmax, spec.xnum)
    ycoords = np.linspace(spec.ymin, spec.ymax, spec.ynum) if spec.y is not None else None
    return xcoords, ycoords


def surface_settings(spec: Any, loaded: Loaded, metrics: list[str], kind: str, xdir: list, ydir: list | None,
                     dir_attrs: dict, extra: dict | None = None) -> dict:
    """Everything that defines the surface (surface.settings_record, next to its reader)."""
    return settings_record(spec, loaded.identity, dataloader.data_settings(spec, loaded.data),
                           net_plotter.directions_hash(xdir, ydir), dir_attrs, metrics, kind, extra)


def _check_outputs(spec: Any, dir_file: str, surf_file: str | None) -> None:
    if surf_file:
        check_output_path(surf_file, "surface file")
    if dir_file:
        check_output_path(dir_file, "direction file")
    if dir_file and not (spec.dir_file and os.path.exists(dir_file)):  # to be written: never an input
        check_not_input(dir_file, "direction file", runner.without(runner.inputs_of(spec), "--dir_file"))
    if surf_file and dir_file and os.path.abspath(surf_file) == os.path.abspath(dir_file):
        raise UserError(f"--surf_file and the direction file are the same file ({surf_file}); writing the "
                        "surface would destroy the directions: choose another --surf_file")


def open_files(spec: Any, loaded: Loaded, metrics: list[str], kind: str, extra_settings: dict | None = None,
               dir_file: str | None = None, surf_file: str | None = None) -> tuple:
    """Rank 0: directions, settings and the surface store; writes only once all is checked.
    ``dir_file``/``surf_file`` default to the command line's names (``""``: none, in memory)."""
    dir_file = name_direction_file(spec) if dir_file is None else dir_file
    surf_file = name_surface_file(spec, dir_file) if surf_file is None else surf_file
    _check_outputs(spec, dir_file, surf_file)
    xdir, ydir, dir_attrs, new = directions_for(spec, loaded, dir_file)
    settings = surface_settings(spec, loaded, metrics, kind, xdir, ydir, dir_attrs, extra_settings)
    xcoords, ycoords = grid_coords(spec)
    writer = SurfaceStore(surf_file or None, xcoords, ycoords, metrics, settings, attrs={"dir_file": dir_file},
                          overwrite=spec.overwrite, inputs=runner.inputs_of(spec))
    try:
        if new and dir_file:
            write_directions(dir_file, loaded.net, spec.dir_type, xdir, ydir, dir_attrs)
        writer.save()
    except BaseException:
        writer.close()
        raise
    return dir_file, surf_file, writer, settings, xdir, ydir


def start(comm: Any, spec: Any, loaded: Loaded, opened: tuple, t0: float) -> Run:
    """The Run of every rank, once rank 0 has opened the files (``opened``: its
    ``open_files``; other ranks read the directions from the file)."""
    rank = mpi4pytorch.rank(comm)
    dir_file, surf_file, writer, settings, xdir, ydir = opened if rank == 0 else (None,) * 6
    dir_file, surf_file, settings = mpi4pytorch.bcast(comm, (dir_file, surf_file, settings))
    net = loaded.net
    if rank != 0 and dir_file:
        xdir, ydir = net_plotter.read_directions(dir_file, net, spec.dir_type, spec.y is not None)
    elif rank != 0:  # no file (the API in memory): the same directions, made again (deterministic)
        xdir, ydir, _, _ = directions_for(spec, loaded, "")
    if spec.ngpu > 1 and spec.cuda and comm is None:
        net = torch.nn.DataParallel(net, device_ids=list(range(spec.ngpu)))
    net = net.to(loaded.device).eval()
    perturb = net_plotter.Perturbation(net.module if hasattr(net, "module") else net, spec.dir_type, xdir, ydir)
    xcoords, ycoords = grid_coords(spec)
    return Run(comm=comm, rank=rank, spec=spec, device=loaded.device, data=loaded.data, net=net,
               dir_file=dir_file, surf_file=surf_file or "(in memory)", xdir=xdir, ydir=ydir, xcoords=xcoords,
               ycoords=ycoords, writer=writer, perturb=perturb, settings=settings,
               setup_seconds=time.perf_counter() - t0)


def prepare_loaded(spec: Any, comm: Any, loaded: Loaded, metrics: list[str], kind: str = "loss",
                   extra_settings: dict | None = None, t0: float | None = None,
                   dir_file: str | None = None, surf_file: str | None = None) -> Run:
    """The files and the Run of checked, loaded inputs (the command line and the API)."""
    t0 = time.perf_counter() if t0 is None else t0
    opened = mpi4pytorch.check_all(comm, lambda: open_files(spec, loaded, metrics, kind, extra_settings,
                                                            dir_file, surf_file))
    if "model_file2" in loaded.others and spec.dir_type == "weights" and mpi4pytorch.rank(comm) == 0:
        print("warning: --dir_type weights moves only the parameters; BatchNorm statistics stay "
              "those of --model_file (use --dir_type states to interpolate them too)",
              file=sys.stderr)
    return start(comm, spec, loaded, opened, t0)


def prepare(spec: RunSpec, metrics: list[str], kind: str = "loss", extra_settings: dict | None = None,
            check: Callable | None = None) -> Run:
    """Everything a grid run of the command line needs (see the module doc); ``check(net,
    data)`` refuses a model the run cannot use, before any file is written."""
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(spec.mpi)
    loaded = load_inputs(spec, comm)
    if check is not None:
        mpi4pytorch.check_all(comm, lambda: check(loaded.net, loaded.data))
    return prepare_loaded(spec, comm, loaded, metrics, kind, extra_settings, t0)


# ----------------------------------------------------------------------- the grid
def move_to(run: Run, k: int) -> tuple[float, float | None]:
    """Write the weights of flat grid index k into the model; returns (x, y)."""
    x, y = run.point(k)
    run.perturb.set(x, y or 0.0)
    return x, y


def loss_compute(run: Run, loss_fn: Callable, splits: list[str], batch_size: int, precision: str = "fp32",
                 engine: str = "auto", points_per_pass: int | str = 1, bn_update: int = 0) -> PointCompute:
    """``compute``: loss and accuracy of every split at grid point k (or at a list of
    points, ``points_per_pass`` of them in one pass with stacked weights: the returned
    ``chunk``). The evaluation path that runs (eager, BatchNorm folded, ...) and K go
    into the timing line (``note``). ``bn_update`` N > 0: at each point the BatchNorm
    statistics are first re-estimated on the first N training batches
    (curves.update_bn; one point per pass)."""
    evaluators = {s: Evaluator(run.net, *run.data.split(s), loss_fn, batch_size, run.device, precision, engine=engine)
                  for s in splits}
    first = evaluators[splits[0]]
    k = 1 if bn_update else first.probe_points_per_pass(run.perturb) if points_per_pass == "auto" \
        else int(points_per_pass)
    chunk = max(1, mpi4pytorch.bcast(run.comm, k))  # rank 0's choice: the same K on every rank
    note = f"engine: {first.path}" + (f"; {chunk} points per pass" if chunk > 1 else "")
    bn_x = run.data.train_x[:bn_update * batch_size].to(run.device) if bn_update else None
    if bn_x is not None:
        note += f"; BN re-estimated at each point on {len(bn_x)} training images"

    def compute(k: int) -> dict:
        move_to(run, k)
        if bn_x is not None:
            update_bn(run.net, bn_x, batch_size)
        out = {}
        for s, evaluate in evaluators.items():
            out[f"{s}_loss"], out[f"{s}_acc"] = evaluate()
        return out

    def compute_many(ks: list[int]) -> dict:
        points = [run.point(k) for k in ks]
        out = {}
        for s, evaluate in evaluators.items():
            values = evaluate.evaluate_points(run.perturb, points)
            out[f"{s}_loss"], out[f"{s}_acc"] = [v[0] for v in values], [v[1] for v in values]
        return out
    return PointCompute(compute_many if chunk > 1 else compute, chunk, note)


def compute_grid(spec: Any, run: Run, compute: Callable, desc: str = "surface") -> None:
    """Run ``compute(k)`` over the missing points; exit cleanly on SIGTERM/SIGINT."""
    progress = spec.progress if isinstance(spec, RunSpec) else not spec.no_progress
    execute(run, compute, save_every=spec.save_every, progress=progress, desc=desc)


def execute(run: Run, compute: Callable, save_every: float = 10.0, progress: bool = True,
            desc: str = "surface", exit_on_signal: bool = True) -> None:
    """The runner over the grid's points (runner.run); gives the surface file up at the end."""
    note = getattr(compute, "note", "")
    runner.run(run.comm, run.writer, compute, what="points", desc=desc, save_every=save_every,
               progress=progress, chunk=getattr(compute, "chunk", 1), setup_seconds=run.setup_seconds,
               notes=[note] if note else [], exit_on_signal=exit_on_signal)
    if run.writer is not None:
        run.writer.close()


# ---------------------------------------------------------------------------- plots
def plot(args: Any, run: Run, surf_name: str = "train_loss") -> Any:
    """The original's --plot: contours for 2D, loss/accuracy curves for 1D; levels and
    limits from the data unless --vmin/--vmax/--vlevel/--loss_max are given. Returns
    the Plots (figures and files)."""
    if run.ycoords is not None:
        import plot_maps
        return plot_maps.plot_2d_contour(run.surf_file, surf_name, args.vmin, args.vmax, args.vlevel,
                                         show=args.show, log=args.log, proj_file=args.proj_file or None,
                                         dir_file=run.dir_file if args.proj_file else None)
    else:
        import plot_curves
        return plot_curves.plot_1d_loss_err(run.surf_file, args.xmin, args.xmax, args.loss_max, args.log, args.show)


def metrics_for(splits: list[str]) -> list[str]:
    """The loss and accuracy quantities of the splits."""
    return [f"{s}_{m}" for s in splits for m in ("loss", "acc")]


# ------------------------------------------------------------- single-point runs
def move_to_at(args: Any, net: torch.nn.Module) -> list[float]:
    """Move ``net`` to ``args.at_point`` (``--at x[,y]``, checked by flags.check_hessian)
    along ``--dir_file``; returns the point ([] for the model itself)."""
    point = list(getattr(args, "at_point", []) or [])
    if point:
        xdir, ydir = net_plotter.read_directions(args.dir_file, net, args.dir_type, len(point) == 2)
        net_plotter.Perturbation(net, args.dir_type, xdir, ydir).set(*point)
    return point


def load_point(args: Any, comm: Any = None) -> tuple[torch.device, Any, torch.nn.Module, list[float]]:
    """The shared set-up of the single-point scripts: (device, data, net, point), the
    model on the device and moved to ``--at``."""
    device, data, net = load_run(args, comm)
    net = net.to(device)
    return device, data, net, move_to_at(args, net)


def point_settings(args: Any, data: Any, point: list[float]) -> dict:
    """What identifies the point and the loss a single-point result belongs to."""
    return {"model": args.model, "model_file": os.path.basename(args.model_file),
            "model_hash": _hash_or_init(args, args.model_file),
            **dataloader.data_settings(args, data), "loss_name": args.loss_name,
            "point": list(point), "dir_type": args.dir_type if point else "",
            "dir_hash": model_loader.file_hash(args.dir_file) if point else ""}


def hessian_of(args: Any, net: torch.nn.Module, data: Any, device: Any,
               params: list | None = None) -> Any:
    """The Hessian operator (hess_vec_prod.hessian_operator) of the mean training loss of
    ``net`` with the run's Hessian flags; ``params`` default: the multi-dimensional ones."""
    from hess_vec_prod import hessian_operator
    return hessian_operator(net, data.train_x.to(device), data.train_y.to(device), args.loss_name,
                            params=params, cache_mb=args.hess_cache_mb, batch_mb=args.hess_batch_mb)
