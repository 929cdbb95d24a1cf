"""The command-line flags of the grid scripts, parsed and checked before anything heavy.

plot_surface.py, plot_hessian_eigen.py and the curvature scripts share these flags. This
module imports only the standard library (and the data flags of dataloader.py, which is
just as light), so ``--help`` and every flag error come back at once, before torch loads.

``parse_args`` checks every flag that can be checked without reading a file: grid
ranges (finite bounds, an integer count >= 2, a grid whose arrays fit in memory),
non-negative seeds, known normalizations, and so on. Problems that need the files
(a missing checkpoint, a model that does not fit the data) are checked by grid.prepare,
still before anything is written.
"""
import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any

import dataloader
from errors import UserError

if TYPE_CHECKING:
    from spec import RunSpec

PRECISIONS = ("fp32", "tf32", "bf16")
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "")
IGNORES = ("biasbn", "")
DIR_TYPES = ("weights", "states")
ENGINES = ("auto", "eager", "fused", "compiled")
# One grid's arrays (one float64 per quantity and point, plus the done mask) must stay well
# inside memory: 2**27 points is 1 GiB per quantity.
MAX_POINTS = 1 << 27


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default; keeps the description's line breaks."""


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Every flag of plot_surface.py (the original's names and meanings, and ours)."""
    p = argparse.ArgumentParser(description=description or "Loss and accuracy of a network moved "
                                "along one direction (1D) or two (2D grid).",
                                formatter_class=_Formatter)
    p.add_argument("--mpi", "-m", action="store_true", help="use MPI (one rank per GPU or core group)")
    p.add_argument("--cuda", "-c", action="store_true",
                   help="evaluate on the GPU (rank r: its node-local GPU r mod count)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per rank; 0: $OMP_NUM_THREADS when set, else the node's cores "
                        "divided among its ranks")
    p.add_argument("--ngpu", type=int, default=1, help="GPUs per rank (DataParallel), with --cuda and without --mpi")
    p.add_argument("--batch_size", type=int, default=128, help="evaluation batch size")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32 (exact), tf32 or bf16")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="auto: BatchNorm folded into the layer before it where the pattern is recognised "
                        "(exact to 1e-5, channels_last for images), else eager; eager; fused; compiled")
    p.add_argument("--points_per_pass", default=1,
                   help="grid points evaluated in one pass (stacked weights, equal to one at a time within "
                        "1e-6); auto: chosen by a short timing probe")
    dataloader.add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="digits_cnn", help="zoo name (vgg9, resnet56, ..., digits_cnn) or "
                   "package.module:factory")
    g.add_argument("--model_folder", default="", help="folder of the checkpoint files (prefix for --model_file*)")
    g.add_argument("--model_file", default="", help="checkpoint of the model at (0, 0); without it the "
                   "network is randomly initialised (--seed), which is said in the output")
    g.add_argument("--model_file2", default="", help="second checkpoint: x direction = θ2 − θ1")
    g.add_argument("--model_file3", default="", help="third checkpoint: y direction = θ3 − θ1")
    g.add_argument("--unsafe_load", action="store_true", help="allow full unpickling of trusted checkpoint files")
    g.add_argument("--loss_name", "-l", default="crossentropy", help="crossentropy, mse or package.module:function")
    g = p.add_argument_group("directions")
    g.add_argument("--dir_file", default="", help="direction file to use (made if absent; never modified)")
    g.add_argument("--dir_type", default="weights", help="weights (parameters) or states (state_dict incl. "
                   "BN statistics)")
    g.add_argument("--x", default="-1:1:51", help="xmin:xmax:xnum")
    g.add_argument("--y", default=None, help="ymin:ymax:ynum (2D)")
    g.add_argument("--xnorm", default="filter", help="filter | layer | weight | dfilter | dlayer | '' (none)")
    g.add_argument("--ynorm", default="filter", help="filter | layer | weight | dfilter | dlayer | '' (none)")
    g.add_argument("--xignore", default="biasbn", help="'biasbn' zeroes the direction of bias and BN "
                   "entries; --xignore '' moves them too")
    g.add_argument("--yignore", default="biasbn", help="'biasbn' zeroes the direction of bias and BN "
                   "entries; --yignore '' moves them too")
    g.add_argument("--same_dir", action="store_true", help="use the x direction for y too")
    g.add_argument("--idx", type=int, default=0, help="index of the random directions (changes them)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the directions (and of a randomly "
                   "initialised model)")
    g = p.add_argument_group("output")
    g.add_argument("--surf_file", default="", help="surface file (default: named after the direction file)")
    g.add_argument("--overwrite", action="store_true", help="recompute an existing surface file from "
                   "scratch (a --dir_file you give is never touched)")
    g.add_argument("--test", action="store_true", help="also compute test_loss and test_acc")
    g.add_argument("--save_every", type=float, default=10.0, help="seconds between saves of the surface file")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("plotting (with --plot)")
    g.add_argument("--proj_file", default="", help="projected trajectory to draw on the contours")
    g.add_argument("--loss_max", type=float, default=5, help="maximum loss shown in 1D plots")
    g.add_argument("--vmin", type=float, default=0.1, help="minimum contour level")
    g.add_argument("--vmax", type=float, default=10, help="maximum contour level")
    g.add_argument("--vlevel", type=float, default=0.5, help="contour spacing")
    g.add_argument("--show", action="store_true", help="show the plots")
    g.add_argument("--log", action="store_true", help="logarithmic loss axis")
    g.add_argument("--plot", action="store_true", help="plot the surface when done")
    return p


def parse_range(text: str, flag: str) -> tuple[float, float, int]:
    """'min:max:num' -> (min, max, num): finite bounds, num an integer >= 2."""
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"{flag} must be min:max:num, e.g. {flag}=-1:1:51 (got '{text}')")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{flag}: the bounds must be finite numbers (got '{text}')")
    try:
        n = float(parts[2])
    except ValueError:
        n = math.nan
    if not math.isfinite(n) or n != int(n) or n < 2:
        raise UserError(f"{flag}: the number of points must be an integer >= 2 (got '{parts[2]}')")
    return lo, hi, int(n)


def _join_negative_ranges(argv):
    """Let '--x -1:1:51' mean '--x=-1:1:51' (argparse takes '-1:1:51' for a flag)."""
    out, it = [], iter(argv)
    for a in it:
        if a in ("--x", "--y"):
            nxt = next(it, None)
            out.append(a if nxt is None else f"{a}={nxt}")
        else:
            out.append(a)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:  # noqa: C901 -- being split in round 3
    """Parse and check the flags; every problem is a one-line UserError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_ranges(argv))
    args.xmin, args.xmax, args.xnum = parse_range(args.x, "--x")
    args.ymin = args.ymax = args.ynum = None
    if args.y is not None:
        args.ymin, args.ymax, args.ynum = parse_range(args.y, "--y")
    points = args.xnum * (args.ynum or 1)
    if points > MAX_POINTS:
        raise UserError(f"the grid has {points:,} points, more than {MAX_POINTS:,} (its arrays alone would "
                        f"need {points * 8 / 2**30:.1f} GiB per quantity); use fewer points")
    for f in ("model_file", "model_file2", "model_file3"):
        v = getattr(args, f)
        if v and args.model_folder and not os.path.isabs(v):
            setattr(args, f, os.path.join(args.model_folder, v))
    if args.model_file3 and args.y is None:
        raise UserError("--model_file3 sets the y direction: give --y too")
    if (args.model_file2 or args.model_file3) and not args.model_file:
        raise UserError("--model_file2/--model_file3 need --model_file (the model at (0, 0))")
    for a, b in (("model_file", "model_file2"), ("model_file", "model_file3"), ("model_file2", "model_file3")):
        va, vb = getattr(args, a), getattr(args, b)
        if va and vb and os.path.abspath(va) == os.path.abspath(vb):
            raise UserError(f"--{a} and --{b} are the same file, so the direction between them is zero; "
                            "give two different checkpoints")
    if args.dir_type not in DIR_TYPES:
        raise UserError(f"unknown --dir_type '{args.dir_type}'; use weights or states")
    for flag in ("xnorm", "ynorm"):
        if getattr(args, flag) not in NORMS:
            raise UserError(f"unknown --{flag} '{getattr(args, flag)}'; use filter, layer, weight, dfilter, "
                            "dlayer or '' (none)")
    for flag in ("xignore", "yignore"):
        if getattr(args, flag) not in IGNORES:
            raise UserError(f"unknown --{flag} '{getattr(args, flag)}'; use biasbn, or '' to move biases "
                            "and BN parameters too")
    for flag in ("seed", "idx", "threads"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0 (got {getattr(args, flag)})")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1 (got {args.batch_size})")
    if args.ngpu < 1:
        raise UserError(f"--ngpu must be >= 1 (got {args.ngpu})")
    if args.ngpu > 1 and not args.cuda:
        raise UserError("--ngpu needs --cuda (it spreads each batch over GPUs)")
    if args.ngpu > 1 and args.mpi:
        raise UserError("--ngpu is for a single process; with --mpi, start one rank per GPU instead")
    if not (math.isfinite(args.save_every) and args.save_every > 0):
        raise UserError(f"--save_every must be a positive number of seconds (got {args.save_every})")
    for flag in ("loss_max", "vmin", "vmax", "vlevel"):
        if not math.isfinite(getattr(args, flag)):
            raise UserError(f"--{flag} must be a finite number (got {getattr(args, flag)})")
    if args.vlevel <= 0 or args.vmin >= args.vmax:
        raise UserError("--vlevel must be > 0 and --vmin below --vmax")
    args.points_per_pass = _points_per_pass(args.points_per_pass)
    return args


def _points_per_pass(text):
    if str(text) == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise UserError(f"--points_per_pass must be 'auto' or an integer >= 1 (got '{text}')")
    return k


def spec_of(args: argparse.Namespace, **changes: Any) -> "RunSpec":
    """The typed run specification (spec.RunSpec) of parsed flags; ``changes`` replace fields."""
    from spec import RunSpec
    y = (args.ymin, args.ymax, args.ynum) if args.y is not None else None
    fields = {name: getattr(args, name) for name in RunSpec.__dataclass_fields__
              if name not in ("x", "y", "progress", "data_args") and hasattr(args, name)}
    return RunSpec(**{**fields, "x": (args.xmin, args.xmax, args.xnum), "y": y,
                      "progress": not args.no_progress, "data_args": args, **changes})


# ======================================================================== Hessian
# The Hessian flag group of plot_hessian_eigen.py, hessian_spectrum.py, layer_curvature.py
# and hessian_directions.py, and its checks (standard library only, like the rest of this
# module). The defaults are those of hess_vec_prod (tests/test_hessian_edges.py checks they agree).
HESSIAN_TOL = 1e-3            # hess_vec_prod.DEFAULT_TOL
HESSIAN_CACHE_MB = 2048       # hess_vec_prod.DEFAULT_CACHE_MB
HESSIAN_BATCH_MB = 256        # hess_vec_prod.DEFAULT_BATCH_MB


def add_hessian_group(p: argparse.ArgumentParser, eig: bool = True, single_point: bool = True,
                      eig_tol: float = HESSIAN_TOL, title: str = "Hessian") -> argparse._ArgumentGroup:
    """The Hessian flags: memory for the product batches and the kept gradient graphs,
    progress lines, the Lanczos (ARPACK) flags when ``eig`` and ``--at`` when
    ``single_point``; returns the group (the scripts add their own flags to it)."""
    g = p.add_argument_group(title)
    g.add_argument("--hess_cache_mb", type=float, default=HESSIAN_CACHE_MB,
                   help="memory for the gradient graphs kept between products at a point (0: none)")
    g.add_argument("--hess_batch_mb", type=float, default=HESSIAN_BATCH_MB,
                   help="memory for one product batch's graph: the batch of Hessian-vector products is the "
                        "largest that fits (at most the data set; --batch_size is for evaluation only)")
    g.add_argument("--progress_every", type=float, default=5.0,
                   help="seconds between progress lines on stderr (--no_progress: none)")
    if eig:
        g.add_argument("--eig_tol", type=float, default=eig_tol,
                       help="Lanczos (ARPACK) tolerance, relative to the spectral radius")
        g.add_argument("--eig_maxiter", type=int, default=None,
                       help="Lanczos restarts before giving up (default: ARPACK's, 10 × parameters)")
    else:
        g.set_defaults(eig_tol=eig_tol, eig_maxiter=None)
    if single_point:
        g.add_argument("--at", default="", help="x or x,y along --dir_file (default: the model)")
    return g


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def check_hessian(args: argparse.Namespace) -> None:
    """Refuse bad Hessian flags with one line, before any work; sets ``args.at_point``."""
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
    if not _finite(args.hess_batch_mb) or args.hess_batch_mb <= 0:
        raise UserError(f"--hess_batch_mb must be a finite number > 0 (MiB), got {args.hess_batch_mb}")
    if not _finite(args.progress_every) or args.progress_every < 0:
        raise UserError(f"--progress_every must be a finite number >= 0 (seconds), got {args.progress_every}")
    args.at_point = parse_at(args.at) if getattr(args, "at", "") else []
    if args.at_point:
        if not args.dir_file:
            raise UserError("--at needs the --dir_file whose directions the point refers to")
        if not os.path.isfile(args.dir_file):
            raise UserError(f"direction file not found: {args.dir_file!r} (--at refers to an existing one)")


def parse_at(text: str) -> list[float]:
    """'x' or 'x,y' -> [x] or [x, y] (finite numbers), else a UserError."""
    try:
        point = [float(v) for v in str(text).split(",")]
    except ValueError:
        point = []
    if not 1 <= len(point) <= 2 or not all(math.isfinite(v) for v in point):
        raise UserError(f"--at must be x or x,y with finite numbers (got '{text}')")
    return point


def one_point_only(args: argparse.Namespace, script: str) -> None:
    """The single-point scripts take their point from --at, not from a grid or checkpoints."""
    if args.y is not None or args.model_file2 or args.model_file3:
        raise UserError(f"{script} computes one point: use --at x[,y] --dir_file D, "
                        "not --y/--model_file2/--model_file3")
