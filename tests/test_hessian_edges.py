"""Degenerate models and losses in the four Hessian scripts (plot_hessian_eigen,
hessian_spectrum, layer_curvature, hessian_directions), the Hessian operator's product
batch chosen by memory against the exact Hessian, and progress lines.

Bad cases: each script's real main as the command line runs it (errors.run_main): exit 2,
one ``error:`` line naming the problem, no traceback, no file created or changed. The
models live in a small plugin module written by the fixture: a layer that forward never
uses (an exactly zero Hessian block), one without a parameter of more than one dimension,
one whose loss is finite but whose gradient is NaN (sqrt(|a|) at a = 0), a model whose
Hessian is exactly zero, a BatchNorm1d model, and a 0-1 loss (no gradient).
"""
import json
import os
import re
import sys

import h5py
import numpy as np
import pytest
import torch

import errors
from conftest import exact_hessian, save_checkpoint, snapshot
from evaluation import get_loss_fn
from hess_vec_prod import DEFAULT_BATCH_MB, DEFAULT_CACHE_MB, DEFAULT_TOL, auto_batch, hessian_operator

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = '''
import torch
from torch import nn


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.unused = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class BiasOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return x.flatten(1)[:, :10] + self.b


class Kink(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.a = nn.Parameter(torch.zeros(1, 1))

    def forward(self, x):
        return self.fc(x.flatten(1)) + self.a.abs().sqrt()


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 3))

    def forward(self, x):
        return x.flatten(1)[:, :10] + 0 * self.w.sum()


def unused():
    return Unused()


def bias_only():
    return BiasOnly()


def kink():
    return Kink()


def flat():
    return Flat()


def bn1d():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def zero_one(out, y):
    return (out.argmax(1) != y).float()
'''
PLUGINS = ("unused", "bias_only", "kink", "flat", "bn1d")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """A folder with the plugin module, a checkpoint of each plugin model and of digits_mlp."""
    tmp = tmp_path_factory.mktemp("edge")
    (tmp / "edgenets.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp))
    try:
        import edgenets
        for name in PLUGINS:
            torch.manual_seed(0)
            torch.save({"state_dict": getattr(edgenets, name)().state_dict()}, str(tmp / f"{name}.t7"))
        save_checkpoint(tmp / "mlp.t7", "digits_mlp", seed=0)
        yield tmp
    finally:
        sys.path.remove(str(tmp))
        sys.modules.pop("edgenets", None)


def model(name):
    return ["--model", "digits_mlp" if name == "mlp" else f"edgenets:{name}", "--model_file", f"{{tmp}}/{name}.t7"]


OUTPUT = {"plot_hessian_eigen": "--spectrum_file", "hessian_spectrum": "--spectrum_file",
          "layer_curvature": "--curvature_file", "hessian_directions": "--dir_file"}
SCRIPTS = {  # each script's flags for its cheapest run
    "eigen": ("plot_hessian_eigen", ["--top_k", "1"]),
    "trace": ("plot_hessian_eigen", ["--trace", "--trace_samples", "2"]),
    "map": ("plot_hessian_eigen", ["--x=0:1:2", "--surf_file", "{tmp}/map.h5", "--dir_file", "{tmp}/map_dirs.h5"]),
    "spectrum": ("hessian_spectrum", ["--n_v", "1", "--lanczos_steps", "3"]),
    "layers": ("layer_curvature", ["--trace_samples", "2"]),
    "directions": ("hessian_directions", []),
}
LOSS01 = ["--loss_name", "edgenets:zero_one"]
BAD = (
    # no parameter with more than one dimension: nothing to take the Hessian of
    [(s, model("bias_only"), "more than one dimension") for s in SCRIPTS]
    # a loss without a graph (0-1 loss): the Hessian needs a differentiable loss
    + [(s, model("mlp") + LOSS01, "differentiable") for s in SCRIPTS]
    # a finite loss whose products are NaN: refused, nothing recorded
    + [(s, model("kink"), "not finite") for s in ("eigen", "trace", "spectrum", "layers", "directions")]
    # a Hessian that is exactly zero has no sharpest direction
    + [("directions", model("flat"), "exactly zero")]
    # sizes that would allocate absurd memory, checked before any work
    + [("spectrum", model("mlp") + ["--n_grid", "100000000000"], "--n_grid"),
       ("spectrum", model("mlp") + ["--n_v", "1000000000"], "--n_v"),
       ("spectrum", model("mlp") + ["--lanczos_steps", "1000000000"], "--lanczos_steps")]
    # the Hessian flag group, the same checks in every script
    + [(s, model("mlp") + [flag, value], flag) for s, flag, value in (
        ("eigen", "--hess_batch_mb", "0"), ("spectrum", "--hess_batch_mb", "-1"),
        ("layers", "--hess_batch_mb", "nan"), ("directions", "--hess_batch_mb", "inf"),
        ("directions", "--progress_every", "nan"), ("directions", "--eig_tol", "nan"),
        ("map", "--hess_cache_mb", "-2"), ("directions", "--test", None))]
)


def run_main_in_process(script, argv):
    import importlib
    errors.run_main(importlib.import_module(script).main, argv)


def case_argv(key, flags, tmp):
    script, extra = SCRIPTS[key]
    flags = [f for f in flags if f is not None]
    argv = [f.format(tmp=tmp) for f in extra + flags] + ["--max_samples", "40", "--threads", "1", "--no_progress"]
    if key != "map":
        argv += [OUTPUT[script], os.path.join(tmp, "out.h5")]
    return script, argv


@pytest.mark.parametrize("key,flags,word", BAD,
                         ids=[f"{k}:{' '.join(str(a) for a in f[1:2] + f[4:])}" for k, f, _ in BAD])
def test_degenerate_input_is_one_line_and_writes_nothing(edge, key, flags, word, capsys):
    tmp = str(edge)
    script, argv = case_argv(key, flags, tmp)
    before = snapshot(tmp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main_in_process(script, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], err
    assert snapshot(tmp) == before


def test_a_zero_block_has_eigenvalue_zero(edge, tmp_path, capsys):
    """A layer that forward never uses: its block is exactly zero, reported as 0 (ARPACK
    fails on a zero operator); the other block equals the exact one."""
    import layer_curvature
    out = str(tmp_path / "layers.h5")
    argv = [f.format(tmp=edge) for f in model("unused")] + [
        "--max_samples", "40", "--threads", "1", "--no_progress", "--eig_tol", "1e-8",
        "--exact_trace_max", "700", "--curvature_file", out]
    layer_curvature.main(argv)
    assert "unused" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        names, v = json.loads(f.attrs["layers"]), {k: f[k][()] for k in ("top_eig", "trace", "done")}
    assert names == ["fc", "unused"] and v["done"].all()
    assert v["top_eig"][1] == 0 and v["trace"][1] == 0
    sys.path.insert(0, str(edge))
    try:
        import edgenets
        import dataloader
        net = edgenets.unused()
        net.load_state_dict(torch.load(str(edge / "unused.t7"))["state_dict"])
        data = dataloader.load_data(argparse_data(40))
        H = exact_hessian(net, data.train_x, data.train_y, get_loss_fn("crossentropy"), ["fc.weight"])
    finally:
        sys.path.remove(str(edge))
    assert v["top_eig"][0] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-4)
    # exact traces: fp32 products summed in float64; 3e-5 is the fp32 limit (doc/curvature.md)
    assert v["trace"][0] == pytest.approx(np.trace(H), rel=3e-5)


def argparse_data(max_samples):
    import argparse

    import dataloader
    p = argparse.ArgumentParser()
    dataloader.add_data_args(p)
    return p.parse_args(["--max_samples", str(max_samples)])


def test_zero_hessian_single_point_is_zero_not_a_crash(edge, tmp_path, capsys):
    import plot_hessian_eigen
    out = str(tmp_path / "flat.h5")
    plot_hessian_eigen.main([f.format(tmp=edge) for f in model("flat")] + [
        "--top_k", "2", "--trace", "--max_samples", "40", "--threads", "1", "--no_progress",
        "--spectrum_file", out])
    with h5py.File(out, "r") as f:
        assert list(f["top_eigenvalues"][()]) == [0, 0] and f["max_eig"][()] == 0 and f["min_eig"][()] == 0
        assert f["trace"][()] == 0


def test_batchnorm1d_with_a_last_batch_of_one_sample(edge, tmp_path):
    """The Hessian is taken in eval mode (BatchNorm's running statistics), so a product
    batch of one sample is as good as any: 129 samples in batches of 1 (the smallest
    budget) and in one batch give the same products."""
    sys.path.insert(0, str(edge))
    try:
        import edgenets
        net = edgenets.bn1d()
        net.load_state_dict(torch.load(str(edge / "bn1d.t7"))["state_dict"])
    finally:
        sys.path.remove(str(edge))
    import dataloader
    data = dataloader.load_data(argparse_data(129))
    x, y = data.train_x, data.train_y
    assert len(y) == 129
    one = hessian_operator(net, x, y, "crossentropy", batch_mb=1e-9)
    whole = hessian_operator(net, x, y, "crossentropy")
    assert one.batch_size == 1 and whole.batch_size == 129
    v = np.random.default_rng(0).standard_normal(one.shape[0])
    a, b = one.matvec(v), whole.matvec(v)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * abs(b).max())


@pytest.mark.parametrize("batch_mb", [None, 1e-9, 0.05])
def test_product_batch_chosen_by_memory_equals_the_exact_hessian(batch_mb):
    """Whatever batch the memory budget gives (the whole set, one sample, a few), the
    products are those of the exact Hessian to 1e-6 relative."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x, y = torch.randn(23, 6), torch.randint(0, 4, (23,))
    H = exact_hessian(net, x, y, get_loss_fn("crossentropy"))
    kw = {} if batch_mb is None else {"batch_mb": batch_mb}
    op = hessian_operator(net, x, y, "crossentropy", **kw)
    expect = {None: 23, 1e-9: 1}.get(batch_mb)
    assert expect is None or op.batch_size == expect
    assert 1 <= op.batch_size <= 23
    np.testing.assert_allclose(op.matmat(np.eye(op.shape[0])), H, rtol=0, atol=1e-6 * abs(H).max())
    loss = get_loss_fn("crossentropy")
    assert auto_batch(net, x, y, loss, [p for p in net.parameters() if p.dim() > 1], 1e-9) == 1


def test_flag_defaults_are_the_library_defaults():
    import flags
    assert (flags.HESSIAN_TOL, flags.HESSIAN_CACHE_MB, flags.HESSIAN_BATCH_MB) == \
        (DEFAULT_TOL, DEFAULT_CACHE_MB, DEFAULT_BATCH_MB)


PROGRESS = {  # every long Hessian job prints a progress line while its products run
    "map": ("plot_hessian_eigen", ["--x=0:1:2", "--surf_file", "{out}", "--dir_file", "{out}.dirs.h5"]),
    "eigen": ("plot_hessian_eigen", ["--top_k", "1", "--spectrum_file", "{out}"]),
    "spectrum": ("hessian_spectrum", ["--n_v", "1", "--lanczos_steps", "3", "--spectrum_file", "{out}"]),
    "layers": ("layer_curvature", ["--trace_samples", "2", "--curvature_file", "{out}"]),
    "directions": ("hessian_directions", ["--dir_file", "{out}"]),
}


@pytest.mark.parametrize("key", sorted(PROGRESS))
def test_progress_line_before_the_end(edge, tmp_path, key, capsys):
    """With --progress_every 0 a line '<phase>: N products, T s' is printed after every
    product (the default prints one every 5 s): no Hessian job is silent."""
    import importlib
    script, extra = PROGRESS[key]
    out = str(tmp_path / "out.h5")
    argv = [f.format(tmp=edge) for f in model("mlp")] + ["--max_samples", "40", "--threads", "1",
                                                         "--progress_every", "0"]
    capsys.readouterr()
    importlib.import_module(script).main(argv + [f.format(out=out) for f in extra])
    err = capsys.readouterr().err
    ticks = [i for i, line in enumerate(err.splitlines()) if re.search(r": \d+ products, [\d.]+ s \(total", line)]
    done = [i for i, line in enumerate(err.splitlines()) if " done: " in line]
    assert ticks and done and ticks[0] < done[-1], err
