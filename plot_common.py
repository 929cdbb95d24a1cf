"""What plot_1D.py, plot_2D.py and h52vtp.py share: loading a surface for plotting,
output file names, titles from the surface's settings, saving figures, and the
interactive HTML export (plotly, self-contained).

Output naming: every output goes next to the surface file (or into ``--out_dir``) and
is named like the original's: ``<surface file name>_<what>.<ext>``, e.g.
``surf.h5_train_loss_2dcontour.pdf``. The name is then sanitized so that it needs no
quoting in a shell: every character other than letters, digits, '.', '_' and '-' becomes
'_', runs of '_' become one (the original's ``.h5_[-1.0,1.0,51].h5`` becomes
``.h5_-1.0_1.0_51_.h5``), and a leading '-' or '.' is dropped.
"""
import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from errors import UserError
from fileio import written_atomically
from surface import Surface, read_surface

FORMATS = ("pdf", "png", "svg")
DPI = 300


@dataclass
class Plots:
    """What a plotting call made: figures by short name, and the files written."""
    figures: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


# ---------------------------------------------------------------- loading

def load_surface(path: str, ndim: int) -> Surface:
    """Read a surface for plotting: check it is ``ndim``-D and has something computed;
    warn (one line) when points are missing -- they are NaN and left blank in plots.
    A damaged or malformed file is a UserError that says what is wrong, never a
    traceback (``surface.read_surface`` checks the file's structure)."""
    surf = read_surface(path)
    if surf.ndim != ndim:
        other = "plot_2D.py or h52vtp.py" if surf.ndim == 2 else "plot_1D.py"
        raise UserError(f"{path} is a {surf.ndim}D surface (shape {surf.shape}), not {ndim}D; "
                        f"plot it with {other}")
    if surf.n_done == 0:
        raise UserError(f"{path} has no computed points yet; run plot_surface.py on it first")
    if not surf.complete:
        print(f"warning: {path}: {surf.n_total - surf.n_done} of {surf.n_total} points not "
              f"computed yet; using the {surf.n_done} that are", file=sys.stderr, flush=True)
    return surf


def check_finite(**flags: Optional[float]) -> None:
    """Each given value (None = not set) must be a finite number: ``--vmax nan`` or
    ``--zlim inf`` is a UserError naming the flag."""
    for flag, value in flags.items():
        if value is None:
            continue
        try:
            ok = math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"--{flag} must be a finite number, got {value!r}")


# ---------------------------------------------------------------- names

def sanitize(name):
    """A file name that needs no quoting in a shell (see the module docstring)."""
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9._-]", "_", name)).lstrip("-.") or "surface"


def output_base(source_file: str, what: str, out_dir: Optional[str] = None) -> str:
    """Path without extension: ``<out_dir or source dir>/sanitize(<source name>_<what>)``.
    The folder is created if needed; one that cannot be is a UserError."""
    folder = out_dir or os.path.dirname(os.path.abspath(source_file))
    ensure_folder(folder)
    return os.path.join(folder, sanitize(f"{os.path.basename(source_file)}_{what}"))


def ensure_folder(folder: str) -> str:
    """Create the output folder if needed; a path that is a file, or a folder that
    cannot be created or written, is a UserError."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"output folder {folder} is a file; give --out_dir a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {folder} ({e.strerror or e}); "
                        "choose another --out_dir")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into the output folder {folder} (permission denied); "
                        "choose another --out_dir")
    return folder


def write_output(path: str, write) -> str:
    """Write one output file atomically: ``write(tmp)`` fills a temporary file beside
    ``path``, which then replaces ``path``. Any failure (disk full, folder removed,
    ...) is a UserError, and an existing ``path`` is left as it was."""
    try:
        with written_atomically(path) as tmp:
            write(tmp)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); the existing file, if any, "
                        "is unchanged")
    return path


# ---------------------------------------------------------------- titles

INIT = "randomly initialised network (no --model_file)"


def describe(surf: Surface, width: int = 80) -> str:  # noqa: C901 -- being split in round 3
    """Up to four lines saying which surface this is -- what tells runs apart: the
    network (model, checkpoint folder/name, or a random init), the directions (type,
    normalization, ignore, seed/idx, a prefix of the directions hash), the data (set,
    size, split) and the grid; from the settings plot_surface.py stores. Files written
    by the original code have none: their file name (and direction file) instead."""
    s = surf.settings if isinstance(surf.settings, dict) else {}
    if not s:
        text = os.path.basename(surf.path)
        d = surf.attrs.get("dir_file")
        lines = [text] + ([f"directions: {os.path.basename(str(d))}"] if d else [])
        return "\n".join(_shorten(line, width) for line in lines)

    def get(k):
        v = s.get(k)
        return "" if v is None or v == "" else str(v)

    model = get("model") or "model"
    if get("model_file"):
        net = f"{model} {get('model_file')}"
    elif get("model_hash").startswith("init") or "model_hash" in s or "model_file" in s:
        net = f"{model}: {INIT}"
    else:
        net = model
    if get("model_file2"):
        net += f" -> {get('model_file2')}"
    if get("model_file3"):
        net += f", {get('model_file3')}"

    dirs = []
    if get("model_file2"):
        dirs.append("line between checkpoints" if not get("model_file3")
                    else "plane through checkpoints")
        if get("dir_type"):
            dirs.append(get("dir_type"))
    else:
        if get("dir_type"):
            dirs.append(f"{get('dir_type')} directions")
        norms = {get("xnorm"), get("ynorm")} - {""}
        if norms:
            dirs.append("/".join(sorted(norms)) + "-normalized")
        ignores = {get("xignore"), get("yignore")} - {""}
        if ignores:
            dirs.append("ignore " + "/".join(sorted(ignores)))
    if get("directions_hash") and dirs:
        dirs[0] += f" ({get('directions_hash')[:8]})"
    for k in ("seed", "idx"):
        if get(k):
            dirs.append(f"{k}={get(k)}")

    data = []
    if get("dataset"):
        data.append(get("dataset") + (" raw" if s.get("raw_data") else ""))
    if get("n_train"):
        data.append(f"n={get('n_train')}" + (f"/{get('n_test')} test" if get("n_test") else ""))
    if s.get("data_split") and int(s.get("data_split") or 0) > 1:
        data.append(f"split {get('split_idx')}/{get('data_split')}")
    if get("max_samples"):
        data.append(f"max {get('max_samples')}")
    if get("loss_name") and get("loss_name") != "crossentropy":
        data.append(get("loss_name"))
    grid = _grid_text(s.get("x"), "x") + ("  " + _grid_text(s.get("y"), "y") if s.get("y") else "")
    if grid.strip():
        data.append(grid.strip())
    if get("precision") and get("precision") != "fp32":
        data.append(get("precision"))

    import textwrap
    lines = [_shorten(net, width)] + [textwrap.fill(", ".join(part), width, break_on_hyphens=False)
                                      for part in (dirs, data) if part]
    return "\n".join(line for line in lines if line)


def _grid_text(r, axis):
    try:
        lo, hi, n = r
        return f"{axis}={float(lo):g}:{float(hi):g}:{int(n)}"
    except (TypeError, ValueError):
        return ""


def _shorten(line, width):
    """Keep the end of a long line (checkpoint names end in what differs)."""
    return line if len(line) <= width else "..." + line[-(width - 3):]


def quantity_label(name):
    """'train_loss' -> 'Training loss', 'eig_ratio' -> '|min_eig / max_eig|'."""
    known = {"train_loss": "Training loss", "test_loss": "Test loss",
             "train_acc": "Training accuracy (%)", "test_acc": "Test accuracy (%)",
             "train_err": "Training error (%)", "test_err": "Test error (%)",
             "max_eig": "Largest Hessian eigenvalue", "min_eig": "Smallest Hessian eigenvalue",
             "eig_ratio": "|min_eig / max_eig|"}
    return known.get(name, name)


# ---------------------------------------------------------------- figures

def add_output_args(parser: argparse.ArgumentParser) -> None:
    """The flags every plotting script takes for its outputs."""
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["pdf"],
                        help="figure file format(s), e.g. --format png pdf (default: pdf, "
                             "as the original)")
    parser.add_argument("--out_dir", default=None,
                        help="folder for the outputs (default: next to the surface file)")
    parser.add_argument("--html", action="store_true",
                        help="also write one self-contained interactive .html (plotly)")
    parser.add_argument("--show", action="store_true", default=False, help="show plots")


def pyplot(show: bool = False):
    """matplotlib.pyplot, on the non-interactive Agg backend unless figures are shown."""
    import matplotlib
    if not show and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, base: str, formats: Iterable[str], plots: Plots, name: str,
                show: bool = False) -> None:
    """Save ``fig`` as ``base.<fmt>`` for each format (300 dpi, tight), each written
    atomically; record it in ``plots`` and close it unless it is to be shown."""
    try:
        for fmt in formats:
            path = f"{base}.{fmt}"
            write_output(path, lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=DPI, bbox_inches="tight",
                                                                format=fmt))
            plots.files.append(path)
    finally:
        plots.figures[name] = fig
        if not show:
            import matplotlib.pyplot as plt
            plt.close(fig)


def finish(plots, show):
    for path in plots.files:
        print(f"wrote {path}")
    if show:
        pyplot(show=True).show()
    return plots


# ---------------------------------------------------------------- interactive HTML

def write_html(fig, base, plots):
    """Write a plotly figure as ONE self-contained .html (plotly.js embedded, so it
    opens without network)."""
    import plotly.io as pio
    path = f"{base}.html"
    write_output(path, lambda tmp: pio.write_html(fig, tmp, include_plotlyjs=True,
                                                  full_html=True, auto_open=False,
                                                  config={"responsive": True}))
    plots.files.append(path)
    return path


def html_curves(curves, title: str, xlabel: str, log: bool = False,
                xrange: Optional[tuple] = None, loss_range: Optional[tuple] = None):
    """1D: ``curves`` = [(x, y, name, axis ('loss'|'acc'), dash (bool))]; accuracy on
    a second y axis. Hover shows x and the value. As the static figures: ``log`` makes
    the loss axis logarithmic, ``xrange`` (xmin, xmax) and ``loss_range`` (bottom, top)
    are the axis limits."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for x, y, name, axis, dash in curves:
        y = np.asarray(y, dtype=float)
        if log and axis == "loss":
            y = np.where(y > 0, y, np.nan)                  # not drawable on a log axis
        fig.add_trace(go.Scatter(x=np.asarray(x, float).tolist(), y=_nan_to_none(y), name=name,
                                 mode="lines+markers",
                                 line=dict(dash="dash" if dash else "solid"),
                                 hovertemplate=f"x=%{{x:.4g}}<br>{name}=%{{y:.5g}}<extra></extra>"),
                      secondary_y=(axis == "acc"))
    fig.update_layout(title=title.replace("\n", "<br>"), hovermode="closest")
    fig.update_xaxes(title_text=xlabel)
    if xrange is not None:
        fig.update_xaxes(range=[float(xrange[0]), float(xrange[1])])
    fig.update_yaxes(title_text="Loss (log scale)" if log else "Loss", secondary_y=False,
                     type="log" if log else "linear")
    if loss_range is not None:
        lo, hi = (np.log10(loss_range[0]), np.log10(loss_range[1])) if log else loss_range
        fig.update_yaxes(range=[float(lo), float(hi)], secondary_y=False)
    fig.update_yaxes(title_text="Accuracy (%)", secondary_y=True, range=[0, 100])
    return fig


def html_surface(x, y, Z, name: str, title: str, xlabel: str = "x", ylabel: str = "y", *,
                 log: bool = False, color_range: Optional[tuple] = None,
                 levels: Optional[Iterable[float]] = None, clip: Optional[tuple] = None):
    """2D: a rotatable 3D surface and a contour map side by side, drawn as the static
    figures are: ``color_range`` (vmin, vmax) is the colour range of both, ``levels``
    the contour levels, ``clip`` (low, high) the range the 3D surface is clipped to
    (None: no clipping) -- all in values. With ``log`` both show log10(value) (values
    <= 0 are gaps) with axis and colour-bar ticks labelled in values. ``Z[i, j]`` is
    the value at (x_i, y_j); plotly wants rows = y, so it gets ``Z.T``. Hover shows
    x, y and the (unclipped) value; missing points are gaps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    Z = np.asarray(Z, dtype=float)
    shown = Z
    if clip is not None:
        shown = np.clip(Z, -np.inf if clip[0] is None else clip[0],
                        np.inf if clip[1] is None else clip[1])   # NaN stays NaN
    to = _log10 if log else (lambda v: np.asarray(v, dtype=float))
    label = f"{name} (log scale)" if log else name
    hover = f"x=%{{x:.4g}}<br>y=%{{y:.4g}}<br>{name}=%{{customdata:.5g}}<extra></extra>"
    raw = _nan_to_none(Z.T)
    cmin, cmax = (None, None) if color_range is None else (float(to(color_range[0])),
                                                           float(to(color_range[1])))
    ticks = _log_ticks(cmin, cmax, Z) if log else {}
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]],
                        subplot_titles=("3D surface (drag to rotate)", "contour"))
    fig.add_trace(go.Surface(x=np.asarray(x, float).tolist(), y=np.asarray(y, float).tolist(),
                             z=_nan_to_none(to(shown).T), customdata=raw,
                             colorscale="Viridis", showscale=False, cmin=cmin, cmax=cmax,
                             hovertemplate=hover), 1, 1)
    contours = dict(showlabels=True)
    if levels is not None:
        lv = to(np.asarray(list(levels), dtype=float))
        if len(lv) >= 2:
            contours.update(start=float(lv[0]), end=float(lv[-1]), size=float(lv[1] - lv[0]),
                            coloring="fill")
    fig.add_trace(go.Contour(x=np.asarray(x, float).tolist(), y=np.asarray(y, float).tolist(),
                             z=_nan_to_none(to(Z).T), customdata=raw, colorscale="Viridis",
                             zmin=cmin, zmax=cmax, autocontour=levels is None,
                             hovertemplate=hover, contours=contours,
                             colorbar=dict(title=dict(text=label), **ticks)),
                  1, 2)
    zaxis = dict(title=label, **ticks)
    if clip is not None:
        lo = np.nanmin(to(shown)) if clip[0] is None else float(to(clip[0]))
        hi = np.nanmax(to(shown)) if clip[1] is None else float(to(clip[1]))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            zaxis["range"] = [float(lo), float(hi)]
    fig.update_layout(title=title.replace("\n", "<br>"), height=600,
                      scene=dict(xaxis_title=xlabel, yaxis_title=ylabel, zaxis=zaxis))
    fig.update_xaxes(title_text=xlabel, row=1, col=2)
    fig.update_yaxes(title_text=ylabel, row=1, col=2)
    return fig


def _log10(v):
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def _log_ticks(lo, hi, Z):
    """tickvals (log10 units) between lo and hi, labelled in values: 1, 2, 5 x 10^k
    over up to two decades, else powers of ten (every other one past 8 decades...)."""
    if lo is None or hi is None:
        finite = _log10(Z)
        finite = finite[np.isfinite(finite)]
        if not finite.size:
            return {}
        lo, hi = finite.min(), finite.max()
    span = hi - lo
    subs = (1, 2, 5) if span <= 2 else (1,)                # at most about 8 ticks
    every = max(1, int(np.ceil(span / 8)))
    vals = [np.log10(m) + k for k in range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 2)
            if k % every == 0 for m in subs]
    vals = [v for v in vals if lo - 1e-9 <= v <= hi + 1e-9]
    if len(vals) < 2:
        return {}
    return dict(tickmode="array", tickvals=[float(v) for v in vals],
                ticktext=[f"{10 ** v:.3g}" for v in vals])


def _nan_to_none(a):
    """NaN -> None so plotly leaves a gap (and the JSON stays valid)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def optional_float(text: str) -> Optional[float]:
    """argparse type: a finite float, or None for 'none'/'' (so every value can be asked
    for); 'nan' and 'inf' are refused."""
    if text.strip().lower() in ("", "none", "auto"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
