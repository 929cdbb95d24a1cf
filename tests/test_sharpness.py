"""sharpness.py against known answers: on a linear model with a squared-error loss the
training loss is an exact quadratic with a known Hessian (I ⊗ C), so λmax, the trace,
every random-direction increase (½ρ²dᵀHd) and the best possible worst case
(½ρ²·λmax·Σ‖θ_f‖²) are known; two MPI ranks give the numbers of one; an interrupted
file resumes with only the missing items computed; bad input is one line."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

import net_plotter
import sharpness
from conftest import REPO, assert_main_error, fill_disk, run_mpi, save_checkpoint, snapshot
from errors import UserError, run_main

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


def datasets(path):
    """Every dataset of the file (the items, the table's rows) and its settings."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.update({name: obj[()]} if isinstance(obj, h5py.Dataset) else {}))
        out["settings"] = f.attrs["settings"]
    return out


def _n_done(path):
    """Finished items in a sharpness file (items/<checkpoint>/<quantity>[/<i>] groups with ``done``)."""
    found = []
    try:
        with h5py.File(path, "r") as f:
            f["items"].visititems(lambda name, obj: found.append(name) if "done" in obj.attrs else None)
    except (OSError, KeyError):
        return 0
    return len(found)


def assert_same_datasets(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


SLOW_LOSS = textwrap.dedent("""
    import os, time
    import torch.nn.functional as F

    def loss(out, y):
        time.sleep(float(os.environ.get("LOSS_SLEEP", "0")))
        return F.cross_entropy(out, y, reduction="none")
""")


@pytest.mark.slow
def test_two_ranks_equal_one_and_resume(tmp_path, capsys, monkeypatch):
    """The file of a fixed command is the same, bit for bit in every dataset, with one or two
    ranks and after an interruption (a real SIGTERM) and a resume (nothing stored depends
    on the order in which the items were computed, or on what was computed before)."""
    (tmp_path / "slowloss.py").write_text(SLOW_LOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    files = []
    for seed in (0, 1):
        files.append(save_checkpoint(tmp_path / f"mlp{seed}.t7", "digits_mlp", seed))
    common = ["sharpness.py", "--model", "digits_mlp", "--model_file"] + files + [
        "--max_samples", "60", "--n_dirs", "3", "--trace_samples", "4", "--ascent_steps", "2",
        "--rho", "0.1,0.3", "--threads", "1", "--no_progress", "--loss_name", "slowloss:loss"]
    p = run_mpi(common + ["--mpi", "--out", tmp_path / "two"])
    assert p.returncode == 0, p.stderr
    one = str(tmp_path / "one")
    sharpness.main(common[1:] + ["--out", one])
    a, b = datasets(one + ".h5"), datasets(str(tmp_path / "two.h5"))
    assert _n_done(one + ".h5") == 2 * (3 + 3) + 2 * 2
    assert 0 < a["items/1/lmax/products"] <= 2 * a["items/0/lmax/products"]  # this item's, not a running count
    assert_same_datasets(a, b)
    # interrupted file: two items not done -> the rerun computes those two only, same file
    with h5py.File(one + ".h5", "a") as f:
        del f["items/1/random/2"], f["items/0/ascent/1"], f["checkpoint_0"], f["checkpoint_1"]
    capsys.readouterr()
    sharpness.main(common[1:] + ["--out", one])
    err = capsys.readouterr().err
    assert "12 items, 11 already done (resumed)" in err and "16 items, 15 already done" in err, err
    assert_same_datasets(a, datasets(one + ".h5"))
    # a real interruption: SIGTERM once a few items are saved, then the same command
    part = str(tmp_path / "part")
    proc = subprocess.Popen([sys.executable] + common + ["--out", part, "--save_every", "0.05"], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1", LOSS_SLEEP="0.03"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and _n_done(part + ".h5") < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "rerun the same command to resume" in err, err
    assert 3 <= _n_done(part + ".h5") < 16
    sharpness.main(common[1:] + ["--out", part])
    assert_same_datasets(a, datasets(part + ".h5"))
    # other settings: refused, the file kept
    before = open(one + ".h5", "rb").read()
    msg = assert_main_error(sharpness.main, common[1:] + ["--out", one, "--n_dirs", "4"], capsys)
    assert "n_dirs" in msg and "--overwrite" in msg and open(one + ".h5", "rb").read() == before


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("mlp") / "mlp.t7", "digits_mlp", seed=0)


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
    assert needle in assert_main_error(sharpness.main, argv, capsys)
    assert (tmp_path / "mine.html").read_text() == "<html>my own page</html>" and len(os.listdir(tmp_path)) == 1


def test_a_file_without_finished_items_is_replaced(tmp_path, mlp_file):
    """A sharpness file saved before any item finished holds no result: the corrected run
    starts afresh; one with a finished item resumes it (the same settings) or is refused."""
    args = sharpness.parse_args(["--model", "digits_mlp", "--model_file", mlp_file, "--out", str(tmp_path / "s")])
    keys = sharpness.make_items(args)[0]
    with sharpness.open_store(args, {"kind": "sharpness", "rho": [0.1]}, keys) as store:
        store.save()
    with sharpness.open_store(args, {"kind": "sharpness", "rho": [0.2]}, keys) as store:  # other settings: no matter
        assert store.n_done == 0
        store.record([store.index("0/base")], {"train_loss": 0.5, "train_acc": 90.0})
        store.save()
    with sharpness.open_store(args, {"kind": "sharpness", "rho": [0.2]}, keys) as again:
        assert again.resumed and again.items["0/base"]["train_loss"] == 0.5
    with pytest.raises(UserError, match="different settings"):
        sharpness.open_store(args, {"kind": "sharpness", "rho": [0.3]}, keys)


# ------------------------------------------------------------------ the contract, table-driven
def _cnn_checkpoint(d):
    save_checkpoint(os.path.join(d, "cnn.t7"), "digits_cnn")


def _text(d, name, text="not a checkpoint\n"):
    with open(os.path.join(d, name), "w") as f:
        f.write(text)


def _finished_item(d):
    """A sharpness file of ours with a finished item, made with other settings."""
    with h5py.File(os.path.join(d, "out.h5"), "w") as f:
        f.attrs.update(format="loss-landscape-sharpness", format_version=1, settings='{"n_dirs": 7}')
        f["items/0/base/train_loss"] = 0.5
        f["items/0/base"].attrs["done"] = 1


def _h5(d, name, done=None, **attrs):
    with h5py.File(os.path.join(d, name), "w") as f:
        f["data"] = np.arange(3.0)
        if done is not None:
            f["done"] = done
        f.attrs.update(attrs)


CONTRACT = [  # (flags after --model_file MLP, what the one line says, set-up of the folder {d})
    ("{d}/cnn.t7", "does not fit this model", _cnn_checkpoint),
    ("{d}/junk.t7", "junk.t7", lambda d: _text(d, "junk.t7")),
    ("{d}/mlp2.h5 --out {d}/mlp2", "is the --model_file[1] of this run",
     lambda d: save_checkpoint(os.path.join(d, "mlp2.h5"))),
    ("--overwrite", "not a file of this toolkit", lambda d: _text(d, "out.h5", "my notes\n")),
    ("", "cannot read", lambda d: _text(d, "out.h5", "my notes\n")),
    ("", "is not a sharpness file", lambda d: _h5(d, "out.h5", format="something-else")),
    ("", "different settings", _finished_item),
    ("", "not valid JSON", lambda d: _h5(d, "out.h5", np.ones(12, np.uint8), format="loss-landscape-sharpness",
                                            settings="{oops")),
    ("", "not written by sharpness.py", lambda d: _text(d, "out.txt", "my table\n")),
    ("--overwrite", "not written by sharpness.py", lambda d: _text(d, "out.html", "<p>my page</p>\n")),
    ("--save_every 0", "--save_every", None),
    ("--batch_size 0", "--batch_size", None),
    ("--eig_maxiter 0", "--eig_maxiter", None),
    ("--trace_samples 0", "--trace_samples", None),
    ("--labels a b c", "--labels gives 3 labels for 1 checkpoints", None),
]


@pytest.mark.parametrize("extra,needle,setup", CONTRACT, ids=[f"{e or '-'}:{n}" for e, n, _ in CONTRACT])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, mlp_file, extra, needle, setup):
    """Exit 2, exactly one 'error:' line, no traceback; every file byte-identical and
    nothing created -- a bad later checkpoint included (checked before the first write)."""
    d = str(tmp_path)
    if setup:
        setup(d)
    before = snapshot(d)
    argv = ["--model", "digits_mlp", "--max_samples", "60", "--n_dirs", "2", "--trace_samples", "2",
            "--ascent_steps", "1", "--out", f"{d}/out", "--no_progress", "--model_file", mlp_file,
            *extra.format(d=d).split()]
    assert needle in assert_main_error(sharpness.main, argv, capsys)
    assert snapshot(d) == before


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_files(mlp_file, small_disk, capsys):
    """A real full file system (tmpfs, ENOSPC) under --out: the rerun with --overwrite fails
    at its save in one line, the finished files of the first run whole, no temporary."""
    out = os.path.join(small_disk("1m"), "sharp")
    argv = ["--model", "digits_mlp", "--model_file", mlp_file, "--max_samples", "60", "--n_dirs", "2",
            "--trace_samples", "2", "--ascent_steps", "1", "--out", out, "--no_progress", "--threads", "1"]
    sharpness.main(argv)
    fill_disk(os.path.dirname(out))
    before = snapshot(os.path.dirname(out))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(sharpness.main, argv + ["--overwrite", "--n_dirs", "3"])  # fails while it runs: after the set-up line
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert "cannot write" in errors[0] and "No space left on device" in errors[0]
    assert snapshot(os.path.dirname(out)) == before
