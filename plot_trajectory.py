"""Plot the optimization path of a training run in the plane of its two principal
directions (the original's command line runs unchanged):

    python plot_trajectory.py --model resnet56 --model_folder RUN --max_epoch 300 \\
        --dir_type weights --ignore biasbn
    python plot_trajectory.py --proj_file P.h5 --dir_file D.h5     # replot only

The story: find the checkpoints, compute the PCA directions (or read ``--dir_file``)
and project every checkpoint (projection.py, which documents the files), then draw
the path with the axes labelled "1st PC: xx.xx %" and "2nd PC: xx.xx %"
(plot_2D.plot_trajectory) into ``<projection file>_trajectory.pdf`` (``--format``),
next to the projection file unless ``--out_dir``. To draw the path on loss contours,
run the plot_surface.py command that projection.py prints, then
``plot_2D.py --surf_file S --dir_file D --proj_file P``.
"""
import os

import flags
from errors import UserError, run_main
from plot_common import FORMATS


def build_parser() -> flags.ArgumentParser:
    """projection.py's flags and the figure's."""
    p = flags.command_parser(__file__, __doc__)
    flags.add_trajectory_group(p)
    g = p.add_argument_group("figure")
    g.add_argument("--format", nargs="+", choices=FORMATS, default=["pdf"],
                   help="figure format(s), e.g. --format png pdf")
    g.add_argument("--out_dir", default=None, help="folder of the figure (default: next to the projection file)")
    g.add_argument("--show", action="store_true", help="show the figure")
    return p


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import plot_2D  # noqa: E402
import projection


def main(argv: list[str] | None = None) -> None:
    args = flags.parse_args(build_parser(), argv)
    if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"--out_dir {args.out_dir} is a file, not a folder; choose another --out_dir")
    if args.out_dir:
        projection.check_output_path(os.path.join(args.out_dir, "x"), "--out_dir")
    if args.proj_file and not (args.model_folder or args.model_files):
        if not os.path.isfile(args.proj_file):
            raise UserError(f"projection file not found: {args.proj_file}; give the checkpoints "
                            "(--model_folder ... or --model_files) to compute it")
        dir_file, proj_file = args.dir_file, args.proj_file
    else:
        dir_file, proj_file = projection.run(args)
    plot_2D.plot_trajectory(proj_file, dir_file or None, show=args.show, out_dir=args.out_dir,
                            formats=args.format)


if __name__ == "__main__":
    run_main(main)
