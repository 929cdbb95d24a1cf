"""--html: one self-contained page, opened in real headless Chromium with the network
cut off: plotly renders (SVG for the contour/curves, WebGL for the 3D surface), no
uncaught JavaScript error, and the screenshot is not blank. Without Chromium, the
plotly figure written into the page is parsed back and checked: --log, --vmin/--vmax
and --zlim are honoured exactly as in the static figures."""
import json
import os
import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pytest

import plot_1D
import plot_2D
from conftest import contour_set, write_original, write_ours
from conftest import grid_points as grid

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium), "
                             "so the interactive HTML is not checked in a browser")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quick_dpi")]


def chromium(tmp_path, html, *mode):
    """Run headless Chromium on a local file; any network access fails by design."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1000,800",
            "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", *mode,
            "file://" + os.path.abspath(html)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert "Uncaught" not in p.stderr, p.stderr[-3000:]
    return p


def check_self_contained(html):
    text = open(html, encoding="utf-8").read()
    assert "<script src=" not in text and "cdn.plot.ly" not in text.split("</head>")[0]
    return text


@needs_chromium
def test_2d_html_renders_surface_and_contour(tmp_path):
    xs, ys, X, Y = grid(15, 9)
    done = np.ones((15, 9), bool)
    done[0, :3] = False                                     # missing points stay gaps
    f = write_original(tmp_path / "surf.h5", xs, ys, {"train_loss": 0.1 + X ** 2 + 2 * Y ** 2}, done)
    html = next(p for p in plot_2D.plot_2d_contour(f, formats=[], html=True).files
                if p.endswith(".html"))
    assert os.path.basename(html) == "surf.h5_train_loss_interactive.html"
    text = check_self_contained(html)
    assert "x=%{x" in text and "train_loss=%{customdata" in text  # hover: coordinates and the raw value

    png = tmp_path / "shot.png"
    dom = chromium(tmp_path, html, "--dump-dom", f"--screenshot={png}").stdout
    assert dom.count('class="main-svg"') >= 2 and 'class="contourlayer' in dom
    assert 'class="gl-container"' in dom and "<canvas" in dom and 'class="no-webgl"' not in dom
    img = (mpimg.imread(png)[..., :3] * 255).astype(np.uint32)
    surface_half = img[100:600, 50:480]                     # the 3D scene, left
    contour_half = img[100:600, 520:950]
    for part in (surface_half, contour_half):
        packed = part[..., 0] << 16 | part[..., 1] << 8 | part[..., 2]
        assert len(np.unique(packed)) > 50, len(np.unique(packed))


@needs_chromium
def test_1d_html_renders_curves(tmp_path):
    x = np.linspace(-1, 1, 21)
    f = write_ours(tmp_path / "line.h5", x, None,
                   {"train_loss": x ** 2, "train_acc": 100 - x ** 2,
                    "test_loss": x ** 2 + 1, "test_acc": 90 - x ** 2})
    html = next(p for p in plot_1D.plot_1d_loss_err(f, formats=[], html=True).files
                if p.endswith(".html"))
    assert os.path.basename(html) == "line.h5_1d_interactive.html"
    check_self_contained(html)
    dom = chromium(tmp_path, html, "--dump-dom").stdout
    assert dom.count('class="trace scatter') == 4 and 'class="main-svg"' in dom


# ---------------------------------------------------------------- the figure in the page

def page_figure(html):
    """(data, layout) of the Plotly.newPlot(...) call in a written page."""
    text = open(html, encoding="utf-8").read()
    pos = text.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    decoder, parts = json.JSONDecoder(), []
    while len(parts) < 3:
        while text[pos] in " \n\t\r,":
            pos += 1
        obj, pos = decoder.raw_decode(text, pos)
        parts.append(obj)
    return parts[1], parts[2]


def html_of(plots):
    return next(p for p in plots.files if p.endswith(".html"))


def as_array(values):
    return np.array([np.nan if v is None else v for v in np.ravel(values)], float).reshape(
        np.shape(values))


def test_2d_html_log_vmax_zlim_as_the_static_figures(tmp_path):
    """The large-batch demo page: losses 0.009-32 showed raw on a linear scale under a
    "(log scale)" title. Now --log gives log10 values with value-labelled ticks, --vmin/
    --vmax the colour range and contour levels, and --vmax/--zlim clip the 3D surface."""
    xs, ys, X, Y = grid(9, 7)
    loss = 0.009 * 3600 ** ((X ** 2 + Y ** 2) / 2)          # 0.009 .. 32.4
    f = write_ours(tmp_path / "lb.h5", xs, ys, {"train_loss": loss})
    p = plot_2D.plot_2d_contour(f, log=True, vmin=0.01, vmax=10, vlevel=0.5, formats=[],
                                html=True)
    (surface, contour, labels), layout = page_figure(html_of(p))
    assert "(log scale)" in layout["title"]["text"]
    z = as_array(surface["z"]).T                             # rows are y in plotly
    np.testing.assert_allclose(z, np.log10(np.minimum(loss, 10)))   # clipped at --vmax
    np.testing.assert_allclose(as_array(contour["z"]).T, np.log10(loss))
    assert (surface["cmin"], surface["cmax"]) == pytest.approx((-2, 1))
    assert (contour["zmin"], contour["zmax"]) == pytest.approx((-2, 1))
    levels = contour["contours"]
    assert (levels["start"], levels["end"], levels["size"]) == pytest.approx((-2, 1, 0.5))
    static = contour_set(p.figures["2dcontour"]).levels      # the same levels as the PDF
    np.testing.assert_allclose(10 ** np.arange(levels["start"], levels["end"] + 0.25, 0.5),
                               static)
    zaxis = layout["scene"]["zaxis"]
    assert zaxis["range"][1] == pytest.approx(1) and "(log)" in zaxis["title"]["text"]
    ticks = {round(v, 6): t for v, t in zip(zaxis["tickvals"], zaxis["ticktext"])}
    assert ticks[0.0] == "1" and ticks[-2.0] == "0.01" and ticks[1.0] == "10"
    np.testing.assert_allclose(as_array(surface["customdata"]).T, loss)   # hover: raw values

    p = plot_2D.plot_2d_contour(f, vmax=5, zlim=2, formats=[], html=True)   # linear
    (surface, contour), layout = page_figure(html_of(p))
    assert "log" not in layout["title"]["text"]
    np.testing.assert_allclose(as_array(surface["z"]).T, np.minimum(loss, 2))   # --zlim < vmax
    np.testing.assert_allclose(as_array(contour["z"]).T, loss)
    assert surface["cmax"] == pytest.approx(5) and contour["zmax"] == pytest.approx(5)
    assert layout["scene"]["zaxis"]["range"][1] == pytest.approx(2)
    assert "tickvals" not in layout["scene"]["zaxis"]


def test_1d_html_log_and_limits(tmp_path):
    x = np.linspace(-1, 1, 21)
    f = write_ours(tmp_path / "line.h5", x, None,
                   {"train_loss": 0.01 + x ** 2, "train_acc": 100 - x ** 2})
    p = plot_1D.plot_1d_loss_err(f, xmin=-0.5, xmax=1, loss_max=4, log=True, formats=[],
                                 html=True)
    data, layout = page_figure(html_of(p))
    assert layout["yaxis"]["type"] == "log"
    static = p.figures["loss"].axes[0]
    assert np.allclose(10 ** np.array(layout["yaxis"]["range"]), static.get_ylim())
    assert layout["xaxis"]["range"] == pytest.approx([-0.5, 1])
    assert layout["yaxis2"]["range"] == [0, 100]
    loss = next(t for t in data if t["name"] == "train_loss")
    assert loss.get("yaxis", "y") == "y"                          # on the log axis
    np.testing.assert_allclose(as_array(loss["y"]), 0.01 + x ** 2)

    p = plot_1D.plot_1d_loss_err(f, formats=[], html=True)
    data, layout = page_figure(html_of(p))
    assert layout["yaxis"].get("type", "linear") == "linear"


def test_2d_html_log_contours_labelled_in_values(tmp_path):
    """With --log the page's contour labels showed log10 exponents next to losses (the
    line labelled "0.5" was a loss of 3.16). Each label is now a loss: one of the static
    figure's levels, placed on that level's line (bilinear interpolation of log10(loss)
    at the label's position gives the level: contour vertices lie on grid edges)."""
    from scipy.interpolate import RegularGridInterpolator
    xs, ys, X, Y = grid(21, 17)
    loss = 0.009 * 3600 ** ((X ** 2 + Y ** 2) / 2)                  # 0.009 .. 32.4
    f = write_ours(tmp_path / "lb.h5", xs, ys, {"train_loss": loss})
    p = plot_2D.plot_2d_contour(f, log=True, formats=[], html=True)
    (surface, contour, labels), layout = page_figure(html_of(p))
    assert contour["contours"]["showlabels"] is False               # plotly's own: log10 values
    levels = contour_set(p.figures["2dcontour"]).levels
    shown = np.array([float(t) for t in labels["text"]])
    assert len(shown) >= 8 and labels["mode"] == "text"
    nearest = levels[np.abs(np.log10(shown)[:, None] - np.log10(levels)[None]).argmin(1)]
    np.testing.assert_allclose(shown, nearest, rtol=5e-3)          # 3 significant digits
    at = RegularGridInterpolator((xs, ys), np.log10(loss))(np.c_[labels["x"], labels["y"]])
    np.testing.assert_allclose(at, np.log10(nearest), atol=1e-9)
    assert loss.min() <= shown.min() and shown.max() <= loss.max()

    (surface, contour), layout = page_figure(html_of(plot_2D.plot_2d_contour(f, log=False, formats=[],
                                                                              html=True)))
    assert contour["contours"]["showlabels"] is True                # plotly labels values itself


MEASURE = """<script>setTimeout(function () {
  var box = function (e) { var b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  document.body.setAttribute("data-boxes", JSON.stringify({
    title: box(document.querySelector(".gtitle")),
    notes: Array.from(document.querySelectorAll(".annotation-text")).map(box),
    scene: box(document.querySelector(".gl-container div[id^=scene]"))}));
}, 3000);</script></body>"""


@needs_chromium
def test_2d_html_title_clear_and_3d_view_whole(tmp_path):
    """The page's 5-line title overlapped the 3D subplot's title, and the 3D view was
    cut at its scene's edges (tick labels, the z title). Measured in the browser: the
    title ends above every subplot title, and the pixels along the four edges of the 3D
    scene are plain background (nothing drawn is cut there)."""
    import html as html_text
    import re
    xs, ys, X, Y = grid(21, 21)
    settings = {"kind": "loss", "model": "digits_cnn", "dataset": "digits", "n_train": 1437,
                "model_file": "digits_cnn_sgd_lr=0.1_bs=16_wd=0.0005_save_epoch=1/model_20.t7",
                "model_hash": "9f2c41d0aa", "dir_type": "weights", "directions_hash": "5be1c07d3e",
                "xnorm": "filter", "ynorm": "filter", "xignore": "biasbn", "yignore": "biasbn",
                "seed": 0, "idx": 0, "x": [-1, 1, 21], "y": [-1, 1, 21]}
    f = write_ours(tmp_path / "s.h5", xs, ys, {"train_loss": 0.009 * 3600 ** ((X ** 2 + Y ** 2) / 2)},
                   settings=settings, dir_file="")
    page = html_of(plot_2D.plot_2d_contour(f, log=True, formats=[], html=True))
    measured = tmp_path / "measured.html"
    measured.write_text(open(page, encoding="utf-8").read().replace("</body>", MEASURE), encoding="utf-8")
    png = tmp_path / "shot.png"
    dom = chromium(tmp_path, measured, "--dump-dom", f"--screenshot={png}").stdout
    boxes = json.loads(html_text.unescape(re.search(r'data-boxes="([^"]*)"', dom).group(1)))
    title, notes, scene = boxes["title"], boxes["notes"], boxes["scene"]
    assert len(notes) == 2 and title[1] >= 0
    assert all(title[3] <= note[1] for note in notes), boxes
    img = (mpimg.imread(png)[..., :3] * 255).astype(np.uint32)
    left, top, right, bottom = (int(round(v)) for v in scene)
    edges = {"top": img[top + 1:top + 4, left:right], "bottom": img[bottom - 4:bottom - 1, left:right],
             "left": img[top:bottom, left + 1:left + 4], "right": img[top:bottom, right - 4:right - 1]}
    for edge, strip in edges.items():
        packed = strip[..., 0] << 16 | strip[..., 1] << 8 | strip[..., 2]
        assert len(np.unique(packed)) == 1, (edge, len(np.unique(packed)))


def test_1d_html_scale_from_the_data(tmp_path):
    """The page takes the static figures' scale rule: losses over 5 decades get a log
    axis without --log, and every loss is inside the axis (no cap at 5)."""
    x = np.linspace(-1, 1, 21)
    loss = 10 ** (-3 + 5 * x ** 2)
    f = write_ours(tmp_path / "deep.h5", x, None, {"train_loss": loss, "train_acc": 100 - x ** 2})
    p = plot_1D.plot_1d_loss_err(f, formats=[], html=True)
    data, layout = page_figure(html_of(p))
    assert layout["yaxis"]["type"] == "log" and "log scale" in layout["title"]["text"]
    low, high = 10 ** np.array(layout["yaxis"]["range"])
    assert low <= loss.min() and high >= loss.max()
