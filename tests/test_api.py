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
