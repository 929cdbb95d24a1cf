"""Hessian eigenvalue density at one point by stochastic Lanczos quadrature (SLQ).

    python hessian_spectrum.py --model digits_cnn --model_file M.t7 --plot
    mpirun -n 4 python hessian_spectrum.py --mpi --cuda --model resnet56 --model_file M.t7 \\
        --n_v 8 --lanczos_steps 100 --plot
    python hessian_spectrum.py --model digits_cnn --model_file M.t7 --at 0.5 --dir_file D.h5

The Hessian is that of the mean training loss with respect to the parameters with more
than one dimension (as in plot_hessian_eigen.py; hess_vec_prod.py explains it). Each of
``--n_v`` random starts runs ``--lanczos_steps`` steps of Lanczos (float64, full
reorthogonalisation) from a Gaussian vector; the eigenvalues of its tridiagonal matrix
(the Ritz values θ_j) with the squared first components of their eigenvectors (the
weights w_j, summing to 1) are a Gauss quadrature of the spectral measure seen from
that vector. The density is their mean over the starts, each node broadened into a
Gaussian of width σ = ``--sigma`` × (spread of the Ritz values), on ``--n_grid`` points,
normalised to mass 1. λmax/λmin estimates are the extreme Ritz values (they converge
first, within a few tens of steps).

The file (``--spectrum_file``, default ``<model_file>_spectrum.h5``) holds per start
``ritz_values`` and ``ritz_weights`` ((starts, steps), NaN/0 padded), ``products``,
``done``, and ``grid``, ``density``, ``lambda_max``, ``lambda_min``, ``sigma`` (absolute),
``negative_mass`` (the weight of the Ritz values below −σ: clearly negative eigenvalues), with the settings in the
``settings`` attribute. It is resumable: each finished start is saved; a rerun computes
only the missing starts (a larger ``--n_v`` adds starts, a new ``--sigma``/``--n_grid``
only redraws the density); a rerun with different settings (model, data, loss, point,
steps, seed) is refused unless ``--overwrite``. With ``--mpi`` the starts are shared out
among the ranks (each start's vector depends only on ``--seed`` and its index, so the
result does not depend on the number of ranks) and rank 0 writes the file.
"""
from __future__ import annotations

import argparse
import math

import flags
from errors import UserError, run_main
from plot_common import add_format_arg

KIND = "loss-landscape-hessian-spectrum"
# Sizes checked before any work: the density grid is evaluated for every Ritz node
# (n_v x steps x n_grid operations) and stored; the Lanczos vectors are steps x parameters.
MAX_GRID = 10_000_000
MAX_STARTS = 100_000
MAX_STEPS = 100_000
MAX_LANCZOS_BYTES = 64 * 2 ** 30


def build_parser() -> flags.ArgumentParser:
    p = flags.command_parser(__file__, __doc__)
    flags.add_point_groups(p)
    g = flags.add_hessian_group(p, eig=False)
    g.add_argument("--n_v", type=int, default=4, help="random starts")
    g.add_argument("--lanczos_steps", type=int, default=80, help="Lanczos steps per start")
    g.add_argument("--sigma", type=float, default=0.01,
                   help="Gaussian broadening, as a fraction of the spread of the Ritz values")
    g.add_argument("--n_grid", type=int, default=1000, help="points of the density grid")
    g.add_argument("--spectrum_file", default="", help="output file (empty: <model_file>_spectrum.h5)")
    add_format_arg(g, ("pdf", "png"), help="--plot: figure format(s)")
    flags.add_check(p, check_args)
    return p


def check_args(args: argparse.Namespace) -> None:
    flags.check_hessian(args)
    if args.n_v < 1:
        raise UserError(f"--n_v must be >= 1 (random starts), got {args.n_v}")
    if args.lanczos_steps < 1:
        raise UserError(f"--lanczos_steps must be >= 1, got {args.lanczos_steps}")
    if not math.isfinite(args.sigma) or args.sigma <= 0:
        raise UserError(f"--sigma must be a finite number > 0, got {args.sigma}")
    if args.n_grid < 2:
        raise UserError(f"--n_grid must be >= 2, got {args.n_grid}")
    if args.n_grid > MAX_GRID:
        raise UserError(f"--n_grid must be at most {MAX_GRID:,} (the density is {args.n_grid:,} float64 values "
                        f"per array, {args.n_grid * 8 / 2**30:.1f} GiB), got {args.n_grid:,}")
    if args.n_v > MAX_STARTS or args.lanczos_steps > MAX_STEPS:
        raise UserError(f"--n_v must be at most {MAX_STARTS:,} and --lanczos_steps at most {MAX_STEPS:,} "
                        f"(the file holds n_v x lanczos_steps values), got {args.n_v:,} and {args.lanczos_steps:,}")


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import time  # noqa: E402
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

import mpi4pytorch
import runner
import grid
from fileio import check_output_path
from hess_vec_prod import NonFinite, Progress, check_finite, slq_start, spectral_density
from store import ResultStore

if TYPE_CHECKING:
    from plot_common import Plots


def check_memory(args: argparse.Namespace, n: int) -> None:
    """Refuse, before any work, Lanczos runs whose vectors (steps x parameters float64,
    with full reorthogonalisation) would not fit in memory."""
    m = min(args.lanczos_steps, n)
    need = m * n * 8
    if need > MAX_LANCZOS_BYTES:
        raise UserError(f"--lanczos_steps {args.lanczos_steps} keeps {m} vectors of {n:,} parameters "
                        f"({need / 2**30:.1f} GiB) per start, more than {MAX_LANCZOS_BYTES / 2**30:.0f} GiB; "
                        "use fewer steps")


def spectrum_file(args: argparse.Namespace) -> str:
    """--spectrum_file, or the model file's stem + _spectrum.h5."""
    return args.spectrum_file or grid.model_stem(args) + "_spectrum.h5"


def open_store(args: argparse.Namespace, out: str, n: int, settings: dict[str, Any]) -> ResultStore:
    """Rank 0's store of the Ritz values of each start (new, resumed or refused), saved once."""
    store = ResultStore(out, KIND, "spectrum file", args.n_v, {
        "ritz_values": ((args.lanczos_steps,), np.nan), "ritz_weights": ((args.lanczos_steps,), 0.0),
        "products": ((), 0.0)}, settings, overwrite=args.overwrite, grow=True, inputs=runner.inputs_of(args))
    store.save()
    return store


def main(argv: list[str] | None = None) -> None:
    args = flags.parse_args(build_parser(), argv)
    out = spectrum_file(args)
    check_output_path(out, "--spectrum_file")
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank, size = mpi4pytorch.rank(comm), mpi4pytorch.size(comm)
    device, data, net, point = grid.load_point(args, comm)
    op = grid.hessian_of(args, net, data, device)
    n = op.shape[0]
    check_memory(args, n)
    check_finite(op)  # a NaN/inf product is refused before the file is made
    settings = {"kind": "hessian_spectrum", **grid.point_settings(args, data, point),
                "lanczos_steps": args.lanczos_steps, "seed": args.seed, "parameters": n}
    store = mpi4pytorch.check_all(comm, lambda: open_store(args, out, n, settings))
    progress = Progress(op, not args.no_progress, args.progress_every,
                        prefix=f"rank {rank}" if size > 1 else "hessian")

    def compute(k):
        progress.phase(f"start {k}")
        count = op.count
        try:
            vals, weights = slq_start(op, args.lanczos_steps, args.seed, k)
        except NonFinite:
            raise UserError(f"a Hessian-vector product is not finite (NaN/inf loss at this point): no "
                            f"spectrum (start {k} not recorded); check the model file and --at")
        progress.end(f"Ritz values in [{vals.min():.6g}, {vals.max():.6g}]")
        pad = args.lanczos_steps - len(vals)
        return {"ritz_values": np.pad(vals, (0, pad), constant_values=np.nan),
                "ritz_weights": np.pad(weights, (0, pad)), "products": op.count - count}

    seconds = runner.run(comm, store if rank == 0 else None, compute, what="random starts", desc="spectrum",
                         n=args.n_v, plan=f"{args.n_v} random starts of {min(args.lanczos_steps, n)} Lanczos "
                         f"steps ({n} parameters)", save_every=args.save_every, progress=not args.no_progress,
                         setup_seconds=time.perf_counter() - t0)
    if rank != 0:
        return
    result = finish(args, store, out)
    store.close()
    report(args, result, point, n, store, seconds, out)
    if args.plot:
        plot(out, args.format, args.show)


def density_of(values: Sequence[np.ndarray], weights: Sequence[np.ndarray], sigma_rel: float,
               n_grid: int) -> dict[str, Any]:
    """Density, grid and summary numbers from per-start Ritz values and weights."""
    finite = [np.isfinite(v).any() for v in values]
    if not all(finite):
        raise UserError("a Hessian-vector product was not finite (NaN/inf loss at this point): "
                        "no spectrum; check the model file and --at")
    th = np.concatenate([v[np.isfinite(v)] for v in values])
    spread = th.max() - th.min()
    sigma = sigma_rel * (spread if spread > 0 else max(abs(th).max(), 1e-12))
    grid, density = spectral_density(values, weights, sigma, n_grid)
    neg = sum(float(w[np.isfinite(v) & (v < -sigma)].sum()) for v, w in zip(values, weights)) / len(values)
    return {"grid": grid, "density": density, "lambda_max": float(th.max()),
            "lambda_min": float(th.min()), "sigma": sigma, "negative_mass": neg}


def finish(args: argparse.Namespace, store: ResultStore, out: str) -> dict[str, Any]:
    """Rank 0: the density from the first --n_v starts, written into the file."""
    values = [store.values["ritz_values"][i] for i in range(args.n_v)]
    weights = [store.values["ritz_weights"][i] for i in range(args.n_v)]
    result = density_of(values, weights, args.sigma, args.n_grid)
    store.extra = {k: np.asarray(v, dtype=np.float64) for k, v in result.items()}
    store.extra["n_v"] = np.int64(args.n_v)
    store.attrs["density_settings"] = f'{{"n_v": {args.n_v}, "sigma": {args.sigma}, "n_grid": {args.n_grid}}}'
    store.dirty = True
    store.save()
    return result


def report(args: argparse.Namespace, result: dict[str, Any], point: Sequence[float] | None, n: int,
           store: ResultStore, seconds: float, out: str) -> None:
    """Print the summary of the spectrum."""
    where = f"at {tuple(point)}" if point else "at the model"
    products = int(store.values["products"][:args.n_v].sum())
    print(f"Hessian spectral density of the mean training loss {where} ({n} parameters, "
          f"{args.n_v} starts x {min(args.lanczos_steps, n)} Lanczos steps, {products} products; "
          f"{seconds:.1f} s this run):")
    print(f"  lambda_max ≈ {result['lambda_max']:.6g}  lambda_min ≈ {result['lambda_min']:.6g}  "
          f"negative mass {result['negative_mass']:.3g}  sigma {result['sigma']:.3g}")
    print(f"saved {out}", flush=True)


def plot(path: str, formats: Sequence[str] = ("pdf", "png"), show: bool = False) -> Plots:
    """Log density against eigenvalue (as in PyHessian's figures), next to the file."""
    import json

    from fileio import open_h5
    from plot_common import Plots, finish as finish_plots, output_base, pyplot, save_figure
    with open_h5(path, "spectrum file") as f:
        if "density" not in f:
            raise UserError(f"{path} holds no density yet; finish the run first")
        grid, density = f["grid"][()], f["density"][()]
        lmax, lmin = float(f["lambda_max"][()]), float(f["lambda_min"][()])
        settings = json.loads(f.attrs["settings"])
        n_v = int(f["n_v"][()])
    plt = pyplot(show)
    fig, ax = plt.subplots(figsize=(6, 4))
    floor = density.max() * 1e-8
    ax.semilogy(grid, np.maximum(density, floor), lw=1.2)
    ax.set_ylim(floor, density.max() * 3)
    ax.axvline(0, color="0.6", lw=0.6, ls=":")
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (log)")
    ax.set_title(f"{settings.get('model', '')} Hessian spectrum: λmax {lmax:.4g}, λmin {lmin:.4g}\n"
                 f"SLQ, {n_v} starts x {settings.get('lanczos_steps')} steps, "
                 f"{settings.get('parameters')} parameters", fontsize=9)
    plots = Plots()
    save_figure(fig, output_base(path, "density"), formats, plots, "density", show)
    return finish_plots(plots, show)


if __name__ == "__main__":
    run_main(main)
