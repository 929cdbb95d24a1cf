"""Hessian eigenvector directions: top_eigenpairs against exact Hessians, the directions
(unit norm, orthogonal, Rayleigh quotient = eigenvalue, zero on biases), and end to end:
plot_surface.py on the direction file gives a 1D curve whose curvature at 0 is λmax."""
import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

import hessian_directions
import net_plotter
from conftest import assert_one_error_line, exact_hessian, run_main_error, run_script, save_checkpoint
from evaluation import get_loss_fn
from hess_vec_prod import Hessian, hessian_params, top_eigenpairs

N = 23


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny products: one thread is fastest


def tiny():
    """A 5-8-3 tanh network (64 weights with > 1 dimension, plus biases) and 23 samples."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return net, torch.randn(N, 5), torch.randint(0, 3, (N,))


def flat(direction, net):
    """A direction restricted to the Hessian's parameters, as one float64 vector."""
    keep = {n for n, _ in hessian_params(net)}
    return np.concatenate([d.double().reshape(-1).numpy()
                           for (n, _), d in zip(net.named_parameters(), direction) if n in keep])


@pytest.mark.slow
def test_top_eigenpairs_match_the_exact_hessian():
    net, x, y = tiny()
    loss_sum = get_loss_fn("crossentropy")
    H = exact_hessian(net, x, y, loss_sum)
    ev, evec = np.linalg.eigh(H)
    op = Hessian(net, x, y, loss_sum, 7)
    vals, vecs = top_eigenpairs(op, 2, tol=1e-10)
    np.testing.assert_allclose(vals, ev[::-1][:2], rtol=1e-5)
    for j in range(2):
        assert abs(abs(vecs[:, j] @ evec[:, -1 - j]) - 1) < 1e-5      # the same eigenvector
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(2), atol=1e-8)
    assert (vecs[np.abs(vecs).argmax(axis=0), [0, 1]] > 0).all()        # fixed sign
    again = top_eigenpairs(op, 2, tol=1e-10)[1]
    np.testing.assert_array_equal(again, vecs)


@pytest.mark.slow
def test_eigen_directions_unit_orthogonal_rayleigh_and_zero_biases():
    net, x, y = tiny()
    loss_sum = get_loss_fn("crossentropy")
    H = exact_hessian(net, x, y, loss_sum)
    op = Hessian(net, x, y, loss_sum, N)
    vals, (dx, dy) = hessian_directions.eigen_directions(net, op, 2, "none", 1e-8, 0)
    for (name, p), a, b in zip(net.named_parameters(), dx, dy):
        assert a.shape == p.shape and b.shape == p.shape
        if p.dim() <= 1:
            assert not a.any() and not b.any(), name              # biases: zero
    vx, vy = flat(dx, net), flat(dy, net)
    full = lambda d: np.concatenate([t.double().reshape(-1).numpy() for t in d])
    assert np.linalg.norm(full(dx)) == pytest.approx(1, abs=1e-6)       # unit norm, full space
    assert np.linalg.norm(full(dy)) == pytest.approx(1, abs=1e-6)
    assert abs(full(dx) @ full(dy)) < 1e-6                              # orthogonal
    for v, lam in ((vx, vals[0]), (vy, vals[1])):
        assert v @ H @ v == pytest.approx(lam, rel=1e-4)                # Rayleigh quotient
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-5)
    # filter normalization: each row scaled to the norm of the weight's row
    _, (fx, _) = hessian_directions.eigen_directions(net, op, 2, "filter", 1e-8, 0)
    for (_, p), d in zip(net.named_parameters(), fx):
        if p.dim() > 1:
            np.testing.assert_allclose(d.norm(dim=1).numpy(), p.detach().norm(dim=1).numpy(), rtol=1e-5)


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = save_checkpoint(tmp_path_factory.mktemp("cnn") / "cnn.t7", "digits_cnn", seed=0)
    return path


@pytest.mark.slow
def test_curvature_of_the_1d_surface_along_the_top_eigenvector_is_lambda_max(tmp_path, cnn_file, capsys):
    """The loss along the unit top eigenvector is L0 + g·v α + λmax α²/2 + O(α³): twice
    the α² coefficient of a degree-4 polynomial fitted to plot_surface.py's stored losses
    on [-0.2, 0.2] (21 points) is λmax within 1 % (measured 0.1 %). A second difference at
    a small step is not: its error is the fp32 rounding of the losses divided by h² (0.6 %
    to 4.8 % at h = 0.01, depending on the machine's summation order)."""
    dir_file, surf = str(tmp_path / "dirs.h5"), str(tmp_path / "surf.h5")
    common = ["--model", "digits_cnn", "--model_file", cnn_file, "--max_samples", "200", "--threads", "1"]
    p = run_script(["hessian_directions.py"] + common + ["--dir_file", dir_file], check=True)
    assert "top 2 eigenvalues" in p.stdout
    with h5py.File(dir_file, "r") as f:
        lam = f.attrs["eigenvalues"]
        assert f.attrs["dir_type"] == "weights" and f.attrs["format"] == net_plotter.FORMAT
        assert set(f) == {"xdirection", "ydirection"}
        assert lam[0] >= lam[1] > 0
    run_script(["plot_surface.py"] + common + ["--dir_file", dir_file, "--dir_type", "weights",
                                               "--x=-0.2:0.2:21", "--surf_file", surf, "--no_progress"],
               check=True)
    with h5py.File(surf, "r") as f:
        x, loss = f["xcoordinates"][()], f["train_loss"][()].astype(np.float64)
    curvature = 2 * np.polyfit(x, loss, 4)[-3]
    assert curvature == pytest.approx(lam[0], rel=0.01)
    # the same command reuses the file; other settings are refused and the file is kept
    # (in this process: the script's main, as run_main runs it)
    argv = common + ["--dir_file", dir_file]
    assert hessian_directions.main(argv) == dir_file
    assert "reusing" in capsys.readouterr().out
    before = open(dir_file, "rb").read()
    msg = one_line_error(hessian_directions.main, argv + ["--norm", "filter"], capsys)
    assert "--overwrite" in msg and "norm" in msg and open(dir_file, "rb").read() == before
    # --k 1: only an x direction; plot_surface --y with it is a clear error
    one = str(tmp_path / "one.h5")
    hessian_directions.main(common + ["--dir_file", one, "--k", "1"])
    with h5py.File(one, "r") as f:
        assert set(f) == {"xdirection"} and len(f.attrs["eigenvalues"]) == 1
        assert f.attrs["eigenvalues"][0] == pytest.approx(lam[0], rel=1e-4)
    import plot_surface
    capsys.readouterr()
    msg = one_line_error(plot_surface.main, common + ["--dir_file", one, "--x=-0.02:0.02:3",
                                                          "--y=-0.02:0.02:3", "--surf_file",
                                                          str(tmp_path / "s2.h5")], capsys)
    assert "only an x direction" in msg


def one_line_error(main, argv, capsys):
    """``main(argv)`` as its script runs it: a UserError is one 'error:' line, status 2."""
    code, err = run_main_error(main, argv, capsys)
    assert code == 2, err
    return assert_one_error_line(err, only=True)


@pytest.mark.parametrize("extra,needle", [
    (["--k", "3"], "--k"),
    (["--k", "0"], "--k"),
    (["--norm", "layer"], "--norm"),
    (["--eig_tol", "nan"], "--eig_tol"),
    (["--eig_tol", "-1"], "--eig_tol"),
    (["--dir_type", "states"], "weights"),
    (["--model_file", "/nonexistent/m.t7"], "not found"),
    (["--dir_file", "FOLDER"], "folder"),
    (["--mpi"], "single process"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, extra, needle):
    extra = [str(tmp_path) if a == "FOLDER" else a for a in extra]
    argv = ["--model", "digits_mlp", "--max_samples", "20"] + extra
    assert needle in one_line_error(hessian_directions.main, argv, capsys)
