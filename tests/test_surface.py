"""plot_surface.py end to end: values, orientation, MPI, resume, directions, errors.

Real subprocesses, real MPI ranks (mpiexec -n 2), real HDF5 files."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import COMPAT, REPO, assert_one_line_error, run_mpi, run_script

import model_loader
import net_plotter
from surface import read_surface

SMALL = ["--dataset", "digits", "--max_samples", "200", "--no_progress"]


def save_ckpt(path, seed, bn_steps=0):
    """A digits_cnn checkpoint in the original format; bn_steps train-mode forwards
    make its BatchNorm statistics differ from the defaults."""
    torch.manual_seed(seed)
    net = model_loader.build_model("digits_cnn")
    net.train()
    with torch.no_grad():
        for _ in range(bn_steps):
            net(torch.randn(64, 1, 8, 8) * (1 + seed))
    torch.save({"acc": 0.0, "epoch": 1, "state_dict": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return [save_ckpt(str(d / f"model_{i}.t7"), i, bn_steps=3) for i in range(3)]


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def surface_cmd(ckpt, surf, *extra):
    return ["plot_surface.py", "--model", "digits_cnn", "--model_file", ckpt,
            "--surf_file", surf, *SMALL, *extra]


def independent_eval(ckpt, dir_file, dir_type, x, y):
    """Set the weights by hand from the direction file and evaluate plainly."""
    from dataloader import load_data, add_data_args
    import argparse
    args = add_data_args(argparse.ArgumentParser()).parse_args(["--max_samples", "200"])
    data = load_data(args)
    net = model_loader.load("digits_cnn", ckpt)
    with h5py.File(dir_file, "r") as f:
        names = json.loads(f["xdirection"].attrs["names"])
        dx = {n: torch.from_numpy(np.asarray(f["xdirection"][str(i)][()])) for i, n in enumerate(names)}
        dy = ({n: torch.from_numpy(np.asarray(f["ydirection"][str(i)][()])) for i, n in enumerate(names)}
              if "ydirection" in f else None)
    entries = dict(net.named_parameters()) if dir_type == "weights" else net.state_dict()
    with torch.no_grad():
        for n, w in entries.items():
            if w.is_floating_point():
                w.add_(x * dx[n] + (y * dy[n] if dy is not None else 0))
        out = net.eval()(data.train_x)  # one plain batch of everything
        loss = F.cross_entropy(out.double(), data.train_y).item()
        acc = 100.0 * (out.argmax(1) == data.train_y).double().mean().item()
    return loss, acc


@pytest.mark.slow
def test_values_equal_independent_evaluation_2d(ckpts, tmp_path):
    surf, dirf = str(tmp_path / "s.h5"), str(tmp_path / "d.h5")
    run_script(surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--y=-0.5:0.5:3", "--dir_file", dirf,
                               "--batch_size", "64"), check=True)
    s = read_surface(surf)
    assert s.complete and s.values["train_loss"].shape == (3, 3)
    for i, j in [(0, 0), (2, 1), (1, 2), (1, 1)]:
        loss, acc = independent_eval(ckpts[0], dirf, "weights", s.x[i], s.y[j])
        assert abs(s.values["train_loss"][i, j] - loss) < 1e-6
        assert abs(s.values["train_acc"][i, j] - acc) < 1e-9
    # the centre is the checkpoint itself
    assert abs(s.values["train_loss"][1, 1] - independent_eval(ckpts[0], dirf, "weights", 0, 0)[0]) < 1e-6


CLOSED_FORM = textwrap.dedent("""
    import torch
    class Params(torch.nn.Module):
        # output = the two weights, repeated per sample: loss(x, y) is known in closed form
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[0.5, -0.25]]))
        def forward(self, x):
            return self.w.expand(len(x), 2)
    def factory():
        return Params()
    def loss(out, y):
        return out[:, 0] * 3.0 + (out[:, 1] ** 2) * 2.0
    def data():
        x = torch.zeros(10, 1)
        y = torch.zeros(10, dtype=torch.long)
        return (x, y), (x, y)
""")


@pytest.mark.slow
@pytest.mark.parametrize("nx,ny", [(21, 11), (11, 21)])
def test_orientation_closed_form(tmp_path, nx, ny):
    (tmp_path / "closed.py").write_text(CLOSED_FORM)
    dirf = str(tmp_path / "dir.h5")
    net_plotter.write_directions(dirf, ["w"], [torch.tensor([[1.0, 0.0]])], [torch.tensor([[0.0, 1.0]])])
    surf = str(tmp_path / "s.h5")
    run_script([os.path.join(REPO, "plot_surface.py"), "--model", "closed:factory", "--dataset",
                "closed:data", "--loss_name", "closed:loss", "--dir_file", dirf,
                f"--x=-1:2:{nx}", f"--y=0:1:{ny}", "--surf_file", surf, "--no_progress"],
               cwd=str(tmp_path), check=True)
    s = read_surface(surf)
    X, Y = np.meshgrid(s.x, s.y, indexing="ij")
    expect = (0.5 + X) * 3.0 + ((-0.25 + Y) ** 2) * 2.0
    assert s.values["train_loss"].shape == (nx, ny)
    np.testing.assert_allclose(s.values["train_loss"], expect, atol=1e-5)
    np.testing.assert_allclose(s.x, np.linspace(-1, 2, nx))
    np.testing.assert_allclose(s.y, np.linspace(0, 1, ny))


@pytest.mark.slow
def test_two_ranks_equal_one_rank(ckpts, tmp_path):
    dirf = str(tmp_path / "d.h5")
    one, two = str(tmp_path / "one.h5"), str(tmp_path / "two.h5")
    run_script(surface_cmd(ckpts[0], one, "--x=-1:1:5", "--y=-1:1:4", "--dir_file", dirf, "--test"),
               check=True)
    p = run_mpi(surface_cmd(ckpts[0], two, "--mpi", "--x=-1:1:5", "--y=-1:1:4", "--dir_file", dirf, "--test"))
    assert p.returncode == 0, p.stderr
    a, b = read_surface(one), read_surface(two)
    assert b.complete
    for m in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_allclose(a.values[m], b.values[m], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_seed_not_rank_count_sets_directions_and_idx_changes_them(ckpts, tmp_path):
    files = {}
    for name, extra in (("a", []), ("b", ["--idx", "1"]), ("c", ["--seed", "5"])):
        d = str(tmp_path / f"{name}.h5")
        run_script(surface_cmd(ckpts[0], str(tmp_path / f"s{name}.h5"), "--x=-1:1:2", "--dir_file", d, *extra),
                   check=True)
        files[name] = d
    d2 = str(tmp_path / "a2.h5")
    p = run_mpi(surface_cmd(ckpts[0], str(tmp_path / "sa2.h5"), "--mpi", "--x=-1:1:2", "--dir_file", d2))
    assert p.returncode == 0, p.stderr
    net = model_loader.load("digits_cnn", ckpts[0])
    rd = {k: net_plotter.read_directions(v, net, "weights", False)[0] for k, v in files.items()}
    same = net_plotter.read_directions(d2, net, "weights", False)[0]
    assert all(torch.equal(u, v) for u, v in zip(rd["a"], same))
    assert not all(torch.equal(u, v) for u, v in zip(rd["a"], rd["b"]))
    assert not all(torch.equal(u, v) for u, v in zip(rd["a"], rd["c"]))


@pytest.mark.slow
def test_filter_normalization_invariants():
    torch.manual_seed(0)
    net = model_loader.load("resnet56", os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7"))
    d = net_plotter.random_direction(net, "weights", "filter", "biasbn", torch.Generator().manual_seed(1))
    zero_filters = 0
    for (name, w), di in zip(net.named_parameters(), d):
        assert torch.isfinite(di).all(), name
        if w.dim() <= 1:
            assert not di.any(), name  # biasbn ignored
            continue
        wn = w.reshape(len(w), -1).norm(dim=1)
        dn = di.reshape(len(di), -1).norm(dim=1)
        torch.testing.assert_close(dn, wn, rtol=1e-5, atol=1e-7)
        zero_filters += int((wn < 1e-8).sum())
    # weight decay drove dozens of the released checkpoint's filters to norms below 1e-8:
    # their directions are as small, and finite (checked above)
    assert zero_filters >= 60
    # an exactly-zero filter gets a zero direction, not NaN
    w0 = torch.randn(3, 2, 3, 3)
    w0[1] = 0
    d0 = net_plotter.normalize_direction(torch.randn(3, 2, 3, 3), w0, "filter")
    assert torch.isfinite(d0).all() and not d0[1].any() and d0[0].any()
    # the other normalizations
    w = torch.randn(4, 3, 2, 2)
    for norm, check in [("layer", lambda d: torch.isclose(d.norm(), w.norm())),
                        ("dlayer", lambda d: torch.isclose(d.norm(), torch.tensor(1.0))),
                        ("dfilter", lambda d: torch.allclose(d.reshape(4, -1).norm(dim=1), torch.ones(4)))]:
        assert check(net_plotter.normalize_direction(torch.randn(4, 3, 2, 2), w, norm)), norm
    g = torch.randn(4, 3, 2, 2)
    assert torch.allclose(net_plotter.normalize_direction(g.clone(), w, "weight"), g * w)


def test_states_directions_leave_integer_buffers_and_variances_valid(ckpts):
    net = model_loader.load("digits_cnn", ckpts[0])
    d = net_plotter.random_direction(net, "states", "filter", "", torch.Generator().manual_seed(0))
    sd = net.state_dict()
    for (name, w), di in zip(sd.items(), d):
        if not w.is_floating_point():
            assert not di.any(), name
    p = net_plotter.Perturbation(net, "states", d)
    before = {k: v.clone() for k, v in sd.items() if "num_batches_tracked" in k}
    p.set(-3.0)  # far beyond -1: running_var + a*var would go negative
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            assert (v >= 0).all(), k
        if "num_batches_tracked" in k:
            assert torch.equal(v, before[k])


@pytest.mark.slow
def test_three_checkpoint_plane_states(ckpts, tmp_path):
    surf = str(tmp_path / "plane.h5")
    run_script(["plot_surface.py", "--model", "digits_cnn", "--model_file", ckpts[0],
                "--model_file2", ckpts[1], "--model_file3", ckpts[2], "--dir_type", "states",
                "--x=0:1:2", "--y=0:1:2", "--surf_file", surf, "--dir_file", str(tmp_path / "pd.h5"),
                *SMALL], check=True)
    s = read_surface(surf)
    own = [independent_eval(c, str(tmp_path / "pd.h5"), "states", 0, 0)[0] for c in ckpts]
    assert abs(s.values["train_loss"][0, 0] - own[0]) < 1e-6
    assert abs(s.values["train_loss"][1, 0] - own[1]) < 1e-6
    assert abs(s.values["train_loss"][0, 1] - own[2]) < 1e-6


@pytest.mark.slow
def test_interpolation_weights_mode_warns_and_names_file(ckpts, tmp_path):
    a, b = str(tmp_path / "m1" / "model_1.t7"), str(tmp_path / "m2" / "model_1.t7")
    for src, dst in ((ckpts[0], a), (ckpts[1], b)):
        os.makedirs(os.path.dirname(dst))
        shutil.copy(src, dst)
    p = run_script(["plot_surface.py", "--model", "digits_cnn", "--model_file", a, "--model_file2", b,
                    "--x=-0.5:1.5:3", *SMALL], check=True)
    assert "BatchNorm statistics stay" in p.stderr
    dir_file = f"{tmp_path}/m1_model_1.t7_m2_model_1.t7_weights.h5"
    assert os.path.isfile(dir_file), os.listdir(tmp_path)
    assert os.path.isfile(dir_file + "_[-0.5,1.5,3].h5")


def test_model_file3_name_has_no_extra_folders(ckpts, tmp_path):
    import flags
    import grid
    args = flags.parse_args(flags.build_parser(), [
        "--model_file", "a/b/model_1.t7", "--model_file2", "a/c/model_1.t7",
        "--model_file3", "a/d/model_1.t7", "--x=0:1:2", "--y=0:1:2"])
    name = grid.name_direction_file(args)
    assert name.startswith("a/b_model_1.t7_c_model_1.t7_weights_d_model_1.t7"), name
    assert name.count("/") == 1


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(ckpts, tmp_path):
    dirf = str(tmp_path / "d.h5")
    full, part = str(tmp_path / "full.h5"), str(tmp_path / "part.h5")
    cmd = surface_cmd(ckpts[0], part, "--x=-1:1:7", "--y=-1:1:7", "--dir_file", dirf,
                      "--save_every", "0.2", "--max_samples", "1437", "--threads", "1")
    proc = subprocess.Popen([sys.executable] + cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if 0 < read_surface(part).n_done < 40:
                break
        except Exception:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_surface(part)
    assert 0 < partial.n_done < 49
    p = run_script(cmd, check=True)
    assert f"{partial.n_done} already done" in p.stderr
    run_script(surface_cmd(ckpts[0], full, "--x=-1:1:7", "--y=-1:1:7", "--dir_file", dirf,
                           "--max_samples", "1437"), check=True)
    a, b = read_surface(full), read_surface(part)
    assert b.complete
    np.testing.assert_array_equal(a.values["train_loss"], b.values["train_loss"])
    np.testing.assert_array_equal(a.values["train_acc"], b.values["train_acc"])


@pytest.mark.slow
def test_sigterm_under_mpi_saves_and_exits_cleanly(ckpts, tmp_path):
    surf = str(tmp_path / "t.h5")
    cmd = ["mpiexec", "-n", "2", sys.executable] + surface_cmd(
        ckpts[0], surf, "--mpi", "--x=-1:1:15", "--y=-1:1:15", "--dir_file", str(tmp_path / "d.h5"),
        "--save_every", "0.2", "--max_samples", "1437")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if read_surface(surf).n_done >= 4:
                break
        except Exception:
            pass
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert proc.returncode != 0
    assert "rerun the same command to resume" in err, err
    s = read_surface(surf)
    assert 4 <= s.n_done < 225
    assert np.isfinite(s.values["train_loss"][s.done]).all()


def test_special_values_are_results_not_gaps(tmp_path):
    from surface import SurfaceWriter
    path = str(tmp_path / "s.h5")
    w = SurfaceWriter(path, [0, 1, 2], [0, 1], ["train_loss"], {"a": 1})
    w.record([0, 1, 2, 3], {"train_loss": [0.0, -1.0, np.nan, np.inf]})
    w.save()
    w.close()  # a store holds its file exclusively until closed
    w2 = SurfaceWriter(path, [0, 1, 2], [0, 1], ["train_loss"], {"a": 1})
    assert list(w2.todo()) == [4, 5]
    s = read_surface(path)
    assert s.values["train_loss"][0, 0] == 0 and s.values["train_loss"][0, 1] == -1
    assert np.isnan(s.values["train_loss"][1, 0]) and np.isinf(s.values["train_loss"][1, 1])


def test_original_files_read(tmp_path):
    # an original 2D surface file: (nx, ny) declared, filled in meshgrid order, -1 = not done
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 1, 2)
    path = str(tmp_path / "orig.h5")
    with h5py.File(path, "w") as f:
        f["dir_file"] = "some_dir.h5"
        f["xcoordinates"], f["ycoordinates"] = x, y
        xm, ym = np.meshgrid(x, y)
        loss = (xm * 10 + ym).ravel()
        loss[-1] = -1
        f["train_loss"] = loss.reshape(3, 2)
        f["train_acc"] = np.full((3, 2), 50.0)
    s = read_surface(path)
    assert s.original and s.n_done == 5
    for i in range(3):
        for j in range(2):
            if (i, j) != (2, 1):
                assert s.values["train_loss"][i, j] == x[i] * 10 + y[j]
    assert not s.done[2, 1] and np.isnan(s.values["train_loss"][2, 1])


def test_legacy_positional_direction_file_for_released_checkpoint(tmp_path):
    """An original-code states direction file from before num_batches_tracked: 287
    positional datasets, no names; applied to the right entries."""
    ck = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")
    legacy = torch.load(ck, map_location="cpu", weights_only=True)["state_dict"]
    assert len(legacy) == 287
    path = str(tmp_path / "legacy_dir.h5")
    with h5py.File(path, "w") as f:
        g = f.create_group("xdirection")
        for i, v in enumerate(legacy.values()):
            g[str(i)] = np.full(tuple(v.shape), float(i), dtype=np.float32)
    net = model_loader.load("resnet56", ck)
    xdir, _ = net_plotter.read_directions(path, net, "states", False)
    keys = list(legacy)
    for name, d in zip(net.state_dict(), xdir):
        if name.endswith("num_batches_tracked"):
            assert not d.any()
        else:
            assert d.flatten()[0].item() == float(keys.index(name)), name


@pytest.mark.slow
def test_bad_inputs_one_line_errors_and_files_untouched(ckpts, tmp_path):
    surf, dirf = str(tmp_path / "s.h5"), str(tmp_path / "d1.h5")
    run_script(surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--dir_file", dirf), check=True)
    before = (md5(surf), md5(dirf))
    cases = [
        (surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--dir_file", dirf, "--loss_name", "mse"), "different settings"),
        (surface_cmd(ckpts[0], str(tmp_path / "s2.h5"), "--x=-1:1:3", "--y=-1:1:3", "--dir_file", dirf),
         "only an x direction"),
        (surface_cmd(ckpts[0], surf, "--x=-1:1:two"), "integer"),
        (surface_cmd(ckpts[0], surf, "--x", "-1:1"), "min:max:num"),
        (surface_cmd(str(tmp_path / "nope.t7"), surf), "not found"),
        (["plot_surface.py", "--model", "resnet20", "--model_file", ckpts[0], "--surf_file", surf, *SMALL],
         "does not fit"),
        (surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--dir_file", dirf, "--dataset", "cifar10",
                     "--datapath", str(tmp_path)), "--download"),
    ]
    for cmd, needle in cases:
        line = assert_one_line_error(run_script(cmd))
        assert needle in line, line
    p = run_mpi(surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--dir_file", dirf), timeout=120)
    assert p.returncode != 0 and "without --mpi" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("error:") == 1
    assert (md5(surf), md5(dirf)) == before
    # --overwrite starts fresh with the new settings
    run_script(surface_cmd(ckpts[0], surf, "--x=-1:1:3", "--dir_file", dirf, "--loss_name", "mse", "--overwrite"),
               check=True)
    assert read_surface(surf).settings["loss_name"] == "mse"
    assert md5(dirf) == before[1]  # a user's --dir_file is never modified


def test_range_parsing():
    import flags as ps
    args = ps.parse_args(ps.build_parser(), ["--x", "-1:1:51", "--y=0:1:11"])
    assert (args.xmin, args.xmax, args.xnum) == (-1.0, 1.0, 51)
    assert (args.ymin, args.ymax, args.ynum) == (0.0, 1.0, 11)


@pytest.mark.slow
def test_failing_rank_ends_the_job_quickly(ckpts, tmp_path):
    (tmp_path / "failing.py").write_text(textwrap.dedent("""
        import os
        import torch.nn.functional as F
        calls = [0]
        def loss(out, y):
            calls[0] += 1
            if os.environ.get("PMI_RANK") == "1" and calls[0] > 2:
                raise RuntimeError("rank 1 fails on purpose")
            return F.cross_entropy(out, y, reduction="none")
    """))
    cmd = ["mpiexec", "-n", "2", sys.executable, os.path.join(REPO, "plot_surface.py"), "--mpi",
           "--model", "digits_cnn", "--model_file", ckpts[0], "--loss_name", "failing:loss",
           "--x=-1:1:40", "--surf_file", str(tmp_path / "s.h5"), *SMALL]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 30 + 10  # start-up of two ranks included
    assert p.returncode != 0
    assert "rank 1 fails on purpose" in p.stderr


@pytest.mark.slow
def test_mpi_flag_without_mpi4py_is_a_clear_error(ckpts, tmp_path):
    broken = tmp_path / "mpi4py"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('libmpi.so.12: cannot open shared object file')\n")
    p = run_script(surface_cmd(ckpts[0], str(tmp_path / "s.h5"), "--mpi", "--x=-1:1:2"),
                   env={"PYTHONPATH": str(tmp_path)})
    line = assert_one_line_error(p)
    assert "mpi4py" in line and "pip install mpi4py mpich" in line


ORIGINAL_COMMANDS = [
    "--mpi --cuda --model vgg9 --x=-0.5:1.5:401 --dir_type states "
    "--model_file cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7 "
    "--model_file2 cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=8192_wd=0.0_save_epoch=1/model_300.t7 --plot",
    "--mpi --cuda --model vgg9 --x=-1:1:51 "
    "--model_file cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7 "
    "--dir_type weights --xnorm filter --xignore biasbn --plot",
    "--mpi --cuda --model resnet56 --x=-1:1:51 --y=-1:1:51 "
    "--model_file cifar10/trained_nets/resnet56_sgd_lr=0.1_bs=128_wd=0.0005/model_300.t7 "
    "--dir_type weights --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --plot",
]


@pytest.mark.parametrize("line", ORIGINAL_COMMANDS)
def test_original_documented_command_lines_parse(line):
    import flags as ps
    args = ps.parse_args(ps.build_parser(), line.split())
    assert args.mpi and args.cuda and args.plot and args.model_file.endswith("model_300.t7")


@pytest.mark.slow
def test_original_random_direction_recipe_runs_on_cifar_format_data(cifar_dir, tmp_path):
    """The original's 1D recipe with vgg9 on CIFAR-10 python batches, minus the GPU and
    with a short grid: a vgg9 checkpoint in the original's format and folder naming."""
    folder = tmp_path / "trained_nets" / "vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"acc": 10.0, "epoch": 300, "state_dict": model_loader.build_model("vgg9").state_dict()},
               str(folder / "model_300.t7"))
    model_file = str(folder / "model_300.t7")
    run_script(["plot_surface.py", "--model", "vgg9", "--x=-1:1:3", "--model_file", model_file,
                "--dir_type", "weights", "--xnorm", "filter", "--xignore", "biasbn", "--plot",
                "--dataset", "cifar10", "--datapath", cifar_dir, "--max_samples", "64", "--no_progress"],
               check=True)
    surf = model_file + "_weights_xignore=biasbn_xnorm=filter.h5_[-1.0,1.0,3].h5"
    s = read_surface(surf)
    assert s.complete and s.settings["dataset"] == "cifar10" and s.settings["n_train"] == 64
    assert any(f.endswith("_1d_loss_acc.pdf") for f in os.listdir(folder))
