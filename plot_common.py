"""What the plotting libraries (plot_maps, plot_curves, plot_html) and h52vtp.py share:
loading a surface for plotting, the one rule for value ranges, levels and log scales
(value_scale, contour_levels), output file names, titles from the surface's settings,
and saving figures.

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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np

from errors import UserError
from fileio import written_atomically
from surface import Surface, read_surface

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


# ---------------------------------------------------------------- scales from the data

LOG_DECADES = 3.0       # values spanning this many decades (or more) get a log scale
TOP_QUANTILE = 0.95     # contour maps: the top of the range (a few huge corners are not the map)
LEVELS = 24             # contour levels aimed at: a round step gives 10 to 24
MAX_LEVELS = 500


@dataclass(frozen=True)
class Scale:
    """The range of values shown, ``lo`` to ``hi`` (values, not log10), and whether it is
    a log scale; ``auto`` says the log scale was chosen because the values span decades."""
    lo: float
    hi: float
    log: bool
    auto: bool = False

    @property
    def decades(self) -> float:
        return float(np.log10(self.hi / self.lo)) if self.lo > 0 else 0.0

    def title(self) -> str:
        """' (log scale)', with the reason when chosen from the data; '' for linear."""
        if not self.log:
            return ""
        return f" (log scale: values span {self.decades:.1f} decades)" if self.auto else " (log scale)"


def value_scale(values: "np.typing.ArrayLike", vmin: Optional[float] = None, vmax: Optional[float] = None,
                log: Optional[bool] = None, top_quantile: float = 1.0) -> Scale:
    """The one rule every plot uses for its value range: ``vmin``/``vmax`` when given,
    else the data's minimum and its ``top_quantile`` quantile (1.0: the maximum), over
    the finite values (the positive ones on a log scale). ``log`` None: a log scale when
    the positive range spans LOG_DECADES decades or more. Bad values are UserErrors."""
    check_finite(vmin=vmin, vmax=vmax)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise UserError(f"--vmin ({vmin:g}) must be below --vmax ({vmax:g})")
    data = np.asarray(values, dtype=float).ravel()
    data = data[np.isfinite(data)]
    if not data.size:
        raise UserError("nothing to plot: no finite values")
    auto = log is None
    if auto:
        positive = data[data > 0]
        lo = vmin if vmin is not None else (data.min() if positive.size == data.size else 0.0)
        hi = vmax if vmax is not None else (np.quantile(positive, top_quantile) if positive.size else 0.0)
        log = bool(lo > 0 and hi > 0 and np.log10(hi / lo) >= LOG_DECADES)
    if log:
        if (vmin is not None and vmin <= 0) or (vmax is not None and vmax <= 0):
            raise UserError("--log needs --vmin and --vmax above 0")
        data = data[data > 0]
        if not data.size:
            raise UserError("--log: no values above 0 to plot")
    lo = float(data.min()) if vmin is None else float(vmin)
    hi = float(np.quantile(data, top_quantile)) if vmax is None else float(vmax)
    if not hi > lo:                              # flat data, or a --vmax below all of it
        if vmax is not None:
            lo = hi / 10 if log else hi - max(1.0, abs(hi))
        else:
            hi = lo * 10 if log else lo + max(1.0, abs(lo))
    return Scale(lo, hi, bool(log), auto and bool(log))


def contour_levels(Z: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
                   vlevel: Optional[float] = None, log: Optional[bool] = None) -> tuple:
    """(levels, norm, scale): contour levels and the colour normalization of a map.
    Levels run from vmin to vmax *inclusive* every vlevel
    (``np.arange(vmin, vmax + vlevel/2, vlevel)``); unset values come from the data
    (value_scale with TOP_QUANTILE, extended to a round step that gives 10 to 24
    levels). On a log scale the levels are even in log10(value): vmin/vmax are values,
    vlevel is in decades. ``log`` None: chosen from the data (linear when vlevel is
    given, since a step in values needs a linear scale)."""
    from matplotlib.colors import LogNorm, Normalize
    check_finite(vlevel=vlevel)
    if vlevel is not None and vlevel <= 0:
        raise UserError(f"--vlevel must be positive, got {vlevel}")
    scale = value_scale(Z, vmin, vmax, False if log is None and vlevel is not None else log,
                        TOP_QUANTILE)
    to_axis = np.log10 if scale.log else float
    lo, hi = float(to_axis(scale.lo)), float(to_axis(scale.hi))
    step = vlevel if vlevel is not None else round_step((hi - lo) / LEVELS)
    if vmin is None:
        lo = np.floor(lo / step + 1e-9) * step
    if vmax is None:
        hi = np.ceil(hi / step - 1e-9) * step
    if (hi - lo) / step > MAX_LEVELS:
        raise UserError(f"--vlevel {step:g} gives more than {MAX_LEVELS} contour levels "
                        f"between {lo:g} and {hi:g}; use a larger --vlevel")
    levels = np.arange(lo, hi + step / 2, step)
    if len(levels) < 2:
        raise UserError(f"--vlevel {step:g} leaves fewer than 2 contour levels between "
                        f"--vmin and --vmax; use a smaller --vlevel")
    if scale.log:
        levels = 10.0 ** levels
        return levels, LogNorm(levels[0], levels[-1]), scale
    return levels, Normalize(levels[0], levels[-1]), scale


def level_labels(levels: "np.typing.ArrayLike") -> dict:
    """{level: text}: each level with the fewest significant digits (3 or more) that
    keep the labels distinct (levels 2.340, 2.345, 2.350 need 4)."""
    levels = [float(v) for v in np.ravel(levels)]
    for digits in range(3, 13):
        texts = [f"{v:.{digits}g}" for v in levels]
        if len(set(texts)) == len(texts):
            break
    return dict(zip(levels, texts))


def round_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= raw."""
    power = 10.0 ** np.floor(np.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def log10_or_nan(v: "np.typing.ArrayLike") -> np.ndarray:
    """log10 of the values, NaN where a value is <= 0 (a gap on a log scale)."""
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


# ---------------------------------------------------------------- names

def sanitize(name: str) -> str:
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


def write_output(path: str, write: Callable[[str], object]) -> str:
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
IN_MEMORY = "model given in Python"


def describe(surf: Surface, width: int = 70) -> str:
    """A few lines saying which surface this is -- what tells runs apart: the network
    (model, checkpoint folder/name, a model given to the Python API, or a random init),
    the directions (kind, normalization, ignore, seed/idx of random ones, a prefix of
    the directions hash), the data (set, size, split) and the grid; from the settings
    plot_surface.py (or the API) stores. Long lines are wrapped, never cut. Files written
    by the original code have none: their file name (and direction file) instead."""
    return join_parts(description_parts(surf), width)


def shared_description(surfs: list, width: int = 70) -> str:
    """The title of an overlay: of each line of the description, the items that every
    file shares (the legend tells the files apart); the model's name when the networks
    differ only in their checkpoints."""
    every = [description_parts(s) for s in surfs]
    shared = [[item for item in part if all(k < len(p) and item in p[k] for p in every[1:])]
              for k, part in enumerate(every[0])]
    models = {str(s.settings.get("model", "")) if isinstance(s.settings, dict) else "" for s in surfs}
    if shared and not shared[0] and len(models) == 1 and "" not in models:
        shared[0] = [models.pop()]
    return join_parts(shared, width)


def description_parts(surf: Surface) -> list:
    """The description as lines of items: [network], [directions...], [data...]."""
    s = surf.settings if isinstance(surf.settings, dict) else {}
    if not s:
        d = surf.attrs.get("dir_file")
        return [[os.path.basename(surf.path)]] + ([[f"directions: {os.path.basename(str(d))}"]] if d else [])
    return [[network_text(s)], directions_text(s, direction_kind(surf)), data_text(s)]


def join_parts(parts: list, width: int) -> str:
    return "\n".join(wrap(", ".join(part), width) for part in parts if part and part[0])


def _get(s: dict, k: str) -> str:
    v = s.get(k)
    return "" if v is None or v == "" else str(v)


def network_text(s: dict) -> str:
    """The network: checkpoint(s); a random init when the settings say so (``random_init``
    or a model hash ``init(...)``); otherwise (no checkpoint, a weight hash: the Python
    API) a model given in Python."""
    model = _get(s, "model") or "model"
    if _get(s, "model_file"):
        net = f"{model} {_get(s, 'model_file')}"
    elif s.get("random_init") or _get(s, "model_hash").startswith("init"):
        net = f"{model}: {INIT}"
    elif s.get("model_source") == "api" or _get(s, "model_hash"):
        net = f"{model} ({IN_MEMORY}, weights {_get(s, 'model_hash')[:8]})"
    else:
        net = model
    if _get(s, "model_file2"):
        net += f" -> {_get(s, 'model_file2')}"
    if _get(s, "model_file3"):
        net += f", {_get(s, 'model_file3')}"
    return net


DIRECTION_KINDS = {"random": "random", "pca": "PCA", "hessian": "Hessian eigenvector"}


def direction_kind(surf: Surface) -> str:
    """'interpolation', 'random', 'pca', 'hessian' or '' (unknown): from the settings
    (``dir_kind``) if stored, else from the direction file named in the surface file
    when it can be read (PCA files say ``kind=pca``, Hessian ones hold ``eigenvalues``,
    random ones a ``recipe`` with a seed)."""
    s = surf.settings if isinstance(surf.settings, dict) else {}
    if _get(s, "model_file2"):
        return "interpolation"
    if _get(s, "dir_kind"):
        return _get(s, "dir_kind")
    attrs = _direction_attrs(surf)
    if attrs is None:
        return ""
    if str(attrs.get("kind", "")) == "pca":
        return "pca"
    if "eigenvalues" in attrs or "hessian_top" in str(attrs.get("recipe", "")):
        return "hessian"
    return "random" if '"seed"' in str(attrs.get("recipe", "")) else ""


def _direction_attrs(surf: Surface) -> Optional[dict]:
    """The attributes of the surface's direction file, or None when it cannot be read."""
    name = str(surf.attrs.get("dir_file") or "")
    if not name:
        return None
    for path in (name, os.path.join(os.path.dirname(os.path.abspath(surf.path)), os.path.basename(name))):
        try:
            import h5py
            with h5py.File(path, "r") as f:
                return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        except (OSError, ValueError):
            continue
    return None


def directions_text(s: dict, kind: str = "") -> list:
    """[kind and type (hash prefix), normalization, ignore, seed/idx of random ones]."""
    dirs = []
    if _get(s, "model_file2"):
        dirs.append("line between checkpoints" if not _get(s, "model_file3")
                    else "plane through checkpoints")
        if _get(s, "dir_type"):
            dirs.append(_get(s, "dir_type"))
    else:
        what = " ".join(w for w in (DIRECTION_KINDS.get(kind, ""), _get(s, "dir_type")) if w)
        if what:
            dirs.append(f"{what} directions")
        norms = {_get(s, "xnorm"), _get(s, "ynorm")} - {""}
        if norms:
            dirs.append("/".join(sorted(norms)) + "-normalized")
        ignores = {_get(s, "xignore"), _get(s, "yignore")} - {""}
        if ignores:
            dirs.append("ignore " + "/".join(sorted(ignores)))
    if _get(s, "directions_hash") and dirs:
        dirs[0] += f" ({_get(s, 'directions_hash')[:8]})"
    if kind in ("random", ""):                  # seed/idx make only random directions
        dirs += [f"{k}={_get(s, k)}" for k in ("seed", "idx") if _get(s, k)]
    return dirs


def data_text(s: dict) -> list:
    """[data set, size, split, sample cap, loss, grid, precision]."""
    data = []
    if _get(s, "dataset"):
        data.append(_get(s, "dataset") + (" raw" if s.get("raw_data") else ""))
    if _get(s, "n_train"):
        data.append(f"n={_get(s, 'n_train')}" + (f"/{_get(s, 'n_test')} test" if _get(s, "n_test") else ""))
    if s.get("data_split") and int(s.get("data_split") or 0) > 1:
        data.append(f"split {_get(s, 'split_idx')}/{_get(s, 'data_split')}")
    if _get(s, "max_samples"):
        data.append(f"max {_get(s, 'max_samples')}")
    if _get(s, "loss_name") and _get(s, "loss_name") != "crossentropy":
        data.append(_get(s, "loss_name"))
    grid = _grid_text(s.get("x"), "x") + ("  " + _grid_text(s.get("y"), "y") if s.get("y") else "")
    if grid.strip():
        data.append(grid.strip())
    if _get(s, "precision") and _get(s, "precision") != "fp32":
        data.append(_get(s, "precision"))
    return data


def _grid_text(r, axis):
    try:
        lo, hi, n = r
        return f"{axis}={float(lo):g}:{float(hi):g}:{int(n)}"
    except (TypeError, ValueError):
        return ""


def wrap(line: str, width: int) -> str:
    """Wrap at spaces; a word longer than ``width`` (a path) is broken after '/' or '_'.
    Nothing is dropped."""
    pieces = []                                      # (text, joined to the previous piece)
    for word in line.split(" "):
        glue = False
        while len(word) > width:
            cut = max(word.rfind("/", 0, width), word.rfind("_", 0, width))
            cut = cut + 1 if cut > 0 else width
            pieces.append((word[:cut], glue))
            word, glue = word[cut:], True
        pieces.append((word, glue))
    out, current = [], ""
    for text, glue in pieces:
        joined = current + text if glue else (f"{current} {text}" if current else text)
        if current and len(joined) > width:
            out.append(current)
            current = text
        else:
            current = joined
    out.append(current)
    return "\n".join(x for x in out if x.strip())


def quantity_label(name: str) -> str:
    """'train_loss' -> 'Training loss', 'eig_ratio' -> '|min_eig / max_eig|'."""
    known = {"train_loss": "Training loss", "test_loss": "Test loss",
             "train_acc": "Training accuracy (%)", "test_acc": "Test accuracy (%)",
             "train_err": "Training error (%)", "test_err": "Test error (%)",
             "max_eig": "Largest Hessian eigenvalue", "min_eig": "Smallest Hessian eigenvalue",
             "eig_ratio": "|min_eig / max_eig|"}
    return known.get(name, name)


# ---------------------------------------------------------------- figures

def add_format_arg(parser: Any, default: tuple[str, ...] = ("pdf",), help: str = "") -> None:
    """--format: the figure file format(s), on a parser or an argument group."""
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(default),
                        help=help or "figure file format(s), e.g. --format png pdf")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """The flags every plotting script takes for its outputs."""
    add_format_arg(parser, help="figure file format(s), e.g. --format png pdf (default: pdf, as the original)")
    parser.add_argument("--out_dir", default=None,
                        help="folder for the outputs (default: next to the surface file)")
    parser.add_argument("--html", action="store_true",
                        help="also write one self-contained interactive .html (plotly)")
    parser.add_argument("--show", action="store_true", default=False, help="show plots")


def pyplot(show: bool = False) -> Any:
    """matplotlib.pyplot, on the non-interactive Agg backend unless figures are shown."""
    import matplotlib
    if not show and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: "Figure", base: str, formats: Iterable[str], plots: Plots, name: str,
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


def finish(plots: Plots, show: bool) -> Plots:
    for path in plots.files:
        print(f"wrote {path}")
    if show:
        pyplot(show=True).show()
    return plots


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
