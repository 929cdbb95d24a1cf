"""Nothing from a data folder or the working directory runs as code: a crafted CIFAR-10
batch is refused by the restricted unpickler, and modules in the working directory named
like the toolkit's own modules or installed packages do not replace them."""
import os
import pickle
import sys
import textwrap

import pytest

import dataloader
import plugins
from conftest import assert_one_line_error, run_script, write_cifar_batches
from errors import UserError


class _Payload:
    """Unpickling this calls os.system(touch marker): what a crafted batch could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_cifar(root, marker):
    write_cifar_batches(str(root), n_train=20, n_test=10)
    path = os.path.join(str(root), "cifar-10-batches-py", "data_batch_1")
    with open(path, "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f, protocol=2)
    return path


def _args(*argv):
    import argparse
    return dataloader.add_data_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_crafted_cifar_batch_does_not_run(tmp_path):
    marker = str(tmp_path / "ran")
    batch = _crafted_cifar(tmp_path / "data", marker)
    with pytest.raises(UserError) as e:
        dataloader.load_data(_args("--dataset", "cifar10", "--datapath", str(tmp_path / "data")))
    msg = str(e.value)
    assert batch in msg and "not a CIFAR-10 python batch" in msg and "system" in msg, msg
    assert "\n" not in msg
    assert not os.path.exists(marker)


def test_restricted_unpickler_admits_exactly_the_cifar_format(tmp_path):
    import numpy as np
    # the real format (protocol 2, numpy array, bytes keys, list of ints) loads
    write_cifar_batches(str(tmp_path), n_train=5, n_test=5)
    d = dataloader.load_plain_pickle(str(tmp_path / "cifar-10-batches-py" / "data_batch_1"),
                                     "a CIFAR-10 python batch", "")
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (1, 3072)
    # any other global is refused before it is called, e.g. builtins.eval / collections
    for obj, name in ((_Payload(str(tmp_path / "m")), "system"),
                      (__import__("collections").OrderedDict(a=1), "collections.OrderedDict"),
                      (dataloader.Data, "dataloader.Data")):
        path = tmp_path / "x.pkl"
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        with pytest.raises(UserError) as e:
            dataloader.load_plain_pickle(str(path), "a CIFAR-10 python batch", "re-extract it")
        assert name in str(e.value)
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.slow
def test_crafted_cifar_batch_refused_by_the_scripts(tmp_path):
    marker = str(tmp_path / "ran")
    _crafted_cifar(tmp_path / "data", marker)
    p = run_script(["plot_surface.py", "--model", "vgg9", "--x=-1:1:2", "--no_progress",
                    "--datapath", tmp_path / "data", "--surf_file", tmp_path / "s.h5",
                    "--dir_file", tmp_path / "d.h5"])
    assert "not a CIFAR-10 python batch" in assert_one_line_error(p)
    assert not os.path.exists(marker)
    assert not os.path.exists(tmp_path / "s.h5") and not os.path.exists(tmp_path / "d.h5")


SHADOWS = ["plot_1D", "plot_2D", "torch", "numpy", "h5py", "matplotlib", "dataloader",
           "model_loader", "net_plotter", "surface", "evaluation", "errors", "scheduler"]


@pytest.mark.slow
def test_working_directory_cannot_shadow_modules(tmp_path):
    """A cwd holding plot_1D.py, torch.py, numpy.py, ... that would touch a marker, plus the
    user's own mymodel.py: --model mymodel:net works, no marker appears."""
    marker = tmp_path / "shadowed"
    work = tmp_path / "work"
    work.mkdir()
    for name in SHADOWS:
        (work / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
            "raise ImportError('shadow module imported')\n")
    (work / "mymodel.py").write_text(textwrap.dedent("""
        import torch
        def net():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    """))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "plot_surface.py")
    p = run_script([script, "--model", "mymodel:net", "--x=-1:1:3", "--plot", "--no_progress",
                    "--surf_file", "s.h5", "--dir_file", "d.h5"], cwd=work,
                   env={"MPLBACKEND": "Agg"})
    assert p.returncode == 0, p.stderr
    assert not marker.exists(), marker.read_text()
    assert (work / "s.h5").exists()
    assert any(f.endswith(".pdf") for f in os.listdir(work)), os.listdir(work)


def test_user_module_may_import_its_siblings_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "layers_q7.py").write_text("WIDTH = 64\n")
    (tmp_path / "mymodel_q7.py").write_text(
        "import torch, layers_q7\n"
        "def net():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
        "torch.nn.Linear(layers_q7.WIDTH, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    factory = plugins.import_object("mymodel_q7:net", "--model")
    assert factory()[1].in_features == 64
    assert sys.path[-1] == str(tmp_path)  # appended: after the toolkit and the packages
