"""The grid runtime: from checked flags (or in-memory objects) to a finished surface file.

A run goes through four steps, the same for plot_surface.py, plot_hessian_eigen.py and
the Python API (landscape.py):

1. **Inputs** (``load_run``): threads, device, the data (once, into memory) and the
   model at (0, 0); the model must fit the data.
2. **Files** (``prepare``): the directions (made in memory, or read from the direction
   file), the settings that define the surface, and the surface file to resume. Every
   input and output path is checked *before* anything is written, so a failed run never
   leaves a file that blocks the corrected one; then rank 0 writes the direction file (if
   new) and the surface file. A ``--dir_file`` the user gave is never modified.
3. **Grid** (``compute_grid``): every rank takes grid points from the shared counter
   (scheduler.run_grid), moves the weights there in place (``move_to``) and computes;
   rank 0 gathers the results and saves the file periodically and at the end.
4. **Plots** (``plot``): the original's ``--plot``, as function calls.

``Run`` holds what a running grid needs; ``loss_compute`` is the per-point evaluation
of loss and accuracy that plot_surface.py and landscape.py share.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
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
from fileio import check_output_path, check_reuse
from scheduler import Interrupted, run_grid
from surface import SurfaceWriter


@dataclass
class Run:
    """Everything a running grid needs (rank 0 also holds the writer)."""
    comm: Any
    rank: int
    device: torch.device
    data: Any
    net: torch.nn.Module
    dir_file: str
    xdir: list
    ydir: list | None
    xcoords: np.ndarray
    ycoords: np.ndarray | None
    surf_file: str
    writer: SurfaceWriter | None
    todo: np.ndarray
    perturb: net_plotter.Perturbation
    settings: dict
    setup_seconds: float = 0.0
    notes: list = field(default_factory=list)   # extra words for the timing line
    chunk: int = 1                               # grid points per call of compute (several per pass)

    def point(self, k: int) -> tuple[float, float | None]:
        """(x, y) of flat grid index k (y None for 1D)."""
        if self.ycoords is None:
            return float(self.xcoords[k]), None
        i, j = divmod(int(k), len(self.ycoords))
        return float(self.xcoords[i]), float(self.ycoords[j])


# ----------------------------------------------------------------------- file names
def model_stem(args: argparse.Namespace) -> str:
    """The model file, or out/<model> for a freshly initialized one: output names start here."""
    return args.model_file or os.path.join("out", args.model.replace(":", "_"))


def name_direction_file(args: argparse.Namespace) -> str:
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
        if f3:
            prefix = os.path.dirname(os.path.commonprefix([f1, f3]) + "x")
            name += "_" + os.path.relpath(f3, prefix or ".").replace(os.sep, "_")
        else:
            if args.yignore:
                name += "_yignore=" + args.yignore
            if args.ynorm:
                name += "_ynorm=" + args.ynorm
            if args.same_dir:
                name += "_same_dir"
    if args.idx > 0:
        name += "_idx=" + str(args.idx)
    if args.seed:
        name += "_seed=" + str(args.seed)
    return name + ".h5"


def name_surface_file(args: argparse.Namespace, dir_file: str) -> str:
    if args.surf_file:
        return args.surf_file
    name = dir_file + "_[%s,%s,%d]" % (args.xmin, args.xmax, args.xnum)
    if args.y is not None:
        name += "x[%s,%s,%d]" % (args.ymin, args.ymax, args.ynum)
    return name + ".h5"


# ------------------------------------------------------------------------ inputs
def _load(args, path):
    return model_loader.load(args.model, path, args.unsafe_load)


def _hash_or_init(args, path):
    return model_loader.file_hash(path) if path else f"init(seed={args.seed})"


def _short(path):
    """A checkpoint's folder and file name: enough to tell runs apart in plot labels."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) if path else ""


def set_threads(requested: int, comm) -> int:
    """CPU threads of this rank: --threads, else $OMP_NUM_THREADS, else cores per rank."""
    n = requested or mpi4pytorch.default_threads(comm)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def load_run(args: argparse.Namespace, comm) -> tuple[torch.device, Any, torch.nn.Module]:
    """What every run starts from: threads, device, the data and the model at (0, 0)."""
    for flag in ("model_file", "model_file2", "model_file3"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise UserError(f"checkpoint not found: {path} (--{flag})")
    keep_freed_memory()
    set_threads(args.threads, comm)
    device = mpi4pytorch.device_for(comm, args.cuda)
    data = dataloader.load_data(args)
    if not args.model_file:
        if mpi4pytorch.rank(comm) == 0:
            print(f"note: no --model_file: mapping a randomly initialised {args.model} (seed {args.seed}), "
                  "not a trained network", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)  # a freshly initialized model, the same on every rank
    net = _load(args, args.model_file)
    model_loader.check_fits(net, data, args.model, loss_fn=get_loss_fn(args.loss_name), loss_name=args.loss_name)
    return device, data, net


# ---------------------------------------------------------------------- directions
def direction_recipe(args: argparse.Namespace) -> dict:
    """What makes the directions; stored in the direction file, checked on reuse."""
    r = {"dir_type": args.dir_type, "model": args.model,
         "model_hash": _hash_or_init(args, args.model_file)}
    if args.model_file2:
        r["model_hash2"] = model_loader.file_hash(args.model_file2)
    else:
        r.update(xnorm=args.xnorm, xignore=args.xignore, seed=args.seed, idx=args.idx)
    if args.y is not None:
        if args.model_file3:
            r["model_hash3"] = model_loader.file_hash(args.model_file3)
        else:
            r.update(ynorm=args.ynorm, yignore=args.yignore, same_dir=args.same_dir,
                     seed=args.seed, idx=args.idx)
    return r


def _difference(args, net, path, flag):
    other = _load(args, path)
    d = net_plotter.difference_direction(net, other, args.dir_type)
    if not any(t.is_floating_point() and t.any() for t in d):
        raise UserError(f"--model_file and {flag} hold the same {args.dir_type}, so the direction between "
                        "them is zero; give two different checkpoints")
    return d


def directions_for(args: argparse.Namespace, net: torch.nn.Module, dir_file: str):
    """(xdir, ydir, attrs, new): read from ``dir_file`` when it may serve, else made in memory.

    ``new`` says the directions must still be written to ``dir_file``. Nothing is written here.
    """
    recipe = direction_recipe(args)
    if args.dir_file and os.path.exists(dir_file):
        reuse = True  # the user's own file is used as it is, never modified
    elif os.path.exists(dir_file):
        made = net_plotter.read_direction_attrs(dir_file).get("recipe")
        reuse = check_reuse(dir_file, json.loads(made) if made else None, recipe, "direction file", args.overwrite,
                            hint="delete it, pass --overwrite, or choose another --idx/--seed/--dir_file")
    else:
        reuse = False
    if reuse:
        xdir, ydir = net_plotter.read_directions(dir_file, net, args.dir_type, args.y is not None)
        return xdir, ydir, net_plotter.read_direction_attrs(dir_file), False
    gen = net_plotter.make_generator(args.seed, args.idx)
    if args.model_file2:
        xdir = _difference(args, net, args.model_file2, "--model_file2")
    else:
        xdir = net_plotter.random_direction(net, args.dir_type, args.xnorm, args.xignore, gen)
    ydir = None
    if args.y is not None:
        if args.model_file3:
            ydir = _difference(args, net, args.model_file3, "--model_file3")
        elif args.same_dir:
            ydir = xdir
        else:
            ydir = net_plotter.random_direction(net, args.dir_type, args.ynorm, args.yignore, gen)
    attrs = {"dir_type": args.dir_type, "recipe": json.dumps(recipe),
             "xnorm": "" if args.model_file2 else args.xnorm,
             "ynorm": "" if args.model_file3 else args.ynorm,
             "xignore": args.xignore, "yignore": args.yignore}
    return xdir, ydir, attrs, True


def write_directions(dir_file: str, net: torch.nn.Module, dir_type: str, xdir, ydir, attrs: dict) -> None:
    names = [n for n, _ in net_plotter.get_entries(net, dir_type)]
    net_plotter.write_directions(dir_file, names, xdir, ydir, attrs=attrs)


# --------------------------------------------------------------------------- set-up
def grid_coords(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    xcoords = np.linspace(args.xmin, args.xmax, args.xnum)
    ycoords = np.linspace(args.ymin, args.ymax, args.ynum) if args.y is not None else None
    return xcoords, ycoords


def surface_settings(args: argparse.Namespace, data, metrics, kind, xdir, ydir, dir_attrs, extra=None) -> dict:
    """Everything that defines the surface; a resume must match it exactly."""
    settings = {
        "kind": kind, "model": args.model,
        "model_file": _short(args.model_file), "model_hash": _hash_or_init(args, args.model_file),
        "model_file2": _short(args.model_file2), "model_file3": _short(args.model_file3),
        **dataloader.data_settings(args, data),
        "loss_name": args.loss_name, "dir_type": args.dir_type,
        "directions_hash": net_plotter.directions_hash(xdir, ydir),
        "xnorm": str(dir_attrs.get("xnorm", "")), "ynorm": str(dir_attrs.get("ynorm", "")),
        "xignore": str(dir_attrs.get("xignore", "")), "yignore": str(dir_attrs.get("yignore", "")),
        "seed": args.seed, "idx": args.idx,
        "x": [args.xmin, args.xmax, args.xnum],
        "y": [args.ymin, args.ymax, args.ynum] if args.y is not None else None,
        "precision": args.precision, "metrics": list(metrics), **(extra or {}),
    }
    if not args.model_file:
        settings["random_init"] = True
    return settings


def _check_outputs(args, dir_file, surf_file):
    check_output_path(surf_file, "surface file")
    check_output_path(dir_file, "direction file")
    if os.path.abspath(surf_file) == os.path.abspath(dir_file):
        raise UserError(f"--surf_file and the direction file are the same file ({surf_file}); writing the "
                        "surface would destroy the directions: choose another --surf_file")


def open_files(args: argparse.Namespace, net, data, metrics, kind, extra_settings=None):
    """Rank 0: directions, settings and the surface writer; writes only once all is checked."""
    dir_file = name_direction_file(args)
    surf_file = name_surface_file(args, dir_file)
    _check_outputs(args, dir_file, surf_file)
    xdir, ydir, dir_attrs, new = directions_for(args, net, dir_file)
    settings = surface_settings(args, data, metrics, kind, xdir, ydir, dir_attrs, extra_settings)
    xcoords, ycoords = grid_coords(args)
    writer = SurfaceWriter(surf_file, xcoords, ycoords, metrics, settings,
                           attrs={"dir_file": dir_file}, overwrite=args.overwrite)
    if new:
        write_directions(dir_file, net, args.dir_type, xdir, ydir, dir_attrs)
    writer.save()
    return dir_file, surf_file, writer, settings, xdir, ydir


def start(comm, net, device, data, xdir, ydir, xcoords, ycoords, dir_type, dir_file, surf_file, writer,
          settings, t0, ngpu=1) -> Run:
    """The Run of every rank, once rank 0 has opened the files."""
    rank = mpi4pytorch.rank(comm)
    todo = mpi4pytorch.bcast(comm, writer.todo() if rank == 0 else None)
    if ngpu > 1 and comm is None:
        net = torch.nn.DataParallel(net, device_ids=list(range(ngpu)))
    net = net.to(device).eval()
    perturb = net_plotter.Perturbation(net.module if hasattr(net, "module") else net, dir_type, xdir, ydir)
    return Run(comm=comm, rank=rank, device=device, data=data, net=net, dir_file=dir_file, xdir=xdir,
               ydir=ydir, xcoords=xcoords, ycoords=ycoords, surf_file=surf_file, writer=writer, todo=todo,
               perturb=perturb, settings=settings, setup_seconds=time.perf_counter() - t0)


def prepare(args: argparse.Namespace, metrics: list[str], kind: str = "loss",
            extra_settings: dict | None = None) -> Run:
    """Everything a grid run of the command line needs (see the module doc)."""
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    device, data, net = load_run(args, comm)
    opened = mpi4pytorch.check_all(comm, lambda: open_files(args, net, data, metrics, kind, extra_settings))
    if args.model_file2 and args.dir_type == "weights" and rank == 0:
        print("warning: --dir_type weights moves only the parameters; BatchNorm statistics stay "
              "those of --model_file (use --dir_type states to interpolate them too)",
              file=sys.stderr)
    dir_file, surf_file, writer, settings, xdir, ydir = opened if rank == 0 else (None,) * 6
    dir_file, surf_file, settings = mpi4pytorch.bcast(comm, (dir_file, surf_file, settings))
    if rank != 0:
        xdir, ydir = net_plotter.read_directions(dir_file, net, args.dir_type, args.y is not None)
    xcoords, ycoords = grid_coords(args)
    return start(comm, net, device, data, xdir, ydir, xcoords, ycoords, args.dir_type, dir_file, surf_file,
                 writer, settings, t0, ngpu=args.ngpu if args.cuda else 1)


# ----------------------------------------------------------------------- the grid
def move_to(run: Run, k: int) -> tuple[float, float | None]:
    """Write the weights of flat grid index k into the model; returns (x, y)."""
    x, y = run.point(k)
    run.perturb.set(x, y or 0.0)
    return x, y


def loss_compute(run: Run, loss_fn: Callable, splits: list[str], batch_size: int, precision: str = "fp32",
                 engine: str = "auto", points_per_pass: int | str = 1, bn_update: int = 0) -> Callable:
    """``compute``: loss and accuracy of every split at grid point k (or at a list of
    points, ``points_per_pass`` of them in one pass with stacked weights; ``run.chunk``
    says how many the scheduler hands out at a time). The evaluation path that runs
    (eager, BatchNorm folded, ...) and K go into the timing line. ``bn_update`` N > 0:
    at each point the BatchNorm statistics are first re-estimated on the first N training
    batches (curves.update_bn; one point per pass)."""
    evaluators = {s: Evaluator(run.net, *run.data.split(s), loss_fn, batch_size, run.device, precision, engine=engine)
                  for s in splits}
    first = evaluators[splits[0]]
    k = 1 if bn_update else first.probe_points_per_pass(run.perturb) if points_per_pass == "auto" \
        else int(points_per_pass)
    run.chunk = max(1, mpi4pytorch.bcast(run.comm, k))  # rank 0's choice: the same K on every rank
    run.notes.append(f"engine: {first.path}" + (f"; {run.chunk} points per pass" if run.chunk > 1 else ""))
    bn_x = run.data.train_x[:bn_update * batch_size].to(run.device) if bn_update else None
    if bn_update:
        run.notes.append(f"BN re-estimated at each point on {len(bn_x)} training images")

    def compute(k):
        move_to(run, k)
        if bn_x is not None:
            update_bn(run.net, bn_x, batch_size)
        out = {}
        for s, evaluate in evaluators.items():
            out[f"{s}_loss"], out[f"{s}_acc"] = evaluate()
        return out

    def compute_many(ks):
        points = [run.point(k) for k in ks]
        out = {}
        for s, evaluate in evaluators.items():
            values = evaluate.evaluate_points(run.perturb, points)
            out[f"{s}_loss"], out[f"{s}_acc"] = [v[0] for v in values], [v[1] for v in values]
        return out
    return compute_many if run.chunk > 1 else compute


def compute_grid(args: argparse.Namespace, run: Run, compute: Callable, desc: str = "surface") -> None:
    """Run ``compute(k)`` over the missing points; exit cleanly on SIGTERM/SIGINT."""
    execute(run, compute, save_every=args.save_every, progress=not args.no_progress, desc=desc)


def execute(run: Run, compute: Callable, save_every: float = 10.0, progress: bool = True,
            desc: str = "surface", exit_on_signal: bool = True) -> None:
    if run.rank == 0:
        done = run.writer.n_done
        total = len(run.todo) + done
        print(f"{run.surf_file}: {total} points, {done} already done"
              f"{' (resumed)' if run.writer.resumed and done else ''}; set-up {run.setup_seconds:.1f} s",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        run_grid(run.comm, run.todo, compute, run.writer, save_every=save_every, progress=progress, desc=desc,
                 chunk=run.chunk)
    except Interrupted as e:
        if run.rank == 0:
            print(f"interrupted by {e}: {run.writer.n_done} of {run.writer.done.size} points saved "
                  f"in {run.surf_file}; rerun the same command to resume", file=sys.stderr, flush=True)
        if exit_on_signal:
            sys.exit(128 + e.signum)
        raise
    seconds = time.perf_counter() - t0
    if run.rank == 0 and len(run.todo):
        notes = "".join(f"; {n}" for n in run.notes)
        print(f"timing: {len(run.todo)} points in {seconds:.2f} s, {seconds / len(run.todo):.3f} s per "
              f"point, {mpi4pytorch.size(run.comm)} rank(s) x {torch.get_num_threads()} thread(s); "
              f"set-up {run.setup_seconds:.2f} s{notes}", file=sys.stderr, flush=True)
    if run.rank == 0 and run.writer.n_done < run.writer.done.size:
        raise UserError(f"incomplete: {run.writer.n_done} of {run.writer.done.size} points in "
                        f"{run.surf_file}; rerun the same command to finish")


# ---------------------------------------------------------------------------- plots
def plot(args: argparse.Namespace, run: Run, surf_name: str = "train_loss") -> None:
    """The original's --plot: contours for 2D, loss/accuracy curves for 1D."""
    if run.ycoords is not None:
        import plot_2D
        plot_2D.plot_2d_contour(run.surf_file, surf_name, args.vmin, args.vmax, args.vlevel, show=args.show,
                                log=args.log, proj_file=args.proj_file or None,
                                dir_file=run.dir_file if args.proj_file else None)
    else:
        import plot_1D
        plot_1D.plot_1d_loss_err(run.surf_file, args.xmin, args.xmax, args.loss_max, args.log, args.show)


def metrics_for(splits: list[str]) -> list[str]:
    return [f"{s}_{m}" for s in splits for m in ("loss", "acc")]

