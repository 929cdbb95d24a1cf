"""The Python API (landscape.py): the same numbers and files as the command line, from
in-memory models and data, with resume and MPI; the README's example runs as written."""
import argparse
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO, run_script

import dataloader
import landscape
import model_loader
from surface import read_surface


def digits(n=200):
    args = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(["--dataset", "digits",
                                                                           "--max_samples", str(n)])
    return dataloader.load_data(args)


def checkpoint(path, seed):
    torch.manual_seed(seed)
    net = model_loader.build_model("digits_cnn")
    net.train()
    with torch.no_grad():
        net(torch.randn(32, 1, 8, 8))  # BN statistics away from their defaults
    torch.save({"acc": 0, "epoch": 1, "state_dict": net.state_dict()}, path)
    return model_loader.load("digits_cnn", path)


def test_api_equals_the_command_line_and_leaves_the_model_alone(tmp_path):
    """Same model, data, seed: the API's arrays and file equal plot_surface.py's file."""
    net = checkpoint(str(tmp_path / "m.t7"), 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = digits()
    api_file = str(tmp_path / "api.h5")
    s = landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 3), y=(-0.5, 0.5, 2),
                          test_data=(d.test_x, d.test_y), surf_file=api_file)
    cli_file = str(tmp_path / "cli.h5")
    run_script(["plot_surface.py", "--model", "digits_cnn", "--model_file", str(tmp_path / "m.t7"),
                "--dataset", "digits", "--max_samples", "200", "--x=-1:1:3", "--y=-0.5:0.5:2", "--test",
                "--surf_file", cli_file, "--no_progress"], check=True)
    cli = read_surface(cli_file)
    for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert s.values[name].shape == (3, 2)
        np.testing.assert_allclose(s.values[name], cli.values[name], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(read_surface(api_file).values[name], s.values[name])
    assert read_surface(api_file).complete
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # a copy was moved


def test_api_resumes_its_file_and_refuses_other_settings(tmp_path, capfd):
    net = checkpoint(str(tmp_path / "m.t7"), 1)
    d = digits(100)
    f = str(tmp_path / "s.h5")
    first = landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 4), surf_file=f)
    capfd.readouterr()
    again = landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 4), surf_file=f)
    assert "4 already done" in capfd.readouterr().err
    np.testing.assert_array_equal(first.values["train_loss"], again.values["train_loss"])
    with pytest.raises(Exception, match="different settings"):
        landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 4), seed=3, surf_file=f)


def test_dataloader_dataset_and_callable_loss_give_the_same_values(tmp_path):
    net = checkpoint(str(tmp_path / "m.t7"), 2)
    other = checkpoint(str(tmp_path / "n.t7"), 3)
    d = digits(120)
    ds = torch.utils.data.TensorDataset(d.train_x, d.train_y)
    ref = landscape.interpolate(net, other, (d.train_x, d.train_y), x=(0, 1, 3))
    by_loader = landscape.interpolate(net, other, torch.utils.data.DataLoader(ds, batch_size=50), x=(0, 1, 3),
                                      loss=torch.nn.CrossEntropyLoss(reduction="none"))
    by_dataset = landscape.interpolate(net, other, ds, x=(0, 1, 3), loss=torch.nn.CrossEntropyLoss())
    for r in (by_loader, by_dataset):
        np.testing.assert_allclose(r.values["train_loss"], ref.values["train_loss"], rtol=1e-6)
    # states interpolation: the ends are the two models exactly
    end = torch.nn.functional.cross_entropy(other.eval()(d.train_x), d.train_y).item()
    assert ref.values["train_loss"][-1] == pytest.approx(end, rel=1e-5)


def test_api_bad_input_is_one_clear_error():
    net = model_loader.build_model("digits_mlp")
    d = digits(50)
    with pytest.raises(Exception, match="integer number of points"):
        landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 1))
    with pytest.raises(Exception, match="norm one of"):
        landscape.surface(net, (d.train_x, d.train_y), norm="bogus")
    with pytest.raises(Exception, match=r"returned shape \(\d+, 10\)"):  # not summed silently
        landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 2),
                          loss=lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none")[:, None]
                          * torch.ones(1, 10))
    with pytest.raises(Exception, match="integer label"):
        landscape.surface(net, (d.train_x, d.train_y[:10]), x=(-1, 1, 2))


def _meta_model():
    with torch.device("meta"):
        return model_loader.build_model("digits_mlp")


def _nan_model():
    net = model_loader.build_model("digits_mlp")
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    return net


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, d):
        self.d = d

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"image": self.d.train_x[i], "label": self.d.train_y[i]}


def _loader(d, **kw):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.train_x, d.train_y), batch_size=16, **kw)


# (name, keyword arguments over the defaults below (model, data, x), the needle of the message)
API_BAD = [
    ("model-None", dict(model=None), "torch.nn.Module"),
    ("model-str", dict(model="digits_mlp"), "torch.nn.Module"),
    ("model-meta", dict(model=_meta_model), "meta device"),
    ("model-nan", dict(model=_nan_model), "NaN"),
    ("model2-str", dict(model2="b.t7"), "model2 must be a torch.nn.Module"),
    ("model2-other-architecture", dict(model2=lambda: model_loader.build_model("digits_cnn")),
     "not the same architecture"),
    ("model2-nan", dict(model2=_nan_model), "NaN"),
    ("model3-without-y", dict(model3=lambda: model_loader.build_model("digits_mlp")), "give y too"),
    ("device-bogus", dict(device="bogus"), "not a torch device"),
    ("device-int-str", dict(device="gpu0"), "not a torch device"),
    ("device-meta", dict(device="meta"), "not supported"),
    ("x-one-point", dict(x=(-1, 1, 1)), "integer number of points"),
    ("x-fraction", dict(x=(-1, 1, 2.5)), "integer number of points"),
    ("x-nan", dict(x=(float("nan"), 1, 3)), "finite"),
    ("x-str", dict(x="-1:1:3"), "(min, max, num)"),
    ("y-inf", dict(y=(0, float("inf"), 3)), "finite"),
    ("grid-huge", dict(x=(-1, 1, 100000), y=(-1, 1, 100000)), "fewer points"),
    ("x-huge", dict(x=(-1, 1, 10**12)), "fewer points"),
    ("seed-float", dict(seed=1.5), "seed must be an integer"),
    ("seed-negative", dict(seed=-1), "seed must be an integer"),
    ("seed-str", dict(seed="0"), "seed must be an integer"),
    ("idx-negative", dict(idx=-2), "idx must be an integer"),
    ("batch-size-zero", dict(batch_size=0), "batch_size must be an integer >= 1"),
    ("precision", dict(precision="fp64"), "precision"),
    ("dir-type", dict(dir_type="weight"), "dir_type one of"),
    ("ignore", dict(ignore="bias"), "ignore one of"),
    ("save-every-zero", dict(save_every=0), "save_every"),
    ("save-every-nan", dict(save_every=float("nan")), "save_every"),
    ("data-str", dict(data="digits"), "(images, labels)"),
    ("data-dicts", dict(data=lambda d: torch.utils.data.DataLoader(_Dicts(d), batch_size=4)),
     "(images, labels) batches"),
    ("data-shuffled", dict(data=lambda d: _loader(d, shuffle=True)), "shuffle"),
    ("test-data-shuffled", dict(test_data=lambda d: _loader(d, shuffle=True)), "shuffle"),
    ("labels-fractional", dict(data=lambda d: (d.train_x, d.train_y.float() + 0.5)), "integer label"),
    ("surf-file-is-folder", dict(surf_file="{tmp}"), "is a folder"),
    ("surf-file-is-dir-file", dict(surf_file="{tmp}/same.h5", dir_file="{tmp}/same.h5"), "destroy the directions"),
    ("surf-file-over-text", dict(surf_file="{tmp}/notes.txt", overwrite=True), "not a file of this toolkit"),
    ("dir-file-text", dict(dir_file="{tmp}/notes.txt"), "HDF5"),
]


@pytest.mark.parametrize("kw,needle", [c[1:] for c in API_BAD], ids=[c[0] for c in API_BAD])
def test_api_bad_input_is_one_userror_line_and_writes_nothing(kw, needle, tmp_path):
    """The API's checks are the command line's: one errors.UserError (a one-line message),
    never a raw torch/numpy exception, and no file written or changed."""
    import errors
    from conftest import snapshot_files
    d = digits(40)
    (tmp_path / "notes.txt").write_text("mine\n")
    args = dict(model=model_loader.build_model("digits_mlp"), data=(d.train_x, d.train_y), x=(-1, 1, 2))
    for k, v in kw.items():
        v = v(d) if k in ("data", "test_data") and callable(v) else v() if callable(v) else v
        args[k] = v.format(tmp=tmp_path) if isinstance(v, str) and "{tmp}" in v else v
    before = snapshot_files(str(tmp_path))
    model, data = args.pop("model"), args.pop("data")
    with pytest.raises(errors.UserError) as e:
        landscape.surface(model, data, **args)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert snapshot_files(str(tmp_path)) == before


def test_api_refuses_a_surface_file_in_use(tmp_path):
    import errors
    from store import Lock
    d = digits(40)
    surf = str(tmp_path / "s.h5")
    lock = Lock(surf, "surface file")
    with pytest.raises(errors.UserError, match="in use by another run"):
        landscape.surface(model_loader.build_model("digits_mlp"), (d.train_x, d.train_y), x=(-1, 1, 2),
                          surf_file=surf)
    lock.release()
    assert os.listdir(tmp_path) == []


def test_api_and_command_line_write_the_same_direction_and_surface_settings(tmp_path):
    """One runtime (grid.prepare_loaded) behind both: for the same run the direction file's
    attributes and directions and the surface settings are equal, but for the model's
    identity (a checkpoint's file hash and name on the command line, the tensors' hash in
    the API, and the data set's name)."""
    import h5py
    net = checkpoint(str(tmp_path / "m.t7"), 5)
    d = digits(60)
    api_dirs, api_surf = str(tmp_path / "api_dirs.h5"), str(tmp_path / "api.h5")
    landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 3), y=(-1, 1, 2), seed=2, idx=1,
                      test_data=(d.test_x, d.test_y), dir_file=api_dirs, surf_file=api_surf, batch_size=128)
    import errors
    import plot_surface
    cli_dirs, cli_surf = str(tmp_path / "cli_dirs.h5"), str(tmp_path / "cli.h5")
    errors.run_main(plot_surface.main, ["--model", "digits_cnn", "--model_file", str(tmp_path / "m.t7"),
                                        "--dataset", "digits", "--max_samples", "60", "--x=-1:1:3", "--y=-1:1:2",
                                        "--seed", "2", "--idx", "1", "--test", "--dir_file", cli_dirs,
                                        "--surf_file", cli_surf, "--no_progress"])
    identity = {"model", "model_hash", "model_file", "random_init", "dataset"}

    def attrs(path):
        with h5py.File(path, "r") as f:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            dirs = {g: [f[g][k][()] for k in sorted(f[g], key=int)] for g in ("xdirection", "ydirection")}
        recipe = {k: v for k, v in __import__("json").loads(a.pop("recipe")).items() if k not in identity}
        return a, recipe, dirs
    (a1, r1, d1), (a2, r2, d2) = attrs(api_dirs), attrs(cli_dirs)
    assert a1 == a2 and r1 == r2 and r1["same_dir"] is False
    for g in d1:
        assert all(np.array_equal(u, v) for u, v in zip(d1[g], d2[g]))
    s1, s2 = read_surface(api_surf).settings, read_surface(cli_surf).settings
    assert {k: v for k, v in s1.items() if k not in identity} == {k: v for k, v in s2.items() if k not in identity}
    np.testing.assert_allclose(read_surface(api_surf).values["train_loss"], read_surface(cli_surf).values["train_loss"],
                               rtol=1e-6)


API_UNDER_MPI = textwrap.dedent("""
    import sys, torch, numpy as np
    sys.path.insert(0, {repo!r})
    import argparse, dataloader, landscape, model_loader
    a = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(["--max_samples", "100"])
    d = dataloader.load_data(a)
    net = model_loader.load("digits_cnn", {ckpt!r})
    s = landscape.surface(net, (d.train_x, d.train_y), x=(-1, 1, 5), y=(-1, 1, 3), surf_file=sys.argv[1])
    np.save(sys.argv[1] + ".rank%d.npy" % int(__import__("os").environ.get("PMI_RANK", 0)), s.values["train_loss"])
""")


@pytest.mark.slow
def test_api_under_mpiexec_splits_the_grid_and_every_rank_gets_the_result(tmp_path):
    ckpt = str(tmp_path / "m.t7")
    checkpoint(ckpt, 4)
    script = tmp_path / "api_mpi.py"
    script.write_text(API_UNDER_MPI.format(repo=REPO, ckpt=ckpt))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = str(tmp_path / "one.h5")
    two = str(tmp_path / "two.h5")
    subprocess.run([sys.executable, str(script), one], check=True, env=env, timeout=300, capture_output=True)
    p = subprocess.run(["mpiexec", "-n", "2", sys.executable, str(script), two], env=env, timeout=300,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "2 rank(s)" in p.stderr
    np.testing.assert_array_equal(read_surface(one).values["train_loss"], read_surface(two).values["train_loss"])
    r0, r1 = np.load(two + ".rank0.npy"), np.load(two + ".rank1.npy")
    np.testing.assert_array_equal(r0, r1)


def readme_python_example():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    (tmp_path / "example.py").write_text(f"import sys\nsys.path.insert(0, {REPO!r})\n" + readme_python_example())
    p = run_script([str(tmp_path / "example.py")], cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    assert os.path.isfile(tmp_path / "digits_surface.h5")
    s = read_surface(str(tmp_path / "digits_surface.h5"))
    assert s.complete and s.shape == (11, 11) and np.isfinite(s.values["train_loss"]).all()
