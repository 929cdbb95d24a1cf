"""The command-line flags of every script: one parser class and composable flag groups.

Each command builds an ``ArgumentParser`` and adds the groups it uses (``add_run_group``,
``add_model_group``, ``add_data_group``, ``add_directions_group``, ``add_grid_group``,
``add_output_group``, ``add_plot_group``); each group registers its check, and
``parse_args`` runs them all after parsing. A flag a script does not use does not exist
there, so giving it is an error like any other. ``ArgumentParser`` turns every argparse
error into a ``UserError`` (one ``error:`` line, exit 2, see errors.py) and shows every
default in ``--help``.

This module imports only the standard library and light modules (dataloader's data
flags; the choices that evaluation.py and net_plotter.py own, in evaluation_options.py
and direction_options.py), so ``--help`` and every flag error come back at once, before
torch loads. The checks cover everything that can be checked without reading a file:
grid ranges (finite bounds, an integer count >= 2, a grid whose arrays fit in memory),
non-negative seeds, known normalizations, and so on. Problems that need the files (a
missing checkpoint, a model that does not fit the data) are checked by grid.prepare,
still before anything is written.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import dataloader
from direction_options import check_dir_type, check_ignore, check_norm
from errors import SharedUserError, UserError, run_main
from fileio import check_output_path
from hessian_options import DEFAULT_BATCH_MB, DEFAULT_CACHE_MB, DEFAULT_TOL
from evaluation_options import ENGINES, PRECISIONS, check_engine, check_precision

if TYPE_CHECKING:
    from spec import RunSpec

# One grid's arrays (one float64 per quantity and point, plus the done mask) must stay well
# inside memory: 2**27 points is 1 GiB per quantity.
MAX_POINTS = 1 << 27
Check = Callable[[argparse.Namespace], None]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default once (not where the help already says it); keeps line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text.lower() or "%(default)" in text:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command: a bad flag is a ``UserError`` (one ``error:`` line,
    exit 2, via errors.run_main) instead of argparse's usage block; every default shows
    in ``--help``; no abbreviations (``--x`` must never silently mean ``--xnorm``).
    ``checks`` holds the checks of the flag groups added, run by ``parse_args``."""

    def __init__(self, description: str | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(description=description, **kwargs)
        self.checks: list[Check] = []

    def error(self, message: str) -> NoReturn:
        found = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if found:
            given = [a.split("=")[0] for a in found.group(1).split() if a.startswith("-")]
            what = ", ".join(dict.fromkeys(given)) or found.group(1)
            message = f"{what} not used by {self.prog}"
        # Raised alike on every process of a launch, so printed once (errors.run_main).
        raise SharedUserError(f"{message} (see {self.prog} --help)")


def describe(doc: str | None) -> str:
    """The first paragraph of a module docstring: a command's description, never cut mid-sentence."""
    return "\n".join(line.strip() for line in (doc or "").strip().split("\n\n")[0].splitlines())


def command_parser(module_file: str, doc: str | None) -> ArgumentParser:
    """The parser of the command in ``module_file``, described by the first paragraph of ``doc``
    (named after the file also when its ``main`` is called from another program)."""
    return ArgumentParser(describe(doc), prog=os.path.basename(module_file))


def parse_before_imports(build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Parse and check ``sys.argv`` now (a command whose module imports torch calls this
    before those imports): ``--help`` and every flag error return at once, as one line
    (errors.run_main); ``main`` parses again, which costs nothing."""
    run_main(lambda argv: parse_args(build_parser(), argv))


def fixed(parser: argparse.ArgumentParser, **values: object) -> None:
    """Values of flags a script does not take (the library code reads them, the user cannot set them)."""
    parser.set_defaults(**values)


def add_check(parser: argparse.ArgumentParser, check: Check) -> None:
    """Run ``check(args)`` in ``parse_args`` after the checks added before it."""
    if isinstance(parser, ArgumentParser):
        parser.checks.append(check)


# ---------------------------------------------------------------------------------- groups
def add_run_group(p: argparse.ArgumentParser, ngpu: bool = True, mpi_help: str = "use MPI (one rank per GPU "
                  "or core group)") -> argparse._ArgumentGroup:
    """--mpi, --cuda, --threads (and --ngpu): where and how the script runs."""
    g = p.add_argument_group("run")
    g.add_argument("--mpi", "-m", action="store_true", help=mpi_help)
    g.add_argument("--cuda", "-c", action="store_true",
                   help="evaluate on the GPU (rank r: its node-local GPU r mod count)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads per rank; 0: $OMP_NUM_THREADS when set, else the node's cores "
                        "divided among its ranks")
    if ngpu:
        g.add_argument("--ngpu", type=int, default=1,
                       help="GPUs per rank (DataParallel), with --cuda and without --mpi")
    else:
        fixed(p, ngpu=1)
    add_check(p, check_run)
    return g


def check_run(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (got {args.threads})")
    if args.ngpu < 1:
        raise UserError(f"--ngpu must be >= 1 (got {args.ngpu})")
    if args.ngpu > 1 and not args.cuda:
        raise UserError("--ngpu needs --cuda (it spreads each batch over GPUs)")
    if args.ngpu > 1 and args.mpi:
        raise UserError("--ngpu is for a single process; with --mpi, start one rank per GPU instead")


MODEL_FILE_HELP = {
    "model_file": "checkpoint of the model at (0, 0); without it the network is randomly initialised "
                  "(--seed), which is said in the output",
    "model_file2": "second checkpoint: x direction = θ2 − θ1",
    "model_file3": "third checkpoint: y direction = θ3 − θ1",
}


def add_model_group(p: argparse.ArgumentParser, checkpoints: int | str = 1,
                    helps: dict[str, str] | None = None) -> argparse._ArgumentGroup:
    """--model, --model_folder, the checkpoints, --unsafe_load, --loss_name.

    ``checkpoints``: 1 (--model_file), 2 or 3 (also --model_file2, --model_file3), or
    'many' (--model_file A [B ...] and --labels)."""
    helps = {**MODEL_FILE_HELP, **(helps or {})}
    g = p.add_argument_group("model")
    g.add_argument("--model", default="digits_cnn", help="zoo name (vgg9, resnet56, ..., digits_cnn), "
                   "package.module:factory, or hf:DIR (a local HuggingFace folder; --model_file* then name "
                   "HF folders, --model_file defaults to DIR)")
    g.add_argument("--model_folder", default="", help="folder of the checkpoint files (prefix for --model_file*)")
    if checkpoints == "many":
        g.add_argument("--model_file", nargs="+", default=[], help="one or several checkpoints")
        g.add_argument("--labels", nargs="+", default=None, help="table labels of the checkpoints (default: "
                       "file names)")
    else:
        g.add_argument("--model_file", default="", help=helps["model_file"])
        names = ("model_file2", "model_file3")[:int(checkpoints) - 1]
        for name in names:
            g.add_argument(f"--{name}", default="", help=helps[name])
        fixed(p, **{n: "" for n in ("model_file2", "model_file3") if n not in names})
    g.add_argument("--unsafe_load", action="store_true", help="allow full unpickling of trusted checkpoint files")
    g.add_argument("--loss_name", "-l", default="crossentropy", help="crossentropy, mse or package.module:function")
    add_check(p, check_model)
    return g


def _in_folder(path: str, folder: str) -> str:
    return os.path.join(folder, path) if path and folder and not os.path.isabs(path) else path


def check_model(args: argparse.Namespace) -> None:
    """Checkpoint paths joined to --model_folder; two or three checkpoints that make sense together."""
    if isinstance(args.model_file, list):
        args.model_file = [_in_folder(f, args.model_folder) for f in args.model_file]
        if args.labels is not None and len(args.labels) != len(args.model_file):
            raise UserError(f"--labels gives {len(args.labels)} labels for {len(args.model_file)} checkpoints")
        return
    for f in ("model_file", "model_file2", "model_file3"):
        setattr(args, f, _in_folder(getattr(args, f), args.model_folder))
    if args.model.startswith("hf:"):  # a HuggingFace folder is its own checkpoint
        args.model_file = args.model_file or args.model[3:]
        for f in ("model_file", "model_file2", "model_file3"):
            if getattr(args, f):
                setattr(args, f, os.path.normpath(getattr(args, f)))
    if args.model_file3 and getattr(args, "y", None) is None:
        raise UserError("--model_file3 sets the y direction: give --y too")
    if (args.model_file2 or args.model_file3) and not args.model_file:
        raise UserError("--model_file2/--model_file3 need --model_file (the model at (0, 0))")
    for a, b in (("model_file", "model_file2"), ("model_file", "model_file3"), ("model_file2", "model_file3")):
        va, vb = getattr(args, a), getattr(args, b)
        if va and vb and os.path.abspath(va) == os.path.abspath(vb):
            raise UserError(f"--{a} and --{b} are the same file, so the direction between them is zero; "
                            "give two different checkpoints")


def add_data_group(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The data flags (dataloader.add_data_args); checked when the data are loaded."""
    return dataloader.add_data_args(p)


def add_directions_group(p: argparse.ArgumentParser, random: bool = True,
                         dir_file_help: str = "direction file to use (made if absent; never modified)",
                         seed_help: str = "random seed of the directions (and of a randomly initialised model)"
                         ) -> argparse._ArgumentGroup:
    """--dir_file, --dir_type, --seed; with ``random``, the random directions' flags too
    (--xnorm, --ynorm, --xignore, --yignore, --same_dir, --idx)."""
    g = p.add_argument_group("directions")
    g.add_argument("--dir_file", default="", help=dir_file_help)
    g.add_argument("--dir_type", default="weights", help="weights (parameters) or states (state_dict incl. "
                   "BN statistics)")
    if random:
        for axis in "xy":
            g.add_argument(f"--{axis}norm", default="filter", help="filter | layer | weight | dfilter | dlayer | "
                           "'' (none)")
        for axis in "xy":
            g.add_argument(f"--{axis}ignore", default="biasbn", help="'biasbn' zeroes the direction of bias and "
                           f"BN entries; --{axis}ignore '' moves them too")
        g.add_argument("--same_dir", action="store_true", help="use the x direction for y too")
        g.add_argument("--idx", type=int, default=0, help="index of the random directions (changes them)")
    else:
        fixed(p, xnorm="filter", ynorm="filter", xignore="biasbn", yignore="biasbn", same_dir=False, idx=0)
    g.add_argument("--seed", type=int, default=0, help=seed_help)
    add_check(p, check_directions)
    return g


def check_directions(args: argparse.Namespace) -> None:
    check_dir_type(args.dir_type, "--dir_type")
    for axis in "xy":
        check_norm(getattr(args, f"{axis}norm"), f"--{axis}norm")
        check_ignore(getattr(args, f"{axis}ignore"), f"--{axis}ignore")
    for flag in ("seed", "idx"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0 (got {getattr(args, flag)})")


def add_seed(p: argparse.ArgumentParser, help: str) -> None:
    """--seed alone (scripts without directions); checked >= 0."""
    p.add_argument("--seed", type=int, default=0, help=help)
    add_check(p, _check_seed)


def _check_seed(args: argparse.Namespace) -> None:
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0 (got {args.seed})")


def add_grid_group(p: argparse.ArgumentParser, axes: str = "xy", engine: bool = True,
                   precision: bool = True) -> argparse._ArgumentGroup:
    """The points and how they are evaluated: --x/--y (``axes``), --batch_size, and with
    ``precision``/``engine`` --precision, --engine and --points_per_pass."""
    g = p.add_argument_group("grid and evaluation")
    if "x" in axes:
        g.add_argument("--x", default="-1:1:51", help="xmin:xmax:xnum")
    if "y" in axes:
        g.add_argument("--y", default=None, help="ymin:ymax:ynum (2D)")
    fixed(p, **{a: None for a in "xy" if a not in axes})
    g.add_argument("--batch_size", type=int, default=128, help="evaluation batch size")
    if precision:
        g.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32 (exact), tf32 or bf16")
    else:
        fixed(p, precision="fp32")
    if engine:
        g.add_argument("--engine", default="auto", choices=ENGINES,
                       help="auto: BatchNorm folded into the layer before it where the pattern is recognised "
                            "(exact to 1e-5, channels_last for images), else eager; eager; fused; compiled")
        g.add_argument("--points_per_pass", default=1,
                       help="grid points evaluated in one pass (stacked weights, equal to one at a time within "
                            "1e-6); auto: chosen by a short timing probe")
    else:
        fixed(p, engine="auto", points_per_pass=1)
    add_check(p, check_grid)
    return g


def check_grid(args: argparse.Namespace) -> None:
    args.xmin = args.xmax = args.xnum = args.ymin = args.ymax = args.ynum = None
    if args.x is not None:
        args.xmin, args.xmax, args.xnum = parse_range(args.x, "--x")
    if args.y is not None:
        args.ymin, args.ymax, args.ynum = parse_range(args.y, "--y")
    points = (args.xnum or 1) * (args.ynum or 1)
    if points > MAX_POINTS:
        raise UserError(f"the grid has {points:,} points, more than {MAX_POINTS:,} (its arrays alone would "
                        f"need {points * 8 / 2**30:.1f} GiB per quantity); use fewer points")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1 (got {args.batch_size})")
    check_precision(args.precision, "--precision")
    check_engine(args.engine, "--engine")
    args.points_per_pass = _points_per_pass(args.points_per_pass)


def add_output_group(p: argparse.ArgumentParser, surf_file: bool = True, test: bool = True,
                     save_every: bool = True, overwrite_help: str = "recompute an existing surface file from "
                     "scratch (a --dir_file you give is never touched)", progress: bool | None = None
                     ) -> argparse._ArgumentGroup:
    """--surf_file, --overwrite, --test, --save_every, --no_progress (each optional but --overwrite;
    ``progress``: --no_progress, by default with --save_every)."""
    g = p.add_argument_group("output")
    if surf_file:
        g.add_argument("--surf_file", default="", help="surface file (default: named after the direction file)")
    else:
        fixed(p, surf_file="")
    g.add_argument("--overwrite", action="store_true", help=overwrite_help)
    if test:
        g.add_argument("--test", action="store_true", help="also compute test_loss and test_acc")
    else:
        fixed(p, test=False)
    if save_every:
        g.add_argument("--save_every", type=float, default=10.0, help="seconds between saves of the output file")
    if save_every if progress is None else progress:
        g.add_argument("--no_progress", action="store_true", help="no progress bar")
    else:
        fixed(p, no_progress=False)
    add_check(p, check_output)
    return g


def check_output(args: argparse.Namespace) -> None:
    save_every = getattr(args, "save_every", 10.0)
    if not (math.isfinite(save_every) and save_every > 0):
        raise UserError(f"--save_every must be a positive number of seconds (got {save_every})")


def add_plot_group(p: argparse.ArgumentParser, contours: bool = True, log: bool = True) -> argparse._ArgumentGroup:
    """--plot, --show (and --log); with ``contours`` the surface plots' --proj_file,
    --loss_max, --vmin, --vmax and --vlevel."""
    g = p.add_argument_group("plotting (with --plot)")
    if contours:
        g.add_argument("--proj_file", default="", help="projected trajectory to draw on the contours")
        g.add_argument("--loss_max", type=float, default=None, help="maximum loss shown in 1D plots "
                       "(default: every loss; the original's was 5)")
        g.add_argument("--vmin", type=float, default=None, help="minimum contour level (default: the data's "
                       "minimum; the original's was 0.1)")
        g.add_argument("--vmax", type=float, default=None, help="maximum contour level (default: the data's "
                       "95%% quantile; the original's was 10)")
        g.add_argument("--vlevel", type=float, default=None, help="contour spacing (default: 10 to 24 levels; "
                       "the original's was 0.5)")
    else:
        fixed(p, proj_file="", loss_max=None, vmin=None, vmax=None, vlevel=None)
    g.add_argument("--show", action="store_true", help="show the plots")
    if log:
        g.add_argument("--log", action=argparse.BooleanOptionalAction, default=None, help="logarithmic loss "
                       "axis (default: when the values span 3 decades or more)")
    else:
        fixed(p, log=None)
    g.add_argument("--plot", action="store_true", help="plot the results when done")
    add_check(p, check_plot)
    return g


def check_plot(args: argparse.Namespace) -> None:
    for flag in ("loss_max", "vmin", "vmax", "vlevel"):
        if getattr(args, flag) is not None and not math.isfinite(getattr(args, flag)):
            raise UserError(f"--{flag} must be a finite number (got {getattr(args, flag)})")
    if args.vlevel is not None and args.vlevel <= 0:
        raise UserError("--vlevel must be > 0")
    if args.vmin is not None and args.vmax is not None and args.vmin >= args.vmax:
        raise UserError("--vmin must be below --vmax")


def add_trajectory_group(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The checkpoints of a training run and the PCA/projection outputs (projection.py,
    plot_trajectory.py; the original's names and meanings)."""
    g = p.add_argument_group("trajectory")
    g.add_argument("--model", default="digits_cnn", help="zoo name or package.module:factory")
    g.add_argument("--dataset", default="", help="ignored (accepted for the original's command lines)")
    g.add_argument("--model_folder", default="", help="folder of the checkpoints of one training run")
    g.add_argument("--prefix", default="model_", help="checkpoint file name before the epoch")
    g.add_argument("--suffix", default=".t7", help="checkpoint file name after the epoch")
    g.add_argument("--start_epoch", default=0, type=int, help="first epoch")
    g.add_argument("--max_epoch", default=300, type=int, help="last epoch (the final model)")
    g.add_argument("--save_epoch", default=1, type=int, help="epochs between checkpoints")
    g.add_argument("--model_files", nargs="+", default=None,
                   help="checkpoint files or glob patterns instead of the folder flags; the last is the final model")
    g.add_argument("--dir_type", default="weights", help="weights (parameters) or states (state_dict)")
    g.add_argument("--ignore", default="", help="'biasbn': leave out entries with <= 1 dimension")
    g.add_argument("--dir_file", default="", help="project onto this existing 2D direction file instead of PCA")
    g.add_argument("--pca_file", default="", help="where to write the PCA directions (default: the original's "
                   "path)")
    g.add_argument("--proj_file", default="", help="where to write the projection (default: "
                   "<dir_file>_proj_cos.h5)")
    g.add_argument("--margin", default=0.1, type=float, help="margin of the suggested range, a fraction of the span")
    g.add_argument("--overwrite", action="store_true", help="replace output files made with other settings")
    g.add_argument("--unsafe_load", action="store_true", help="allow full unpickling of trusted checkpoint files")
    add_check(p, check_trajectory)
    return g


def check_trajectory(args: argparse.Namespace) -> None:
    check_dir_type(args.dir_type, "--dir_type")
    if args.ignore not in ("", "biasbn"):
        raise UserError(f"unknown --ignore '{args.ignore}'; use biasbn or leave it out")
    if args.save_epoch < 1:
        raise UserError("--save_epoch must be >= 1")
    if not math.isfinite(args.margin) or args.margin < 0:
        raise UserError(f"--margin must be a finite number >= 0, got {args.margin}")
    if args.dir_file and not os.path.isfile(args.dir_file):
        what = "is a folder" if os.path.isdir(args.dir_file) else "not found"
        raise UserError(f"--dir_file {args.dir_file} {what}; give a 2D direction file or leave "
                        "it out to compute PCA directions")
    if args.model_folder and not args.model_files and not os.path.isdir(args.model_folder):
        raise UserError(f"--model_folder {args.model_folder} is not a folder")
    for flag in ("pca_file", "proj_file"):
        if getattr(args, flag):
            check_output_path(getattr(args, flag), f"--{flag}")


def add_point_groups(p: argparse.ArgumentParser) -> None:
    """The groups of a computation at one point (the model, or --at along --dir_file): run, data,
    one checkpoint, --dir_file/--dir_type/--seed, --batch_size, --overwrite/--save_every/--no_progress,
    --plot/--show."""
    add_run_group(p)
    add_grid_group(p, axes="", engine=False, precision=False)
    add_data_group(p)
    add_model_group(p, checkpoints=1)
    add_directions_group(p, random=False, dir_file_help="direction file that --at refers to",
                         seed_help="seed of the random vectors (and of a randomly initialised model)")
    add_output_group(p, surf_file=False, test=False, overwrite_help="recompute an existing output file "
                     "from scratch")
    add_plot_group(p, contours=False, log=False)
    add_check(p, _dir_file_needs_at)


def _dir_file_needs_at(args: argparse.Namespace) -> None:
    if args.dir_file and not getattr(args, "at", ""):
        raise UserError("--dir_file is read only with --at x[,y] (a point along its directions): give --at, "
                        "or drop --dir_file to compute at the model itself")


def build_parser(description: str | None = None) -> ArgumentParser:
    """Every flag of plot_surface.py (the original's names and meanings, and ours): all the groups."""
    p = ArgumentParser(description or "Loss and accuracy of a network moved along one direction (1D) or "
                       "two (2D grid).", prog="plot_surface.py")
    add_run_group(p)
    add_grid_group(p)
    add_data_group(p)
    add_model_group(p, checkpoints=3)
    add_directions_group(p)
    add_output_group(p)
    add_plot_group(p)
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


def _join_negative_ranges(argv: list[str]) -> list[str]:
    """Let '--x -1:1:51' mean '--x=-1:1:51' (argparse takes '-1:1:51' for a flag)."""
    out, it = [], iter(argv)
    for a in it:
        if a in ("--x", "--y"):
            nxt = next(it, None)
            out.append(a if nxt is None else f"{a}={nxt}")
        else:
            out.append(a)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (the checks of every group the parser holds); every problem
    is a one-line UserError, raised alike on every process of a launch."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_ranges(argv))
    try:
        for check in getattr(parser, "checks", []):
            check(args)
    except SharedUserError:
        raise
    except UserError as e:
        raise SharedUserError(str(e)) from None
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


def spec_of(args: argparse.Namespace, **changes: Any) -> RunSpec:
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
# module). The defaults are owned by hess_vec_prod, in the light hessian_options.py.
HESSIAN_TOL = DEFAULT_TOL
HESSIAN_CACHE_MB = DEFAULT_CACHE_MB
HESSIAN_BATCH_MB = DEFAULT_BATCH_MB


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
