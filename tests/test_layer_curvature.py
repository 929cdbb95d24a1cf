"""Per-layer curvature (layer_curvature.py) against exact block Hessians of a small
network: on 2 MPI ranks, with --group, and resumed from a file with a block missing."""
import json
import os
import sys

import h5py
import numpy as np
import pytest

import layer_curvature
from conftest import run_mpi
from hess_vec_prod import layer_blocks
from conftest import N_SAMPLES
from conftest import data_hessian as exact_hessian


BLOCKS = {"features.conv": ["features.conv.weight"], "head.fc1": ["head.fc1.weight"],
          "head.fc2": ["head.fc2.weight"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny products: one thread is fastest


def cmd(tiny, out, *extra):
    return ["--model", "tinynets:tiny_cnn", "--model_file", tiny.ckpt, "--max_samples", str(N_SAMPLES),
            "--threads", "1", "--batch_size", "16", "--eig_tol", "1e-8", "--exact_trace_max", "20",
            "--trace_samples", "60", "--curvature_file", out, *extra]


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, json.loads(f.attrs["layers"]), json.loads(f.attrs["settings"])


def check_against_exact(tiny, values, names, blocks):
    """Top eigenvalue to 1e-4 relative; trace exact (3e-5: fp32) or within 3 standard errors."""
    for i, name in enumerate(names):
        H = exact_hessian(tiny.net, tiny.data, blocks[name])
        ev = np.linalg.eigvalsh(H)
        assert values["parameters"][i] == len(H)
        assert values["top_eig"][i] == pytest.approx(ev[-1], rel=1e-4), name
        if values["exact"][i]:
            assert len(H) <= 20 and values["trace_stderr"][i] == 0
            # fp32 products summed in float64: 3e-5 is the fp32 limit (1.2e-5 measured on a conv block)
            assert values["trace"][i] == pytest.approx(np.trace(H), rel=3e-5, abs=1e-9), name
        else:
            assert 0 < values["trace_stderr"][i] and \
                abs(values["trace"][i] - np.trace(H)) < 3 * values["trace_stderr"][i], name


def test_blocks_and_groups(tiny):
    blocks = layer_blocks(tiny.net)
    assert [(b, [n for n, _ in ps]) for b, ps in blocks] == list(BLOCKS.items())
    grouped = layer_blocks(tiny.net, ["head"])
    assert [(b, [n for n, _ in ps]) for b, ps in grouped] == \
        [("features.conv", ["features.conv.weight"]), ("head", ["head.fc1.weight", "head.fc2.weight"])]
    with pytest.raises(ValueError, match="hea"):
        layer_blocks(tiny.net, ["hea"])  # a prefix matches whole name parts only


@pytest.mark.slow
def test_two_ranks_against_exact_blocks_then_group_and_resume(tiny, tmp_path, capsys):
    out = str(tmp_path / "layers.h5")
    p = run_mpi(["layer_curvature.py", "--mpi", "--plot", "--format", "png", "--progress_every", "0"]
                + cmd(tiny, out), env=tiny.env)
    assert p.returncode == 0, p.stderr
    assert "head.fc2" in p.stdout and "sum (= tr H)" in p.stdout
    assert "rank 0: " in p.stderr and "rank 1: " in p.stderr and "products" in p.stderr
    assert os.path.getsize(out + "_layers.png") > 10_000
    values, names, settings = read(out)
    assert names == list(BLOCKS) and values["done"].all() and list(values["exact"]) == [1, 0, 0]
    check_against_exact(tiny, values, names, BLOCKS)
    # the block traces add up to the trace of the whole Hessian
    full = exact_hessian(tiny.net, tiny.data)
    se = np.sqrt((values["trace_stderr"] ** 2).sum())
    assert abs(values["trace"].sum() - np.trace(full)) < 3 * se

    sys.path.insert(0, tiny.folder)
    try:
        # --group head: one block for fc1 + fc2, its Hessian the 168 x 168 block
        grouped = str(tmp_path / "grouped.h5")
        layer_curvature.main(cmd(tiny, grouped, "--group", "head", "--no_progress"))
        g, gnames, _ = read(grouped)
        assert gnames == ["features.conv", "head"]
        check_against_exact(tiny, g, gnames, {"features.conv": ["features.conv.weight"],
                                              "head": ["head.fc1.weight", "head.fc2.weight"]})
        np.testing.assert_allclose(g["top_eig"][0], values["top_eig"][0], rtol=1e-6)
        # resume: a file with one block missing gets only that block computed
        with h5py.File(out, "r+") as f:
            f["done"][1] = 0
            f["trace"][1] = np.nan
        capsys.readouterr()
        layer_curvature.main(cmd(tiny, out, "--progress_every", "0"))
        err = capsys.readouterr().err
        assert "2 already done" in err and "head.fc1 (108 parameters)" in err and "features.conv (" not in err
        resumed, _, _ = read(out)
        assert resumed["done"].all()
        np.testing.assert_allclose(resumed["trace"], values["trace"], rtol=1e-6)
        np.testing.assert_allclose(resumed["top_eig"], values["top_eig"], rtol=1e-6)
    finally:
        sys.path.remove(tiny.folder)
