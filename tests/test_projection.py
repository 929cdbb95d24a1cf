"""Trajectories: PCA directions and projections of real checkpoint files.

A trajectory built from known vectors, θ_e = θ_f + a_e·u + b_e·v with orthonormal u, v
and centred a ⟂ b of different variances, has exactly u and v as principal directions
and (a_e, b_e) as coordinates; the tests check both, in weights mode on a model with
float64, float32 and float16 entries and in states mode on a model with BatchNorm
(integer num_batches_tracked buffers). The full recipe runs the real scripts: train
3 epochs, PCA, a 5x5 surface over the suggested range, the path on the contours.
"""
import glob
import hashlib
import json
import os
import re

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

import net_plotter
import projection
from cifar10.models import MODELS
from conftest import assert_one_line_error, run_script
from errors import UserError


class MixedNet(nn.Module):
    """Entries of three float dtypes (float64, float32, a float16 vector) and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 6).double()
        self.b = nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.ones(4, dtype=torch.float16))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.b(torch.relu(self.a(x.double())).float()) * self.scale.float()


def mixed_net():
    torch.manual_seed(1)
    return MixedNet()


def coefficients(n=6, seed=0):
    """a, b with centred a ⟂ centred b, |a_c| = 3, |b_c| = 1, and a[-1] = b[-1] = 0."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    a -= a.mean()
    b -= b.mean()
    b -= (a @ b) / (a @ a) * a
    a, b = 3 * a / np.linalg.norm(a), b / np.linalg.norm(b)
    return a - a[-1], b - b[-1]


def write_known_trajectory(folder, net, dir_type, kept, a, b, seed=0):
    """Checkpoints model_<e>.t7 with the kept entries at θ_f + a_e·u + b_e·v and the
    other float entries randomly perturbed; returns (u, v) as {name: float64 tensor}."""
    entries = [(n, w) for n, w in net_plotter.get_entries(net, dir_type) if w.is_floating_point()]
    names = [n for n, w in entries if kept(n, w)]
    sizes = [dict(entries)[n].numel() for n in names]
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(sum(sizes), 2, dtype=torch.float64, generator=g))
    u = dict(zip(names, (t.view_as(dict(entries)[n]) for n, t in zip(names, q[:, 0].split(sizes)))))
    v = dict(zip(names, (t.view_as(dict(entries)[n]) for n, t in zip(names, q[:, 1].split(sizes)))))
    os.makedirs(folder, exist_ok=True)
    for e in range(len(a)):
        sd = {k: t.clone() for k, t in net.state_dict().items()}
        for n, w in entries:
            if n in u:
                new = w.double() + a[e] * u[n] + b[e] * v[n]
            elif e < len(a) - 1:
                new = w.double() + torch.rand(w.shape, dtype=torch.float64, generator=g)
            else:
                new = w.double()
            sd[n] = new.to(w.dtype)
        if "steps" in sd:
            sd["steps"] = torch.tensor(100 * e)
        torch.save({"acc": 0.0, "epoch": e, "state_dict": sd}, os.path.join(folder, f"model_{e}.t7"))
    return u, v


def read_pca(path, names):
    """Direction vectors over ``names`` and the PCA statistics, read back from the file."""
    with h5py.File(path, "r") as f:
        stats = {k: f[k][()] for k in ("explained_variance_ratio_", "singular_values_", "explained_variance_")}
        dirs = []
        for g in ("xdirection", "ydirection"):
            order = json.loads(f[g].attrs["names"])
            stored = {n: torch.from_numpy(np.asarray(f[g][str(i)][()])) for i, n in enumerate(order)}
            dirs.append(stored)
    return dirs, stats


def check_recovered(dirs, u, v, proj_file, a, b):
    """Directions = ±u, ±v (checked entry by entry); coordinates = (±a, ±b) to 1e-6."""
    signs = []
    for d, exact in zip(dirs, (u, v)):
        s = np.sign(sum(float((d[n].double() * exact[n]).sum()) for n in exact))
        for n in exact:
            assert torch.allclose(d[n].double(), s * exact[n], atol=1e-7), n
        signs.append(s)
    with h5py.File(proj_file, "r") as f:
        x, y = f["proj_xcoord"][()], f["proj_ycoord"][()]
        assert list(f["epochs"][()]) == list(range(len(a)))
    np.testing.assert_allclose(x, signs[0] * a, atol=1e-6)
    np.testing.assert_allclose(y, signs[1] * b, atol=1e-6)
    assert x[-1] == 0 and y[-1] == 0


def test_known_trajectory_weights_mixed_dtypes(tmp_path):
    net = mixed_net()
    a, b = coefficients()
    folder = str(tmp_path / "run")
    # biases and the float16 vector (<= 1-D) get random changes that --ignore biasbn removes
    u, v = write_known_trajectory(folder, net, "weights", lambda n, w: w.dim() > 1, a, b)
    dir_file, proj_file = projection.run(projection.build_parser().parse_args(
        ["--model", "test_projection:mixed_net", "--model_folder", folder, "--max_epoch", "5",
         "--ignore", "biasbn"]))
    assert dir_file == os.path.join(folder, "PCA_weights_ignore=biasbn_save_epoch=1", "directions.h5")
    assert proj_file == dir_file + "_proj_cos.h5"
    dirs, stats = read_pca(dir_file, list(u))
    check_recovered(dirs, u, v, proj_file, a, b)
    for d in dirs:  # ignored entries are zero, in every dtype of the model
        assert not d["a.bias"].any() and not d["b.bias"].any() and not d["scale"].any()
    np.testing.assert_allclose(stats["explained_variance_ratio_"], [0.9, 0.1], atol=1e-9)
    np.testing.assert_allclose(stats["explained_variance_"], [9 / 5, 1 / 5], atol=1e-9)
    np.testing.assert_allclose(stats["singular_values_"], [3, 1], atol=1e-9)
    # the same numbers as scikit-learn's PCA of the matrix of differences
    from sklearn.decomposition import PCA
    rows = [torch.load(os.path.join(folder, f"model_{e}.t7"))["state_dict"] for e in range(6)]
    names = ["a.weight", "b.weight"]
    m = np.stack([np.concatenate([(r[n].double() - rows[-1][n].double()).numpy().ravel() for n in names])
                  for r in rows])
    pca = PCA(n_components=2).fit(m)
    ours = np.concatenate([dirs[0][n].numpy().ravel() for n in names])
    assert abs(abs(ours @ pca.components_[0]) - 1) < 1e-9
    np.testing.assert_allclose(stats["explained_variance_ratio_"], pca.explained_variance_ratio_, rtol=1e-9)


def test_known_trajectory_states_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    net = MODELS["digits_cnn"]()
    with torch.no_grad():  # running statistics that are not the defaults
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(1, 2)
                m.num_batches_tracked.fill_(7)
    a, b = coefficients(n=5, seed=1)  # |u_i|, |v_i| ~ 0.01: running variances stay positive
    folder = str(tmp_path / "run")
    u, v = write_known_trajectory(folder, net, "states", lambda n, w: True, a, b, seed=1)
    files = sorted(glob.glob(os.path.join(folder, "model_*.t7")))
    pca_file = str(tmp_path / "pca" / "dirs.h5")
    dir_file, proj_file = projection.run(projection.build_parser().parse_args(
        ["--model", "digits_cnn", "--model_files", os.path.join(folder, "model_*.t7"),
         "--dir_type", "states", "--pca_file", pca_file]))
    assert dir_file == pca_file and len(files) == 5
    dirs, _ = read_pca(dir_file, list(u))
    assert list(dirs[0]) == list(net.state_dict())  # every state entry, in model order
    for name in ("1.num_batches_tracked", "4.num_batches_tracked"):
        assert dirs[0][name].dtype == torch.int64 and not dirs[0][name].any()
    check_recovered(dirs, u, v, proj_file, a, b)
    # the file is a direction file that plot_surface.py's reader applies by name
    xdir, ydir = net_plotter.read_directions(dir_file, net, "states", need_y=True)
    assert len(xdir) == len(net.state_dict()) and ydir is not None


def test_projection_onto_given_directions_is_least_squares(tmp_path):
    """Non-orthogonal, non-unit directions (e.g. random filter-normalized ones): the
    coordinates are those plot_surface.py uses, θ_e = θ_f + x·dx + y·dy."""
    torch.manual_seed(0)
    net = MODELS["digits_mlp"]()
    entries = net_plotter.get_entries(net, "weights")
    g = torch.Generator().manual_seed(3)
    dx = [torch.randn(w.shape, generator=g) for _, w in entries]
    dy = [0.5 * x + torch.randn(w.shape, generator=g) for x, (_, w) in zip(dx, entries)]
    dir_file = str(tmp_path / "dirs.h5")
    net_plotter.write_directions(dir_file, [n for n, _ in entries], dx, dy)
    before = hashlib.sha256(open(dir_file, "rb").read()).hexdigest()
    xs, ys = [0.3, -0.2, 0.1, 0.0], [0.1, 0.25, -0.05, 0.0]
    folder = tmp_path / "run"
    folder.mkdir()
    for e, (x, y) in enumerate(zip(xs, ys)):
        sd = {k: t.clone() for k, t in net.state_dict().items()}
        for (n, w), a, b in zip(entries, dx, dy):
            sd[n] = (w.double() + x * a.double() + y * b.double()).float()
        torch.save(sd, folder / f"model_{e}.t7")
    _, proj_file = projection.run(projection.build_parser().parse_args(
        ["--model", "digits_mlp", "--model_folder", str(folder), "--max_epoch", "3",
         "--dir_file", dir_file]))
    assert proj_file == dir_file + "_proj_lstsq.h5"
    with h5py.File(proj_file, "r") as f:
        np.testing.assert_allclose(f["proj_xcoord"][()], xs, atol=1e-6)
        np.testing.assert_allclose(f["proj_ycoord"][()], ys, atol=1e-6)
    assert hashlib.sha256(open(dir_file, "rb").read()).hexdigest() == before  # only read


def test_suggested_range_covers_the_path():
    assert projection.suggest_range(np.array([-7.045, -0.13, 0.0]), 0.1) == "-7.8:0.8:51"
    assert projection.suggest_range(np.array([0.0, 0.02, 0.175]), 0.1) == "-0.02:0.20:51"
    for vals in (np.array([-3.3, 1e-3, 0.0]), np.array([0.0, 12.5, 40.0])):
        lo, hi, _ = (float(t) for t in projection.suggest_range(vals, 0.1).split(":"))
        span = vals.max() - vals.min()
        assert lo <= vals.min() - 0.1 * span and hi >= vals.max() + 0.1 * span


@pytest.mark.slow
def test_errors_are_one_line_and_keep_files(tmp_path):
    net = mixed_net()
    a, b = coefficients(n=4)
    folder = str(tmp_path / "run")
    write_known_trajectory(folder, net, "weights", lambda n, w: w.dim() > 1, a, b)
    with pytest.raises(UserError, match="checkpoints are missing"):
        projection.main(["--model", "digits_mlp", "--model_folder", folder, "--max_epoch", "9"])
    # an existing PCA file made from other checkpoints is neither reused nor replaced
    pca_file = tmp_path / "pca.h5"
    pca_file.write_bytes(b"")
    with h5py.File(pca_file, "w") as f:
        f.attrs["settings"] = json.dumps({"model": "other"})
    before = pca_file.read_bytes()
    p = run_script(["projection.py", "--model", "test_projection:mixed_net", "--model_folder", folder,
                    "--max_epoch", "3", "--pca_file", str(pca_file)], env={"PYTHONPATH": "tests"})
    assert "--overwrite" in assert_one_line_error(p)
    assert pca_file.read_bytes() == before


@pytest.mark.slow
def test_full_recipe_train_pca_surface_contours(tmp_path):
    """cifar10/main.py --save_epoch 1 -> plot_trajectory.py (PCA + projection + path) ->
    plot_surface.py over the suggested range -> plot_2D.py with the path on the contours."""
    run_script(["cifar10/main.py", "--dataset", "digits", "--model", "digits_cnn", "--epochs", "3",
                "--save_epoch", "1", "--batch_size", "64", "--lr", "0.05", "--max_samples", "400",
                "--save", str(tmp_path)], check=True)
    run = glob.glob(str(tmp_path / "digits_cnn_*"))[0]
    p = run_script(["plot_trajectory.py", "--model", "digits_cnn", "--model_folder", run,
                    "--max_epoch", "3", "--ignore", "biasbn", "--format", "png"], check=True)
    dir_file = os.path.join(run, "PCA_weights_ignore=biasbn_save_epoch=1", "directions.h5")
    proj_file = dir_file + "_proj_cos.h5"
    assert os.path.isfile(proj_file + "_trajectory.png")
    xr, yr = re.search(r"--x=(\S+) --y=(\S+)", p.stdout).groups()
    surf_file = str(tmp_path / "surf.h5")
    run_script(["plot_surface.py", "--model", "digits_cnn", "--model_file", os.path.join(run, "model_3.t7"),
                "--dir_file", dir_file, f"--x={xr.rsplit(':', 1)[0]}:5", f"--y={yr.rsplit(':', 1)[0]}:5",
                "--max_samples", "200", "--surf_file", surf_file, "--no_progress"], check=True)
    with h5py.File(proj_file, "r") as f:
        px, py = f["proj_xcoord"][()], f["proj_ycoord"][()]
    lo_x, hi_x = (float(t) for t in xr.split(":")[:2])
    lo_y, hi_y = (float(t) for t in yr.split(":")[:2])
    assert lo_x < px.min() and px.max() < hi_x and lo_y < py.min() and py.max() < hi_y
    run_script(["plot_2D.py", "--surf_file", surf_file, "--dir_file", dir_file, "--proj_file", proj_file,
                "--format", "png"], check=True)
    assert os.path.getsize(proj_file + "_train_loss_2dcontour_proj.png") > 10_000
