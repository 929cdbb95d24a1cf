"""The 2D figures of a surface file (a library: plot_2D.py and plot_surface.py --plot
call it): labelled contours, filled contours, a heat map and a 3D surface of one
quantity; the optimization path (or a mode-connectivity curve) projected onto the
plane; Hessian eigenvalue maps.

Figures (``<surface file>_<surf_name>_<kind>.<format>``, naming in plot_common):
``2dcontour``, ``2dcontourf``, ``2dheat``, ``3dsurface``; with a projection file
``<projection file>_<surf_name>_2dcontour_proj`` (or ``<projection file>_trajectory``
without a surface); files holding max_eig/min_eig add ``max_eig_2dheat``,
``min_eig_2dheat`` and ``eig_ratio_2dheat`` (|min_eig/max_eig|). Levels, colours and
the log scale come from plot_common.contour_levels (from the data unless given).
"""
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from errors import UserError
from fileio import open_h5
from surface import Surface
from plot_common import (Plots, Scale, check_finite, contour_levels, describe, ensure_folder,
                         finish, level_labels, load_surface, log10_or_nan, output_base, pyplot, quantity_label,
                         save_figure)
from plot_html import html_surface, write_html

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CMAP = "viridis"


@dataclass
class Map:
    """One quantity of a 2D surface, ready to draw: grid, values, levels, scale, title."""
    x: np.ndarray
    y: np.ndarray
    Z: np.ndarray
    name: str
    levels: np.ndarray
    base_norm: Any
    scale: Scale
    title: str
    surf: Surface

    @property
    def norm(self) -> Any:
        """A fresh copy of the colour normalization for each figure: a norm shared by two
        colour bars is changed by the second, which resets the first one's ticks."""
        return type(self.base_norm)(self.base_norm.vmin, self.base_norm.vmax)

    @property
    def label(self) -> str:
        """The colour bar's label."""
        return self.name + (" (log scale)" if self.scale.log else "")

    def mesh(self) -> tuple:
        """(X, Y, masked Z), [i, j] = (x_i, y_j)."""
        X, Y = np.meshgrid(self.x, self.y, indexing="ij")
        return X, Y, np.ma.masked_invalid(self.Z)


def plot_2d_contour(surf_file: str, surf_name: Optional[str] = None,
                    vmin: Optional[float] = None, vmax: Optional[float] = None,
                    vlevel: Optional[float] = None, show: bool = False, log: Optional[bool] = None,
                    zlim: Optional[float] = None, proj_file: Optional[str] = None,
                    dir_file: Optional[str] = None, out_dir: Optional[str] = None,
                    formats: Iterable[str] = ("pdf",), html: bool = False) -> Plots:
    """All 2D figures of one quantity of a surface file; returns Plots (figures, files).

    ``vmin``/``vmax``/``vlevel``: contour levels and colour range (values; ``vlevel`` in
    decades on a log scale), from the data when not given; ``log`` None chooses the
    scale from the data, True/False force it. The 3D surface is clipped at min(vmax,
    zlim). The interactive page (``html``) shows exactly the same. Bad input raises
    UserError before anything is written."""
    check_finite(vmin=vmin, vmax=vmax, vlevel=vlevel, zlim=zlim)
    m = read_map(surf_file, surf_name, vmin, vmax, vlevel, log)
    clip = surface_clip(vmin, vmax, zlim, m.scale.log)
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(surf_file)))
    if proj_file:
        read_projection(proj_file)                           # check it before writing anything
        check_readable(dir_file, "direction file")
    plt = pyplot(show)
    plots = Plots()
    base = lambda what: output_base(surf_file, f"{m.name}_{what}", out_dir)  # noqa: E731
    figures = {"2dcontour": contour_figure(plt, m), "2dcontourf": filled_figure(plt, m),
               "2dheat": heat_figure(plt, m), "3dsurface": surface_3d(plt, m, clip)}
    for kind, fig in figures.items():
        save_figure(fig, base(kind), formats, plots, kind, show)
    if proj_file:
        fig = contour_figure(plt, m, proj_file, dir_file)
        save_figure(fig, output_base(proj_file, f"{m.name}_2dcontour_proj", out_dir), formats,
                    plots, "2dcontour_proj", show)
    for eig, fig in eig_figures(plt, m.surf, m.name):
        save_figure(fig, output_base(surf_file, f"{eig}_2dheat", out_dir), formats, plots,
                    f"{eig}_2dheat", show)
    if html:
        page = html_surface(m.x, m.y, m.Z, m.name, m.title, log=m.scale.log,
                            color_range=(m.norm.vmin, m.norm.vmax), levels=m.levels, clip=clip)
        write_html(page, base("interactive"), plots)
    return finish(plots, show)


def read_map(surf_file: str, surf_name: Optional[str] = None, vmin: Optional[float] = None,
             vmax: Optional[float] = None, vlevel: Optional[float] = None,
             log: Optional[bool] = None) -> Map:
    """Load one quantity of a 2D surface file (default: train_loss, else the first) with
    its levels and scale (plot_common.contour_levels) and title."""
    surf = load_surface(surf_file, ndim=2)
    if min(surf.shape) < 2:
        raise UserError(f"{surf_file} has a {surf.shape[0]} x {surf.shape[1]} grid; contours "
                        "need at least 2 points along x and y")
    name = surf_name or ("train_loss" if "train_loss" in surf.values else surf.names()[0])
    Z = surf.get(name)
    levels, norm, scale = contour_levels(Z, vmin, vmax, vlevel, log)
    title = f"{quantity_label(name)}{scale.title()}\n{describe(surf)}"
    return Map(surf.x, surf.y, Z, name, levels, norm, scale, title, surf)


def contour_figure(plt: Any, m: Map, proj_file: Optional[str] = None,
                   dir_file: Optional[str] = None) -> "Figure":
    """Labelled contour lines (labels in values), with the projected path when given."""
    fig, ax = plt.subplots()
    X, Y, Zm = m.mesh()
    cs = ax.contour(X, Y, Zm, levels=m.levels, norm=m.norm, cmap=CMAP)
    ax.clabel(cs, inline=True, fontsize=6 if proj_file else 7, fmt=level_labels(cs.levels))
    if proj_file:
        draw_trajectory(ax, proj_file, dir_file)
        ax.set_title(m.title, fontsize="medium")
        colorbar(fig, ax, cs, m.label)
    else:
        decorate(fig, ax, cs, m.title, m.label)
    return fig


def filled_figure(plt: Any, m: Map) -> "Figure":
    fig, ax = plt.subplots()
    X, Y, Zm = m.mesh()
    cs = ax.contourf(X, Y, Zm, levels=m.levels, norm=m.norm, cmap=CMAP, extend="both")
    decorate(fig, ax, cs, m.title, m.label)
    return fig


def heat_figure(plt: Any, m: Map) -> "Figure":
    fig, ax = plt.subplots()
    decorate(fig, ax, heat_map(ax, m.x, m.y, m.Z, m.norm), m.title, m.label)
    return fig


def eig_figures(plt: Any, surf: Surface, shown: str) -> list:
    """[(name, figure)]: heat maps of max_eig, min_eig and eig_ratio (files that hold
    them), except the quantity already shown."""
    if "eig_ratio" not in surf.names():
        return []
    out = []
    for eig in ("max_eig", "min_eig", "eig_ratio"):
        if eig != shown:
            fig, ax = plt.subplots()
            mesh = heat_map(ax, surf.x, surf.y, surf.get(eig), None)
            decorate(fig, ax, mesh, f"{quantity_label(eig)}\n{describe(surf)}", eig)
            out.append((eig, fig))
    return out


def surface_clip(vmin: Optional[float] = None, vmax: Optional[float] = None,
                 zlim: Optional[float] = None, log: bool = False) -> Optional[tuple]:
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


def surface_3d(plt: Any, m: Map, clip: Optional[tuple]) -> "Figure":
    """The 3D surface: z clipped to ``clip``, log10(value) on a log scale (ticks
    labelled in values); the z axis names the quantity once (the colour bar shows the
    colours only); at most 5 ticks per axis, fewer where their labels would overlap."""
    fig = plt.figure(figsize=(8, 6.5))
    ax = fig.add_subplot(projection="3d")
    X, Y, _ = m.mesh()
    log = m.scale.log
    Zs = m.Z if clip is None else np.clip(m.Z, -np.inf if clip[0] is None else clip[0],
                                          np.inf if clip[1] is None else clip[1])  # NaN stays
    to = log10_or_nan if log else (lambda v: v)
    Zs = to(Zs)
    surface = ax.plot_surface(X, Y, np.ma.masked_invalid(Zs), cmap=CMAP, vmin=to(m.norm.vmin),
                              vmax=to(m.norm.vmax), rcount=min(X.shape[0], 150),
                              ccount=min(X.shape[1], 150), linewidth=0, antialiased=False)
    ax.xaxis.set_major_formatter(ValueFormatter())
    ax.yaxis.set_major_formatter(ValueFormatter())
    ax.zaxis.set_major_formatter(ValueFormatter(log))
    ax.tick_params(labelsize="small", pad=2)
    ax.set_xlabel("x", labelpad=8)
    ax.set_ylabel("y", labelpad=8)
    ax.set_zlabel(m.label, labelpad=10)
    finite = Zs[np.isfinite(Zs)]
    if clip is not None and finite.size:
        z_lo = to(clip[0]) if clip[0] is not None else finite.min()
        z_hi = to(clip[1]) if clip[1] is not None else finite.max()
        if z_hi > z_lo:
            ax.set_zlim(z_lo, z_hi)
    ax.set_title(m.title, fontsize="medium")
    cb = fig.colorbar(surface, ax=ax, shrink=0.6, pad=0.1)
    cb.ax.yaxis.set_major_formatter(ValueFormatter(log))
    decades = log and finite.size and np.ptp(finite) >= 2
    thin_ticks(fig, (ax.xaxis, ax.yaxis, ax.zaxis), whole=(ax.zaxis,) if decades else ())
    return fig


def thin_ticks(fig: "Figure", axes: Iterable, most: int = 5, whole: tuple = ()) -> None:
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


def shown_tick_labels(axis: Any) -> list:
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


def heat_map(ax: Any, x: np.ndarray, y: np.ndarray, Z: np.ndarray, norm: Any) -> Any:
    """Cells centred on the grid points, x across and y up (Z.T: rows are y)."""
    return ax.pcolormesh(x, y, np.ma.masked_invalid(Z).T, shading="nearest", cmap=CMAP,
                         norm=norm, rasterized=True)


def decorate(fig: "Figure", ax: Any, mappable: Any, title: str, name: str) -> None:
    ax.set_xlabel("x", fontsize="large")
    ax.set_ylabel("y", fontsize="large")
    ax.set_title(title, fontsize="medium")
    colorbar(fig, ax, mappable, name)


def colorbar(fig: "Figure", ax: Any, mappable: Any, label: str, **kw: Any) -> Any:
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

def is_curve(proj_file: str) -> bool:
    """A projection file of a curve between two minima (mode_connectivity.py writes the
    curve parameter ``t`` and a ``method`` naming the curve), not an optimization path."""
    with open_h5(proj_file, "projection file") as f:
        return "t" in f or "curve" in str(f.attrs.get("method", ""))


def draw_trajectory(ax: "Axes", proj_file: str, dir_file: Optional[str] = None) -> None:
    """The projected points (proj_xcoord, proj_ycoord) with markers. An optimization
    path: its start and the final model at (0, 0); a curve between two minima: its
    ends, model_file at t=0 and model_file2 at t=1. PCA axis labels from dir_file's
    explained_variance_ratio_."""
    px, py = read_projection(proj_file)
    if is_curve(proj_file):
        ax.plot(px, py, marker=".", color="tab:red", linewidth=1, markersize=4, label="curve")
        ax.plot(px[:1], py[:1], "o", color="k", markersize=6, label="model_file (t=0)")
        ax.plot(px[-1:], py[-1:], "s", color="k", markersize=6, label="model_file2 (t=1)")
    else:
        ax.plot(px, py, marker=".", color="tab:red", linewidth=1, markersize=4, label="path")
        ax.plot(px[:1], py[:1], "o", color="tab:red", markersize=6, label="start")
        ax.plot([0], [0], "*", color="k", markersize=12, label="final model")
    ax.legend(fontsize="small", loc="best")
    xlabel, ylabel = pca_labels(dir_file)
    ax.set_xlabel(xlabel, fontsize="x-large")
    ax.set_ylabel(ylabel, fontsize="x-large")


def pca_labels(dir_file: Optional[str]) -> tuple:
    """('1st PC: xx.xx %', '2nd PC: ...') from a PCA direction file, else ('x', 'y')."""
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
    return xlabel, ylabel


def check_readable(path: Optional[str], what: str) -> None:
    """An optional HDF5 input (None or '': not given) must exist and open."""
    if path:
        with open_h5(path, what):
            pass


def read_projection(proj_file: str) -> tuple:
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
    what = "curve between two minima" if is_curve(proj_file) else "optimization path"
    ax.set_title(f"{what}: {os.path.basename(proj_file)}", fontsize="medium")
    save_figure(fig, output_base(proj_file, "trajectory", out_dir), formats, plots,
                "trajectory", show)
    return finish(plots, show)
