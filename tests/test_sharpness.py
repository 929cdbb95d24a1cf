"""sharpness.py against known answers: on a linear model with a squared-error loss the
training loss is an exact quadratic with a known Hessian (I ⊗ C), so λmax, the trace,
every random-direction increase (½ρ²dᵀHd) and the best possible worst case
(½ρ²·λmax·Σ‖θ_f‖²) are known; two MPI ranks give the numbers of one; an interrupted
file resumes with only the missing items computed; bad input is one line."""
import json
import os
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import net_plotter
import sharpness
from conftest import assert_one_error_line, run_main_error, run_mpi, save_checkpoint

QUADRATIC = textwrap.dedent('''
    """A linear model with a squared-error loss: the loss is exactly quadratic in the weights."""
    import numpy as np
    import torch

    D, M, N = 6, 40, 40                              # M outputs >= the N "classes" (labels = sample index)
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((N, D)) * np.array([3.0, 1.0, 1.0, 0.8, 0.6, 0.5]),
                     dtype=torch.float32)
    W = torch.tensor(rng.standard_normal((M, D)), dtype=torch.float32)
    T = torch.nn.functional.linear(X, W)            # the targets: W is the exact minimizer

    def model():
        return torch.nn.Linear(D, M, bias=False)

    def data():
        return (X, torch.arange(N)), (X[:5], torch.arange(5))

    def loss(out, y):
        return 0.5 * ((out - T[y]) ** 2).sum(1)
''')


@pytest.fixture
def quadratic(tmp_path, monkeypatch):
    (tmp_path / "quadmod.py").write_text(QUADRATIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("quadmod", None)
    import quadmod
    ckpt = str(tmp_path / "w.t7")
    torch.save({"weight": quadmod.W}, ckpt)
    return quadmod, ckpt


@pytest.mark.slow
def test_quadratic_known_answers(tmp_path, quadratic, capsys):
    q, ckpt = quadratic
    out = str(tmp_path / "quad")
    radii, n_dirs = (0.5, 1.0), 40
    sharpness.main(["--model", "quadmod:model", "--dataset", "quadmod:data", "--loss_name", "quadmod:loss",
                    "--model_file", ckpt, "--rho", "0.5,1", "--n_dirs", str(n_dirs), "--ascent_steps", "5",
                    "--trace_samples", "200", "--eig_tol", "1e-8", "--threads", "1", "--out", out,
                    "--no_progress"])
    text = capsys.readouterr().out
    x = q.X.double().numpy()
    C = x.T @ x / len(x)                          # H = I_M ⊗ C over the weight's rows
    ev = np.linalg.eigvalsh(C)
    w = q.W.double().numpy()
    wn2 = (w ** 2).sum()
    with h5py.File(out + ".h5", "r") as f:
        g = f["checkpoint_0"]
        assert g["train_loss"][()] == pytest.approx(0, abs=1e-9)
        assert g["lambda_max"][()] == pytest.approx(ev[-1], rel=1e-6)
        trace, se = g["trace"][()], g["trace_stderr"][()]
        assert 0 < se and abs(trace - q.M * ev.sum()) < 4 * se
        inc, mean, std = g["random_increase"][()], g["random_mean"][()], g["random_std"][()]
        worst, steps = g["worst"][()], g["ascent_increase"][()]
        assert inc.shape == (n_dirs, 2) and steps.shape == (2, 6)
        settings = json.loads(f.attrs["settings"])
    assert settings["rho"] == [0.5, 1.0] and settings["n_dirs"] == n_dirs and settings["ascent_steps"] == 5
    assert settings["checkpoints"][0]["model_hash"] and settings["n_train"] == q.N
    # each random increase is ½ρ²·dᵀHd for the very direction (plot_surface's --idx i x direction)
    net = q.model()
    net.load_state_dict({"weight": q.W})
    for i in range(n_dirs):
        (d,) = net_plotter.random_direction(net, "weights", "filter", "biasbn", net_plotter.make_generator(0, i))
        d = d.double().numpy()
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), np.linalg.norm(w, axis=1), rtol=1e-6)
        quad = np.einsum("md,de,me->", d, C, d)
        np.testing.assert_allclose(inc[i], [0.5 * r * r * quad for r in radii], rtol=1e-4)
    # their mean estimates ½ρ²·E[dᵀHd] = ½ρ²·tr(C)/D·Σ‖θ_f‖²
    for r, rho in enumerate(radii):
        expected = 0.5 * rho ** 2 * ev.sum() / q.D * wn2
        assert abs(mean[r] - expected) < 4 * std[r] / np.sqrt(n_dirs)
        bound = 0.5 * rho ** 2 * ev[-1] * wn2      # the maximum over the filter-normalized ball
        assert inc[:, r].max() <= worst[r] <= bound * (1 + 1e-5)
        assert worst[r] >= 0.9 * bound                          # the ascent gets close to it
        assert worst[r] == pytest.approx(steps[r].max()) and steps[r][0] == pytest.approx(inc[:, r].max())
    assert "λmax" in text and f"{worst[1]:.4g}" in text
    page = open(out + ".html").read()
    assert "<table" in page and f"{mean[0]:.4g}" in page
    assert open(out + ".txt").read().split("\n", 1)[1].strip() in text


def items(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["items"].visititems(lambda name, obj: out.update(
            {name: {k: obj[k][()] for k in obj}} if "done" in obj.attrs else {}))
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_and_resume(tmp_path, capsys):
    files = []
    for seed in (0, 1):
        files.append(save_checkpoint(tmp_path / f"mlp{seed}.t7", "digits_mlp", seed))
    common = ["sharpness.py", "--model", "digits_mlp", "--model_file"] + files + [
        "--max_samples", "60", "--n_dirs", "3", "--trace_samples", "4", "--ascent_steps", "2",
        "--rho", "0.1,0.3", "--threads", "1", "--no_progress"]
    p = run_mpi(common + ["--mpi", "--out", tmp_path / "two"])
    assert p.returncode == 0, p.stderr
    one = str(tmp_path / "one")
    sharpness.main(common[1:] + ["--out", one])
    a, b = items(one + ".h5"), items(str(tmp_path / "two.h5"))
    assert set(a) == set(b) and len(a) == 2 * (3 + 3) + 2 * 2
    for key in a:
        for name in a[key]:
            if name != "products":
                np.testing.assert_allclose(b[key][name], a[key][name], rtol=1e-6, atol=1e-12, err_msg=key)
    # interrupted file: two items missing -> the rerun computes those two only, same numbers
    with h5py.File(one + ".h5", "a") as f:
        del f["items/1/random/2"], f["items/0/ascent/1"]
    capsys.readouterr()
    sharpness.main(common[1:] + ["--out", one])
    err = capsys.readouterr().err
    assert "sharpness: 1 of 12 items to compute" in err and "ascent: 1 of 4 items to compute" in err
    c = items(one + ".h5")
    for key in a:
        for name in a[key]:
            if name != "products":
                np.testing.assert_allclose(c[key][name], a[key][name], rtol=1e-9, err_msg=key)
    # other settings: refused, the file kept
    before = open(one + ".h5", "rb").read()
    msg = one_line_error(common[1:] + ["--out", one, "--n_dirs", "4"], capsys)
    assert "n_dirs" in msg and "--overwrite" in msg and open(one + ".h5", "rb").read() == before


def one_line_error(argv, capsys):
    code, err = run_main_error(sharpness.main, argv, capsys)
    assert code == 2, err
    return assert_one_error_line(err, only=True)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    path = save_checkpoint(tmp_path_factory.mktemp("mlp") / "mlp.t7", "digits_mlp", seed=0)
    return path


@pytest.mark.parametrize("extra,needle", [
    (["--rho", "0"], "--rho"),
    (["--rho", "-0.1"], "--rho"),
    (["--rho", "nan"], "--rho"),
    (["--rho", "0.1,abc"], "--rho"),
    (["--rho", "0.1,0.1"], "twice"),
    (["--n_dirs", "0"], "--n_dirs"),
    (["--ascent_steps", "-1"], "--ascent_steps"),
    (["--ascent_lr", "inf"], "--ascent_lr"),
    (["--trace_samples", "1"], "--trace_samples"),
    (["--eig_tol", "-1"], "--eig_tol"),
    (["--model_file", "/nonexistent/a.t7"], "not found"),
    (["--out", "FOLDER"], "folder"),
    (["--labels", "a", "b"], "--labels"),
    (["--out", "USERFILE"], "not written by sharpness.py"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, mlp_file, extra, needle):
    (tmp_path / "mine.html").write_text("<html>my own page</html>")
    extra = [str(tmp_path) if a == "FOLDER" else str(tmp_path / "mine") if a == "USERFILE" else a for a in extra]
    argv = ["--model", "digits_mlp", "--model_file", mlp_file] + extra
    assert needle in one_line_error(argv, capsys)
    assert (tmp_path / "mine.html").read_text() == "<html>my own page</html>" and len(os.listdir(tmp_path)) == 1


def test_a_file_saved_before_any_item_resumes(tmp_path):
    path, settings = str(tmp_path / "s.h5"), {"kind": "sharpness", "rho": [0.1]}
    sharpness.Store(path, settings, overwrite=False).save()          # interrupted at once
    assert sharpness.Store(path, settings, overwrite=False).results == {}
    store = sharpness.Store(path, settings, overwrite=False)
    store.record(["0/base"], {"train_loss": 0.5, "train_acc": 90.0})
    store.save()
    assert sharpness.Store(path, settings, overwrite=False).results["0/base"]["train_loss"] == 0.5
