"""Plot 2D surfaces: labelled contours, filled contours, a heat map and a 3D surface
of one quantity; the optimization path projected onto PCA directions; Hessian
eigenvalue maps.

    python plot_2D.py --surf_file surf.h5 --surf_name train_loss [--vmin 0.1 --vmax 10 --vlevel 0.5]
    python plot_2D.py --surf_file surf.h5 --proj_file proj.h5 --dir_file pca_dirs.h5

Figures (``<surface file>_<surf_name>_<kind>.<format>``, naming in plot_common):
``2dcontour``, ``2dcontourf``, ``2dheat``, ``3dsurface``; with --proj_file
``<projection file>_<surf_name>_2dcontour_proj`` (or ``<projection file>_trajectory``
without a surface); files holding max_eig/min_eig add ``max_eig_2dheat``,
``min_eig_2dheat`` and ``eig_ratio_2dheat`` (|min_eig/max_eig|).
"""
import os
from typing import Iterable, Optional

import numpy as np

import flags
from errors import UserError, run_main
from fileio import open_h5
from plot_common import (Plots, add_output_args, check_finite, describe,
                         ensure_folder, finish, html_surface, load_surface, optional_float,
                         output_base, pyplot, quantity_label, save_figure, write_html)

CMAP = "viridis"
MAX_LEVELS = 500


def plot_2d_contour(surf_file: str, surf_name: Optional[str] = None,
                    vmin: Optional[float] = None, vmax: Optional[float] = None,
                    vlevel: Optional[float] = None, show: bool = False, log: bool = False,
                    zlim: Optional[float] = None, proj_file: Optional[str] = None,
                    dir_file: Optional[str] = None, out_dir: Optional[str] = None,
                    formats: Iterable[str] = ("pdf",), html: bool = False) -> Plots:
    """All 2D figures of one quantity of a surface file; returns Plots (figures, files).

    ``vmin``/``vmax``/``vlevel``: contour levels and colour range (values; ``vlevel`` in
    decades with ``log``); the 3D surface is clipped at min(vmax, zlim). The
    interactive page (``html``) shows exactly the same. Bad input raises UserError
    before anything is written."""
    check_finite(vmin=vmin, vmax=vmax, vlevel=vlevel, zlim=zlim)
    surf = load_surface(surf_file, ndim=2)
    if min(surf.shape) < 2:
        raise UserError(f"{surf_file} has a {surf.shape[0]} x {surf.shape[1]} grid; contours "
                        "need at least 2 points along x and y")
    name = surf_name or ("train_loss" if "train_loss" in surf.values else surf.names()[0])
    Z = surf.get(name)
    levels, norm = contour_levels(Z, vmin, vmax, vlevel, log)
    clip = surface_clip(vmin, vmax, zlim, log)
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(surf_file)))
    if proj_file:
        read_projection(proj_file)                           # check it before writing anything
        check_readable(dir_file, "direction file")
    plt = pyplot(show)
    plots = Plots()
    base = lambda what: output_base(surf_file, f"{name}_{what}", out_dir)
    scale = " (log scale)" if log else ""
    label = name + scale                                       # colour bars
    title = f"{quantity_label(name)}{scale}\n{describe(surf)}"
    X, Y = np.meshgrid(surf.x, surf.y, indexing="ij")      # [i, j] = (x_i, y_j), as Z
    Zm = np.ma.masked_invalid(Z)

    # labelled contours
    fig, ax = plt.subplots()
    cs = ax.contour(X, Y, Zm, levels=levels, norm=norm, cmap=CMAP)
    ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    decorate(fig, ax, cs, title, label)
    save_figure(fig, base("2dcontour"), formats, plots, "2dcontour", show)

    # filled contours
    fig, ax = plt.subplots()
    cs = ax.contourf(X, Y, Zm, levels=levels, norm=norm, cmap=CMAP, extend="both")
    decorate(fig, ax, cs, title, label)
    save_figure(fig, base("2dcontourf"), formats, plots, "2dcontourf", show)

    # heat map
    fig, ax = plt.subplots()
    mesh = heat_map(ax, surf.x, surf.y, Z, norm)
    decorate(fig, ax, mesh, title, label)
    save_figure(fig, base("2dheat"), formats, plots, "2dheat", show)

    # 3D surface
    fig = surface_3d(plt, X, Y, Z, name, title, norm, clip, log)
    save_figure(fig, base("3dsurface"), formats, plots, "3dsurface", show)

    # the optimization path on the contours
    if proj_file:
        fig, ax = plt.subplots()
        cs = ax.contour(X, Y, Zm, levels=levels, norm=norm, cmap=CMAP)
        ax.clabel(cs, inline=True, fontsize=6, fmt="%.3g")
        draw_trajectory(ax, proj_file, dir_file)
        ax.set_title(title, fontsize="medium")
        colorbar(fig, ax, cs, label)
        save_figure(fig, output_base(proj_file, f"{name}_2dcontour_proj", out_dir), formats,
                    plots, "2dcontour_proj", show)

    # Hessian eigenvalue maps
    if "eig_ratio" in surf.names():
        for eig in ("max_eig", "min_eig", "eig_ratio"):
            if eig != name:
                fig, ax = plt.subplots()
                values = surf.get(eig)
                mesh = heat_map(ax, surf.x, surf.y, values, None)
                decorate(fig, ax, mesh, f"{quantity_label(eig)}\n{describe(surf)}", eig)
                save_figure(fig, output_base(surf_file, f"{eig}_2dheat", out_dir), formats,
                            plots, f"{eig}_2dheat", show)

    if html:
        page = html_surface(surf.x, surf.y, Z, name, title, log=log,
                            color_range=(norm.vmin, norm.vmax), levels=levels, clip=clip)
        write_html(page, base("interactive"), plots)
    return finish(plots, show)


def surface_clip(vmin=None, vmax=None, zlim=None, log=False):
    """(None, high): the 3D surface is clipped from above at the lower of --vmax and
    --zlim (values), so that a few huge losses do not flatten the rest; None when
    neither is given. (Values below --vmin keep their height; only their colour
    saturates.)"""
    tops = [v for v in (vmax, zlim) if v is not None]
    if log and zlim is not None and zlim <= 0:
        raise UserError(f"--log shows log10 of the values; --zlim must be above 0, got {zlim:g}")
    if vmin is not None and zlim is not None and not zlim > vmin:
        raise UserError(f"--zlim ({zlim:g}) must be above --vmin ({vmin:g})")
    return (None, min(tops)) if tops else None


def surface_3d(plt, X, Y, Z, name, title, norm, clip, log):
    """The 3D surface: z clipped to ``clip``, log10(value) with ``log`` (ticks labelled
    in values); at most 5 ticks per axis, fewer where their labels would overlap."""
    fig = plt.figure(figsize=(8, 6.5))
    ax = fig.add_subplot(projection="3d")
    Zs = Z if clip is None else np.clip(Z, -np.inf if clip[0] is None else clip[0],
                                        np.inf if clip[1] is None else clip[1])  # NaN stays
    to = _log10 if log else (lambda v: v)
    Zs = to(Zs)
    lo, hi = to(norm.vmin), to(norm.vmax)
    surface = ax.plot_surface(X, Y, np.ma.masked_invalid(Zs), cmap=CMAP, vmin=lo, vmax=hi,
                              rcount=min(X.shape[0], 150), ccount=min(X.shape[1], 150),
                              linewidth=0, antialiased=False)
    ax.xaxis.set_major_formatter(ValueFormatter())
    ax.yaxis.set_major_formatter(ValueFormatter())
    ax.zaxis.set_major_formatter(ValueFormatter(log))
    ax.tick_params(labelsize="small", pad=2)
    ax.set_xlabel("x", labelpad=8)
    ax.set_ylabel("y", labelpad=8)
    ax.set_zlabel(f"{name} (log scale)" if log else name, labelpad=10)
    finite = Zs[np.isfinite(Zs)]
    if clip is not None and finite.size:
        z_lo = to(clip[0]) if clip[0] is not None else finite.min()
        z_hi = to(clip[1]) if clip[1] is not None else finite.max()
        if z_hi > z_lo:
            ax.set_zlim(z_lo, z_hi)
    ax.set_title(title, fontsize="medium")
    cb = fig.colorbar(surface, ax=ax, shrink=0.6, pad=0.1,
                      label=f"{name} (log scale)" if log else name)
    cb.ax.yaxis.set_major_formatter(ValueFormatter(log))
    decades = log and finite.size and np.ptp(finite) >= 2
    thin_ticks(fig, (ax.xaxis, ax.yaxis, ax.zaxis), whole=(ax.zaxis,) if decades else ())
    return fig


def thin_ticks(fig, axes, most=5, whole=()):
    """Give each axis at most ``most`` ticks, and fewer (down to 2) while any two of
    its tick labels overlap on the drawn figure; axes in ``whole`` get whole-number
    ticks (decades on a log10 axis)."""
    from matplotlib.ticker import MaxNLocator
    todo = list(axes)

    def locate(axis, nbins):
        axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10],
                                           integer=axis in whole))
    for axis in todo:
        locate(axis, most - 1)
    get_renderer = getattr(fig.canvas, "get_renderer", None)
    nbins = most - 1
    while todo and get_renderer is not None and nbins > 1:
        fig.draw_without_rendering()
        renderer = get_renderer()
        todo = [axis for axis in todo if _labels_overlap(axis, renderer)]
        nbins -= 1
        for axis in todo:
            locate(axis, nbins)


def shown_tick_labels(axis):
    """The tick labels an axis draws (3D axes keep labels for ticks outside the view)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(abs(lo), abs(hi), hi - lo)
    return [t for t, loc in zip(axis.get_ticklabels(), axis.get_majorticklocs())
            if lo - eps <= loc <= hi + eps and t.get_visible() and t.get_text()]


def _labels_overlap(axis, renderer):
    boxes = [t.get_window_extent(renderer) for t in shown_tick_labels(axis)]
    return any(a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


class ValueFormatter:
    """Tick labels in values (10**tick with ``log``), with the fewest significant
    digits (3 or more) that keep the labels of one axis distinct; no offset text."""

    def __new__(cls, log=False):
        from matplotlib.ticker import Formatter

        class _Formatter(Formatter):
            def __call__(self, v, pos=None):
                return self.format_ticks([v])[0]

            def format_ticks(self, values):
                vals = np.asarray([10.0 ** v if log else v for v in values], dtype=float)
                if not vals.size:
                    return []
                scale = np.abs(vals).max() if np.isfinite(vals).all() else 1.0
                vals = np.where(np.abs(vals) < 1e-9 * scale, 0.0, vals)
                for digits in range(3, 13):
                    labels = [f"{v:.{digits}g}" for v in vals]
                    if len(set(labels)) == len(labels):
                        break
                return labels

        return _Formatter()


def _log10(v):
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def contour_levels(Z, vmin=None, vmax=None, vlevel=None, log=False):
    """Contour levels and colour normalization. Levels run from vmin to vmax
    *inclusive* every vlevel (``np.arange(vmin, vmax + vlevel/2, vlevel)``); unset
    values come from the data (about 20 levels at a round step). With ``log`` the
    levels are even in log10(value): vmin/vmax are values, vlevel is in decades."""
    from matplotlib.colors import LogNorm, Normalize
    check_finite(vmin=vmin, vmax=vmax, vlevel=vlevel)
    if vlevel is not None and vlevel <= 0:
        raise UserError(f"--vlevel must be positive, got {vlevel}")
    data = Z[np.isfinite(Z)]
    if log:
        if (vmin is not None and vmin <= 0) or (vmax is not None and vmax <= 0):
            raise UserError("--log needs --vmin and --vmax above 0")
        data = np.log10(data[data > 0])
        if not data.size:
            raise UserError("--log: the surface has no values above 0 to plot")
    elif not data.size:
        raise UserError("the surface has no finite values to plot")
    to_axis = np.log10 if log else float
    lo = to_axis(vmin) if vmin is not None else None
    hi = to_axis(vmax) if vmax is not None else None
    if lo is not None and hi is not None and not lo < hi:
        raise UserError(f"--vmin ({vmin}) must be below --vmax ({vmax})")
    d_lo = data.min() if lo is None else lo
    d_hi = data.max() if hi is None else hi
    if not d_hi > d_lo:
        d_hi = d_lo + 1.0
    step = vlevel if vlevel is not None else round_step((d_hi - d_lo) / 20)
    lo = np.floor(d_lo / step) * step if lo is None else lo
    hi = np.ceil(d_hi / step - 1e-9) * step if hi is None else hi
    if (hi - lo) / step > MAX_LEVELS:
        raise UserError(f"--vlevel {step:g} gives more than {MAX_LEVELS} contour levels "
                        f"between {lo:g} and {hi:g}; use a larger --vlevel")
    levels = np.arange(lo, hi + step / 2, step)
    if len(levels) < 2:
        raise UserError(f"--vlevel {step:g} leaves fewer than 2 contour levels between "
                        f"--vmin and --vmax; use a smaller --vlevel")
    if log:
        return 10.0 ** levels, LogNorm(10.0 ** levels[0], 10.0 ** levels[-1])
    return levels, Normalize(levels[0], levels[-1])


def round_step(raw):
    """The smallest 1, 2 or 5 times a power of ten that is >= raw."""
    power = 10.0 ** np.floor(np.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def heat_map(ax, x, y, Z, norm):
    """Cells centred on the grid points, x across and y up (Z.T: rows are y)."""
    return ax.pcolormesh(x, y, np.ma.masked_invalid(Z).T, shading="nearest", cmap=CMAP,
                         norm=norm, rasterized=True)


def decorate(fig, ax, mappable, title, name):
    ax.set_xlabel("x", fontsize="large")
    ax.set_ylabel("y", fontsize="large")
    ax.set_title(title, fontsize="medium")
    colorbar(fig, ax, mappable, name)


def colorbar(fig, ax, mappable, label, **kw):
    """A colour bar; on a log scale ticked at 1, 2, 5 x 10^k with plain numbers."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    cb = fig.colorbar(mappable, ax=ax, label=label, **kw)
    if isinstance(mappable.norm, LogNorm):
        cb.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        cb.ax.yaxis.set_minor_locator(NullLocator())
    return cb


# ---------------------------------------------------------------- trajectories

def draw_trajectory(ax, proj_file, dir_file=None):
    """The projected path (proj_xcoord, proj_ycoord) with markers, its start, the final
    model at (0, 0), and PCA axis labels from dir_file's explained_variance_ratio_."""
    px, py = read_projection(proj_file)
    ax.plot(px, py, marker=".", color="tab:red", linewidth=1, markersize=4, label="path")
    ax.plot(px[:1], py[:1], "o", color="tab:red", markersize=6, label="start")
    ax.plot([0], [0], "*", color="k", markersize=12, label="final model")
    ax.legend(fontsize="small", loc="best")
    xlabel, ylabel = "x", "y"
    if dir_file:
        with open_h5(dir_file, "direction file") as f:
            if "explained_variance_ratio_" in f:
                try:
                    ratio = np.asarray(f["explained_variance_ratio_"][()], dtype=float).ravel()
                except (TypeError, ValueError):
                    ratio = np.zeros(0)
                if ratio.size and np.isfinite(ratio[:2]).all():
                    xlabel = f"1st PC: {ratio[0] * 100:.2f} %"
                    ylabel = f"2nd PC: {ratio[1] * 100:.2f} %" if ratio.size > 1 else "y"
    ax.set_xlabel(xlabel, fontsize="x-large")
    ax.set_ylabel(ylabel, fontsize="x-large")


def check_readable(path: Optional[str], what: str) -> None:
    """An optional HDF5 input (None or '': not given) must exist and open."""
    if path:
        with open_h5(path, what):
            pass


def read_projection(proj_file: str):
    """(proj_xcoord, proj_ycoord) of a projection file, checked: two 1-D arrays of the
    same length >= 1, finite numbers."""
    import h5py
    with open_h5(proj_file, "projection file") as f:
        missing = {"proj_xcoord", "proj_ycoord"} - set(f.keys())
        if missing:
            raise UserError(f"{proj_file} is not a projection file (no {', '.join(sorted(missing))}); "
                            "make it with plot_trajectory.py")
        coords = []
        for k in ("proj_xcoord", "proj_ycoord"):
            d = f[k]
            if not isinstance(d, h5py.Dataset) or d.dtype.kind not in "fiu" or d.size == 0:
                raise UserError(f"{proj_file}: '{k}' is not a list of numbers; make the file "
                                "again with plot_trajectory.py")
            coords.append(np.asarray(d[()], dtype=float).reshape(-1))
    px, py = coords
    if len(px) != len(py):
        raise UserError(f"{proj_file}: proj_xcoord has {len(px)} points but proj_ycoord "
                        f"{len(py)}; make the file again with plot_trajectory.py")
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        raise UserError(f"{proj_file} holds NaN or infinite coordinates; make the file again "
                        "with plot_trajectory.py")
    return px, py


def plot_trajectory(proj_file: str, dir_file: Optional[str] = None, show: bool = False,
                    out_dir: Optional[str] = None, formats: Iterable[str] = ("pdf",)) -> Plots:
    """The projected optimization path alone (no surface); UserError on bad input,
    before anything is written."""
    read_projection(proj_file)
    check_readable(dir_file, "direction file")
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(proj_file)))
    plt = pyplot(show)
    plots = Plots()
    fig, ax = plt.subplots()
    draw_trajectory(ax, proj_file, dir_file)
    ax.set_title(f"optimization path: {os.path.basename(proj_file)}", fontsize="medium")
    save_figure(fig, output_base(proj_file, "trajectory", out_dir), formats, plots,
                "trajectory", show)
    return finish(plots, show)


# ---------------------------------------------------------------- command line

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
                    help="highest contour level / colour, included (default: data maximum)")
parser.add_argument("--vlevel", type=optional_float, default=None,
                    help="contour spacing (decades with --log; default: about 20 levels)")
parser.add_argument("--zlim", "--zmax", dest="zlim", type=optional_float, default=None,
                    help="clip the 3D surface (static and --html) at this value (default: "
                         "at --vmax if given, else no clipping)")
parser.add_argument("--log", action="store_true", help="log colour scale and contour levels")
add_output_args(parser)


def main(argv=None):
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
