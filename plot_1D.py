"""Plot 1D surfaces: loss and accuracy along one direction (or along the line between
two checkpoints), one file or several overlaid.

    python plot_1D.py --surf_file surf.h5 [--log] [--xmin -1 --xmax 1 --loss_max 5]
    python plot_1D.py --surf_file 'runs/seed*.h5' other.h5 --labels a b c   # overlay
    python plot_1D.py --prefix runs/surf --idx_min 1 --idx_max 10           # runs/surf_1.h5 ...

Without flags the axes show every value (a log loss axis when the losses span 3
decades or more). The figures and their names: plot_curves (the library this command
tells).
"""
import argparse
import glob
import os
from typing import Optional, Sequence

from errors import UserError, run_main
import flags
from plot_common import add_output_args, optional_float
from plot_curves import plot_1d_loss_err  # noqa: F401 (the API: plot_1D.plot_1d_loss_err)


def expand_files(patterns: Optional[Sequence[str]], prefix: str = "", idx_min: int = 1,
                 idx_max: int = 10, suffix: str = ".h5") -> list:
    """Surface files from paths and quoted globs, plus the original's --prefix series:
    ``<prefix>_<idx><suffix>`` for idx_min..idx_max (no '_' if prefix ends in '=', as in
    the original plot_surface's ``..._idx=3`` names)."""
    paths = []
    for p in patterns or []:
        if os.path.exists(p) or not glob.has_magic(p):
            paths.append(p)
        else:
            found = sorted(glob.glob(p))
            if not found:
                raise UserError(f"no surface file matches {p!r}")
            paths.extend(found)
    if prefix:
        sep = "" if prefix.endswith(("=", "_")) else "_"
        series = [f"{prefix}{sep}{i}{suffix}" for i in range(idx_min, idx_max + 1)]
        missing = [p for p in series if not os.path.exists(p)]
        if missing:
            raise UserError(f"{len(missing)} of the --prefix files are missing, e.g. "
                            f"{missing[0]}; check --prefix/--idx_min/--idx_max/--suffix")
        paths.extend(series)
    if not paths:
        raise UserError("no surface file given; use --surf_file FILE [FILE ...] or --prefix")
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------- command line

parser = flags.ArgumentParser(description="Plot 1D loss/accuracy curves from surface files", prog="plot_1D.py")
parser.add_argument("--surf_file", "-f", nargs="+", default=[],
                    help="surface file(s) or quoted glob(s); several are overlaid")
parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file")
parser.add_argument("--log", action=argparse.BooleanOptionalAction, default=None,
                    help="log-scale loss axis (default: when the losses span 3 decades or more)")
parser.add_argument("--xmin", type=optional_float, default=None, help="x axis minimum (default: data)")
parser.add_argument("--xmax", type=optional_float, default=None, help="x axis maximum (default: data)")
parser.add_argument("--loss_max", type=optional_float, default=None,
                    help="loss axis maximum (default: every loss shown)")
parser.add_argument("--prefix", default="",
                    help="overlay <prefix>_<idx><suffix> for idx in idx_min..idx_max")
parser.add_argument("--idx_min", default=1, type=int, help="first index for --prefix")
parser.add_argument("--idx_max", default=10, type=int, help="last index for --prefix")
parser.add_argument("--suffix", default=".h5", help="file name end for --prefix (default .h5)")
add_output_args(parser)


def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    paths = expand_files(args.surf_file, args.prefix, args.idx_min, args.idx_max, args.suffix)
    plot_1d_loss_err(paths, args.xmin, args.xmax, args.loss_max, args.log, args.show,
                     labels=args.labels, out_dir=args.out_dir, formats=args.format,
                     html=args.html)


if __name__ == "__main__":
    run_main(main)
