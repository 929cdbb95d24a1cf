"""Hessian eigenvalues of the loss along one direction (1D) or over a 2D grid, or the
Hessian spectrum at a single point.

    python plot_hessian_eigen.py --model digits_cnn --model_file M.t7 --x=-1:1:21
    mpirun -n 4 python plot_hessian_eigen.py --mpi --cuda --model resnet56 --x=-1:1:51 \\
        --y=-1:1:51 --model_file .../model_300.t7 --plot
    python plot_hessian_eigen.py --model digits_cnn --model_file M.t7 --top_k 10 --trace

Grid mode takes plot_surface.py's flags (not --engine, --points_per_pass, --precision,
--test: the Hessian is that of the fp32 training loss) and shares its machinery (directions,
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
import argparse
from typing import TYPE_CHECKING

import flags
from errors import UserError, run_main

if TYPE_CHECKING:  # annotations only
    from scipy.sparse.linalg import LinearOperator

METRICS = ["max_eig", "min_eig"]


def build_parser() -> flags.ArgumentParser:
    """plot_surface.py's groups less what the Hessian does not use (--engine,
    --points_per_pass, --precision, --test), and the Hessian flags."""
    p = flags.command_parser(__file__, __doc__)
    flags.add_run_group(p)
    flags.add_grid_group(p, engine=False, precision=False)
    flags.add_data_group(p)
    flags.add_model_group(p, checkpoints=3)
    flags.add_directions_group(p)
    flags.add_output_group(p, test=False)
    flags.add_plot_group(p)
    g = flags.add_hessian_group(p)
    g.add_argument("--top_k", type=int, default=0, help="single point: the K largest eigenvalues")
    g.add_argument("--trace", action="store_true", help="single point: Hutchinson estimate of the trace")
    g.add_argument("--trace_samples", type=int, default=100, help="Rademacher vectors for --trace")
    g.add_argument("--spectrum_file", default="", help="single point: output file (empty: <model_file>_hessian.h5)")
    flags.add_check(p, check_args)
    return p


def check_args(args: argparse.Namespace) -> None:
    flags.check_hessian(args)
    if args.top_k < 0:
        raise UserError(f"--top_k must be >= 0, got {args.top_k}")
    if args.trace_samples < 2:
        raise UserError(f"--trace_samples must be >= 2 (the standard error needs two), got {args.trace_samples}")
    if (args.at or args.spectrum_file) and not (args.top_k or args.trace):
        raise UserError("--at and --spectrum_file belong to single-point mode: add --top_k K and/or --trace")
    if (args.top_k or args.trace) and args.dir_file and not args.at:
        raise UserError("single-point mode reads --dir_file only with --at x[,y] (a point along its directions): "
                        "give --at, or drop --dir_file to compute at the model itself")


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import os  # noqa: E402
import time

import numpy as np

import mpi4pytorch
import runner
import grid
from fileio import check_output_path
from store import ResultStore
from hess_vec_prod import NonFinite, Progress, check_finite, hutchinson_trace, min_max_eigs, top_k, user_error


# --------------------------------------------------------------------------- grid
def grid_mode(args: argparse.Namespace) -> None:
    ctx = prepare_grid(args)
    op = grid.hessian_of(args, ctx.net, ctx.data, ctx.device)
    progress = Progress(op, not args.no_progress, args.progress_every,
                        prefix=f"rank {ctx.rank}" if mpi4pytorch.size(ctx.comm) > 1 else "hessian")

    def compute(k):
        point = grid.move_to(ctx, k)
        progress.phase(f"point {point}: λmax/λmin")
        lmax, lmin = min_max_eigs(op, args.eig_tol, args.seed, args.eig_maxiter)
        progress.end(f"max_eig {lmax:.6g} min_eig {lmin:.6g}")
        return {"max_eig": lmax, "min_eig": lmin}

    grid.compute_grid(ctx.spec, ctx, compute, desc="hessian")
    if ctx.rank == 0:
        print(f"done: {ctx.surf_file}", flush=True)
        if args.plot:
            grid.plot(args, ctx, "eig_ratio")


def prepare_grid(args: argparse.Namespace) -> grid.Run:
    """grid.prepare with our metrics; the surface file gets a ``_hessian`` name. The
    Hessian is checked (a differentiable loss, parameters to take it of) before any file
    is written."""
    spec = flags.spec_of(args)
    if not spec.surf_file:
        dir_file = grid.name_direction_file(spec)
        spec = flags.spec_of(args, surf_file=grid.name_surface_file(spec, dir_file)[:-len(".h5")] + "_hessian.h5")
    return grid.prepare(spec, METRICS, kind="hessian", extra_settings={"eig_tol": args.eig_tol, "seed": args.seed},
                        check=lambda net, data: grid.hessian_of(args, net, data, "cpu"))


# ---------------------------------------------------------------- single point
POINT_KIND = "loss-landscape-hessian-point"


def single_point(args: argparse.Namespace) -> None:
    if args.mpi or mpi4pytorch.launched_size() > 1:
        raise UserError("--top_k/--trace compute one point: run a single process, without --mpi")
    out = args.spectrum_file or grid.model_stem(args) + "_hessian.h5"
    check_output_path(out, "--spectrum_file")
    t0 = time.perf_counter()
    device, data, net, point = grid.load_point(args)
    op = grid.hessian_of(args, net, data, device)
    if args.top_k >= op.shape[0]:
        raise UserError(f"--top_k must be below the number of parameters ({op.shape[0]}), got {args.top_k}")
    check_finite(op)  # a NaN/inf product is refused before the file is made
    settings = {**grid.point_settings(args, data, point), "dir_file": os.path.basename(args.dir_file) if point else "",
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


def point_spectrum(args: argparse.Namespace, op: "LinearOperator", progress: Progress) -> dict:
    """The single point's results: top-k eigenvalues, λmax/λmin and the trace, as asked;
    a NaN/inf product or Lanczos failing is one error line (nothing recorded)."""
    try:
        return _point_spectrum(args, op, progress)
    except ArithmeticError as e:
        raise user_error(e, "at this point") from None


def _point_spectrum(args, op, progress):
    result = {}
    if args.top_k:
        progress.phase(f"top {args.top_k} eigenvalues")
        result["top_eigenvalues"] = top_k(op, args.top_k, args.eig_tol, args.seed, args.eig_maxiter, strict=True)
        progress.end(f"λ1 {result['top_eigenvalues'][0]:.6g}")
    progress.phase("λmax/λmin")
    result["max_eig"], result["min_eig"] = min_max_eigs(op, args.eig_tol, args.seed, args.eig_maxiter, strict=True)
    progress.end(f"max_eig {result['max_eig']:.6g}, min_eig {result['min_eig']:.6g}")
    if args.trace:
        progress.phase(f"trace ({args.trace_samples} Rademacher vectors)")
        result["trace"], result["trace_stderr"], result["trace_samples"] = \
            hutchinson_trace(op, args.trace_samples, args.seed)
        if not np.all(np.isfinite(result["trace_samples"])):
            raise NonFinite
        progress.end(f"trace {result['trace']:.6g} ± {result['trace_stderr']:.2g}")
    return result


def ratio(a: float, b: float) -> float:
    """|a / b|, 0 when both are 0 (a Hessian that is exactly zero)."""
    return 0.0 if a == 0 and b == 0 else abs(a / b) if b != 0 else float("inf")


def report(result: dict, point: list[float], op: "LinearOperator", seconds: float, out: str) -> None:
    where = f"at {tuple(point)}" if point else "at the model"
    print(f"Hessian of the mean training loss {where} ({op.shape[0]} parameters, "
          f"{op.count} products, {seconds:.1f} s):")
    if "top_eigenvalues" in result:
        print("  top eigenvalues: " + " ".join(f"{v:.6g}" for v in result["top_eigenvalues"]))
    print(f"  max_eig {result['max_eig']:.6g}  min_eig {result['min_eig']:.6g}  "
          f"|min/max| {ratio(result['min_eig'], result['max_eig']):.4g}")
    if "trace" in result:
        print(f"  trace ≈ {result['trace']:.6g} ± {result['trace_stderr']:.2g} (standard error, "
              f"{len(result['trace_samples'])} Rademacher vectors)")
    print(f"saved {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = flags.parse_args(build_parser(), argv)
    if args.top_k or args.trace:
        single_point(args)
    else:
        grid_mode(args)


if __name__ == "__main__":
    run_main(main)
