"""A direction file whose x and y are the top-2 eigenvectors of the Hessian: plot the
landscape along its sharpest directions.

    python hessian_directions.py --model digits_cnn --model_file M.t7 [--dir_file OUT]
        [--norm none|filter] [--k 2] [--eig_tol 1e-6] [--cuda] [--overwrite]
    python plot_surface.py --model digits_cnn --model_file M.t7 --dir_file OUT \\
        --dir_type weights --x=-1:1:51 [--y=-1:1:51]

The Hessian is that of the mean training loss with respect to the parameters with more
than one dimension (hess_vec_prod.Hessian, the model in eval mode); the direction entries
of the other parameters (biases, BatchNorm) are zero. ``xdirection`` is the eigenvector
of the largest eigenvalue, ``ydirection`` (with ``--k 2``, the default) that of the
second largest. ``--norm none`` (default): both are unit vectors in the full parameter
space, orthogonal, and vᵀHv equals the eigenvalue, so along x the loss is
L(0) + g·v·α + λmax·α²/2 + O(α³). ``--norm filter``: each filter is rescaled to the norm
of the model's filter, like the paper's random directions (then no longer unit-norm nor
orthogonal, and the curvature along them is no longer the eigenvalue).

The file is in the standard direction layout (net_plotter.write_directions) with root
attributes ``dir_type`` = "weights", ``eigenvalues``, ``norm``, ``xnorm``/``ynorm``,
``settings`` and ``recipe`` (JSON: model and checkpoint hash, data, loss, k, norm,
tolerance, seed). A rerun with the same settings reuses the file; other settings are
refused unless ``--overwrite``.
"""
import argparse

import flags
import mpi4pytorch
from errors import UserError, run_main

DEFAULT_EIG_TOL = 1e-6


def build_parser() -> flags.ArgumentParser:
    """The run, model, data and evaluation groups, --dir_file (the output) and the Hessian group."""
    p = flags.command_parser(__file__, __doc__)
    flags.add_run_group(p, ngpu=False)
    flags.add_grid_group(p, axes="", engine=False, precision=False)
    flags.add_data_group(p)
    flags.add_model_group(p, checkpoints=1)
    flags.add_directions_group(p, random=False, dir_file_help="the direction file to write (default: "
                               "<model_file>_hessian_top<k>_norm=<norm>.h5)",
                               seed_help="seed of the Lanczos start vector (and of a randomly initialised model)")
    flags.add_output_group(p, surf_file=False, test=False, save_every=False, progress=True,
                           overwrite_help="replace a direction file made with other settings")
    g = flags.add_hessian_group(p, single_point=False, eig_tol=DEFAULT_EIG_TOL, title="Hessian directions")
    g.add_argument("--k", type=int, default=2, help="eigenvectors to write: 1 (x) or 2 (x and y)")
    g.add_argument("--norm", default="none", help="none (unit vectors) or filter (the paper's filter-wise scaling)")
    flags.add_check(p, check_args)
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.k not in (1, 2):
        raise UserError(f"--k must be 1 or 2 (got {args.k})")
    if args.norm not in ("none", "filter"):
        raise UserError(f"--norm must be none or filter (got '{args.norm}')")
    flags.check_hessian(args)
    if args.dir_type != "weights":
        raise UserError("Hessian directions move the parameters: use --dir_type weights")
    if args.mpi or mpi4pytorch.launched_size() > 1:
        raise UserError("hessian_directions.py runs one Lanczos solve: run a single process, without --mpi")


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import json  # noqa: E402
import os
import sys
import time
from typing import Any

import numpy as np
import torch

import dataloader
import model_loader
import net_plotter
import runner
from fileio import check_not_input, check_output_path, check_reuse, open_h5, parse_settings
from grid import hessian_of, load_run, model_stem
from hess_vec_prod import Hessian, NonFinite, Progress, check_finite, hessian_params, top_eigenpairs
from store import ResultStore, damaged

FORMAT_KIND = "hessian_eigenvectors"
ZERO = ("the Hessian is exactly zero here (the loss does not depend on these parameters): every direction "
        "has curvature 0, so there is no sharpest one")


def default_dir_file(args: argparse.Namespace) -> str:
    return model_stem(args) + f"_hessian_top{args.k}_norm={args.norm}.h5"


def vectors_to_directions(net: torch.nn.Module, vecs: np.ndarray, norm: str) -> list[list[torch.Tensor]]:
    """Eigenvectors (n, k) over ``hessian_params(net)`` -> k directions over every
    parameter of ``net`` (zero where the Hessian is not taken), optionally filter-normalized."""
    hess = {name: p for name, p in hessian_params(net)}
    sizes = [p.numel() for p in hess.values()]
    out = []
    for j in range(vecs.shape[1]):
        pieces = dict(zip(hess, torch.from_numpy(vecs[:, j].copy()).split(sizes)))
        direction = []
        for name, w in net_plotter.get_entries(net, "weights"):
            if name in pieces:
                d = pieces[name].view(w.shape).to(torch.float64)
                if norm == "filter":
                    net_plotter.normalize_direction(d, w.detach().cpu().double(), "filter")
                direction.append(d.to(w.dtype))
            else:
                direction.append(torch.zeros(w.shape, dtype=w.dtype))
        out.append(direction)
    return out


def eigen_directions(net: torch.nn.Module, op: Hessian, k: int, norm: str, tol: float, seed: int,
                     maxiter: int | None = None) -> tuple[np.ndarray, list[list[torch.Tensor]]]:
    """(eigenvalues, [directions]): the top-``k`` eigenpairs of ``op`` (the Hessian of
    ``net``) as directions over every parameter of ``net``."""
    try:
        vals, vecs = top_eigenpairs(op, k, tol, seed, maxiter)
    except NonFinite:
        raise UserError("the loss is not finite at this checkpoint (a Hessian-vector product "
                        "holds NaN/inf): no eigenvectors")
    except ArithmeticError as e:
        raise UserError(f"{e}; raise --eig_maxiter or --eig_tol")
    if not np.any(vals):
        raise UserError(ZERO)
    return vals, vectors_to_directions(net, vecs, norm)


def settings_of(args: argparse.Namespace, data: Any, n_params: int) -> dict:
    return {"kind": FORMAT_KIND, "model": args.model,
            "model_file": os.path.basename(args.model_file),
            "model_hash": model_loader.file_hash(args.model_file) if args.model_file else f"init(seed={args.seed})",
            **dataloader.data_settings(args, data), "loss_name": args.loss_name,
            "k": args.k, "norm": args.norm, "eig_tol": args.eig_tol, "eig_maxiter": args.eig_maxiter,
            "seed": args.seed, "parameters": n_params}


def reusable(out: str, settings: dict, overwrite: bool) -> bool:
    """May the existing ``out`` serve this run (the one reuse policy, fileio.check_reuse)? A
    damaged file of ours (settings that do not parse, no eigenvectors or eigenvalues) is
    refused with a line that says to pass --overwrite, which replaces it."""
    def stored() -> dict | None:
        attrs = net_plotter.read_direction_attrs(out)
        return parse_settings(attrs["settings"], out) if "settings" in attrs else None
    if not check_reuse(out, stored, settings, "direction file", overwrite,
                       hint="pass --overwrite to replace it or choose another --dir_file"):
        return False
    attrs = net_plotter.read_direction_attrs(out)
    with open_h5(out, "direction file") as f:
        groups = [g for g in ("xdirection", "ydirection")[:settings["k"]] if g not in f]
    if groups or "eigenvalues" not in attrs or np.size(attrs["eigenvalues"]) != settings["k"]:
        raise damaged(out, f"it has no {groups[0] if groups else 'eigenvalues'} for --k {settings['k']}")
    return True


def main(argv: list[str] | None = None) -> str:
    t0 = time.perf_counter()
    args = flags.parse_args(build_parser(), argv)
    out = args.dir_file or default_dir_file(args)
    check_output_path(out, "--dir_file")
    if args.model_file and not os.path.isfile(args.model_file):
        raise UserError(f"checkpoint not found: {args.model_file}")
    check_not_input(out, "--dir_file", runner.without(runner.inputs_of(args), "--dir_file"))
    device, data, net = load_run(args, None)
    net = net.to(device).eval()
    op = hessian_of(args, net, data, device)  # refuses a model without weights or a loss without a gradient
    n_params = op.shape[0]
    if n_params <= args.k:
        raise UserError(f"the model has only {n_params} Hessian parameters; --k must be below that")
    settings = settings_of(args, data, n_params)
    if reusable(out, settings, args.overwrite):
        vals = net_plotter.read_direction_attrs(out).get("eigenvalues")
        print(f"reusing {out} (same settings); eigenvalues {np.round(np.asarray(vals), 6).tolist()}")
        return out
    if not np.any(check_finite(op, "at this checkpoint")):
        raise UserError(ZERO)
    progress = Progress(op, not args.no_progress, args.progress_every)
    found = ResultStore(None, FORMAT_KIND, "direction file", (), {}, settings)  # in memory: one solve
    t = time.perf_counter()
    solved = {}

    def solve(k: int) -> dict:
        progress.phase(f"top {args.k} eigenpairs ({n_params} parameters)")
        solved["vals"], solved["dirs"] = eigen_directions(net, op, args.k, args.norm, args.eig_tol, args.seed,
                                                          args.eig_maxiter)
        progress.end(" ".join(f"{v:.6g}" for v in solved["vals"]))
        return {}
    runner.run(None, found, solve, what="point", desc="hessian", plan="one Lanczos solve",
               progress=False, setup_seconds=time.perf_counter() - t0)
    vals, dirs = solved["vals"], solved["dirs"]
    seconds = time.perf_counter() - t
    names = [n for n, _ in net_plotter.get_entries(net, "weights")]
    norm_attr = "" if args.norm == "none" else args.norm
    recipe = {"dir_type": "weights", "model": args.model, "model_hash": settings["model_hash"],
              "hessian_top": args.k, "norm": args.norm}
    net_plotter.write_directions(
        out, names, dirs[0], dirs[1] if args.k == 2 else None,
        attrs={"dir_type": "weights", "eigenvalues": vals, "norm": args.norm, "xnorm": norm_attr,
               "ynorm": norm_attr if args.k == 2 else "", "xignore": "biasbn",
               "yignore": "biasbn" if args.k == 2 else "",
               "settings": json.dumps(settings, sort_keys=True), "recipe": json.dumps(recipe),
               "hessian_products": op.count})
    print(f"Hessian of the mean training loss ({n_params} parameters, {op.count} products, "
          f"{seconds:.1f} s): top {args.k} eigenvalues " + " ".join(f"{v:.6g}" for v in vals))
    print(f"wrote {out} (x = eigenvector of λ1{', y = eigenvector of λ2' if args.k == 2 else ''}"
          f", norm {args.norm}); plot with: python plot_surface.py --model {args.model}"
          f"{' --model_file ' + args.model_file if args.model_file else ''} --dir_file {out} "
          f"--dir_type weights --x=-1:1:51{' --y=-1:1:51' if args.k == 2 else ''}", flush=True)
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    run_main(main)
