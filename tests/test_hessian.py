"""Hessian eigenvalues: against exact Hessians, for every batch size, for positive
definite, indefinite and negative-dominant spectra; the grid script on 1 and 2 MPI
ranks (a 2D grid), and the single-point spectrum (top-k, trace)."""
import argparse

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

import model_loader
import net_plotter
from conftest import assert_one_line_error, exact_hessian, run_mpi, run_script, save_checkpoint
from evaluation import get_loss_fn
from hess_vec_prod import Hessian, hutchinson_trace, min_max_eigs, top_k
from surface import read_surface

N_SAMPLES = 23


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny products: one thread is fastest


def tiny_problem():
    """A 6-16-4 tanh network (160 weights with > 1 dimension, plus biases) and 23 samples."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(N_SAMPLES, 6), torch.randint(0, 4, (N_SAMPLES,))
    return net, x, y


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 7, N_SAMPLES])
@pytest.mark.parametrize("loss_name", ["crossentropy", "mse"])
def test_tiny_network_matches_exact_hessian_for_every_batch_size(loss_name, batch_size):
    net, x, y = tiny_problem()
    loss_sum = get_loss_fn(loss_name)
    H = exact_hessian(net, x, y, loss_sum)
    ev = np.linalg.eigvalsh(H)
    assert ev[0] < 0 < ev[-1]  # an indefinite Hessian: both ends are tested
    op = Hessian(net, x, y, loss_sum, batch_size)
    assert op.shape == (160, 160)
    lmax, lmin = min_max_eigs(op)
    assert lmax == pytest.approx(ev[-1], rel=1e-3)
    assert lmin == pytest.approx(ev[0], rel=1e-3)
    np.testing.assert_allclose(top_k(op, 5), ev[::-1][:5], rtol=1e-3)
    if batch_size == 7:  # the operator is the Hessian itself, not a multiple of it
        np.testing.assert_allclose(op.matmat(np.eye(160)), H, atol=1e-6 * abs(H).max())
        est, se, samples = hutchinson_trace(op, 200, seed=1)
        assert len(samples) == 200 and 0 < se < abs(est)
        assert abs(est - np.trace(H)) < 4 * se


class Quadratic(nn.Module):
    """loss_n = ½·λ_n·(x_n·w)² with x_n = √N·q_n (q_n orthonormal): H = Q diag(λ) Qᵀ."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, 1, dtype=torch.float64))

    def forward(self, x):
        return (x @ self.w).squeeze(1)


def quadratic_loss(out, lam):
    return 0.5 * (lam * out ** 2).sum()


@pytest.mark.parametrize("spectrum", [
    (1.0, 2.0),     # well-conditioned positive definite: the original returned λmax as λmin
    (-1.0, 3.0),    # indefinite
    (-5.0, 0.5),    # negative-dominant
    (-3.0, -1.0),   # negative definite
])
@pytest.mark.parametrize("batch_size", [7, 60])  # 60: the whole set, one batch
def test_quadratic_with_known_spectrum(spectrum, batch_size):
    n = 60
    rng = np.random.default_rng(0)
    lam = np.sort(np.concatenate([spectrum, rng.uniform(*spectrum, n - 2)]))
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    x = torch.from_numpy(np.sqrt(n) * q)
    net = Quadratic(n)
    rho = np.abs(lam).max()
    op = Hessian(net, x, torch.from_numpy(lam), quadratic_loss, batch_size)
    lmax, lmin = min_max_eigs(op)  # the default tolerance: within 1e-3 of ρ
    assert abs(lmax - lam[-1]) < 1e-3 * rho and abs(lmin - lam[0]) < 1e-3 * rho
    lmax, lmin = min_max_eigs(op, tol=1e-10)
    assert abs(lmax - lam[-1]) < 1e-8 * rho and abs(lmin - lam[0]) < 1e-8 * rho
    np.testing.assert_allclose(top_k(op, 3, tol=1e-10), lam[::-1][:3], atol=1e-8 * rho)


def test_graph_cache_follows_a_moving_model():
    """One operator, a model moved in place between products (as on a grid): the kept
    gradient graphs are dropped, so every product is that of the current weights."""
    net, x, y = tiny_problem()
    loss_sum = get_loss_fn("crossentropy")
    op = Hessian(net, x, y, loss_sum, 7, cache_mb=100)
    v = np.random.default_rng(0).standard_normal(160)
    first = op.matvec(v)
    assert len(op.cache) == 4 and np.array_equal(op.matvec(v), first)
    xdir = net_plotter.random_direction(net, "weights", "filter", "biasbn")
    net_plotter.Perturbation(net, "weights", xdir).set(0.5)
    moved = op.matvec(v)
    H = exact_hessian(net, x, y, loss_sum)
    np.testing.assert_allclose(moved, H @ v, atol=1e-5 * abs(H @ v).max())
    no_cache = Hessian(net, x, y, loss_sum, 7, cache_mb=0).matvec(v)
    np.testing.assert_allclose(moved, no_cache, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    path = save_checkpoint(tmp_path_factory.mktemp("mlp") / "mlp.t7", "digits_mlp", seed=0)
    return path


def mlp_hessian(model_file, n=40):
    """The Hessian operator of digits_mlp on the first n training images, built here."""
    import dataloader
    data = dataloader.load_data(argparse.Namespace(
        dataset="digits", datapath="", raw_data=False, download=False, data_split=1, split_idx=0,
        max_samples=n, trainloader="", testloader=""))
    net = model_loader.load("digits_mlp", model_file)
    return net, Hessian(net, data.train_x, data.train_y, get_loss_fn("crossentropy"), n)


@pytest.mark.slow
def test_2d_grid_two_ranks_equal_one_rank(tmp_path, mlp_file):
    one, two, dir_file = (str(tmp_path / f) for f in ("one.h5", "two.h5", "dirs.h5"))
    grid = ["plot_hessian_eigen.py", "--model", "digits_mlp", "--model_file", mlp_file,
            "--max_samples", "40", "--threads", "1", "--x=-1:1:3", "--y=-0.5:0.5:3",
            "--dir_file", dir_file, "--no_progress"]
    run_script(grid + ["--surf_file", one], check=True)
    p = run_mpi(grid + ["--mpi", "--surf_file", two])
    assert p.returncode == 0, p.stderr
    s1, s2 = read_surface(one), read_surface(two)
    assert s1.complete and s2.complete and s1.shape == (3, 3)
    assert s1.settings["kind"].startswith("hessian") and s1.settings == s2.settings
    for m in ("max_eig", "min_eig"):
        np.testing.assert_allclose(s2.values[m], s1.values[m], rtol=1e-6)
    assert (s1.get("eig_ratio") >= 0).all()
    # two points checked independently: the weights set by hand, the Hessian built here
    net, op = mlp_hessian(mlp_file)
    xdir, ydir = net_plotter.read_directions(dir_file, net, "weights", need_y=True)
    for i, j in ((1, 1), (2, 0)):
        net_plotter.Perturbation(net, "weights", xdir, ydir).set(s1.x[i], s1.y[j])
        lmax, lmin = min_max_eigs(op, tol=1e-8)
        assert s1.values["max_eig"][i, j] == pytest.approx(lmax, rel=1e-3)
        assert s1.values["min_eig"][i, j] == pytest.approx(lmin, abs=1e-3 * lmax)
    # a rerun with another tolerance is refused (stale-file guard), the file kept
    before = open(one, "rb").read()
    p = run_script(grid + ["--surf_file", one, "--eig_tol", "1e-4"])
    assert "eig_tol" in assert_one_line_error(p) and open(one, "rb").read() == before


@pytest.mark.slow
def test_single_point_top_k_and_trace(tmp_path, mlp_file):
    out = str(tmp_path / "spectrum.h5")
    cmd = ["plot_hessian_eigen.py", "--model", "digits_mlp", "--model_file", mlp_file, "--max_samples", "40",
           "--threads", "1", "--top_k", "4", "--trace", "--trace_samples", "30", "--spectrum_file", out]
    p = run_script(cmd + ["--progress_every", "0"], check=True)
    assert "top eigenvalues" in p.stdout and "trace" in p.stdout
    # progress on stderr: every phase, and lines while products run (products done, seconds)
    for phase in ("top 4 eigenvalues done:", "λmax/λmin done:", "trace (30 Rademacher vectors) done: 30 products"):
        assert phase in p.stderr, p.stderr
    assert "λmax/λmin: 1 products" in p.stderr
    with h5py.File(out, "r") as f:
        top, lmax, lmin = f["top_eigenvalues"][()], f["max_eig"][()], f["min_eig"][()]
        trace, se = f["trace"][()], f["trace_stderr"][()]
    net, op = mlp_hessian(mlp_file)
    np.testing.assert_allclose(top, top_k(op, 4, tol=1e-8), rtol=1e-3)
    assert top[0] == pytest.approx(lmax, rel=1e-3) and lmin <= top[-1]
    assert abs(trace - hutchinson_trace(op, 30)[0]) < 1e-6 * abs(trace) and se > 0
    assert "--overwrite" in assert_one_line_error(run_script(cmd))  # an existing file is kept


def test_non_finite_loss_gives_nan_not_a_crash():
    net, x, y = tiny_problem()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    op = Hessian(net, x, y, get_loss_fn("crossentropy"), N_SAMPLES)
    with pytest.warns(UserWarning, match="not finite"):
        lmax, lmin = min_max_eigs(op)
    assert np.isnan(lmax) and np.isnan(lmin)
