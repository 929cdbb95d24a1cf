"""mode_connectivity.py: exact curve end points, functional_call = loaded module, any
nn.Module, barrier definitions, the paper's finding on the digits data, resume after
kill -9, MPI evaluation, the plane through plot_surface.py, one-line errors.

Real checkpoints trained by cifar10/main.py, real subprocesses and MPI ranks, real
HDF5 files."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from conftest import REPO, assert_main_error, fill_disk, run_script, snapshot

import curves
import mode_connectivity as mc
import model_loader
from errors import run_main
from surface import read_surface


# ------------------------------------------------------------------ helpers
def digits_state(seed, bn_steps=3):
    """A digits_cnn state with BatchNorm statistics (and counters) of its own."""
    torch.manual_seed(seed)
    net = model_loader.build_model("digits_cnn").train()
    with torch.no_grad():
        for _ in range(bn_steps):
            net(torch.randn(32, 1, 8, 8) * (1 + seed))
    return net.eval(), {k: v.clone() for k, v in net.state_dict().items()}


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def save_digits(path, seed, model="digits_cnn"):
    torch.manual_seed(seed)
    torch.save({"acc": 0.0, "epoch": 0, "state_dict": model_loader.build_model(model).state_dict()}, path)
    return str(path)


# ------------------------------------------------------------------ fast: the curve itself
@pytest.mark.parametrize("kind", curves.CURVES)
def test_endpoints_are_the_checkpoints_exactly(kind):
    net, a = digits_state(1, bn_steps=2)
    _, b = digits_state(2, bn_steps=5)
    curve = curves.Curve(net, a, b, kind)
    with torch.no_grad():
        for v in curve.bend.values():
            v.add_(torch.randn_like(v))
    for t, want in ((0.0, a), (1.0, b)):
        got = curve.state_at(t)
        assert list(got) == list(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (kind, t, k)
        functional = curve.at(t)  # what training feeds functional_call: params and buffers
        for k, v in functional.items():
            assert torch.equal(v, want[k]), (kind, t, k)
    assert int(curve.state_at(0.0)["1.num_batches_tracked"]) == 2
    assert int(curve.state_at(1.0)["1.num_batches_tracked"]) == 5


def test_midpoint_and_bend():
    net, a = digits_state(1)
    _, b = digits_state(2)
    bend = {k: torch.randn_like(v) for k, v in a.items() if v.is_floating_point()}
    bez = curves.Curve(net, a, b, "bezier", bend=bend)
    poly = curves.Curve(net, a, b, "polychain", bend=bend)
    w = "0.weight"
    torch.testing.assert_close(bez.state_at(0.5)[w], (a[w] + 2 * bend[w] + b[w]) / 4)
    assert torch.equal(poly.state_at(0.5)[w], bend[w])
    torch.testing.assert_close(poly.state_at(0.25)[w], (a[w] + bend[w]) / 2)
    # a fresh bend is the midpoint: the Bezier curve is then the straight line
    fresh = curves.Curve(net, a, b, "bezier")
    for t in (0.2, 0.7):
        torch.testing.assert_close(fresh.state_at(t)[w], curves.line_state(a, b, t)[w])


@pytest.mark.parametrize("kind", curves.CURVES)
def test_functional_call_equals_loaded_module(kind):
    net, a = digits_state(3)
    _, b = digits_state(4)
    curve = curves.Curve(net, a, b, kind)
    with torch.no_grad():
        for v in curve.bend.values():
            v.add_(0.3 * torch.randn_like(v))
    x = torch.randn(16, 1, 8, 8)
    other = model_loader.build_model("digits_cnn").eval()
    for t in (0.13, 0.5, 0.77):
        other.load_state_dict(curve.state_at(t))
        with torch.no_grad():
            want = other(x)
            got = functional_call(net.eval(), curve.at(t), (x,))
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class TiedNet(nn.Module):
    """No layer of torch.nn at all: raw parameters, a tied weight, a custom forward."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 8))
        self.b = nn.Parameter(torch.zeros(8))
        self.register_buffer("scale", torch.tensor(1.0))
        self.tied = nn.Module()
        self.tied.w = self.w  # one parameter under two names

    def forward(self, x):
        return torch.relu(x @ self.w + self.b) @ self.w.t() * self.scale


@pytest.mark.slow
def test_any_module_trains_without_rewrites():
    torch.manual_seed(0)
    x = torch.randn(128, 2)
    y = (x[:, 0] > 0).long()
    na, nb = TiedNet(), TiedNet()
    a, b = na.state_dict(), nb.state_dict()
    # end points: each a trained model
    for net in (na, nb):
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    a, b = [{k: v.clone() for k, v in n.state_dict().items()} for n in (na, nb)]
    net = TiedNet()
    curve = curves.Curve(net, a, b, "bezier")
    assert curve.params == ["w", "b"] and "tied.w" in curve.keys
    loss_fn = lambda out, yy: nn.functional.cross_entropy(out, yy, reduction="sum")

    def mid_loss():
        net.load_state_dict(curve.state_at(0.5))
        with torch.no_grad():
            return nn.functional.cross_entropy(net(x), y).item()

    before = mid_loss()
    opt = curves.make_optimizer(curve, 0.2, 0.9)
    for epoch in range(1, 11):
        assert curves.train_epoch(net, curve, opt, x, y, loss_fn, epoch, 10, 0.2, 64, 0.0, 0) is not None
    assert mid_loss() < before
    assert torch.equal(curve.state_at(0.0)["tied.w"], a["w"]) and torch.equal(curve.state_at(1.0)["w"], b["w"])


def test_barrier_heights_known_answers():
    t = [0, 0.25, 0.5, 0.75, 1]
    b = curves.barrier_heights(t, [1, 2, 4, 2, 3])
    assert b == {"barrier_max": 1.0, "t_max": 0.5, "barrier_interp": 2.0, "t_interp": 0.5}
    b = curves.barrier_heights(t, [1, 2.5, 2, 2, 3])  # the definitions disagree on where
    assert b["barrier_max"] == 0.0 and b["t_max"] == 1.0
    assert b["barrier_interp"] == 1.0 and b["t_interp"] == 0.25
    assert curves.barrier_heights([0, 0.5, 1], [2, 1, 2])["barrier_interp"] == 0.0  # a valley: no barrier


def test_update_bn_is_the_exact_average_and_lr_schedule():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(3))
    x = torch.randn(100, 3) * 2 + 5
    curves.update_bn(net, x, 30)  # batches of 30, 30, 30, 10
    torch.testing.assert_close(net[0].running_mean, x.mean(0))
    want = sum(len(c) * c.var(0) for c in x.split(30)) / len(x)
    torch.testing.assert_close(net[0].running_var, want)
    assert net[0].momentum == 0.1 and not net.training


def garipov_learning_rate_schedule(base_lr, epoch, total_epochs):
    """Garipov et al.'s train.py (timgaripov/dnn-mode-connectivity), called there with
    epoch = 1 ... total_epochs: alpha = epoch / total_epochs."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        factor = 1.0
    elif alpha <= 0.9:
        factor = 1.0 - (alpha - 0.5) / 0.4 * 0.99
    else:
        factor = 0.01
    return factor * base_lr


@pytest.mark.parametrize("epochs", [1, 2, 7, 10, 20, 200])
def test_lr_schedule_is_garipovs(epochs):
    got = [curves.lr_factor(e, epochs) for e in range(1, epochs + 1)]
    assert got == [garipov_learning_rate_schedule(1.0, e, epochs) for e in range(1, epochs + 1)]
    assert got[-1] == 0.01 and (epochs < 2 or got[0] == 1.0)  # the last epoch at 1 %, not one epoch late
    assert curves.lr_factor(6, 10) == pytest.approx(1 - 0.1 / 0.4 * 0.99)


def test_bn_update_flags():
    base = ["--model_file", "a.t7", "--model_file2", "b.t7"]
    assert mc.parse_args(base).bn_update is None  # decided by the model: on when it has BN
    assert mc.parse_args(base + ["--bn_update"]).bn_update is True
    assert mc.parse_args(base + ["--no_bn_update"]).bn_update is False
    args = mc.parse_args(base + ["--curve", "polychain"])
    assert args.out_dir == os.path.join(".", "mode_connectivity_polychain") and args.points == 21


# ------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return {"a": save_digits(d / "a.t7", 1), "b": save_digits(d / "b.t7", 2),
            "mlp": save_digits(d / "mlp.t7", 3, "digits_mlp"), "dir": str(d), "copy": save_digits(d / "c.t7", 1),
            "file": str(d / "a.t7")}


BAD = [  # (flags besides --model digits_cnn, what the one line says); {a} etc. from `files`
    ("--model_file {a}", "two end points"),
    ("--model_file {a} --model_file2 {b} --points 1", "--points must be >= 2"),
    ("--model_file {a} --model_file2 {b} --epochs -1", "--epochs must be >= 0"),
    ("--model_file {a} --model_file2 {b} --lr nan", "--lr must be a positive number"),
    ("--model_file {a} --model_file2 {b} --weight_decay -1", "--weight_decay"),
    ("--model_file {a} --model_file2 {b} --out_dir {file}", "is not a folder"),
    ("--model_file {a} --model_file2 {b} --curve spline", "unknown --curve"),
    ("--model_file {a} --model_file2 {b} --x=-1:1:5", "--x not used"),
    ("--model_file {a} --model_file2 {dir}/missing.t7", "checkpoint not found"),
    ("--model_file {a} --model_file2 {a}", "are the same file"),
    pytest.param("--model_file {a} --model_file2 {copy}", "hold the same weights", marks=pytest.mark.slow),
    pytest.param("--model_file {a} --model_file2 {mlp}", "does not fit this model", marks=pytest.mark.slow),
    pytest.param("--model_file {a} --model_file2 {b} --lr 1e30 --epochs 1 --max_samples 64 --batch_size 16", "diverged",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("flags,needle", BAD)
def test_bad_inputs_are_one_line_errors(files, flags, needle, capsys, tmp_path):
    argv = ["--model", "digits_cnn", "--out_dir", str(tmp_path / "out"), "--no_progress",
            *flags.format(**files).split()]
    with pytest.raises(SystemExit) as e:
        run_main(mc.main, argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    if needle != "diverged":
        assert not os.path.exists(tmp_path / "out")  # nothing written
    else:  # no epoch finished: no training state that a rerun could take for a result
        assert not os.path.exists(tmp_path / "out" / mc.TRAIN_STATE)


# ------------------------------------------------------------------ slow: real runs
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two digits_cnn networks trained independently (seeds 1 and 2) by cifar10/main.py."""
    from cifar10 import main as trainer
    root = tmp_path_factory.mktemp("pair")
    out = []
    for seed in (1, 2):
        trainer.main(["--dataset", "digits", "--model", "digits_cnn", "--epochs", "6", "--batch_size", "64",
                      "--lr", "0.1", "--save_epoch", "6", "--rand_seed", str(seed), "--save", str(root / f"s{seed}")])
        (folder,) = os.listdir(root / f"s{seed}")
        out.append(str(root / f"s{seed}" / folder / "model_6.t7"))
    return out


def mc_cmd(a, b, out_dir, *extra):
    return ["mode_connectivity.py", "--model", "digits_cnn", "--model_file", a, "--model_file2", b,
            "--out_dir", out_dir, "--no_progress", "--threads", "1", *extra]


@pytest.mark.slow
def test_digits_line_has_a_barrier_the_trained_curve_does_not(pair, tmp_path):
    out = str(tmp_path / "mc")
    p = run_script(mc_cmd(*pair, out, "--epochs", "10", "--points", "11", "--plot"), check=True)
    assert "barrier_interp" in p.stdout
    r = curves.read_results(os.path.join(out, mc.RESULTS))
    line = r["barriers"]["line_train_loss"]["barrier_interp"]
    curve = r["barriers"]["curve_train_loss"]["barrier_interp"]
    # measured: line 2.10, curve 0.17 (doc/mode_connectivity.md)
    assert line > 1.0 and curve < line / 4, (line, curve)
    assert r["barriers"]["line_train_loss"]["barrier_max"] > 1.0
    # both paths start and end at the same points (the checkpoints, BN re-estimated)
    assert r["line_train_loss"][0] == r["curve_train_loss"][0]
    assert r["line_train_loss"][-1] == r["curve_train_loss"][-1]
    assert r["settings"]["bn_update"] is True  # digits_cnn has BatchNorm
    for f in ("mode_connectivity.pdf", "mode_connectivity.png", mc.BEND, mc.MIDPOINT, mc.CURVE):
        assert os.path.getsize(os.path.join(out, f)) > 0
    # the saved curve reloads: end points are the checkpoints, curve.t7's state_dict its midpoint
    curve_obj = curves.load_curve(os.path.join(out, mc.CURVE), "digits_cnn")
    a, b = (model_loader.load_state_dict(f) for f in pair)
    for k in a:
        assert torch.equal(curve_obj.state_at(0.0)[k], a[k]) and torch.equal(curve_obj.state_at(1.0)[k], b[k])
    mid, bend = (model_loader.load_state_dict(os.path.join(out, f)) for f in (mc.MIDPOINT, mc.BEND))
    w = "0.weight"
    torch.testing.assert_close(mid[w], (a[w] + 2 * bend[w] + b[w]) / 4)
    assert torch.equal(model_loader.load_state_dict(os.path.join(out, mc.CURVE))[w], mid[w])

    # the plane through the curve's three points, by plot_surface.py (--dir_type states: BN
    # statistics interpolated too); the Bezier curve passes through (x, y) = (t², 2t(1−t))
    surf, dirf = str(tmp_path / "plane.h5"), str(tmp_path / "plane_dir.h5")
    run_script(["plot_surface.py", "--model", "digits_cnn", "--model_file", pair[0], "--model_file2", pair[1],
                "--model_file3", os.path.join(out, mc.BEND), "--dir_type", "states", "--x=0:1:5", "--y=0:1:3",
                "--dir_file", dirf, "--surf_file", surf, "--no_progress", "--threads", "1"], check=True)
    s = read_surface(surf)
    assert s.complete
    import argparse
    import dataloader
    from evaluation import Evaluator, get_loss_fn
    data = dataloader.load_data(argparse.Namespace(dataset="digits", raw_data=False, trainloader="", testloader="",
                                                   max_samples=0, data_split=1, split_idx=0))
    net = model_loader.build_model("digits_cnn")
    ev = Evaluator(net, data.train_x, data.train_y, get_loss_fn("crossentropy"), 512, torch.device("cpu"))
    for (i, j), state in {(4, 0): b, (1, 1): curve_obj.state_at(0.5)}.items():  # θ_B and θ(0.5)
        net.load_state_dict(state)
        assert s.values["train_loss"][i, j] == pytest.approx(ev()[0], rel=1e-4), (i, j)
    # the second barrier reference: the checkpoints' own losses (their saved BN statistics),
    # and both barrier definitions against them, written out here
    for k, state in enumerate((a, b)):
        net.load_state_dict(state)
        net.eval()
        assert r["checkpoint_losses"]["train"][k] == pytest.approx(ev()[0], rel=1e-5)
    l0, l1 = r["checkpoint_losses"]["train"]
    for path in ("line", "curve"):
        loss, got = r[f"{path}_train_loss"], r["barriers_checkpoints"][f"{path}_train_loss"]
        assert got["barrier_max"] == pytest.approx(loss.max() - max(l0, l1), abs=1e-12)
        assert got["barrier_interp"] == pytest.approx((loss - ((1 - r["t"]) * l0 + r["t"] * l1)).max(), abs=1e-12)
    # the curve drawn on the plane's contours
    import plot_2D
    plots = plot_2D.plot_2d_contour(surf, "train_loss", None, None, None, proj_file=os.path.join(out, mc.PROJ),
                                    out_dir=str(tmp_path / "fig"), formats=["png"])
    assert plots.files


def _wait(proc, cond, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"never saw {what} before the run ended")


def _train_epoch_saved(path):
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:
        return 0


def _eval_done(path):
    try:
        return read_surface(path).n_done
    except Exception:
        return 0


@pytest.mark.slow
def test_sigterm_in_training_kill9_in_evaluation_then_resume_equals_uninterrupted_and_mpi(pair, tmp_path, capsys):
    small = ["--max_samples", "300", "--epochs", "20", "--points", "41", "--save_every", "0.01", "--curve",
             "polychain"]
    ref, part = str(tmp_path / "ref"), str(tmp_path / "part")
    run_main(mc.main, mc_cmd(*pair, ref, *small)[1:])  # uninterrupted, in this process
    cmd = [sys.executable] + mc_cmd(*pair, part, *small)
    state, results = os.path.join(part, mc.TRAIN_STATE), os.path.join(part, mc.RESULTS)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for phase in ("training", "evaluation"):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if phase == "training":
            _wait(proc, lambda: _train_epoch_saved(state) >= 2, "a saved epoch")
        else:
            _wait(proc, lambda: _eval_done(results) >= 1, "a saved point")
        # SIGTERM in training: it stops after the step at hand, keeps the last finished epoch
        # and says so; kill -9 in evaluation: the atomically saved file holds the done points
        proc.send_signal(signal.SIGTERM if phase == "training" else signal.SIGKILL)
        _, err = proc.communicate()
        if phase == "training":
            assert proc.returncode == 128 + signal.SIGTERM, err
            assert "interrupted by SIGTERM: the curve training is saved" in err and "Traceback" not in err, err
    epoch, n_done = _train_epoch_saved(state), _eval_done(results)
    assert 2 <= epoch <= 20 and 1 <= n_done < 41, (epoch, n_done)
    p = run_script(cmd[1:], check=True, env={"OMP_NUM_THREADS": "1"})
    assert "curve already trained" in p.stderr and f"{n_done} already done" in p.stderr, p.stderr
    a, b = curves.read_results(os.path.join(ref, mc.RESULTS)), curves.read_results(results)
    metrics = [k for k in a if k.startswith(("line_", "curve_"))]
    assert len(metrics) == 4
    for k in metrics:
        np.testing.assert_array_equal(a[k], b[k])
    bend_a = torch.load(os.path.join(ref, mc.TRAIN_STATE), weights_only=True)["bend"]
    bend_b = torch.load(state, weights_only=True)["bend"]
    assert all(torch.equal(bend_a[k], bend_b[k]) for k in bend_a)
    assert a["barriers"] == b["barriers"]

    # a rerun with other settings is refused and leaves every file as it was
    before = {f: md5(os.path.join(part, f)) for f in os.listdir(part)}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(mc.main, cmd[2:] + ["--lr", "0.2"])
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "different settings" in line and "lr: file has 0.05, this run has 0.2" in line
    assert {f: md5(os.path.join(part, f)) for f in os.listdir(part)} == before

    # two MPI ranks share the evaluation points: the same numbers
    os.remove(results)
    mpi = subprocess.run(["mpiexec", "-n", "2", sys.executable] + cmd[1:] + ["--mpi"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert mpi.returncode == 0, mpi.stderr
    c = curves.read_results(results)
    for k in metrics:
        np.testing.assert_array_equal(a[k], c[k])


# ------------------------------------------------------------------ the contract, table-driven
# Plugins importable from the test folder: a 0-1 loss (no gradient), a cross-entropy that
# sleeps so that an epoch takes a known time, data that take seconds to load.
PLUGINS = """
import time
import torch.nn.functional as F

def zero_one(out, y):
    return (out.argmax(1) != y).float()

def slow_cross_entropy(out, y):
    time.sleep(0.05)
    return F.cross_entropy(out, y, reduction="none")

def slow_data():
    import os, torch
    open(f"loading.{os.environ.get('PMI_RANK', '0')}", "w").close()
    time.sleep(4)
    g = torch.Generator().manual_seed(0)
    split = (torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g))
    return split, split
"""


def _rank_pid(marker, rank):
    """The pid of MPI rank ``rank`` of the job whose command line contains ``marker``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker.encode() in cmd and f"\0PMI_RANK={rank}\0".encode() in b"\0" + env:
            return int(pid)
    raise AssertionError(f"no rank {rank} running")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Two checkpoints and an output folder in tmp_path; the plugins importable."""
    (tmp_path / "mcplugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mcplugins", None)
    (tmp_path / "out").mkdir()
    return {"d": str(tmp_path), "a": save_digits(tmp_path / "a.t7", 1), "b": save_digits(tmp_path / "b.t7", 2),
            "out": str(tmp_path / "out")}


def _foreign_checkpoint(world, name):
    save_digits(os.path.join(world["out"], name), 5)


def _foreign_text(world, name):
    with open(os.path.join(world["out"], name), "w") as f:
        f.write("my notes, not a result\n")


def _foreign_h5(world, name):
    import h5py
    with h5py.File(os.path.join(world["out"], name), "w") as f:
        f["my_data"] = np.arange(3.0)


def _input_in_out_dir(world, name):
    save_digits(os.path.join(world["out"], name), 3)
    world["b"] = os.path.join(world["out"], name)


CONTRACT = [  # (extra flags, what the one line says, set-up of the folder)
    ("--points 0", "--points must be >= 2", None),
    ("--epochs -5", "--epochs must be >= 0", None),
    ("--lr 0", "--lr must be a positive number", None),
    ("--lr -0.1", "--lr must be a positive number", None),
    ("--lr inf", "--lr must be a positive number", None),
    ("--momentum 1", "--momentum must be in [0, 1)", None),
    ("--momentum -0.5", "--momentum must be in [0, 1)", None),
    ("--momentum nan", "--momentum must be in [0, 1)", None),
    ("--weight_decay nan", "--weight_decay", None),
    ("--weight_decay inf", "--weight_decay", None),
    ("--curve Bezier", "unknown --curve", None),
    ("--dir_file d.h5", "--dir_file not used", None),
    ("--surf_file s.h5", "--surf_file not used", None),
    ("--engine eager", "--engine not used", None),
    ("--y=-1:1:3", "--y not used", None),
    ("--idx 2", "--idx not used", None),
    ("--loss_name mcplugins:zero_one", "no gradient", None),
    ("", "not written by mode_connectivity.py", ("bend.t7", _foreign_checkpoint)),
    ("--overwrite", "not written by mode_connectivity.py", ("bend.t7", _foreign_checkpoint)),
    ("--overwrite", "not written by mode_connectivity.py", ("midpoint.t7", _foreign_checkpoint)),
    ("", "not written by mode_connectivity.py", ("curve.t7", _foreign_text)),
    ("--overwrite", "not written by mode_connectivity.py", ("train_state.pt", _foreign_text)),
    ("", "not written by mode_connectivity.py", ("mode_connectivity.h5", _foreign_h5)),
    ("--overwrite", "not written by mode_connectivity.py", ("curve_proj.h5", _foreign_h5)),
    ("--overwrite", "is the --model_file2 of this run", ("curve.t7", _input_in_out_dir)),
    ("--epochs 0 --overwrite", "is the --model_file2 of this run", ("bend.t7", _input_in_out_dir)),
]


@pytest.mark.parametrize("extra,needle,setup", CONTRACT,
                         ids=[f"{e or '-'} {s[0] if s else ''}".strip() for e, _, s in CONTRACT])
def test_bad_input_is_one_line_and_changes_nothing(world, capsys, extra, needle, setup):
    """Exit 2, exactly one 'error:' line, no traceback; every file byte-identical, nothing
    created (not even the output folder's lock or a temporary file)."""
    if setup:
        setup[1](world, setup[0])
    before = snapshot(world["d"])
    argv = ["--model", "digits_cnn", "--model_file", world["a"], "--model_file2", world["b"], "--out_dir",
            world["out"], "--max_samples", "64", "--epochs", "1", "--points", "3", "--no_progress", *extra.split()]
    assert needle in assert_main_error(mc.main, argv, capsys)
    after = snapshot(world["d"])
    after.pop("__pycache__", None)
    assert {k: v for k, v in after.items() if "__pycache__" not in k} == before


# ------------------------------------------------------------------ a save that fails part-way
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished small run (its outputs: train_state.pt 87 kB, bend.t7 and midpoint.t7 46 kB,
    curve.t7 178 kB, the HDF5 files under 10 kB)."""
    d = tmp_path_factory.mktemp("finished")
    a, b = save_digits(d / "a.t7", 1), save_digits(d / "b.t7", 2)
    argv = ["--model", "digits_cnn", "--model_file", a, "--model_file2", b, "--out_dir", str(d / "out"),
            "--max_samples", "64", "--epochs", "1", "--points", "3", "--no_progress"]
    run_main(mc.main, argv)
    return str(d), argv


@pytest.fixture
def run_copy(finished, tmp_path):
    d, argv = finished
    shutil.copytree(d, tmp_path / "run")
    return str(tmp_path / "run"), [a.replace(d, str(tmp_path / "run")) for a in argv]


@pytest.mark.slow
@pytest.mark.parametrize("file_size_limit", [2048, 64 * 1024, 120 * 1024], indirect=True,
                         ids=["2kB-the-first-save", "64kB-train_state.pt", "120kB-curve.t7"])
def test_a_failed_save_is_one_line_leaves_whole_files_and_the_rerun_finishes(run_copy, file_size_limit,
                                                                             request, capsys):
    """The disk fills while a file is saved (the file size limit fails the write where a
    full disk does): one line, exit 2, every file either the old one or a new whole one,
    no temporary file; once there is room, the same command finishes."""
    import h5py
    d, argv = run_copy
    out = os.path.join(d, "out")
    before = snapshot(out)
    argv = argv + ["--overwrite", "--lr", "0.07"]
    line = assert_main_error(mc.main, argv, capsys)
    assert "cannot write" in line and "File too large" in line and "unchanged" in line
    after = snapshot(out)
    assert sorted(after) == sorted(before)  # no temporary or lock file left, nothing removed
    if request.node.callspec.params["file_size_limit"] < 80 * 1024:  # train_state.pt, the first save, failed
        assert after == before
    for name in after:
        if name.endswith(".h5"):
            with h5py.File(os.path.join(out, name), "r"):
                pass
        else:
            torch.load(os.path.join(out, name), weights_only=True)  # whole
    file_size_limit()  # room again
    run_main(mc.main, argv)
    assert curves.read_results(os.path.join(out, mc.RESULTS))["settings"]["lr"] == 0.07


# ------------------------------------------------------------------ signals under MPI, in training
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")
@pytest.mark.parametrize("target,signum", [("rank 0", signal.SIGTERM), ("rank 1", signal.SIGTERM),
                                           ("mpiexec", signal.SIGINT)], ids=["TERM-rank0", "TERM-rank1", "ctrl-c"])
def test_a_signal_in_training_under_mpi_ends_every_rank_and_the_rerun_resumes(world, target, signum):
    """Real `mpiexec -n 2`, a real signal to one rank (or Ctrl-C to mpiexec, which passes
    SIGINT to every rank) during the curve training on rank 0: every rank ends within
    seconds with 128 + the signal, one message, no traceback and no MPI abort banner;
    the same command then resumes from the last finished epoch."""
    cmd = ["mpiexec", "-n", "2", sys.executable, os.path.join(REPO, "mode_connectivity.py"), "--mpi",
           "--model", "digits_cnn", "--max_samples", "64", "--loss_name", "mcplugins:slow_cross_entropy",
           "--model_file", world["a"], "--model_file2", world["b"], "--out_dir", world["out"], "--epochs", "12",
           "--batch_size", "32", "--points", "3", "--no_progress", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    state = os.path.join(world["out"], mc.TRAIN_STATE)
    proc = subprocess.Popen(cmd, cwd=world["d"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(proc, lambda: _train_epoch_saved(state) >= 1, "a saved epoch")
        pid = proc.pid if target == "mpiexec" else _rank_pid(world["out"], int(target[-1]))
        t0 = time.time()
        os.kill(pid, signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 30, "the job did not end promptly"
    assert proc.returncode == 128 + signum, err
    assert err.count(f"interrupted by {signal.Signals(signum).name}: the curve training is saved") == 1, err
    for word in ("Traceback", "KeyboardInterrupt", "BAD TERMINATION", "Abort"):
        assert word not in err + out, err
    epoch = _train_epoch_saved(state)
    assert 1 <= epoch < 12, epoch
    p = subprocess.run(cmd, cwd=world["d"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resuming the curve training after epoch {epoch} of 12" in p.stderr, p.stderr
    assert _train_epoch_saved(state) == 12 and curves.read_results(os.path.join(world["out"], mc.RESULTS))


@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_is_refused_while_the_first_trains(world, capsys):
    argv = ["--model", "digits_cnn", "--max_samples", "64", "--loss_name", "mcplugins:slow_cross_entropy",
            "--model_file", world["a"], "--model_file2", world["b"], "--out_dir", world["out"], "--epochs", "40",
            "--batch_size", "32", "--points", "3", "--no_progress", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    state = os.path.join(world["out"], mc.TRAIN_STATE)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "mode_connectivity.py"), *argv], cwd=world["d"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(proc, lambda: _train_epoch_saved(state) >= 1, "a saved epoch")
        line = assert_main_error(mc.main, argv, capsys)
        assert "in use by another run" in line and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert sorted(os.listdir(world["out"])) == [mc.TRAIN_STATE]  # the lock is gone with its run


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")
@pytest.mark.parametrize("rank", [0, 1])
def test_a_signal_while_setting_up_under_mpi_ends_every_rank(world, rank):
    """SIGTERM to one rank while the data load (before the training): every rank ends
    within seconds with 128 + 15, one message, no traceback, no abort banner."""
    cmd = ["mpiexec", "-n", "2", sys.executable, os.path.join(REPO, "mode_connectivity.py"), "--mpi",
           "--model", "digits_cnn", "--dataset", "mcplugins:slow_data", "--model_file", world["a"],
           "--model_file2", world["b"], "--out_dir", world["out"], "--epochs", "3", "--points", "3",
           "--no_progress", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=world["d"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(proc, lambda: os.path.exists(os.path.join(world["d"], f"loading.{rank}")), "the data load")
        t0 = time.time()
        os.kill(_rank_pid(world["out"], rank), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 30, "the job did not end promptly"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("interrupted by SIGTERM") == 1, err
    for word in ("Traceback", "BAD TERMINATION", "Abort"):
        assert word not in err + out, err


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_every_file(finished, small_disk, capsys):
    """A real file system that is full (tmpfs, ENOSPC) under --out_dir: the rerun with
    --overwrite fails at its first save in one line; every file is as it was, no temporary."""
    d, argv = finished
    disk = small_disk("1m")
    out = os.path.join(disk, "out")
    shutil.copytree(os.path.join(d, "out"), out)
    fill_disk(disk)
    before = snapshot(disk)
    argv = [out if a == os.path.join(d, "out") else a for a in argv]
    line = assert_main_error(mc.main, argv + ["--overwrite", "--lr", "0.07"], capsys)
    assert "cannot write" in line and "No space left on device" in line
    assert snapshot(disk) == before
