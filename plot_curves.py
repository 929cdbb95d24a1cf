"""The 1D figures of surface files (a library: plot_1D.py and plot_surface.py --plot
call it): loss and accuracy along one direction (or along the line between two
checkpoints), one file or several overlaid.

Figures (each ``<surface file>_<what>.<format>``, see plot_common for the naming):
``1d_loss_acc`` loss (left axis) and accuracy (right axis), train solid, test dashed;
``1d_loss`` loss alone; ``1d_err`` error = 100 - accuracy; with --log the loss figures
get ``_log``. Hessian files (max_eig/min_eig) add ``1d_eig`` and ``1d_eig_abs_ratio``.
Several files are overlaid in one set of figures named ``<common prefix>overlay<N>_...``.
The loss axis shows every loss (no cap unless asked), on a log scale when the losses
span decades (plot_common.value_scale, the rule of every plot).

The work is split in two: ``layout_1d`` reads and checks everything and decides what
is shown (limits, scale, titles, labels); the figure builders draw one figure each.
"""
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

import numpy as np

from errors import UserError
from plot_common import (Plots, Scale, check_finite, describe, ensure_folder, finish, load_surface,
                         output_base, pyplot, save_figure, shared_description, value_scale)
from plot_html import html_curves, write_html
from surface import Surface

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

CHECKPOINT = re.compile(r"\.(t7|pth?|ckpt)(?![A-Za-z0-9])")
LABEL_KEYS = ("model", "model_file", "model_file2", "dataset", "dir_type", "xnorm", "xignore")
WHAT = {"loss": "loss", "acc": "accuracy", "err": "error"}


@dataclass
class Layout:
    """What the 1D figures show, decided once for all of them."""
    surfs: list
    labels: list
    source: str                 # outputs are named after it (output_name)
    title: str
    xlabel: str
    marks: list                 # [(x, text)]: checkpoint positions of an interpolation
    x_range: tuple
    loss_range: tuple           # (bottom, top) of the loss axis
    scale: Scale                # of the loss axis
    tag: str                    # '_log' in the loss figures' names with --log

    @property
    def single(self) -> bool:
        return len(self.surfs) == 1

    def has(self, kind: str) -> bool:
        return any(f"{sp}_{kind}" in s.values for s in self.surfs for sp in ("train", "test"))

    @property
    def eig_surfs(self) -> list:
        return [(k, s) for k, s in enumerate(self.surfs) if "eig_ratio" in s.names()]


def plot_1d_loss_err(surf_files: Union[str, Sequence[str]], xmin: Optional[float] = None,
                     xmax: Optional[float] = None, loss_max: Optional[float] = None,
                     log: Optional[bool] = None, show: bool = False,
                     labels: Optional[Sequence[str]] = None, out_dir: Optional[str] = None,
                     formats: Iterable[str] = ("pdf",), html: bool = False) -> Plots:
    """Plot one surface file or overlay several; returns the figures and files (Plots).
    ``xmin``/``xmax``/``loss_max``/``log`` apply to the static figures and the
    interactive page alike; unset, they come from the data (``log`` None: a log loss
    axis when the losses span decades). Bad input raises UserError before anything is
    written."""
    lay = layout_1d(surf_files, xmin, xmax, loss_max, log, labels)
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(lay.source)))
    plt = pyplot(show)
    plots = Plots()
    for key, what, fig in curve_figures(plt, lay):
        save_figure(fig, output_base(lay.source, what, out_dir), formats, plots, key, show)
    if html:
        write_html(curves_page(lay), output_base(lay.source, "1d_interactive", out_dir), plots)
    return finish(plots, show)


def layout_1d(surf_files: Union[str, Sequence[str]], xmin: Optional[float] = None,
              xmax: Optional[float] = None, loss_max: Optional[float] = None,
              log: Optional[bool] = None, labels: Optional[Sequence[str]] = None) -> Layout:
    """Read and check the files and flags; decide limits, scale, title and labels."""
    check_finite(xmin=xmin, xmax=xmax, loss_max=loss_max)
    paths = [surf_files] if isinstance(surf_files, str) else list(surf_files)
    if not paths:
        raise UserError("no surface file given; use --surf_file FILE [FILE ...] or --prefix")
    surfs = [load_surface(p, ndim=1) for p in paths]
    labels = curve_labels(surfs, labels)
    x_lo = min(s.x.min() for s in surfs) if xmin is None else xmin
    x_hi = max(s.x.max() for s in surfs) if xmax is None else xmax
    if not x_lo < x_hi:
        raise UserError(f"--xmin ({x_lo:g}) must be below --xmax ({x_hi:g})")
    if not any(f"{sp}_{k}" in s.values for s in surfs for sp in ("train", "test")
               for k in ("loss", "acc")) and not any("eig_ratio" in s.names() for s in surfs):
        raise UserError(f"{paths[0]} holds nothing plot_1D.py can draw "
                        f"(it has: {', '.join(surfs[0].names()) or 'no quantities'})")
    losses = shown_losses(surfs, x_lo, x_hi)
    scale = value_scale(losses, log=log) if losses.size else Scale(0.0, 1.0, bool(log))
    if len(surfs) > 1:                  # what all the files share (the legend tells them apart)
        title = f"{shared_description(surfs)}\n{len(surfs)} surfaces".strip()
    else:
        title = describe(surfs[0])
    if scale.log:
        title = f"Loss{scale.title()}\n{title}"
    return Layout(surfs, labels, output_name(paths), title, x_label(surfs), interpolation_marks(surfs),
                  (x_lo, x_hi), loss_axis(losses, loss_max, scale.log), scale, "_log" if log else "")


def shown_losses(surfs: list, x_lo: float, x_hi: float) -> np.ndarray:
    """The finite losses of every file inside the x range."""
    losses = [s.values[f"{sp}_loss"][(s.x >= x_lo) & (s.x <= x_hi)]
              for s in surfs for sp in ("train", "test") if f"{sp}_loss" in s.values]
    losses = np.concatenate(losses) if losses else np.zeros(0)
    return losses[np.isfinite(losses)]


def loss_axis(losses: np.ndarray, loss_max: Optional[float], log: bool) -> tuple:
    """(bottom, top) of the loss axis: every loss shown (top: the largest, 5 % above on
    a linear axis, twice it on a log axis; bottom: 0, or half the smallest on a log
    axis); ``loss_max`` sets the top and is checked against the data."""
    if log:
        positive = losses[losses > 0]
        bottom = positive.min() / 2 if positive.size else 1e-3
        top = loss_max if loss_max is not None else (positive.max() * 2 if positive.size else 1)
        if not top > bottom:
            raise UserError(f"--loss_max {loss_max:g} is below the smallest loss shown "
                            f"({bottom * 2:.3g}); a log axis needs a larger --loss_max")
    else:
        bottom = min(0.0, losses.min()) if losses.size else 0.0
        top = loss_max if loss_max is not None else \
            (losses.max() * 1.05 if losses.size and losses.max() > bottom else bottom + 1)
        if not top > bottom:
            raise UserError(f"--loss_max {loss_max:g} must be above {bottom:g}")
    return float(bottom), float(top)


# ---------------------------------------------------------------- figure builders

def curve_figures(plt: Any, lay: Layout) -> list:
    """[(key, name suffix, figure)] of every figure the files call for."""
    out = []
    if lay.has("loss") and lay.has("acc"):
        out.append(("loss_acc", "1d_loss_acc" + lay.tag, loss_acc_figure(plt, lay)))
    if lay.has("loss"):
        out.append(("loss", "1d_loss" + lay.tag, one_axis_figure(plt, lay, "loss")))
    if lay.has("acc"):
        out.append(("err", "1d_err", one_axis_figure(plt, lay, "err")))
    if lay.eig_surfs:
        out.append(("eig", "1d_eig", eig_figure(plt, lay)))
        out.append(("eig_abs_ratio", "1d_eig_abs_ratio", eig_figure(plt, lay, ratio=True)))
    return out


def loss_acc_figure(plt: Any, lay: Layout) -> "Figure":
    """Loss on the left axis, accuracy on the right (twin axes)."""
    fig, ax1 = plt.subplots(layout="constrained")
    ax2 = ax1.twinx()
    draw(ax1, lay, "loss")
    draw(ax2, lay, "acc")
    loss_limits(ax1, lay)
    finish_axes(ax1, lay, "Loss")
    ax1.set_ylabel(loss_ylabel(lay), color="b" if lay.single else "k", fontsize="x-large")
    ax2.set_ylabel("Accuracy (%)" + ("" if lay.single else " (thin lines)"),
                   color="r" if lay.single else "k", fontsize="x-large")
    ax2.set_ylim(0, 100)
    ax2.tick_params(labelsize="large")
    if lay.single:
        ax1.tick_params("y", colors="b")
        ax2.tick_params("y", colors="r")
    legend(fig, lay, ax1, ax2)
    return fig


def one_axis_figure(plt: Any, lay: Layout, kind: str) -> "Figure":
    """The loss alone or the error (100 - accuracy) alone."""
    fig, ax = plt.subplots(layout="constrained")
    draw(ax, lay, kind)
    if kind == "loss":
        loss_limits(ax, lay)
        finish_axes(ax, lay, loss_ylabel(lay))
    else:
        ax.set_ylim(0, 100)
        finish_axes(ax, lay, "Error (%)")
    legend(fig, lay, ax)
    return fig


def eig_figure(plt: Any, lay: Layout, ratio: bool = False) -> "Figure":
    """Both Hessian eigenvalues (max solid, min dashed), or |min_eig / max_eig|."""
    fig, ax = plt.subplots(layout="constrained")
    for k, s in lay.eig_surfs:
        c = f"C{k % 10}"
        if ratio:
            ax.plot(s.x, s.get("eig_ratio"), color=c, label=None if lay.single else lay.labels[k])
            continue
        for eig, dash in (("max", "-"), ("min", "--")):
            ax.plot(s.x, s.values[f"{eig}_eig"], color=c, linestyle=dash,
                    label=f"{eig}_eig" if lay.single else f"{lay.labels[k]} {eig}")
    if ratio:
        ax.set_ylim(bottom=0)
    else:
        ax.axhline(0, color="0.6", linewidth=0.8)
    finish_axes(ax, lay, "|min_eig / max_eig|" if ratio else "Hessian eigenvalue")
    legend(fig, lay, ax)
    return fig


def curves_page(lay: Layout) -> "go.Figure":
    """The interactive page: every quantity of every file, the same limits and scale."""
    curves = []
    for k, s in enumerate(lay.surfs):
        for name, values in s.values.items():
            axis = "acc" if name.endswith("_acc") else "loss"
            tag = name if lay.single else f"{lay.labels[k]}: {name}"
            curves.append((s.x, values, tag, axis, name.startswith("test")))
    return html_curves(curves, lay.title, lay.xlabel, log=lay.scale.log, xrange=lay.x_range,
                       loss_range=lay.loss_range if lay.has("loss") else None)


# ---------------------------------------------------------------- drawing helpers

def style(lay: Layout, k: int, split: str, kind: str) -> dict:
    color = {"loss": "b", "acc": "r", "err": "r"}[kind] if lay.single else f"C{k % 10}"
    return dict(color=color, linestyle="-" if split == "train" else "--",
                linewidth=1.5 if kind == "loss" or lay.single else 0.8,
                alpha=1.0 if kind == "loss" or lay.single else 0.7)


def curve_label(lay: Layout, k: int, split: str, kind: str) -> Optional[str]:
    if lay.single:
        return f"{'Training' if split == 'train' else 'Test'} {WHAT[kind]}"
    return lay.labels[k] if split == "train" and kind != "acc" else None


def draw(ax: Any, lay: Layout, kind: str) -> None:
    """The train and test lines of one kind (loss / acc / err) for every file."""
    for k, s in enumerate(lay.surfs):
        for split in ("train", "test"):
            name = f"{split}_err" if kind == "err" else f"{split}_{kind}"
            if name in s.names():
                line, = ax.plot(s.x, s.get(name), label=curve_label(lay, k, split, kind),
                                **style(lay, k, split, kind))
                line.split = split


def loss_ylabel(lay: Layout) -> str:
    return "Loss (log scale)" if lay.scale.log else "Loss"


def loss_limits(ax: Any, lay: Layout) -> None:
    if lay.scale.log:
        ax.set_yscale("log")
    ax.set_ylim(*lay.loss_range)


def finish_axes(ax: Any, lay: Layout, ylabel: str) -> None:
    """x range, labels, title, and the checkpoint marks of an interpolation."""
    x_lo, x_hi = lay.x_range
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel(lay.xlabel, fontsize="large")
    ax.set_ylabel(ylabel, fontsize="x-large")
    ax.tick_params(labelsize="large")
    ax.set_title(lay.title, fontsize="medium")
    for xm, text in lay.marks:
        if x_lo <= xm <= x_hi:
            ax.axvline(xm, color="0.4", linestyle=":", linewidth=1)
            ax.annotate(text, (xm, 0.98), xycoords=("data", "axes fraction"),
                        xytext=(3, 0), textcoords="offset points", fontsize="x-small",
                        color="0.3", rotation=90, va="top", ha="left")


def legend(fig: "Figure", lay: Layout, *axes: Any) -> None:
    """Below the axes (never over a curve); says "dashed: test" only when a test curve
    is drawn."""
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    texts = [t for ax in axes for t in ax.get_legend_handles_labels()[1]]
    has_test = any(getattr(line, "split", None) == "test" for ax in axes for line in ax.lines)
    heading = None if lay.single else ("solid: train, dashed: test" if has_test else None)
    if handles:
        fig.legend(handles, texts, fontsize="small", loc="outside lower center",
                   ncols=min(len(handles), 3), title=heading, title_fontsize="small",
                   frameon=False)


# ---------------------------------------------------------------- files and labels

def output_name(paths: Sequence[str]) -> str:
    """The 'source file' outputs are named after: the file itself, or for an overlay
    ``<common prefix of the names>overlay<N>`` next to the first file."""
    if len(paths) == 1:
        return paths[0]
    stem = os.path.commonprefix([os.path.basename(p) for p in paths])
    return os.path.join(os.path.dirname(os.path.abspath(paths[0])), f"{stem}overlay{len(paths)}")


def curve_labels(surfs: list, labels: Optional[Sequence[str]] = None) -> list:
    """One label per file: --labels if given; else the settings that differ between
    the files (model, data set, ...); else the part of the direction file paths or of
    the surface file paths that differs."""
    if labels:
        if len(labels) != len(surfs):
            raise UserError(f"--labels has {len(labels)} labels for {len(surfs)} surface files")
        return list(labels)
    if len(surfs) == 1:
        return [os.path.basename(surfs[0].path)]
    settings = [s.settings for s in surfs]
    if all(settings):
        keys = set().union(*settings)
        differ = [k for k in keys if not k.endswith("_hash")
                  and len({json.dumps(st.get(k), sort_keys=True) for st in settings}) > 1]
        differ.sort(key=lambda k: (LABEL_KEYS.index(k) if k in LABEL_KEYS else len(LABEL_KEYS), k))
        if differ:
            columns = [distinguishing([str(st.get(k)) for st in settings]) for k in differ[:2]]
            return [", ".join(f"{k}={col[i]}" for k, col in zip(differ, columns))
                    for i in range(len(surfs))]
    # same settings but other directions (--idx, --seed) or checkpoint folders: the
    # direction file paths differ
    dir_files = [str(s.attrs.get("dir_file") or "") for s in surfs]
    if all(dir_files) and len(set(dir_files)) == len(surfs):
        return distinguishing(dir_files)
    return distinguishing([os.path.abspath(s.path) for s in surfs])


def distinguishing(strings: Sequence[str], seps: str = "/_-", end_seps: str = "/_.-") -> list:
    """The part of each string that differs from the others, cut at separators:
    ['a/bs=128_wd/m.t7', 'a/bs=8192_wd/m.t7'] -> ['bs=128', 'bs=8192'] ('.' ends a
    part but does not start one, so 'lr=0.05' is not cut to '05')."""
    if len(set(strings)) < 2:
        return list(strings)
    ref = strings[0]
    p = len(os.path.commonprefix(strings))
    while p > 0 and ref[p - 1] not in seps:
        p -= 1
    s = min(len(os.path.commonprefix([t[::-1] for t in strings])), min(map(len, strings)) - p)
    while s > 0 and ref[len(ref) - s] not in end_seps:
        s -= 1
    return [t[p:len(t) - s] or t for t in strings]


def is_interpolation(surf: Surface) -> bool:
    """A line between two checkpoints: settings say model_file2, or (original files)
    the direction/surface file name holds two checkpoint names, as the original's
    ``model_300.t7_model_300.t7_states...`` does."""
    if surf.settings:
        return bool(surf.settings.get("model_file2"))
    names = (str(surf.attrs.get("dir_file", "")), surf.path)
    return any(len(CHECKPOINT.findall(os.path.basename(n))) >= 2 for n in names)


def interpolation_marks(surfs: list) -> list:
    """[(0, 'model 1 label'), (1, 'model 2 label')] when every file interpolates."""
    if not all(is_interpolation(s) for s in surfs):
        return []
    st = surfs[0].settings
    if len(surfs) == 1 and st.get("model_file") and st.get("model_file2"):
        a, b = distinguishing([st["model_file"], st["model_file2"]])
        return [(0.0, f"model_file: {a}"), (1.0, f"model_file2: {b}")]
    return [(0.0, "model_file"), (1.0, "model_file2")]


def x_label(surfs: list) -> str:
    if all(is_interpolation(s) for s in surfs):
        return "α: weights = model_file + α (model_file2 − model_file)"
    return "step along the direction"
