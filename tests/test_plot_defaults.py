"""Plot defaults from the data, the same in every plotting path, and labels that tell
the truth. The oracles are the data themselves (its range, its decades), the settings
and files a run stores, and the explicit flags, read back from the matplotlib figure
objects the plotting functions return (contour levels, axis limits, texts)."""
import ast
import json
import os
import subprocess
import types

import h5py
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import flags  # noqa: E402
import plot_1D  # noqa: E402
import plot_2D  # noqa: E402
from conftest import REPO, contour_set, write_ours  # noqa: E402
from conftest import SURFACE_SETTINGS as SETTINGS  # noqa: E402
from conftest import grid_points as grid  # noqa: E402

PLOT_MODULES = ("plot_1D.py", "plot_2D.py", "plot_common.py", "plot_curves.py", "plot_html.py", "plot_maps.py")


def surface_flags(*extra, two_d=True):
    """plot_surface.py's parsed flags for a --plot run (the --plot defaults under test)."""
    argv = ["--model", "digits_cnn", "--x=-1:1:9", "--plot", *(["--y=-1:1:7"] if two_d else []), *extra]
    return flags.parse_args(flags.build_parser("test"), list(argv))


def surface_plot(args, surf_file, two_d=True):
    """What plot_surface.py --plot draws when its run is done (grid.plot)."""
    import grid as runtime
    run = types.SimpleNamespace(surf_file=surf_file, dir_file="", ycoords=np.zeros(7) if two_d else None)
    return runtime.plot(args, run)


def levels_of(plots):
    return np.asarray(contour_set(plots.figures["2dcontour"]).levels)


def inside(levels, Z):
    return levels[(levels >= np.nanmin(Z)) & (levels <= np.nanmax(Z))]


def title_of(plots, name="2dcontour"):
    return plots.figures[name].axes[0].get_title()


# ---------------------------------------------------------------- defaults from the data

@pytest.mark.slow
def test_narrow_range_shows_contours_in_every_path(tmp_path):
    """Losses 2.34-2.41 (the README's own-model surface) fell between two of the
    original's fixed levels (0.1 to 10 every 0.5): no line at all. Every plotting path
    now draws 10 or more levels inside the data's range, the same ones."""
    xs, ys, X, Y = grid(9, 7)
    Z = 2.34 + 0.07 * (X ** 2 + Y ** 2) / 2
    f = write_ours(tmp_path / "own.h5", xs, ys, {"train_loss": Z})
    direct = plot_2D.plot_2d_contour(f, formats=[])
    via_plot_surface = surface_plot(surface_flags(), f)
    np.testing.assert_allclose(levels_of(via_plot_surface), levels_of(direct))
    assert len(inside(levels_of(direct), Z)) >= 10, levels_of(direct)
    assert "log" not in title_of(direct)
    filled = contour_set(direct.figures["2dcontourf"])
    np.testing.assert_allclose(filled.levels, levels_of(direct))
    plot_2D.main(["--surf_file", f, "--format", "png", "--out_dir", str(tmp_path / "cli")])
    assert len(os.listdir(tmp_path / "cli")) == 4


@pytest.mark.slow
def test_decades_get_a_log_scale_said_in_the_title(tmp_path):
    xs, ys, X, Y = grid(15, 13)
    Z = 10 ** (-3 + 5 * (X ** 2 + Y ** 2) / 2)                       # 1e-3 .. 1e2
    f = write_ours(tmp_path / "deep.h5", xs, ys, {"train_loss": Z})
    for plots in (plot_2D.plot_2d_contour(f, formats=[]), surface_plot(surface_flags(), f)):
        levels = levels_of(plots)
        ratios = levels[1:] / levels[:-1]
        assert np.allclose(ratios, ratios[0]) and ratios[0] > 1, levels   # even in log10
        assert levels[0] <= 1e-3 and len(inside(levels, Z)) >= 10
        assert "log scale: values span" in title_of(plots)
    x = np.linspace(-1, 1, 21)
    line = write_ours(tmp_path / "deep1d.h5", x, None, {"train_loss": 10 ** (-3 + 5 * x ** 2)})
    ax = plot_1D.plot_1d_loss_err(line, formats=[]).figures["loss"].axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel() and "log scale" in ax.get_title()
    assert ax.get_ylim()[1] >= 100


@pytest.mark.slow
def test_1d_curves_are_not_cut(tmp_path):
    """The original capped the loss axis at 5; now every loss is on the axis."""
    x = np.linspace(-1, 1, 21)
    loss = 0.5 + 39.5 * x ** 2                                       # up to 40, linear
    f = write_ours(tmp_path / "line.h5", x, None, {"train_loss": loss, "train_acc": 100 - x ** 2})
    for plots in (plot_1D.plot_1d_loss_err(f, formats=[]),
                  surface_plot(surface_flags(two_d=False), f, two_d=False)):
        for key in ("loss", "loss_acc"):
            ax = plots.figures[key].axes[0]
            assert ax.get_yscale() == "linear" and ax.get_ylim()[1] >= loss.max(), key


@pytest.mark.slow
def test_explicit_flags_win(tmp_path):
    xs, ys, X, Y = grid(9, 7)
    Z = 10 ** (-3 + 5 * (X ** 2 + Y ** 2) / 2)
    f = write_ours(tmp_path / "deep.h5", xs, ys, {"train_loss": Z})
    expected = np.arange(0.1, 10 + 0.25, 0.5)                        # the original's levels
    for plots in (plot_2D.plot_2d_contour(f, vmin=0.1, vmax=10, vlevel=0.5, formats=[]),
                  surface_plot(surface_flags("--vmin", "0.1", "--vmax", "10", "--vlevel", "0.5"), f)):
        np.testing.assert_allclose(levels_of(plots), expected)
        assert "log" not in title_of(plots)
    linear = plot_2D.plot_2d_contour(f, log=False, formats=[])
    assert np.allclose(np.diff(levels_of(linear)), np.diff(levels_of(linear))[0])
    assert "log" not in title_of(linear)
    assert surface_flags("--no-log").log is False and surface_flags("--log").log is True
    x = np.linspace(-1, 1, 21)
    line = write_ours(tmp_path / "line.h5", x, None, {"train_loss": 0.5 + 39.5 * x ** 2})
    for plots in (plot_1D.plot_1d_loss_err(line, loss_max=5, formats=[]),
                  surface_plot(surface_flags("--loss_max", "5", two_d=False), line, two_d=False)):
        assert plots.figures["loss"].axes[0].get_ylim() == (0, 5)


@pytest.mark.slow
def test_mode_connectivity_plane_shows_the_valley(tmp_path):
    """The plane through two minima and a bend: a low valley along the curve, up to
    800,000 in one corner. Levels from the data's min to max (linear) put the whole
    valley under the first level; now the lowest levels trace it."""
    xs, ys, X, Y = grid(31, 31, x=(-0.5, 1.5), y=(-0.5, 1.5))
    t = np.linspace(0, 1, 400)
    curve = np.stack([t ** 2, 2 * t * (1 - t)], 1)       # (c_B(t), c_b(t)): A (0,0) .. B (1,0)
    d2 = ((X[..., None] - curve[:, 0]) ** 2 + (Y[..., None] - curve[:, 1]) ** 2).min(-1)
    Z = 0.02 + 30 * d2 + 8e5 * np.exp(-((X - 1.5) ** 2 + (Y - 1.5) ** 2) / 0.05)
    f = write_ours(tmp_path / "plane.h5", xs, ys, {"train_loss": Z},
                   settings={**SETTINGS, "model_file2": "b.t7", "model_file3": "bend.t7"})
    plots = plot_2D.plot_2d_contour(f, formats=[])
    levels = levels_of(plots)
    assert "log scale" in title_of(plots)
    valley = levels[levels < 0.5]
    assert len(valley) >= 4, levels
    cs = contour_set(plots.figures["2dcontour"])
    lowest = np.concatenate([seg for seg in cs.allsegs[1] if len(seg)])   # a level just above the floor
    near = np.sqrt(((lowest[:, None, :] - curve[None]) ** 2).sum(-1)).min(1)
    assert near.max() < 0.2                                         # it follows the curve


# ---------------------------------------------------------------- labels that tell the truth

def full(**changes):
    s = {"kind": "loss", "model": "digits_cnn", "model_file": "digits_cnn_bs=16/model_20.t7",
         "model_hash": "9f2c41d0aa", "model_file2": "", "model_file3": "", "dataset": "digits",
         "n_train": 1437, "dir_type": "weights", "directions_hash": "5be1c07d3e",
         "xnorm": "filter", "ynorm": "filter", "xignore": "biasbn", "yignore": "biasbn",
         "seed": 3, "idx": 0, "x": [-1, 1, 9], "y": [-1, 1, 7]}
    s.update(changes)
    return s


@pytest.mark.slow
def test_titles_say_where_the_model_and_directions_come_from(tmp_path):
    xs, ys, X, Y = grid(9, 7)
    values = {"train_loss": 1 + X ** 2 + Y ** 2}

    def title(settings, dir_attrs=None, name="s"):
        dir_file = ""
        if dir_attrs is not None:
            dir_file = str(tmp_path / f"{name}_dirs.h5")
            with h5py.File(dir_file, "w") as h:
                h.attrs.update(dir_attrs)
        f = write_ours(tmp_path / f"{name}.h5", xs, ys, values, settings=settings, dir_file=dir_file)
        return title_of(plot_2D.plot_2d_contour(f, formats=[]))

    # the Python API: no checkpoint, a hash of the weights in memory (landscape.surface)
    api = title({k: v for k, v in full(model_file="", model_hash="c0ffee12345678").items()
                 if k not in ("seed", "idx")}, name="api")
    assert "model given in Python" in api and "randomly initialised" not in api
    init = title(full(model_file="", model_hash="init(seed=0)", random_init=True), name="init")
    assert "randomly initialised network (no --model_file)" in init
    pca = title(full(), {"kind": "pca", "dir_type": "weights"}, name="pca")
    hessian = title(full(), {"eigenvalues": np.array([3.0, 1.0]), "dir_type": "weights"}, name="hess")
    random = title(full(), {"recipe": json.dumps({"seed": 3, "idx": 0})}, name="rand")
    assert "PCA weights directions" in pca and "seed=" not in pca and "idx=" not in pca
    assert "Hessian eigenvector weights directions" in hessian and "seed=" not in hessian
    assert "random weights directions" in random and "seed=3" in random
    long_path = "runs/" + "_".join(f"part{i}=value{i}" for i in range(12)) + "/model_300.t7"
    whole = title(full(model_file=long_path), name="long")
    assert long_path in "".join(whole.split())                    # wrapped, nothing cut
    assert "..." not in whole and max(len(line) for line in whole.splitlines()) <= 70


@pytest.mark.slow
def test_curve_between_minima_is_not_a_training_path(tmp_path):
    xs, ys, X, Y = grid(9, 9, x=(-0.5, 1.5), y=(-0.5, 1.5))
    f = write_ours(tmp_path / "plane.h5", xs, ys, {"train_loss": 1 + X ** 2 + Y ** 2})
    t = np.linspace(0, 1, 11)
    proj = str(tmp_path / "curve_proj.h5")
    with h5py.File(proj, "w") as h:                      # as mode_connectivity.py writes it
        h["proj_xcoord"], h["proj_ycoord"], h["t"] = t ** 2, 2 * t * (1 - t), t
        h.attrs["method"] = "bezier curve in the plane (θ_B − θ_A, θ_bend − θ_A)"
    ax = plot_2D.plot_2d_contour(f, proj_file=proj, formats=[]).figures["2dcontour_proj"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["curve", "model_file (t=0)", "model_file2 (t=1)"]
    ends = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines}
    assert ends["model_file (t=0)"] == (0, 0) and ends["model_file2 (t=1)"] == (1, 0)
    path = str(tmp_path / "path_proj.h5")
    with h5py.File(path, "w") as h:
        h["proj_xcoord"], h["proj_ycoord"] = np.linspace(-0.5, 0, 5), np.linspace(-0.5, 0, 5)
    ax = plot_2D.plot_trajectory(path, formats=[]).figures["trajectory"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["path", "start", "final model"]


@pytest.mark.slow
def test_3d_plot_names_z_once(tmp_path):
    xs, ys, X, Y = grid(9, 7)
    f = write_ours(tmp_path / "s.h5", xs, ys, {"train_loss": 1 + X ** 2 + Y ** 2})
    fig = plot_2D.plot_2d_contour(f, formats=[]).figures["3dsurface"]
    texts = [t.get_text() for ax in fig.axes for t in
             (ax.xaxis.label, ax.yaxis.label, getattr(ax, "zaxis", ax.yaxis).label)]
    assert sum("train_loss" in t for t in texts) == 1, texts


@pytest.mark.slow
def test_layer_bars_are_named_after_the_layers(tmp_path):
    import layer_curvature
    path = str(tmp_path / "m_layers.h5")
    with h5py.File(path, "w") as h:                      # the fields layer_curvature.plot reads
        h.attrs["layers"] = json.dumps(["0", "3", "layer1.conv"])
        h.attrs["settings"] = json.dumps({"model": "digits_mlp"})
        for name, v in {"top_eig": [3.0, -1.0, 2.0], "trace": [10.0, 4.0, 5.0],
                        "trace_stderr": [0.1, 0.2, 0.0], "parameters": [4096, 1024, 90]}.items():
            h[name] = np.asarray(v, float)
    fig = layer_curvature.plot(path, formats=[]).figures["layers"]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["layer 0\n4,096 params", "layer 3\n1,024 params", "layer1.conv\n90 params"]


# ---------------------------------------------------------------- size of the plotting code

def test_plot_functions_are_small():
    """No function of the plotting modules over 60 lines; ruff's complexity (C901) at 12."""
    for name in PLOT_MODULES:
        tree = ast.parse(open(os.path.join(REPO, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, (name, node.name)
    p = subprocess.run(["ruff", "check", "--select", "C901", "--config",
                        "lint.mccabe.max-complexity=12", *PLOT_MODULES], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_api_surface_is_not_titled_a_random_init(tmp_path):
    """landscape.surface on a model in memory: the title says so (not "randomly
    initialised network (no --model_file)"), from the settings the API stores."""
    import torch
    import landscape
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    f = str(tmp_path / "api.h5")
    landscape.surface(net, (x, y), x=(-1, 1, 3), y=(-1, 1, 3), surf_file=f)
    title = title_of(plot_2D.plot_2d_contour(f, formats=[]))
    assert "model given in Python" in title and "randomly initialised" not in title, title


@pytest.mark.slow
def test_mode_connectivity_figure_uses_the_same_scale_rule(tmp_path):
    import argparse
    import mode_connectivity
    t = np.linspace(0, 1, 11)
    values = {"line_train_loss": 0.01 + 40 * np.sin(np.pi * t), "line_train_acc": 100 - 50 * np.sin(np.pi * t),
              "curve_train_loss": 0.01 + 0.02 * np.sin(np.pi * t), "curve_train_acc": np.full(11, 99.0)}
    f = write_ours(tmp_path / "results.h5", t, None, values)
    args = argparse.Namespace(log=None, curve="bezier", show=False, model="digits_cnn",
                              model_file="a.t7", model_file2="b.t7", out_dir=str(tmp_path))
    ax = mode_connectivity.plot(args, f).figures["paths"].axes[0]   # 0.01 .. 40: 3.6 decades
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    args.log = False
    assert mode_connectivity.plot(args, f).figures["paths"].axes[0].get_yscale() == "linear"


def test_value_scale_rule():
    """The one rule, on plain arrays: the range is min .. quantile, a log scale from 3
    decades, explicit bounds win, a flat or out-of-range request still gives a range."""
    from plot_common import LOG_DECADES, value_scale
    from errors import UserError
    data = np.r_[np.linspace(1, 2, 99), 1e6]                       # one huge corner
    s = value_scale(data, top_quantile=0.95)
    assert (s.lo, s.log) == (1, False) and s.hi == pytest.approx(np.quantile(data, 0.95))
    assert value_scale(data).log and value_scale(data).auto       # the maximum: 6 decades
    span = 10 ** np.linspace(0, LOG_DECADES, 50)
    assert value_scale(span).log and not value_scale(span[:-1]).log
    assert not value_scale(np.r_[0.0, span]).log                   # zero: no log scale
    assert value_scale(span, log=False).log is False
    assert (value_scale(data, vmin=0.5, vmax=3).lo, value_scale(data, vmin=0.5, vmax=3).hi) == (0.5, 3)
    flat = value_scale(np.full(7, 2.3))
    assert flat.lo == 2.3 and flat.hi > 2.3
    below = value_scale(np.array([5.0, 6.0]), vmax=1)
    assert below.hi == 1 and below.lo < 1
    with pytest.raises(UserError, match="below --vmax"):
        value_scale(data, vmin=3, vmax=1)
    with pytest.raises(UserError, match="no finite"):
        value_scale(np.full(3, np.nan))


@pytest.mark.slow
def test_contour_labels_distinct_on_a_narrow_range(tmp_path):
    """Levels every 0.005 around 2.37: three significant digits would label 2.345 and
    2.35 both "2.35"; each level's label is its own value."""
    xs, ys, X, Y = grid(9, 7)
    f = write_ours(tmp_path / "own.h5", xs, ys, {"train_loss": 2.34 + 0.07 * (X ** 2 + Y ** 2) / 2})
    ax = plot_2D.plot_2d_contour(f, formats=[]).figures["2dcontour"].axes[0]
    texts = {t.get_text() for t in ax.texts}                  # a level may be labelled twice
    levels = contour_set(ax.figure).levels
    assert len(texts) >= 8, texts
    for text in texts:
        assert np.isclose(levels, float(text), rtol=0, atol=1e-9).any(), text


@pytest.mark.slow
def test_log_colour_bars_keep_plain_number_ticks(tmp_path):
    """The contour, filled-contour and heat-map figures shared one colour normalization:
    drawing the second reset the first colour bar's ticks to 10^k labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    xs, ys, X, Y = grid(15, 13)
    f = write_ours(tmp_path / "deep.h5", xs, ys, {"train_loss": 10 ** (-3 + 5 * (X ** 2 + Y ** 2) / 2)})
    plots = plot_2D.plot_2d_contour(f, formats=[])
    for key in ("2dcontour", "2dcontourf", "2dheat"):
        fig = plots.figures[key]
        FigureCanvasAgg(fig).draw()
        labels = [t.get_text() for t in fig.axes[1].get_yticklabels() if t.get_text()]
        assert labels and all("10^" not in t and float(t) > 0 for t in labels), (key, labels)


@pytest.mark.slow
def test_overlay_title_keeps_whole_shared_items(tmp_path):
    """An overlay's title kept the wrapped *lines* all files share, so a long line that
    differs only in its hash left a fragment ("biasbn, seed=0, idx=0"); now it keeps the
    shared items, and the model's name when only the checkpoints differ."""
    x = np.linspace(-1, 1, 11)
    files = [write_ours(tmp_path / f"{k}.h5", x, None, {"train_loss": 1 + x ** 2},
                        settings=full(model_file=f"digits_cnn_sgd_lr=0.1_bs={bs}_wd=0.0_save_epoch=60/model_60.t7",
                                      directions_hash=h, y=None))
             for k, bs, h in (("small", 16, "35ba9587aa"), ("large", 1024, "2c7d84da11"))]
    title = plot_1D.plot_1d_loss_err(files, formats=[]).figures["loss"].axes[0].get_title()
    lines = title.splitlines()
    assert lines[0] == "digits_cnn" and "model_60" not in title
    assert lines[1] == "filter-normalized, ignore biasbn, seed=3, idx=0", lines
    assert lines[-1] == "2 surfaces"
