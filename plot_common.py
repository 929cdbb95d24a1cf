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
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field

import numpy as np

from errors import UserError
from surface import read_surface

FORMATS = ("pdf", "png", "svg")
DPI = 300


@dataclass
class Plots:
    """What a plotting call made: figures by short name, and the files written."""
    figures: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


# ---------------------------------------------------------------- loading

def load_surface(path, ndim):
    """Read a surface for plotting: check it is ``ndim``-D and has something computed;
    warn (one line) when points are missing -- they are NaN and left blank in plots."""
    surf = read_surface(path)
    if surf.ndim != ndim:
        other = "plot_2D.py" if surf.ndim == 2 else "plot_1D.py"
        raise UserError(f"{path} is a {surf.ndim}D surface (shape {surf.shape}), not {ndim}D; "
                        f"plot it with {other}")
    if surf.n_done == 0:
        raise UserError(f"{path} has no computed points yet; run plot_surface.py on it first")
    if not surf.complete:
        print(f"warning: {path}: {surf.n_total - surf.n_done} of {surf.n_total} points not "
              f"computed yet; using the {surf.n_done} that are", file=sys.stderr, flush=True)
    return surf


# ---------------------------------------------------------------- names

def sanitize(name):
    """A file name that needs no quoting in a shell (see the module docstring)."""
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9._-]", "_", name)).lstrip("-.") or "surface"


def output_base(source_file, what, out_dir=None):
    """Path without extension: ``<out_dir or source dir>/sanitize(<source name>_<what>)``."""
    folder = out_dir or os.path.dirname(os.path.abspath(source_file))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, sanitize(f"{os.path.basename(source_file)}_{what}"))


# ---------------------------------------------------------------- titles

def describe(surf, width=70):
    """One or two lines saying what surface this is: model, directions, data set --
    from the settings stored by plot_surface.py; the file name for original files."""
    s = surf.settings
    parts = []
    if s.get("model"):
        parts.append(str(s["model"]))
    if s.get("model_file2"):
        parts.append("interpolation" + (f" ({s['dir_type']})" if s.get("dir_type") else ""))
    elif s.get("dir_type"):
        norm = s.get("xnorm") or ""
        parts.append(f"{s['dir_type']} directions" + (f", {norm}-normalized" if norm else ""))
    if s.get("dataset"):
        parts.append(str(s["dataset"]))
    text = " | ".join(parts) if parts else os.path.basename(surf.path)
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)[:3])


def quantity_label(name):
    """'train_loss' -> 'Training loss', 'eig_ratio' -> '|min_eig / max_eig|'."""
    known = {"train_loss": "Training loss", "test_loss": "Test loss",
             "train_acc": "Training accuracy (%)", "test_acc": "Test accuracy (%)",
             "train_err": "Training error (%)", "test_err": "Test error (%)",
             "max_eig": "Largest Hessian eigenvalue", "min_eig": "Smallest Hessian eigenvalue",
             "eig_ratio": "|min_eig / max_eig|"}
    return known.get(name, name)


# ---------------------------------------------------------------- figures

def add_output_args(parser):
    """The flags every plotting script takes for its outputs."""
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["pdf"],
                        help="figure file format(s), e.g. --format png pdf (default: pdf, "
                             "as the original)")
    parser.add_argument("--out_dir", default=None,
                        help="folder for the outputs (default: next to the surface file)")
    parser.add_argument("--html", action="store_true",
                        help="also write one self-contained interactive .html (plotly)")
    parser.add_argument("--show", action="store_true", default=False, help="show plots")


def pyplot(show=False):
    """matplotlib.pyplot, on the non-interactive Agg backend unless figures are shown."""
    import matplotlib
    if not show and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, base, formats, plots, name, show=False):
    """Save ``fig`` as ``base.<fmt>`` for each format (300 dpi, tight), record it in
    ``plots`` and close it unless it is to be shown."""
    for fmt in formats:
        path = f"{base}.{fmt}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight", format=fmt)
        plots.files.append(path)
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
    pio.write_html(fig, path, include_plotlyjs=True, full_html=True, auto_open=False,
                   config={"responsive": True})
    plots.files.append(path)
    return path


def html_curves(curves, title, xlabel):
    """1D: ``curves`` = [(x, y, name, axis ('loss'|'acc'), dash (bool))]; accuracy on
    a second y axis. Hover shows x and the value."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for x, y, name, axis, dash in curves:
        fig.add_trace(go.Scatter(x=x, y=_nan_to_none(y), name=name, mode="lines+markers",
                                 line=dict(dash="dash" if dash else "solid"),
                                 hovertemplate=f"x=%{{x:.4g}}<br>{name}=%{{y:.5g}}<extra></extra>"),
                      secondary_y=(axis == "acc"))
    fig.update_layout(title=title.replace("\n", "<br>"), hovermode="closest")
    fig.update_xaxes(title_text=xlabel)
    fig.update_yaxes(title_text="Loss", secondary_y=False)
    fig.update_yaxes(title_text="Accuracy (%)", secondary_y=True)
    return fig


def html_surface(x, y, Z, name, title, xlabel="x", ylabel="y"):
    """2D: a rotatable 3D surface and a contour map side by side. ``Z[i, j]`` is the
    value at (x_i, y_j); plotly wants rows = y, so it gets ``Z.T``. Hover shows x, y
    and the value; missing points are gaps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    z = _nan_to_none(Z.T)
    hover = f"x=%{{x:.4g}}<br>y=%{{y:.4g}}<br>{name}=%{{z:.5g}}<extra></extra>"
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]],
                        subplot_titles=("3D surface (drag to rotate)", "contour"))
    fig.add_trace(go.Surface(x=x, y=y, z=z, colorscale="Viridis", showscale=False,
                             hovertemplate=hover), 1, 1)
    fig.add_trace(go.Contour(x=x, y=y, z=z, colorscale="Viridis", hovertemplate=hover,
                             contours=dict(showlabels=True), colorbar=dict(title=dict(text=name))),
                  1, 2)
    fig.update_layout(title=title.replace("\n", "<br>"), height=600,
                      scene=dict(xaxis_title=xlabel, yaxis_title=ylabel, zaxis_title=name))
    fig.update_xaxes(title_text=xlabel, row=1, col=2)
    fig.update_yaxes(title_text=ylabel, row=1, col=2)
    return fig


def _nan_to_none(a):
    """NaN -> None so plotly leaves a gap (and the JSON stays valid)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def optional_float(text):
    """argparse type: a float, or None for 'none'/'' (so every value can be asked for)."""
    if text.strip().lower() in ("", "none", "auto"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
