"""Optimization trajectories: the PCA directions of a training run, and the path of
its checkpoints projected onto them (or onto any 2D direction file).

    python projection.py --model digits_cnn --model_folder RUN --max_epoch 20 --ignore biasbn
    python projection.py --model resnet56 --model_files 'RUN/model_*.t7'
    python projection.py --model resnet56 --model_folder RUN --dir_file D.h5   # no PCA

Checkpoints: ``<model_folder>/<prefix><epoch><suffix>`` for epoch = start_epoch,
start_epoch + save_epoch, ..., max_epoch (the original's flags), or ``--model_files``
(paths or glob patterns; each pattern's matches in natural order, i.e. model_2 before
model_10). The final model θ_f is the last checkpoint (``max_epoch``).

PCA (as the original, which used scikit-learn's PCA on the same matrix): the rows are
θ_e − θ_f for every checkpoint, flattened over the entries of ``--dir_type`` (weights:
the parameters; states: the state_dict, BatchNorm running statistics included; integer
buffers such as ``num_batches_tracked`` are left out), with entries of <= 1 dimension
zeroed by ``--ignore biasbn``. The rows are centred and the two leading right singular
vectors are the directions: unit vectors, orthogonal, each signed so that its entry of
largest magnitude is positive (scikit-learn's convention). Everything is computed in
float64 whatever the parameters' dtypes, from a Gram matrix of the checkpoints
(checkpoints × checkpoints), built block by block, so memory stays near the size of the
checkpoints themselves. The direction file has our usual layout (``net_plotter``) plus
``explained_variance_ratio_``, ``singular_values_`` and ``explained_variance_`` at its
root (the original's names and meanings); default path, as the original:
``<model_folder>/PCA_<dir_type>[_ignore=<ignore>]_save_epoch=<k>/directions.h5``.

Projection: the coordinates (x, y) of checkpoint e are those of the point
θ_f + x·dx + y·dy closest to θ_e (least squares), i.e. the coordinates plot_surface.py
uses for the same direction file. For orthonormal directions such as the PCA ones this
is exactly the original's x = (θ_e − θ_f)·dx / |dx| ("cos"). The final model is at
(0, 0). The projection file (default ``<dir_file>_proj_cos.h5``, or ``_proj_lstsq.h5``
for directions that are not orthonormal) holds ``proj_xcoord`` and ``proj_ycoord`` (the
original's names), ``epochs`` and ``model_files``; a suggested ``--x/--y`` range for
plot_surface.py, covering the path with a margin, is printed and stored as attributes.

Existing output files are reused only if they were made from the same checkpoints and
settings; otherwise the run stops (``--overwrite`` replaces them). A ``--dir_file``
given by the user is only read.
"""
from __future__ import annotations

import flags


def build_parser() -> flags.ArgumentParser:
    p = flags.command_parser(__file__, __doc__)
    flags.add_trajectory_group(p)
    return p


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import argparse  # noqa: E402
import glob
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import torch

import model_loader
import net_plotter
from errors import UserError, run_main
from fileio import check_reuse, h5_written_atomically

Rows = list[list[torch.Tensor]]  # per checkpoint, its flattened float entries

BLOCK = 1 << 24  # float64 elements per block (checkpoints × entry columns): 128 MiB


def check_output_path(path: str, flag: str) -> None:
    """One line unless ``path`` can be written as a file: not a folder, and its folder
    exists or can be made (no file in the way), and is writable."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")
    p = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        raise UserError(f"{flag} {path}: {p} is a file, not a folder; choose another path")
    if not os.access(p, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write in {p}; choose another path")


# ----------------------------------------------------------------- checkpoints
def _natural_key(path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def checkpoint_files(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """(files, epochs): the checkpoints in trajectory order; the last is the final model."""
    if args.model_files:
        files = []
        for pattern in args.model_files:
            if glob.has_magic(pattern):
                hits = sorted(glob.glob(pattern), key=_natural_key)
                if not hits:
                    raise UserError(f"--model_files: no file matches {pattern}")
                files += hits
            elif not os.path.isfile(pattern):
                raise UserError(f"--model_files: checkpoint not found: {pattern}")
            else:
                files.append(pattern)
        epochs = [_epoch_of(f, i) for i, f in enumerate(files)]
    else:
        if not args.model_folder:
            raise UserError("give --model_folder (with --prefix/--suffix/--start_epoch/--max_epoch/"
                            "--save_epoch) or --model_files")
        epochs = list(range(args.start_epoch, args.max_epoch + 1, args.save_epoch))
        if not epochs or epochs[-1] != args.max_epoch:
            epochs.append(args.max_epoch)
        files = [os.path.join(args.model_folder, f"{args.prefix}{e}{args.suffix}") for e in epochs]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise UserError(f"{len(missing)} of {len(files)} checkpoints are missing, e.g. {missing[0]}; "
                            "check --model_folder/--prefix/--suffix/--start_epoch/--max_epoch/"
                            "--save_epoch, or list the files with --model_files")
    if len(files) < 3:
        raise UserError(f"a trajectory needs at least 3 checkpoints, got {len(files)}")
    return files, epochs


def _epoch_of(path, index):
    """The last number in the file name without extension (model_12.t7 -> 12), else the position."""
    nums = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(nums[-1]) if nums else index


def load_trajectory(args: argparse.Namespace,
                    files: list[str]) -> tuple[torch.nn.Module, list[str], list[torch.Size], Rows]:
    """(names, dims, shapes, rows): the float entries of every checkpoint, as stored."""
    net = model_loader.build_model(args.model)
    names, rows = None, []
    for f in files:
        model_loader.apply_state_dict(net, model_loader.load_state_dict(f, args.unsafe_load), f)
        entries = [(n, w) for n, w in net_plotter.get_entries(net, args.dir_type) if w.is_floating_point()]
        bad = next((n for n, w in entries if not torch.isfinite(w).all()), None)
        if bad is not None:
            raise UserError(f"checkpoint {f} has NaN or infinite values in {bad}; a diverged "
                            "run cannot be projected: leave that checkpoint out (--model_files)")
        names = [n for n, _ in entries]
        rows.append([w.detach().clone().reshape(-1) for _, w in entries])
    shapes = [w.shape for _, w in entries]
    return net, names, shapes, rows


def differences(rows: Rows, keep: list[bool]) -> Iterator[tuple[int, slice, torch.Tensor]]:
    """Yield (entry index, column slice, D): D = θ_e − θ_f in float64, (checkpoints × columns),
    for the kept entries, in blocks of at most BLOCK elements."""
    final = rows[-1]
    step = max(1, BLOCK // len(rows))
    for j, k in enumerate(keep):
        if not k:
            continue
        for lo in range(0, final[j].numel(), step):
            cols = slice(lo, lo + step)
            base = final[j][cols].double()
            yield j, cols, torch.stack([r[j][cols].double() - base for r in rows])


# ------------------------------------------------------------------------- PCA
def pca_directions(rows: Rows, keep: list[bool],
                   n_components: int = 2) -> tuple[list[list[torch.Tensor]], dict[str, np.ndarray]]:
    """The leading principal directions of the centred rows θ_e − θ_f.

    Returns (directions, stats): ``directions[c][j]`` is the float64 vector of entry j in
    component c (zeros for entries not kept); ``stats`` holds scikit-learn's
    ``explained_variance_ratio_``, ``singular_values_`` and ``explained_variance_``.
    """
    m = len(rows)
    gram = torch.zeros(m, m, dtype=torch.float64)
    for _, _, d in differences(rows, keep):
        d = d - d.mean(dim=0)
        gram += d @ d.T
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    s = evals.sqrt()
    if s[0] == 0:
        raise UserError("all checkpoints are identical (after --ignore): there is no trajectory")
    if s[n_components - 1] <= 1e-10 * s[0]:
        raise UserError("the checkpoints lie on a line (one principal direction only); a 2D "
                        "projection needs a trajectory that spans a plane")
    coef = (evecs[:, :n_components] / s[:n_components]).T  # (components × checkpoints)
    dirs = [[torch.zeros(r.numel(), dtype=torch.float64) for r in rows[-1]] for _ in range(n_components)]
    for j, cols, d in differences(rows, keep):
        comp = coef @ (d - d.mean(dim=0))
        for c in range(n_components):
            dirs[c][j][cols] = comp[c]
    for c in range(n_components):  # sign: the entry of largest magnitude is positive
        peak = max((v for v in dirs[c] if v.numel()), key=lambda v: v.abs().max())
        if peak[peak.abs().argmax()] < 0:
            dirs[c] = [-v for v in dirs[c]]
    total = evals.sum()
    stats = {"explained_variance_ratio_": (evals[:n_components] / total).numpy(),
             "singular_values_": s[:n_components].numpy(),
             "explained_variance_": (evals[:n_components] / (m - 1)).numpy()}
    return dirs, stats


# ------------------------------------------------------------------ projection
def project(rows: Rows, xdir: list[torch.Tensor], ydir: list[torch.Tensor]) -> tuple[np.ndarray, bool]:
    """(coords (checkpoints × 2), orthonormal): least-squares coordinates of θ_e − θ_f in
    the plane of (xdir, ydir), float64; ``orthonormal`` says whether the directions are."""
    dirs = (xdir, ydir)
    gram = np.array([[sum(float(a @ b) for a, b in zip(u, v)) for v in dirs] for u in dirs])
    if np.linalg.matrix_rank(gram, tol=1e-12 * max(gram.trace(), 1e-300)) < 2:
        raise UserError("the two directions are parallel or zero; they do not span a plane")
    final = rows[-1]
    rhs = np.array([[sum(float((r[j].double() - final[j].double()) @ d[j]) for j in range(len(final)))
                     for d in dirs] for r in rows])
    coords = np.linalg.solve(gram, rhs.T).T
    return coords, bool(np.allclose(gram, np.eye(2), atol=1e-6))


def suggest_range(values: Any, margin: float, num: int = 51) -> str:
    """'lo:hi:num' covering ``values`` and 0 with ``margin`` × span on each side,
    rounded outwards to two significant digits of the span."""
    lo, hi = min(float(np.min(values)), 0.0), max(float(np.max(values)), 0.0)
    span = hi - lo
    if span == 0:
        return f"-1:1:{num}"
    lo, hi = lo - margin * span, hi + margin * span
    step = 10.0 ** (math.floor(math.log10(span)) - 1)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    digits = max(0, 1 - math.floor(math.log10(span)))
    return f"{lo:.{digits}f}:{hi:.{digits}f}:{num}"


# ----------------------------------------------------------------------- files
def run_settings(args: argparse.Namespace, files: list[str], epochs: list[int]) -> dict[str, Any]:
    """What identifies a trajectory: stored in the output files, checked on reuse."""
    return {"model": args.model, "dir_type": args.dir_type,
            "checkpoints": [[os.path.basename(f), model_loader.file_hash(f)] for f in files],
            "epochs": [int(e) for e in epochs]}


def _check_existing(path, settings, overwrite, what):
    """Refuse to replace ``path`` unless it was made with ``settings`` or --overwrite."""
    def stored() -> dict | None:
        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("settings")
            return json.loads(raw) if raw is not None else None
        except (OSError, ValueError):
            return None
    check_reuse(path, stored, json.loads(json.dumps(settings)), what, overwrite,
                hint="pass --overwrite to replace it or choose another path")


def default_pca_file(args: argparse.Namespace, files: list[str]) -> str:
    """The PCA direction file's default path: a folder named by the settings beside the run."""
    folder = args.model_folder or os.path.dirname(os.path.abspath(files[-1]))
    name = f"PCA_{args.dir_type}" + (f"_ignore={args.ignore}" if args.ignore else "")
    name += f"_save_epoch={args.save_epoch}" if not args.model_files else f"_{len(files)}files"
    return os.path.join(folder, name, "directions.h5")


def write_projection(path: str, coords: np.ndarray, epochs: list[int], files: list[str], dir_file: str, method: str,
                     settings: dict[str, Any], ranges: tuple[str, str]) -> None:
    """Write the projection file (see the module doc for the layout)."""
    with h5_written_atomically(path) as f:
        f["proj_xcoord"] = coords[:, 0]
        f["proj_ycoord"] = coords[:, 1]
        f["epochs"] = np.asarray(epochs, dtype=np.int64)
        f["model_files"] = np.array([os.path.basename(p) for p in files], dtype=h5py.string_dtype())
        f.attrs["dir_file"] = dir_file
        f.attrs["method"] = method
        f.attrs["settings"] = json.dumps(settings, sort_keys=True)
        f.attrs["suggested_x"], f.attrs["suggested_y"] = ranges


# ------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> tuple[str, str]:
    """PCA (unless --dir_file) and projection; returns (dir_file, proj_file)."""
    flags.check_trajectory(args)  # again: run() is also called with a plain namespace
    files, epochs = checkpoint_files(args)
    base = run_settings(args, files, epochs)
    dir_file = args.dir_file or args.pca_file or default_pca_file(args, files)
    if not args.dir_file:
        check_output_path(dir_file, "the PCA direction file")
    pca_settings = {**base, "kind": "pca", "ignore": args.ignore}
    if args.dir_file:
        made_for = net_plotter.read_direction_attrs(dir_file).get("dir_type", args.dir_type)
        if made_for != args.dir_type:
            raise UserError(f"{dir_file} holds --dir_type {made_for} directions; rerun with "
                            f"--dir_type {made_for}")
    else:
        _check_existing(dir_file, pca_settings, args.overwrite, "PCA direction file")
    print(f"loading {len(files)} checkpoints; final model: {files[-1]}", flush=True)
    net, names, shapes, rows = load_trajectory(args, files)
    if args.dir_file:
        xdir, ydir = net_plotter.read_directions(dir_file, net, args.dir_type, need_y=True)
        floats = [w.is_floating_point() for _, w in net_plotter.get_entries(net, args.dir_type)]
        xdir, ydir = ([t.double().reshape(-1) for t, f in zip(d, floats) if f] for d in (xdir, ydir))
    else:
        keep = [not (args.ignore == "biasbn" and len(s) <= 1) for s in shapes]
        (xdir, ydir), stats = pca_directions(rows, keep)
        write_pca_file(dir_file, net, args.dir_type, names, shapes, xdir, ydir, stats, pca_settings)
        ratio = stats["explained_variance_ratio_"]
        print(f"PCA directions: {dir_file}\n  explained variance ratio: 1st PC {ratio[0]:.4f}, "
              f"2nd PC {ratio[1]:.4f}", flush=True)
    coords, orthonormal = project(rows, xdir, ydir)
    method = "cos" if orthonormal else "lstsq"
    proj_file = args.proj_file or f"{dir_file}_proj_{method}.h5"
    check_output_path(proj_file, "the projection file")
    proj_settings = {**base, "dir_file": os.path.basename(dir_file), "method": method,
                     "directions_hash": net_plotter.directions_hash(xdir, ydir)}
    _check_existing(proj_file, proj_settings, args.overwrite, "projection file")
    ranges = tuple(suggest_range(coords[:, c], args.margin) for c in range(2))
    write_projection(proj_file, coords, epochs, files, dir_file, method, proj_settings, ranges)
    for f, (x, y) in zip(files, coords):
        print(f"  {f}  ({x:.4f}, {y:.4f})")
    print(f"projection: {proj_file}\nthe loss surface around the path (add --mpi/--cuda as usual):\n"
          f"  python plot_surface.py --model {args.model} --model_file {files[-1]} --dir_type "
          f"{args.dir_type} --dir_file {dir_file} --x={ranges[0]} --y={ranges[1]}", flush=True)
    return dir_file, proj_file


def write_pca_file(path: str, net: torch.nn.Module, dir_type: str, names: list[str], shapes: list[torch.Size],
                   xdir: list[torch.Tensor], ydir: list[torch.Tensor], stats: dict[str, np.ndarray],
                   settings: dict[str, Any]) -> None:
    """Write PCA directions for every entry of ``dir_type`` (integer entries: zeros)."""
    by_name = {n: (x.view(s), y.view(s)) for n, s, x, y in zip(names, shapes, xdir, ydir)}
    entries = net_plotter.get_entries(net, dir_type)
    full = [[by_name[n][c] if n in by_name else torch.zeros_like(w) for n, w in entries]
            for c in range(2)]
    net_plotter.write_directions(path, [n for n, _ in entries], full[0], full[1],
                                 attrs={"dir_type": dir_type, "kind": "pca",
                                        "settings": json.dumps(settings, sort_keys=True)},
                                 extra=stats)


def main(argv: list[str] | None = None) -> None:
    run(flags.parse_args(build_parser(), argv))


if __name__ == "__main__":
    run_main(main)
