"""plot_1D.py / plot_2D.py on real surface files: ours (SurfaceWriter) and files laid
out exactly as the original loss-landscape code wrote them (declared (nx, ny), filled
in np.meshgrid(x, y) order, -1 for "not computed", dir_file as a string dataset).

Most cases call the plotting functions in-process (they return the figures); a few
run the scripts as a user would, for the command lines and the one-line errors.
The surface-file helpers (write_ours, write_original, grid_points) are in conftest.py,
shared with test_vtp.py, test_html.py and test_bad_inputs_plots.py."""
import glob
import os
import re

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

import plot_1D  # noqa: E402
import plot_2D  # noqa: E402
from conftest import SURFACE_SETTINGS as SETTINGS  # noqa: E402
from conftest import assert_one_line_error, contour_set, run_script, write_original, write_ours  # noqa: E402
from conftest import grid_points as grid  # noqa: E402
from errors import UserError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quick_dpi")]

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


# ---------------------------------------------------------------- surface files

def bowl(X, Y):
    loss = 0.1 + X ** 2 + 2 * Y ** 2
    return {"train_loss": loss, "train_acc": 100 - 20 * loss}


def assert_drawn(path, min_colors=20):
    """The image exists and is not blank: many distinct colours, some variance."""
    assert os.path.getsize(path) > 1000, path
    img = mpimg.imread(path)[..., :3]
    rgb = (img.reshape(-1, 3) * 255).astype(np.uint32)
    colors = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colors) >= min_colors and img.std() > 0.02, (path, len(colors), img.std())
    return img





# ---------------------------------------------------------------- 1D

def test_1d_ours_and_original(tmp_path, capsys):
    x = np.linspace(-1, 1, 21)
    loss = 0.2 + x ** 2
    ours = write_ours(tmp_path / "ours.h5", x, None,
                      {"train_loss": loss, "train_acc": 90 - 10 * x ** 2,
                       "test_loss": loss + 0.3, "test_acc": 80 - 10 * x ** 2})
    done = np.ones(21, bool)
    done[-3:] = False
    orig = write_original(tmp_path / "orig.h5", x, None,
                          {"train_loss": loss, "train_acc": 90 - 10 * x ** 2}, done)

    p = plot_1D.plot_1d_loss_err(ours, formats=["png"])
    assert set(p.figures) == {"loss_acc", "loss", "err"}
    for f in p.files:
        assert_drawn(f)
    ax1, ax2 = p.figures["loss_acc"].axes                      # twin axes
    styles = {(l.get_label(), l.get_linestyle()) for l in ax1.lines}
    assert {("Training loss", "-"), ("Test loss", "--")} <= styles
    assert {l.get_label() for l in ax2.lines} == {"Training accuracy", "Test accuracy"}
    np.testing.assert_allclose(ax1.lines[0].get_ydata(), loss)
    err = p.figures["err"].axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(err, 10 + 10 * x ** 2)          # 100 - acc

    capsys.readouterr()
    p = plot_1D.plot_1d_loss_err(orig, formats=["png"])
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "3 of 21 points not computed" in warning[0]
    y = p.figures["loss"].axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(y[:-3], loss[:-3])
    assert np.isnan(y[-3:]).all()                              # -1 placeholders not drawn
    for f in p.files:
        assert_drawn(f)


def test_1d_limits_log_and_interpolation_marks(tmp_path):
    x = np.linspace(-2, 2, 41)
    v = {"train_loss": 0.05 + x ** 2, "train_acc": 100 - x ** 2}
    f = write_ours(tmp_path / "s.h5", x, None, v)
    p = plot_1D.plot_1d_loss_err(f, xmin=-1, xmax=1, loss_max=3, formats=[])
    ax = p.figures["loss"].axes[0]
    assert ax.get_xlim() == (-1, 1) and ax.get_ylim() == (0, 3)   # -1 and 1 can be asked for
    assert not [l for l in ax.lines if l.get_linestyle() == ":"]  # not an interpolation

    p = plot_1D.plot_1d_loss_err(f, log=True, formats=["png"])
    ax = p.figures["loss"].axes[0]
    assert ax.get_yscale() == "log" and 0 < ax.get_ylim()[0] <= 0.05
    assert p.files[0].endswith("_1d_loss_acc_log.png")

    interp = write_ours(tmp_path / "interp.h5", np.linspace(-0.5, 1.5, 21), None,
                        {"train_loss": np.ones(21), "train_acc": np.ones(21)},
                        settings={**SETTINGS, "model_file2": "model_20.pt"})
    orig = write_original(tmp_path / "model_300.t7_model_300.t7_states.h5_[-0.5,1.5,21].h5",
                          np.linspace(-0.5, 1.5, 21), None,
                          {"train_loss": np.ones(21), "train_acc": np.ones(21)})
    for path in (interp, orig):
        ax = plot_1D.plot_1d_loss_err(path, formats=[]).figures["loss"].axes[0]
        marks = sorted(l.get_xdata()[0] for l in ax.lines if l.get_linestyle() == ":")
        assert marks == [0.0, 1.0], path


def test_1d_overlay_glob_labels_prefix_and_hessian(tmp_path):
    x = np.linspace(-1, 1, 11)
    for i in (1, 2, 3):
        write_ours(tmp_path / f"run_{i}.h5", x, None,
                   {"train_loss": i * x ** 2, "train_acc": 100 - i * x ** 2},
                   dir_file=f"model_10.pt_weights_idx={i}.h5")
    p = plot_1D.plot_1d_loss_err(plot_1D.expand_files([str(tmp_path / "run_*.h5")]),
                                 formats=["png"])
    ax = p.figures["loss"].axes[0]
    assert [l.get_label() for l in ax.lines] == ["idx=1", "idx=2", "idx=3"]
    assert len({l.get_color() for l in ax.lines}) == 3
    assert os.path.basename(p.files[0]) == "run_overlay3_1d_loss_acc.png"
    assert_drawn(p.files[0])

    series = plot_1D.expand_files([], prefix=str(tmp_path / "run"), idx_min=1, idx_max=2)
    assert series == [str(tmp_path / "run_1.h5"), str(tmp_path / "run_2.h5")]
    p = plot_1D.plot_1d_loss_err(series, labels=["a", "b"], formats=[])
    assert [l.get_label() for l in p.figures["loss"].axes[0].lines] == ["a", "b"]
    with pytest.raises(UserError, match="2 labels for 3"):
        plot_1D.plot_1d_loss_err(glob.glob(str(tmp_path / "run_*.h5")), labels=["a", "b"])
    with pytest.raises(UserError, match="missing"):
        plot_1D.expand_files([], prefix=str(tmp_path / "run"), idx_min=1, idx_max=5)

    hess = write_ours(tmp_path / "hess.h5", x, None, {"max_eig": 10 + x, "min_eig": -x ** 2})
    p = plot_1D.plot_1d_loss_err(hess, formats=["png"])
    assert set(p.figures) == {"eig", "eig_abs_ratio"}
    ratio = p.figures["eig_abs_ratio"].axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(ratio, x ** 2 / (10 + x))
    assert_drawn(p.files[0])


# ---------------------------------------------------------------- 2D

@pytest.mark.parametrize("fmt,nx,ny", [("ours", 9, 9), ("original", 11, 6)])
def test_2d_all_figures(tmp_path, capsys, fmt, nx, ny):
    xs, ys, X, Y = grid(nx, ny)
    done = np.ones((nx, ny), bool)
    if fmt == "original":
        done[-1, -2:] = False                                  # -1 placeholders
    write = write_ours if fmt == "ours" else write_original
    f = write(tmp_path / "surf_[-1.0,1.0,9]x[-1.0,1.0,9].h5", xs, ys, bowl(X, Y), done)
    p = plot_2D.plot_2d_contour(f, "train_loss", vmin=0.1, vmax=2.1, vlevel=0.25,
                                formats=["png"])
    assert set(p.figures) == {"2dcontour", "2dcontourf", "2dheat", "3dsurface"}
    for path in p.files:
        assert SAFE_NAME.match(os.path.basename(path)), path
        assert_drawn(path)
    assert (capsys.readouterr().err.count("2 of") == 1) == (fmt == "original")

    ax3d = p.figures["3dsurface"].axes[0]
    assert ax3d.name == "3d"
    surfaces = [c for c in ax3d.collections if isinstance(c, Poly3DCollection)]
    assert surfaces and len(surfaces[0].get_paths()) >= (nx - 1) * (ny - 1) - 4
    np.testing.assert_allclose(contour_set(p.figures["2dcontour"]).levels,
                               np.arange(0.1, 2.1 + 0.125, 0.25))   # vmax included
    assert contour_set(p.figures["2dcontour"]).levels[-1] == pytest.approx(2.1)


@pytest.mark.parametrize("write", [write_ours, write_original])
def test_2d_orientation_non_square(tmp_path, write):
    """values = x on a 12 x 5 grid: the loss must grow to the right, not upwards."""
    xs, ys, X, Y = grid(12, 5, x=(-2, 2), y=(-0.5, 0.5))
    f = write(tmp_path / "x.h5", xs, ys, {"train_loss": X.copy(), "train_acc": X.copy()})
    p = plot_2D.plot_2d_contour(f, formats=["png"])
    mesh = next(c for c in p.figures["2dheat"].axes[0].collections if isinstance(c, QuadMesh))
    drawn = np.asarray(mesh.get_array()).reshape(5, 12)          # rows = y, columns = x
    np.testing.assert_allclose(drawn, np.tile(xs, (5, 1)))

    img = assert_drawn(next(f for f in p.files if f.endswith("_2dheat.png")))
    # viridis' green rises with the value: low on the left, high on the right, same up/down
    h, w, _ = img.shape
    plot = img[int(.2 * h):int(.8 * h), int(.15 * w):int(.78 * w), 1]
    left, right = plot[:, :plot.shape[1] // 5].mean(), plot[:, -plot.shape[1] // 5:].mean()
    top, bottom = plot[:plot.shape[0] // 4].mean(), plot[-plot.shape[0] // 4:].mean()
    assert right - left > 0.3 and abs(top - bottom) < 0.05, (left, right, top, bottom)


def test_2d_log_surf_names_trajectory_and_eig(tmp_path):
    xs, ys, X, Y = grid(9, 7)
    v = {**bowl(X, Y), "max_eig": 10 + X, "min_eig": -1 - Y}
    f = write_ours(tmp_path / "h.h5", xs, ys, v)
    with h5py.File(tmp_path / "proj.h5", "w") as h:
        h["proj_xcoord"] = np.linspace(-0.8, 0, 15)
        h["proj_ycoord"] = np.linspace(-0.4, 0, 15) ** 2
    with h5py.File(tmp_path / "pca.h5", "w") as h:
        h["explained_variance_ratio_"] = np.array([0.81234, 0.1])

    p = plot_2D.plot_2d_contour(f, "train_err", log=True, vmin=1, vmax=100, vlevel=0.5,
                                proj_file=str(tmp_path / "proj.h5"),
                                dir_file=str(tmp_path / "pca.h5"), formats=["png"])
    np.testing.assert_allclose(contour_set(p.figures["2dcontour"]).levels,
                               10 ** np.arange(0, 2.25, 0.5))       # decades, vmax included
    assert {"2dcontour_proj", "max_eig_2dheat", "min_eig_2dheat", "eig_ratio_2dheat"} <= set(p.figures)
    ax = p.figures["2dcontour_proj"].axes[0]
    assert ax.get_xlabel() == "1st PC: 81.23 %" and ax.get_ylabel() == "2nd PC: 10.00 %"
    path = next(l for l in ax.lines if l.get_label() == "path")
    np.testing.assert_allclose(path.get_xdata(), np.linspace(-0.8, 0, 15))
    assert path.get_marker() == "."
    final = next(l for l in ax.lines if l.get_label() == "final model")
    assert (final.get_xdata()[0], final.get_ydata()[0]) == (0, 0)
    mesh = next(c for c in p.figures["eig_ratio_2dheat"].axes[0].collections
                if isinstance(c, QuadMesh))
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(7, 9),
                               (np.abs((-1 - Y) / (10 + X))).T)
    assert os.path.basename(p.files[-1]) == "h.h5_eig_ratio_2dheat.png"
    for path_ in p.files:
        assert_drawn(path_)

    t = plot_2D.plot_trajectory(str(tmp_path / "proj.h5"), str(tmp_path / "pca.h5"),
                                formats=["png"])
    assert os.path.basename(t.files[0]) == "proj.h5_trajectory.png"
    assert_drawn(t.files[0], min_colors=10)


# ---------------------------------------------------------------- command lines and errors

def test_cli_original_command_out_dir_and_errors(tmp_path):
    xs, ys, X, Y = grid(6, 5)
    surf = write_original(tmp_path / "model_300.t7_weights_xnorm=filter.h5_[-1.0,1.0,6]x[-1.0,1.0,5].h5",
                          xs, ys, bowl(X, Y))
    run_script(["plot_2D.py", "--surf_file", surf, "--surf_name", "train_loss"], check=True)
    made = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.pdf")))
    assert made == [f"model_300.t7_weights_xnorm_filter.h5_-1.0_1.0_6_x_-1.0_1.0_5_.h5_train_loss_{k}.pdf"
                    for k in ("2dcontour", "2dcontourf", "2dheat", "3dsurface")]
    one_d = write_ours(tmp_path / "one.h5", np.linspace(-1, 1, 5), None,
                       {"train_loss": np.ones(5), "train_acc": np.ones(5)})
    run_script(["plot_1D.py", "-f", one_d, "--xmin", "-1", "--xmax", "1", "--format", "png",
                "--out_dir", tmp_path / "figs"], check=True)
    assert sorted(os.listdir(tmp_path / "figs")) == ["one.h5_1d_err.png", "one.h5_1d_loss.png",
                                                      "one.h5_1d_loss_acc.png"]
    # every other bad input: tests/test_bad_inputs_plots.py (in-process, one table)
    cases = [(["plot_2D.py", "--surf_file", tmp_path / "nope.h5"], "not found"),
             (["plot_1D.py", "--surf_file", surf], "2D surface")]
    for args, expected in cases:
        assert expected in assert_one_line_error(run_script(args)), args


# ---------------------------------------------------------------- layout and titles

def full_settings(**changes):
    """Settings as plot_surface.py stores them (a 2D filter-normalized surface)."""
    s = {"kind": "loss", "model": "digits_cnn", "model_file": "digits_cnn_bs=16/model_20.t7",
         "model_hash": "9f2c41d0aa", "model_file2": "", "model_file3": "", "dataset": "digits",
         "raw_data": False, "data_split": 1, "split_idx": 0, "max_samples": None,
         "n_train": 1437, "n_test": 360, "trainloader": "", "testloader": "",
         "loss_name": "crossentropy", "dir_type": "weights", "directions_hash": "5be1c07d3e",
         "xnorm": "filter", "ynorm": "filter", "xignore": "biasbn", "yignore": "biasbn",
         "x": [-1, 1, 9], "y": [-1, 1, 7], "precision": "fp32",
         "metrics": ["train_loss", "train_acc"]}
    s.update(changes)
    return s


def test_titles_tell_runs_apart(tmp_path):
    """Surfaces that differ only in the seed (so in the directions), only in the
    checkpoint, or that come from a random init, get different titles."""
    xs, ys, X, Y = grid(9, 7)
    variants = {"base": {}, "seed": {"directions_hash": "77aa01be42"},
                "checkpoint": {"model_file": "digits_cnn_bs=1024/model_20.t7",
                               "model_hash": "03d9e1c2b7"},
                "init": {"model_file": "", "model_hash": "init(seed=0)"}}
    titles = {}
    for key, change in variants.items():
        f = write_ours(tmp_path / f"{key}.h5", xs, ys, bowl(X, Y), settings=full_settings(**change))
        fig = plot_2D.plot_2d_contour(f, formats=[]).figures["2dcontour"]
        titles[key] = fig.axes[0].get_title()
    assert len(set(titles.values())) == 4, titles
    assert "5be1c07d" in titles["base"] and "77aa01be" in titles["seed"]
    assert "bs=1024/model_20.t7" in titles["checkpoint"]
    assert "randomly initialised network (no --model_file)" in titles["init"]
    assert "(log scale)" not in titles["base"]


def draw(fig):
    """Draw a (closed) figure on an Agg canvas; returns its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def boxes_overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_3d_tick_labels_do_not_overlap(tmp_path):
    """Tiny steps and a narrow loss range: the 3D figure before this fix
    printed 9 labels on x and on y here, overlapping each other."""
    xs, ys, X, Y = grid(21, 17, x=(-1e-3, 1e-3), y=(-1e-3, 1e-3))
    f = write_ours(tmp_path / "s.h5", xs, ys,
                   {"train_loss": 2.3456 + 3e-4 * ((X / 1e-3) ** 2 + (Y / 1e-3) ** 2)})
    for log in (False, True):
        fig = plot_2D.plot_2d_contour(f, log=log, formats=[]).figures["3dsurface"]
        renderer = draw(fig)
        ax = fig.axes[0]
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            boxes = [t.get_window_extent(renderer) for t in plot_2D.shown_tick_labels(axis)]
            texts = [t.get_text() for t in plot_2D.shown_tick_labels(axis)]
            assert len(boxes) >= 2 and len(set(texts)) == len(texts), (log, axis, texts)
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not boxes_overlap(a, b), (log, axis, a, b)


def test_1d_legends_outside_and_honest(tmp_path):
    """The legend never covers the accuracy curve, and says "dashed: test" only when
    test curves are drawn."""
    x = np.linspace(-0.5, 1.5, 41)
    settings = {**SETTINGS, "model_file2": "model_20.pt"}
    f = write_ours(tmp_path / "interp.h5", x, None,
                   {"train_loss": 0.05 + (x * (x - 1)) ** 2, "train_acc": 100 - 40 * (x * (x - 1)) ** 2},
                   settings=settings)
    fig = plot_1D.plot_1d_loss_err(f, formats=[]).figures["loss_acc"]
    renderer = draw(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    ax1, ax2 = fig.axes
    for ax in (ax1, ax2):
        for line in ax.lines:
            if line.get_linestyle() == ":":
                continue                                   # the checkpoint marks
            pts = ax.transData.transform(np.column_stack(line.get_data()))
            inside = ((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1)
                      & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1))
            assert not inside.any(), line.get_label()
    assert legend.get_title().get_text() == ""

    runs = []
    for i, test in ((1, False), (2, False), (3, True)):
        values = {"train_loss": i * x ** 2, "train_acc": 100 - i * x ** 2}
        if test:
            values.update(test_loss=i * x ** 2 + 1, test_acc=90 - i * x ** 2)
        runs.append(write_ours(tmp_path / f"run_{i}.h5", x, None, values,
                               dir_file=f"model_10.pt_weights_idx={i}.h5"))
    heading = lambda p: p.figures["loss"].legends[0].get_title().get_text()
    assert heading(plot_1D.plot_1d_loss_err(runs[:2], formats=[])) == ""
    overlay = plot_1D.plot_1d_loss_err(runs, formats=[])
    assert heading(overlay) == "solid: train, dashed: test"
    assert overlay.figures["loss"].axes[0].get_title() == \
        "digits_cnn model_10.pt\nweights directions, filter-normalized\ndigits\n3 surfaces"
