"""Per-layer curvature: top eigenvalue and trace of each layer's diagonal Hessian block.

    python layer_curvature.py --model digits_cnn --model_file M.t7 --plot
    python layer_curvature.py --model resnet56 --model_file M.t7 --group layer1 --group layer2,layer3
    mpirun -n 4 python layer_curvature.py --mpi --cuda --model resnet56 --model_file M.t7

A layer's block is the Hessian of the mean training loss with respect to that layer's
parameters with more than one dimension (its conv/linear weight), every other parameter
held fixed: H_ll = ∂²L/∂θ_l². Blocks are one per module owning such parameters, in model
order; ``--group PREFIX`` (repeatable, or comma-separated) merges every module named
PREFIX or PREFIX.* into one block (e.g. a ResNet stage). For each block:

- ``top_eig``: its largest eigenvalue, by Lanczos (ARPACK, ``--eig_tol``, ``--eig_maxiter``,
  the start vector fixed by ``--seed``);
- ``trace``: exact (the n products with the unit vectors) when the block has at most
  ``--exact_trace_max`` parameters, else Hutchinson's estimate from ``--trace_samples``
  Rademacher vectors with its standard error ``trace_stderr`` (0 when exact).

The block traces add up to the trace of the whole Hessian. The table is printed and
stored in ``--curvature_file`` (default ``<model_file>_layers.h5``: ``top_eig``,
``trace``, ``trace_stderr``, ``exact``, ``parameters``, ``products``, ``seconds`` per
block, ``done``; the block names in the ``layers`` attribute, the settings in
``settings``). Each finished block is saved; a rerun computes only the missing ones and
one with different settings is refused (``--overwrite`` starts afresh). ``--mpi``
shares the blocks out among the ranks; rank 0 writes the file. ``--plot`` draws the
bar chart (log scale) next to the file.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flags
from errors import UserError, run_main
from plot_common import add_format_arg

if TYPE_CHECKING:  # annotations only: the command imports torch after its flags are checked
    import torch
    from scipy.sparse.linalg import LinearOperator

    from plot_common import Plots

KIND = "loss-landscape-layer-curvature"
FIELDS = ("top_eig", "trace", "trace_stderr", "exact", "parameters", "products", "seconds")


def build_parser() -> flags.ArgumentParser:
    p = flags.command_parser(__file__, __doc__)
    flags.add_point_groups(p)
    g = flags.add_hessian_group(p)
    g.add_argument("--group", action="append", default=[],
                   help="merge the modules named PREFIX or PREFIX.* into one block (repeatable; comma lists too)")
    g.add_argument("--trace_samples", type=int, default=100, help="Rademacher vectors per block")
    g.add_argument("--exact_trace_max", type=int, default=100,
                   help="exact trace for blocks of at most N parameters (0: never)")
    g.add_argument("--curvature_file", default="", help="output file (empty: <model_file>_layers.h5)")
    add_format_arg(g, ("pdf", "png"), help="--plot: figure format(s)")
    flags.add_check(p, check_args)
    return p


def check_args(args: argparse.Namespace) -> None:
    flags.check_hessian(args)
    if args.trace_samples < 2:
        raise UserError(f"--trace_samples must be >= 2 (the standard error needs two), got {args.trace_samples}")
    if args.exact_trace_max < 0:
        raise UserError(f"--exact_trace_max must be >= 0, got {args.exact_trace_max}")
    args.groups = [g.strip() for item in args.group for g in item.split(",")]
    if any(not g for g in args.groups):
        raise UserError("--group needs module name prefixes, e.g. --group layer1 or --group layer1,layer2")


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import json  # noqa: E402
import math
import time

import numpy as np

import mpi4pytorch
import runner
import grid
from fileio import check_output_path
from hess_vec_prod import (NonFinite, Progress, check_finite, exact_trace, hutchinson_trace, layer_blocks, top_k,
                           user_error)
from store import ResultStore


def blocks_of(args: argparse.Namespace, net: "torch.nn.Module") -> list:
    model = net.module if hasattr(net, "module") else net
    try:
        blocks = layer_blocks(model, args.groups)
    except ValueError as e:
        raise UserError(f"--group: {e} (module names: python -c \"print(model)\" shows them)")
    if not blocks:
        raise UserError(f"--model {args.model} has no parameters with more than one dimension")
    return blocks


def open_store(args: argparse.Namespace, out: str, settings: dict[str, Any], names: list[str]) -> ResultStore:
    """Rank 0's store of the per-block results (new, resumed or refused), saved once."""
    store = ResultStore(out, KIND, "layer curvature file", len(names), {f: ((), np.nan) for f in FIELDS}, settings,
                        overwrite=args.overwrite, inputs=runner.inputs_of(args))
    store.attrs["layers"] = json.dumps(names)
    store.save()
    return store


def main(argv: list[str] | None = None) -> None:
    args = flags.parse_args(build_parser(), argv)
    out = args.curvature_file or grid.model_stem(args) + "_layers.h5"
    check_output_path(out, "--curvature_file")
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank, size = mpi4pytorch.rank(comm), mpi4pytorch.size(comm)
    device, data, net, point = grid.load_point(args, comm)
    blocks = blocks_of(args, net)
    check_finite(grid.hessian_of(args, net, data, device))  # refuse a loss without a gradient or NaN now
    names = [b for b, _ in blocks]
    settings = {"kind": "layer_curvature", **grid.point_settings(args, data, point),
                "eig_tol": args.eig_tol, "eig_maxiter": args.eig_maxiter, "seed": args.seed,
                "trace_samples": args.trace_samples, "exact_trace_max": args.exact_trace_max,
                "blocks": [[b, [n for n, _ in ps]] for b, ps in blocks]}
    store = mpi4pytorch.check_all(comm, lambda: open_store(args, out, settings, names))
    prefix = f"rank {rank}" if size > 1 else "hessian"

    def compute(k):
        name, params = blocks[k]
        return block_curvature(args, name, grid.hessian_of(args, net, data, device, [p for _, p in params]), prefix)

    runner.run(comm, store if rank == 0 else None, compute, what="blocks", desc="layers",
               save_every=args.save_every, progress=not args.no_progress, setup_seconds=time.perf_counter() - t0)
    if rank != 0:
        return
    store.close()
    print(table(names, store.values, point))
    print(f"saved {out}", flush=True)
    if args.plot:
        plot(out, args.format, args.show)


def block_curvature(args: argparse.Namespace, name: str, op: "LinearOperator", prefix: str) -> dict:
    """One block's row: top eigenvalue (Lanczos) and trace (exact or Hutchinson), with
    progress lines; a NaN/inf product or Lanczos failing is one error line."""
    n = op.shape[0]
    progress = Progress(op, not args.no_progress, args.progress_every, prefix=prefix)
    t = time.perf_counter()
    progress.phase(f"{name} ({n} parameters): top eigenvalue")
    try:
        lam = float(top_k(op, 1, args.eig_tol, args.seed, args.eig_maxiter, strict=True)[0])
    except ArithmeticError as e:
        raise user_error(e, f"in block {name}") from None
    progress.end(f"{lam:.6g}")
    exact = n <= args.exact_trace_max
    progress.phase(f"{name}: trace ({'exact' if exact else f'{args.trace_samples} Rademacher vectors'})")
    if exact:
        tr, se = exact_trace(op), 0.0
    else:
        tr, se, _ = hutchinson_trace(op, args.trace_samples, args.seed)
    progress.end(f"{tr:.6g}" + ("" if exact else f" ± {se:.2g}"))
    if not np.isfinite(tr):
        raise user_error(NonFinite(), f"in block {name}")
    return {"top_eig": lam, "trace": tr, "trace_stderr": se, "exact": float(exact),
            "parameters": float(n), "products": float(op.count), "seconds": time.perf_counter() - t}


def table(names: Sequence[str], v: Mapping[str, np.ndarray], point: Sequence[float] = ()) -> str:
    """The per-block table as text."""
    width = max(12, max(len(n) for n in names))
    where = f"at {tuple(point)}" if point else "at the model"
    lines = [f"Diagonal Hessian blocks of the mean training loss {where}:",
             f"{'block':<{width}} {'params':>8} {'top_eig':>12} {'trace':>12} {'± stderr':>10} "
             f"{'products':>8} {'seconds':>8}"]
    for i, name in enumerate(names):
        se = "exact" if v["exact"][i] else f"{v['trace_stderr'][i]:.2g}"
        lines.append(f"{name:<{width}} {int(v['parameters'][i]):>8d} {v['top_eig'][i]:>12.6g} "
                     f"{v['trace'][i]:>12.6g} {se:>10} {int(v['products'][i]):>8d} "
                     f"{v['seconds'][i]:>8.1f}")
    total_se = math.sqrt(float(np.sum(v["trace_stderr"] ** 2)))
    lines.append(f"{'sum (= tr H)':<{width}} {int(v['parameters'].sum()):>8d} {'':>12} "
                 f"{v['trace'].sum():>12.6g} {total_se:>10.2g}")
    return "\n".join(lines)


def block_labels(names: Sequence[str], parameters: Sequence[float]) -> list[str]:
    """Bar labels: each block's module name as the model names it (a bare index of an
    nn.Sequential becomes 'layer <index>') and its number of parameters."""
    return [f"{'layer ' + name if name.isdigit() else name}\n{int(n):,} params"
            for name, n in zip(names, parameters)]


def plot(path: str, formats: Sequence[str] = ("pdf", "png"), show: bool = False) -> Plots:
    """Bars of each block's top eigenvalue and trace (log scale; negative values hatched)."""
    from fileio import open_h5
    from plot_common import Plots, finish as finish_plots, output_base, pyplot, save_figure
    with open_h5(path, "layer curvature file") as f:
        names = json.loads(f.attrs["layers"])
        settings = json.loads(f.attrs["settings"])
        lam, tr, se, n = f["top_eig"][()], f["trace"][()], f["trace_stderr"][()], f["parameters"][()]
    plt = pyplot(show)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.6 * len(names) + 4), 4.5), sharex=True)
    x = np.arange(len(names))
    for ax, vals, err, label in ((axes[0], lam, None, "Top eigenvalue"), (axes[1], tr, se, "Trace")):
        mag = np.abs(vals)
        bars = ax.bar(x, mag, yerr=err if err is not None and np.any(err > 0) else None,
                      color=["C0" if v >= 0 else "C3" for v in vals], capsize=2)
        for b, v in zip(bars, vals):
            if v < 0:
                b.set_hatch("//")
        ax.set_yscale("log")
        ax.set_title(label + " (|value|; red hatched: negative)", fontsize=9)
        ax.set_xticks(x, block_labels(names, n), rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("block (module of the model)", fontsize=8)
    fig.suptitle(f"{settings.get('model', '')}: curvature of each layer's diagonal Hessian block",
                 fontsize=10)
    fig.tight_layout()
    plots = Plots()
    save_figure(fig, output_base(path, "layers"), formats, plots, "layers", show)
    return finish_plots(plots, show)


if __name__ == "__main__":
    run_main(main)
