"""--html: one self-contained page, opened in real headless Chromium with the network
cut off: plotly renders (SVG for the contour/curves, WebGL for the 3D surface), no
uncaught JavaScript error, and the screenshot is not blank."""
import os
import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pytest

import plot_1D
import plot_2D
from test_plots import grid, write_original, write_ours

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium), "
                             "so the interactive HTML is not checked in a browser")


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


def test_2d_html_renders_surface_and_contour(tmp_path):
    xs, ys, X, Y = grid(15, 9)
    done = np.ones((15, 9), bool)
    done[0, :3] = False                                     # missing points stay gaps
    f = write_original(tmp_path / "surf.h5", xs, ys, {"train_loss": 0.1 + X ** 2 + 2 * Y ** 2}, done)
    html = next(p for p in plot_2D.plot_2d_contour(f, formats=[], html=True).files
                if p.endswith(".html"))
    assert os.path.basename(html) == "surf.h5_train_loss_interactive.html"
    text = check_self_contained(html)
    assert "x=%{x" in text and "train_loss=%{z" in text     # hover: coordinates and value

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
