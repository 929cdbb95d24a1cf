"""Plot 1D surfaces: loss and accuracy along one direction (or along the line
between two checkpoints), one file or several overlaid.

    python plot_1D.py --surf_file surf.h5 [--log] [--xmin -1 --xmax 1 --loss_max 5]
    python plot_1D.py --surf_file 'runs/seed*.h5' other.h5 --labels a b c   # overlay
    python plot_1D.py --prefix runs/surf --idx_min 1 --idx_max 10           # runs/surf_1.h5 ...

Figures (each ``<surface file>_<what>.<format>``, see plot_common for the naming):
``1d_loss_acc`` loss (left axis) and accuracy (right axis), train solid, test dashed;
``1d_loss`` loss alone; ``1d_err`` error = 100 - accuracy; with --log the loss figures
get ``_log``. Hessian files (max_eig/min_eig) add ``1d_eig`` and ``1d_eig_abs_ratio``.
Several files are overlaid in one set of figures named ``<common prefix>overlay<N>_...``.
"""
import glob
import json
import os
import re
from typing import Iterable, Optional, Sequence, Union

import numpy as np

import flags
from errors import UserError, run_main
from plot_common import (Plots, add_output_args, check_finite, describe,
                         ensure_folder, finish, html_curves, load_surface, optional_float,
                         output_base, pyplot, save_figure, write_html)

CHECKPOINT = re.compile(r"\.(t7|pth?|ckpt)(?![A-Za-z0-9])")
LABEL_KEYS = ("model", "model_file", "model_file2", "dataset", "dir_type", "xnorm", "xignore")


def plot_1d_loss_err(surf_files: Union[str, Sequence[str]], xmin: Optional[float] = None,  # noqa: C901 -- being split in round 3
                     xmax: Optional[float] = None, loss_max: Optional[float] = None,
                     log: bool = False, show: bool = False,
                     labels: Optional[Sequence[str]] = None, out_dir: Optional[str] = None,
                     formats: Iterable[str] = ("pdf",), html: bool = False) -> Plots:
    """Plot one surface file or overlay several; returns the figures and files (Plots).
    ``xmin``/``xmax``/``loss_max``/``log`` apply to the static figures and the
    interactive page alike. Bad input raises UserError before anything is written."""
    check_finite(xmin=xmin, xmax=xmax, loss_max=loss_max)
    paths = [surf_files] if isinstance(surf_files, str) else list(surf_files)
    if not paths:
        raise UserError("no surface file given; use --surf_file FILE [FILE ...] or --prefix")
    surfs = [load_surface(p, ndim=1) for p in paths]
    labels = curve_labels(surfs, labels)
    plots = Plots()
    name = output_name(paths)
    base = lambda what: output_base(name, what, out_dir)
    log_tag = "_log" if log else ""

    x_lo = min(s.x.min() for s in surfs) if xmin is None else xmin
    x_hi = max(s.x.max() for s in surfs) if xmax is None else xmax
    if not x_lo < x_hi:
        raise UserError(f"--xmin ({x_lo:g}) must be below --xmax ({x_hi:g})")
    single = len(surfs) == 1
    colors = {"loss": "b", "acc": "r", "err": "r"} if single else None
    descriptions = [describe(s).split("\n") for s in surfs]
    # an overlay's title keeps what all its files share (the legend tells them apart)
    title = "\n".join(line for line in descriptions[0]
                      if all(line in d for d in descriptions[1:]))
    if not single:
        title = f"{title}\n{len(surfs)} surfaces".strip()
    xlabel = x_label(surfs)
    marks = interpolation_marks(surfs)

    def style(k, split, kind):
        color = colors[kind] if single else f"C{k % 10}"
        return dict(color=color, linestyle="-" if split == "train" else "--",
                    linewidth=1.5 if kind == "loss" or single else 0.8,
                    alpha=1.0 if kind == "loss" or single else 0.7)

    def curve_label(k, split, kind):
        what = {"loss": "loss", "acc": "accuracy", "err": "error"}[kind]
        return f"{'Training' if split == 'train' else 'Test'} {what}" if single else \
            (labels[k] if split == "train" and kind != "acc" else None)

    def draw(ax, kind):
        """The train and test lines of one kind (loss / acc / err) for every file."""
        for k, s in enumerate(surfs):
            for split in ("train", "test"):
                name_ = f"{split}_err" if kind == "err" else f"{split}_{kind}"
                if name_ in s.names():
                    line, = ax.plot(s.x, s.get(name_), label=curve_label(k, split, kind),
                                    **style(k, split, kind))
                    line.split = split

    def finish_axes(ax, ylabel, fig_title):
        ax.set_xlim(x_lo, x_hi)
        ax.set_xlabel(xlabel, fontsize="large")
        ax.set_ylabel(ylabel, fontsize="x-large")
        ax.tick_params(labelsize="large")
        ax.set_title(fig_title, fontsize="medium")
        for xm, text in marks:
            if x_lo <= xm <= x_hi:
                ax.axvline(xm, color="0.4", linestyle=":", linewidth=1)
                ax.annotate(text, (xm, 0.98), xycoords=("data", "axes fraction"),
                            xytext=(3, 0), textcoords="offset points", fontsize="x-small",
                            color="0.3", rotation=90, va="top", ha="left")

    def loss_range():
        """(bottom, top) of the loss axis; checks --loss_max against the data."""
        losses = [s.values[f"{sp}_loss"][(s.x >= x_lo) & (s.x <= x_hi)]
                  for s in surfs for sp in ("train", "test") if f"{sp}_loss" in s.values]
        losses = np.concatenate(losses) if losses else np.zeros(0)
        losses = losses[np.isfinite(losses)]
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

    def loss_limits(ax):
        if log:
            ax.set_yscale("log")
        ax.set_ylim(*y_loss)

    def legend(fig, *axes):
        """Below the axes (never over a curve); says "dashed: test" only when a test
        curve is drawn."""
        handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
        texts = [t for ax in axes for t in ax.get_legend_handles_labels()[1]]
        has_test = any(getattr(line, "split", None) == "test" for ax in axes for line in ax.lines)
        heading = None if single else ("solid: train, dashed: test" if has_test else None)
        if handles:
            fig.legend(handles, texts, fontsize="small", loc="outside lower center",
                       ncols=min(len(handles), 3), title=heading, title_fontsize="small",
                       frameon=False)

    has_loss = any(f"{sp}_loss" in s.values for s in surfs for sp in ("train", "test"))
    has_acc = any(f"{sp}_acc" in s.values for s in surfs for sp in ("train", "test"))
    has_eig = any("eig_ratio" in s.names() for s in surfs)
    if not (has_loss or has_acc or has_eig):
        raise UserError(f"{paths[0]} holds nothing plot_1D.py can draw "
                        f"(it has: {', '.join(surfs[0].names()) or 'no quantities'})")
    y_loss = loss_range()                  # checked before anything is drawn or written
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(name)))
    plt = pyplot(show)

    # loss and accuracy, twin axes
    if has_loss and has_acc:
        fig, ax1 = plt.subplots(layout="constrained")
        ax2 = ax1.twinx()
        draw(ax1, "loss")
        draw(ax2, "acc")
        loss_limits(ax1)
        finish_axes(ax1, "Loss", title)
        ax1.set_ylabel("Loss", color="b" if single else "k", fontsize="x-large")
        ax2.set_ylabel("Accuracy (%)" + ("" if single else " (thin lines)"),
                       color="r" if single else "k", fontsize="x-large")
        ax2.set_ylim(0, 100)
        ax2.tick_params(labelsize="large")
        if single:
            ax1.tick_params("y", colors="b")
            ax2.tick_params("y", colors="r")
        legend(fig, ax1, ax2)
        save_figure(fig, base("1d_loss_acc" + log_tag), formats, plots, "loss_acc", show)

    # loss alone
    if has_loss:
        fig, ax = plt.subplots(layout="constrained")
        draw(ax, "loss")
        loss_limits(ax)
        finish_axes(ax, "Loss", title)
        legend(fig, ax)
        save_figure(fig, base("1d_loss" + log_tag), formats, plots, "loss", show)

    # error alone
    if has_acc:
        fig, ax = plt.subplots(layout="constrained")
        draw(ax, "err")
        ax.set_ylim(0, 100)
        finish_axes(ax, "Error (%)", title)
        legend(fig, ax)
        save_figure(fig, base("1d_err"), formats, plots, "err", show)

    # Hessian eigenvalues
    eig_surfs = [(k, s) for k, s in enumerate(surfs) if "eig_ratio" in s.names()]
    if eig_surfs:
        fig, ax = plt.subplots(layout="constrained")
        for k, s in eig_surfs:
            c = f"C{k % 10}"
            ax.plot(s.x, s.values["max_eig"], color=c, linestyle="-",
                    label="max_eig" if single else f"{labels[k]} max")
            ax.plot(s.x, s.values["min_eig"], color=c, linestyle="--",
                    label="min_eig" if single else f"{labels[k]} min")
        ax.axhline(0, color="0.6", linewidth=0.8)
        finish_axes(ax, "Hessian eigenvalue", title)
        legend(fig, ax)
        save_figure(fig, base("1d_eig"), formats, plots, "eig", show)

        fig, ax = plt.subplots(layout="constrained")
        for k, s in eig_surfs:
            ax.plot(s.x, s.get("eig_ratio"), color=f"C{k % 10}", label=None if single else labels[k])
        ax.set_ylim(bottom=0)
        finish_axes(ax, "|min_eig / max_eig|", title)
        legend(fig, ax)
        save_figure(fig, base("1d_eig_abs_ratio"), formats, plots, "eig_abs_ratio", show)

    if html:
        curves = []
        for k, s in enumerate(surfs):
            for name_, values in s.values.items():
                axis = "acc" if name_.endswith("_acc") else "loss"
                tag = name_ if single else f"{labels[k]}: {name_}"
                curves.append((s.x, values, tag, axis, name_.startswith("test")))
        page = html_curves(curves, title, xlabel, log=log, xrange=(x_lo, x_hi),
                           loss_range=y_loss if has_loss else None)
        write_html(page, base("1d_interactive"), plots)
    return finish(plots, show)


# ---------------------------------------------------------------- files and labels

def expand_files(patterns, prefix="", idx_min=1, idx_max=10, suffix=".h5"):
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


def output_name(paths):
    """The 'source file' outputs are named after: the file itself, or for an overlay
    ``<common prefix of the names>overlay<N>`` next to the first file."""
    if len(paths) == 1:
        return paths[0]
    stem = os.path.commonprefix([os.path.basename(p) for p in paths])
    return os.path.join(os.path.dirname(os.path.abspath(paths[0])), f"{stem}overlay{len(paths)}")


def curve_labels(surfs, labels=None):
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


def distinguishing(strings, seps="/_-", end_seps="/_.-"):
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


def is_interpolation(surf):
    """A line between two checkpoints: settings say model_file2, or (original files)
    the direction/surface file name holds two checkpoint names, as the original's
    ``model_300.t7_model_300.t7_states...`` does."""
    if surf.settings:
        return bool(surf.settings.get("model_file2"))
    names = (str(surf.attrs.get("dir_file", "")), surf.path)
    return any(len(CHECKPOINT.findall(os.path.basename(n))) >= 2 for n in names)


def interpolation_marks(surfs):
    """[(0, 'model 1 label'), (1, 'model 2 label')] when every file interpolates."""
    if not all(is_interpolation(s) for s in surfs):
        return []
    st = surfs[0].settings
    if len(surfs) == 1 and st.get("model_file") and st.get("model_file2"):
        a, b = distinguishing([st["model_file"], st["model_file2"]])
        return [(0.0, f"model_file: {a}"), (1.0, f"model_file2: {b}")]
    return [(0.0, "model_file"), (1.0, "model_file2")]


def x_label(surfs):
    if all(is_interpolation(s) for s in surfs):
        return "α: weights = model_file + α (model_file2 − model_file)"
    return "step along the direction"


# ---------------------------------------------------------------- command line

parser = flags.ArgumentParser(description="Plot 1D loss/accuracy curves from surface files", prog="plot_1D.py")
parser.add_argument("--surf_file", "-f", nargs="+", default=[],
                    help="surface file(s) or quoted glob(s); several are overlaid")
parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file")
parser.add_argument("--log", action="store_true", default=False, help="log-scale loss axis")
parser.add_argument("--xmin", type=optional_float, default=None, help="x axis minimum (default: data)")
parser.add_argument("--xmax", type=optional_float, default=None, help="x axis maximum (default: data)")
parser.add_argument("--loss_max", type=optional_float, default=None,
                    help="loss axis maximum (default: from the data)")
parser.add_argument("--prefix", default="",
                    help="overlay <prefix>_<idx><suffix> for idx in idx_min..idx_max")
parser.add_argument("--idx_min", default=1, type=int, help="first index for --prefix")
parser.add_argument("--idx_max", default=10, type=int, help="last index for --prefix")
parser.add_argument("--suffix", default=".h5", help="file name end for --prefix (default .h5)")
add_output_args(parser)


def main(argv=None):
    args = parser.parse_args(argv)
    paths = expand_files(args.surf_file, args.prefix, args.idx_min, args.idx_max, args.suffix)
    plot_1d_loss_err(paths, args.xmin, args.xmax, args.loss_max, args.log, args.show,
                     labels=args.labels, out_dir=args.out_dir, formats=args.format,
                     html=args.html)


if __name__ == "__main__":
    run_main(main)
