"""h52vtp.py: every .vtp written is read back with VTK's own XML reader and checked
for its points, quads, bounds and values -- square and non-square grids, our files
and original-format files, --log, --zmax, --interp, binary and ASCII."""
import os

import numpy as np
import pytest

vtk = pytest.importorskip("vtk")
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

import h52vtp  # noqa: E402
from conftest import assert_one_line_error, run_script  # noqa: E402
from conftest import grid_points as grid  # noqa: E402
from conftest import write_original, write_ours  # noqa: E402

pytestmark = pytest.mark.usefixtures("quick_dpi")


def read_vtp(path):
    r = vtk.vtkXMLPolyDataReader()
    r.SetFileName(str(path))
    r.Update()
    poly = r.GetOutput()
    assert r.GetErrorCode() == 0 and poly.GetNumberOfPoints() > 0, path
    points = vtk_to_numpy(poly.GetPoints().GetData())
    values = vtk_to_numpy(poly.GetPointData().GetArray("zvalue"))
    quads = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 4) \
        if poly.GetNumberOfPolys() else np.zeros((0, 4), int)
    return poly, points, values, quads


def expected_quads(done):
    """Cells whose four corners are all computed."""
    return int((done[:-1, :-1] & done[1:, :-1] & done[:-1, 1:] & done[1:, 1:]).sum())


def check(path, xs, ys, Z, done):
    """Points = the done grid points with z = value, quads = the complete cells."""
    poly, points, values, quads = read_vtp(path)
    assert poly.GetNumberOfPoints() == done.sum()
    assert poly.GetNumberOfPolys() == expected_quads(done)
    zs = Z[done]
    np.testing.assert_allclose(poly.GetBounds(), [xs.min(), xs.max(), ys.min(), ys.max(),
                                                  zs.min(), zs.max()])
    ix = np.searchsorted(xs, points[:, 0])                 # each point sits on its grid node
    iy = np.searchsorted(ys, points[:, 1])
    np.testing.assert_allclose(points[:, 0], xs[ix])
    np.testing.assert_allclose(values, Z[ix, iy])
    np.testing.assert_allclose(points[:, 2], values)
    if len(quads):                                         # a quad spans one grid cell
        qx, qy = points[quads, 0], points[quads, 1]
        assert np.allclose(np.ptp(qx, axis=1), xs[1] - xs[0])
        assert np.allclose(np.ptp(qy, axis=1), ys[1] - ys[0])
    return poly


@pytest.mark.parametrize("fmt,nx,ny,ascii", [("ours", 7, 7, False), ("original", 9, 4, True)])
def test_round_trip(tmp_path, fmt, nx, ny, ascii):
    xs, ys, X, Y = grid(nx, ny, y=(-0.5, 0.5))
    Z = 0.2 + X ** 2 + 2 * Y ** 2 + 0.3 * X            # asymmetric: orientation matters
    done = np.ones((nx, ny), bool)
    done[-1, -1] = done[2, 1] = False                  # missing points: holes
    write = write_ours if fmt == "ours" else write_original
    f = write(tmp_path / "s.h5", xs, ys, {"train_loss": Z, "train_acc": 100 - Z}, done)
    Zn = np.where(done, Z, np.nan)

    path = h52vtp.h5_to_vtp(f, "train_loss", ascii=ascii)
    assert os.path.basename(path) == "s.h5_train_loss.vtp"
    check(path, xs, ys, Zn, done)
    check(h52vtp.h5_to_vtp(f, "train_err", ascii=ascii), xs, ys, 100 - (100 - Zn), done)

    path = h52vtp.h5_to_vtp(f, "train_loss", log=True, zmax=1.0, ascii=ascii)
    assert os.path.basename(path) == "s.h5_train_loss_zmax_1_log.vtp"
    check(path, xs, ys, np.log(np.minimum(Zn, 1.0) + 0.1), done)

    poly = read_vtp(h52vtp.h5_to_vtp(f, "train_loss", show_points=True, ascii=ascii))[0]
    assert poly.GetNumberOfVerts() == done.sum()
    assert poly.GetCellData().GetArray("averaged zvalue").GetNumberOfTuples() == \
        done.sum() + expected_quads(done)


def test_interp_non_square(tmp_path):
    xs, ys, X, Y = grid(6, 4, y=(-0.5, 1.0))
    bowl = lambda x, y: 0.5 + x ** 2 + 2 * y ** 2 - x * y   # a cubic spline reproduces it
    f = write_original(tmp_path / "o.h5", xs, ys, {"train_loss": bowl(X, Y)})
    path = h52vtp.h5_to_vtp(f, "train_loss", interp=30, zmax=2.0, log=True)
    assert os.path.basename(path) == "o.h5_train_loss_zmax_2_log_interp_30.vtp"
    poly, points, values, _ = read_vtp(path)
    assert poly.GetNumberOfPoints() == 900 and poly.GetNumberOfPolys() == 29 * 29
    assert poly.GetBounds()[:4] == pytest.approx((-1, 1, -0.5, 1.0))
    expected = np.log(np.minimum(bowl(points[:, 0], points[:, 1]), 2.0) + 0.1)
    np.testing.assert_allclose(values, expected, atol=1e-9)


@pytest.mark.slow
def test_cli_original_command_and_errors(tmp_path):
    xs, ys, X, Y = grid(5, 5)
    done = np.ones((5, 5), bool)
    done[0, 0] = False
    f = write_original(tmp_path / "surf_[-1.0,1.0,5]x[-1.0,1.0,5].h5", xs, ys,
                       {"train_loss": 1 + X ** 2 + Y ** 2}, done)
    p = run_script(["h52vtp.py", "--surf_file", f, "--surf_name", "train_loss", "--zmax", "10",
                    "--log"], check=True)
    out = tmp_path / "surf_-1.0_1.0_5_x_-1.0_1.0_5_.h5_train_loss_zmax_10_log.vtp"
    assert str(out) in p.stdout and "1 of 25 points not computed" in p.stderr
    assert read_vtp(out)[0].GetNumberOfPolys() == 15
    one_d = write_ours(tmp_path / "one.h5", xs, None, {"train_loss": xs})
    for args, expected in [(["-f", f, "--interp", "50"], "needs a complete surface"),
                           (["--file", one_d], "1D surface"),
                           (["--surf_file", f, "--surf_name", "test_loss"], "available: train_loss")]:
        assert expected in assert_one_line_error(run_script(["h52vtp.py"] + args))
