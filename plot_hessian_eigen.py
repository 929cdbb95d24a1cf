"""Hessian eigenvalues of the loss along one direction (1D) or over a 2D grid, or the
Hessian spectrum at a single point.

    python plot_hessian_eigen.py --model digits_cnn --model_file M.t7 --x=-1:1:21
    mpirun -n 4 python plot_hessian_eigen.py --mpi --cuda --model resnet56 --x=-1:1:51 \\
        --y=-1:1:51 --model_file .../model_300.t7 --plot
    python plot_hessian_eigen.py --model digits_cnn --model_file M.t7 --top_k 10 --trace

Grid mode takes every flag of plot_surface.py and shares its machinery (directions,
MPI scheduling, resume, the stale-file guard, the surface file): at every grid point
it stores ``max_eig`` and ``min_eig``, the largest and smallest eigenvalue of the
Hessian of the mean training loss with respect to the parameters with more than one
dimension (hess_vec_prod.py explains the method and its accuracy). plot_2D.py and
plot_1D.py draw them and |min_eig/max_eig| (``--surf_name eig_ratio``); ``--plot``
does so at the end. The surface file is named like plot_surface.py's, with
``_hessian`` before ``.h5``.

Single-point mode (``--top_k K`` and/or ``--trace``): at the model itself, or at
``--at x[,y]`` along the directions of ``--dir_file``, print and store in
``--spectrum_file`` (default ``<model_file>_hessian.h5``) the K largest eigenvalues
(``top_eigenvalues``), λmax and λmin (``max_eig``, ``min_eig``) and, with
``--trace``, Hutchinson's estimate of the trace with its standard error (``trace``,
``trace_stderr``, ``trace_samples``), with ``done`` and the ``settings`` (a
store.ResultStore of one item: an interrupted run is computed again by the same command).
"""
import math
import os
import time

import numpy as np

import dataloader
import model_loader
import mpi4pytorch
import runner
import net_plotter
import flags
import grid
from errors import UserError, run_main
from fileio import check_output_path
from store import ResultStore
from evaluation import get_loss_fn
from hess_vec_prod import (DEFAULT_CACHE_MB, DEFAULT_TOL, Hessian, Progress, hutchinson_trace,
                           min_max_eigs, top_k)

METRICS = ["max_eig", "min_eig"]


def add_hessian_args(p, single_point=True, eig=True):
    """The Hessian flags shared by plot_hessian_eigen.py, hessian_spectrum.py and
    layer_curvature.py (``eig``: the ARPACK flags); returns the argument group."""
    g = p.add_argument_group("Hessian")
    g.add_argument("--hess_cache_mb", type=float, default=DEFAULT_CACHE_MB,
                   help="memory for the gradient graphs kept between products at a point (0: none)")
    if not eig:
        g.set_defaults(eig_tol=DEFAULT_TOL, eig_maxiter=None)
    else:
        _add_eig_args(g)
    if single_point:
        g.add_argument("--at", default="", help="x or x,y along --dir_file (default: the model)")
        g.add_argument("--progress_every", type=float, default=5.0,
                       help="seconds between progress lines on stderr (--no_progress: none)")
    return g


def _add_eig_args(g):
    g.add_argument("--eig_tol", type=float, default=DEFAULT_TOL,
                   help="Lanczos (ARPACK) tolerance, relative to the spectral radius")
    g.add_argument("--eig_maxiter", type=int, default=None,
                   help="Lanczos restarts before giving up (default: ARPACK's, 10 × parameters)")


def build_parser():
    p = flags.build_parser(__doc__.splitlines()[0])
    g = add_hessian_args(p)
    g.add_argument("--top_k", type=int, default=0, help="single point: the K largest eigenvalues")
    g.add_argument("--trace", action="store_true", help="single point: Hutchinson estimate of the trace")
    g.add_argument("--trace_samples", type=int, default=100, help="Rademacher vectors for --trace")
    g.add_argument("--spectrum_file", default="", help="single point: output file (empty: <model_file>_hessian.h5)")
    return p


def _finite(value):
    return value is not None and math.isfinite(value)


def one_point_only(args, script):
    """The single-point scripts take their point from --at, not from a grid or checkpoints."""
    if args.y is not None or args.model_file2 or args.model_file3:
        raise UserError(f"{script} computes one point: use --at x[,y] --dir_file D, "
                        "not --y/--model_file2/--model_file3")


def check_hessian_args(args):
    """Refuse bad Hessian flags with one line, before any work (shared by the scripts)."""
    if args.test:
        raise UserError("--test is not used here: the Hessian is that of the training loss")
    if args.precision != "fp32":
        raise UserError("the Hessian is computed in fp32; drop --precision")
    if not _finite(args.eig_tol) or args.eig_tol < 0:
        raise UserError(f"--eig_tol must be a finite number >= 0 (0: machine precision), got {args.eig_tol}")
    if args.eig_maxiter is not None and args.eig_maxiter < 1:
        raise UserError(f"--eig_maxiter must be >= 1 (Lanczos restarts), got {args.eig_maxiter}")
    if not _finite(args.hess_cache_mb) or args.hess_cache_mb < 0:
        raise UserError(f"--hess_cache_mb must be a finite number >= 0 (MiB), got {args.hess_cache_mb}")
    if hasattr(args, "progress_every") and (not _finite(args.progress_every) or args.progress_every < 0):
        raise UserError(f"--progress_every must be a finite number >= 0 (seconds), got {args.progress_every}")
    if getattr(args, "at", ""):
        args.at_point = parse_at(args.at)
        if not args.dir_file:
            raise UserError("--at needs the --dir_file whose directions the point refers to")
        if not os.path.isfile(args.dir_file):
            raise UserError(f"direction file not found: {args.dir_file!r} (--at refers to an existing one)")
    else:
        args.at_point = []


def parse_at(text):
    """'x' or 'x,y' -> [x] or [x, y] (finite numbers), else a UserError."""
    try:
        point = [float(v) for v in str(text).split(",")]
    except ValueError:
        point = []
    if not 1 <= len(point) <= 2 or not all(math.isfinite(v) for v in point):
        raise UserError(f"--at must be x or x,y with finite numbers (got '{text}')")
    return point


def check_args(args):
    check_hessian_args(args)
    if args.top_k < 0:
        raise UserError(f"--top_k must be >= 0, got {args.top_k}")
    if args.trace_samples < 2:
        raise UserError(f"--trace_samples must be >= 2 (the standard error needs two), got {args.trace_samples}")
    if (args.at or args.spectrum_file) and not (args.top_k or args.trace):
        raise UserError("--at and --spectrum_file belong to single-point mode: add --top_k K and/or --trace")


def hessian_of(args, net, data, device, params=None):
    """The Hessian operator of the mean training loss of ``net`` (moved in place), with
    respect to ``params`` (default: the parameters with more than one dimension)."""
    model = net.module if hasattr(net, "module") else net
    if params is None:
        params = [p for p in model.parameters() if p.dim() > 1]
    return Hessian(net, data.train_x.to(device), data.train_y.to(device),
                   get_loss_fn(args.loss_name), args.batch_size, params, args.hess_cache_mb)


def load_point(args, comm=None):
    """The shared set-up of the single-point scripts: (device, data, net, point), the
    model on the device and moved to ``--at`` (checked by ``check_hessian_args``)."""
    device, data, net = grid.load_run(args, comm)
    net = net.to(device)
    point = move_to_at(args, net)
    return device, data, net, point


def point_settings(args, data, point):
    """What identifies the point and the loss a single-point result belongs to."""
    return {"model": args.model, "model_file": os.path.basename(args.model_file),
            "model_hash": model_loader.file_hash(args.model_file) if args.model_file else f"init(seed={args.seed})",
            **dataloader.data_settings(args, data), "loss_name": args.loss_name,
            "point": list(point), "dir_type": args.dir_type if point else "",
            "dir_hash": model_loader.file_hash(args.dir_file) if point else ""}


# --------------------------------------------------------------------------- grid
def grid_mode(args):
    ctx = prepare_grid(args)
    op = hessian_of(args, ctx.net, ctx.data, ctx.device)

    def compute(k):
        point = grid.move_to(ctx, k)
        t, count = time.perf_counter(), op.count
        lmax, lmin = min_max_eigs(op, args.eig_tol, args.seed, args.eig_maxiter)
        if args.no_progress:
            print(f"rank {ctx.rank}: point {point}: max_eig {lmax:.6g} min_eig {lmin:.6g} "
                  f"({op.count - count} products, {time.perf_counter() - t:.1f} s)", flush=True)
        return {"max_eig": lmax, "min_eig": lmin}

    grid.compute_grid(ctx.spec, ctx, compute, desc="hessian")
    if ctx.rank == 0:
        print(f"done: {ctx.surf_file}", flush=True)
        if args.plot:
            plot(args, ctx.surf_file)


def prepare_grid(args):
    """grid.prepare with our metrics; the surface file gets a ``_hessian`` name."""
    spec = flags.spec_of(args)
    if not spec.surf_file:
        dir_file = grid.name_direction_file(spec)
        spec = flags.spec_of(args, surf_file=grid.name_surface_file(spec, dir_file)[:-len(".h5")] + "_hessian.h5")
    return grid.prepare(spec, METRICS, kind="hessian",
                        extra_settings={"eig_tol": args.eig_tol, "seed": args.seed})


def plot(args, surf_file):
    show = ["--show"] if args.show else []
    if args.y is not None:
        import plot_2D
        plot_2D.main(["--surf_file", surf_file, "--surf_name", "eig_ratio"] + show)
    else:
        import plot_1D
        plot_1D.main(["--surf_file", surf_file] + show)


# ---------------------------------------------------------------- single point
POINT_KIND = "loss-landscape-hessian-point"


def single_point(args):
    if args.mpi or mpi4pytorch.launched_size() > 1:
        raise UserError("--top_k/--trace compute one point: run a single process, without --mpi")
    out = args.spectrum_file or grid.model_stem(args) + "_hessian.h5"
    check_output_path(out, "--spectrum_file")
    t0 = time.perf_counter()
    device, data, net, point = load_point(args)
    op = hessian_of(args, net, data, device)
    if args.top_k >= op.shape[0]:
        raise UserError(f"--top_k must be below the number of parameters ({op.shape[0]}), got {args.top_k}")
    settings = {**point_settings(args, data, point), "dir_file": os.path.basename(args.dir_file) if point else "",
                "eig_tol": args.eig_tol, "seed": args.seed, "parameters": op.shape[0]}
    fields = {"max_eig": ((), np.nan), "min_eig": ((), np.nan)}
    if args.top_k:
        fields["top_eigenvalues"] = ((args.top_k,), np.nan)
    if args.trace:
        fields.update(trace=((), np.nan), trace_stderr=((), np.nan), trace_samples=((args.trace_samples,), np.nan))
    store = ResultStore(out, POINT_KIND, "spectrum file", (), fields, settings, overwrite=args.overwrite,
                        inputs=runner.inputs_of(args), hint="pass --overwrite to replace it or choose --spectrum_file")
    if store.resumed and not store.todo().size:
        store.close()
        raise UserError(f"{out} holds this point's results already; pass --overwrite to recompute them or "
                        "choose --spectrum_file")
    progress = Progress(op, not args.no_progress, args.progress_every)
    seconds = runner.run(None, store, lambda k: point_spectrum(args, op, progress), what="point", desc="hessian",
                         plan="one point", save_every=args.save_every, progress=False,
                         setup_seconds=time.perf_counter() - t0)
    store.close()
    report({k: store.values[k] for k in fields}, point, op, seconds, out)


def point_spectrum(args, op, progress):
    """The single point's results: top-k eigenvalues, λmax/λmin and the trace, as asked."""
    result = {}
    if args.top_k:
        progress.phase(f"top {args.top_k} eigenvalues")
        result["top_eigenvalues"] = top_k(op, args.top_k, args.eig_tol, args.seed, args.eig_maxiter)
        progress.end(f"λ1 {result['top_eigenvalues'][0]:.6g}")
    progress.phase("λmax/λmin")
    result["max_eig"], result["min_eig"] = min_max_eigs(op, args.eig_tol, args.seed, args.eig_maxiter)
    progress.end(f"max_eig {result['max_eig']:.6g}, min_eig {result['min_eig']:.6g}")
    if args.trace:
        progress.phase(f"trace ({args.trace_samples} Rademacher vectors)")
        result["trace"], result["trace_stderr"], result["trace_samples"] = \
            hutchinson_trace(op, args.trace_samples, args.seed)
        progress.end(f"trace {result['trace']:.6g} ± {result['trace_stderr']:.2g}")
    return result


def move_to_at(args, net):
    """Move ``net`` to ``--at x[,y]`` along ``--dir_file``; returns the point."""
    point = parse_at(args.at) if args.at else []
    if not point:
        return []
    if not args.dir_file:
        raise UserError("--at needs the --dir_file whose directions the point refers to")
    xdir, ydir = net_plotter.read_directions(args.dir_file, net, args.dir_type, len(point) == 2)
    net_plotter.Perturbation(net, args.dir_type, xdir, ydir).set(*point)
    return point


def report(result, point, op, seconds, out):
    where = f"at {tuple(point)}" if point else "at the model"
    print(f"Hessian of the mean training loss {where} ({op.shape[0]} parameters, "
          f"{op.count} products, {seconds:.1f} s):")
    if "top_eigenvalues" in result:
        print("  top eigenvalues: " + " ".join(f"{v:.6g}" for v in result["top_eigenvalues"]))
    print(f"  max_eig {result['max_eig']:.6g}  min_eig {result['min_eig']:.6g}  "
          f"|min/max| {abs(result['min_eig'] / result['max_eig']):.4g}")
    if "trace" in result:
        print(f"  trace ≈ {result['trace']:.6g} ± {result['trace_stderr']:.2g} (standard error, "
              f"{len(result['trace_samples'])} Rademacher vectors)")
    print(f"saved {out}", flush=True)


def main(argv=None):
    args = flags.parse_args(build_parser(), argv)
    check_args(args)
    if args.top_k or args.trace:
        single_point(args)
    else:
        grid_mode(args)


if __name__ == "__main__":
    run_main(main)
