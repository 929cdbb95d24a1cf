"""Plot 2D surfaces: labelled contours, filled contours, a heat map and a 3D surface
of one quantity; the optimization path projected onto PCA directions; Hessian
eigenvalue maps.

    python plot_2D.py --surf_file surf.h5 --surf_name train_loss [--vmin 0.1 --vmax 10 --vlevel 0.5]
    python plot_2D.py --surf_file surf.h5 --proj_file proj.h5 --dir_file pca_dirs.h5

Without --vmin/--vmax/--vlevel the levels and colours come from the data (its minimum
to its 95 % quantile, 10 to 24 levels at a round step; a log scale when that range
spans 3 decades or more, said in the title; --log/--no-log force the scale). The
figures and their names: plot_maps (the library this command tells).
"""
import argparse

from errors import UserError, run_main
import flags
from plot_common import add_output_args, optional_float
from plot_maps import plot_2d_contour, plot_trajectory, shown_tick_labels  # noqa: F401 (API)

parser = flags.ArgumentParser(description="Plot 2D loss surfaces and trajectories", prog="plot_2D.py")
parser.add_argument("--surf_file", "-f", default="", help="the surface file (.h5)")
parser.add_argument("--dir_file", default="", help="the direction file (PCA axis labels)")
parser.add_argument("--proj_file", default="", help="the projected trajectory file (.h5)")
parser.add_argument("--surf_name", default=None,
                    help="quantity to plot: train_loss (default), test_loss, train_acc, "
                         "test_acc, train_err, test_err, max_eig, min_eig, eig_ratio, ...")
parser.add_argument("--vmin", type=optional_float, default=None,
                    help="lowest contour level / colour (default: data minimum)")
parser.add_argument("--vmax", type=optional_float, default=None,
                    help="highest contour level / colour, included (default: the data's 95 %% "
                         "quantile)")
parser.add_argument("--vlevel", type=optional_float, default=None,
                    help="contour spacing (decades with --log; default: 10 to 24 levels)")
parser.add_argument("--zlim", "--zmax", dest="zlim", type=optional_float, default=None,
                    help="clip the 3D surface (static and --html) at this value (default: "
                         "at --vmax if given, else no clipping)")
parser.add_argument("--log", action=argparse.BooleanOptionalAction, default=None,
                    help="log colour scale and contour levels (default: when the values span "
                         "3 decades or more)")
add_output_args(parser)


def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    opts = dict(show=args.show, out_dir=args.out_dir, formats=args.format)
    if args.surf_file:
        plot_2d_contour(args.surf_file, args.surf_name, args.vmin, args.vmax, args.vlevel,
                        log=args.log, zlim=args.zlim, proj_file=args.proj_file,
                        dir_file=args.dir_file, html=args.html, **opts)
    elif args.proj_file:
        plot_trajectory(args.proj_file, args.dir_file, **opts)
    else:
        raise UserError("nothing to plot; give --surf_file (and/or --proj_file --dir_file)")


if __name__ == "__main__":
    run_main(main)
