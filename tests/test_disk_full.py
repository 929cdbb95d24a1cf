"""A disk that fills up part-way through a save, for every HDF5 writer: plot_surface's
direction and surface files, the Hessian spectrum, the layer table, the single-point
spectrum and the eigen-direction file.

Each script runs as a real process (a crash at exit would show as a signal) on a real
size-limited file system (conftest.small_disk) at several sizes, so the disk fills at
different moments: before the first file, between the direction and the surface file,
during a periodic save. Whatever the moment: exit 0 with whole files, or exit 2 with one
``error:`` line that says the disk is full, no traceback, no temporary or lock file left,
and every file present readable.
"""
import os

import h5py
import pytest
import torch

import model_loader
from conftest import assert_one_line_error, fill_disk, run_script

MLP = ["--model", "digits_mlp", "--max_samples", "20", "--threads", "1", "--no_progress"]
SIZES = ["8k", "24k", "64k"]  # 8k: smaller than any of the files, so the first save fails
WRITERS = {
    "plot_surface": lambda ck, d: ["plot_surface.py", *MLP, "--model_file", ck, "--x=0:1:3", "--y=0:1:2",
                                   "--dir_file", f"{d}/dirs.h5", "--surf_file", f"{d}/surf.h5"],
    "hessian_spectrum": lambda ck, d: ["hessian_spectrum.py", *MLP, "--model_file", ck, "--n_v", "2",
                                       "--lanczos_steps", "3", "--spectrum_file", f"{d}/spec.h5"],
    "layer_curvature": lambda ck, d: ["layer_curvature.py", *MLP, "--model_file", ck, "--trace_samples", "2",
                                      "--exact_trace_max", "0", "--curvature_file", f"{d}/layers.h5"],
    "plot_hessian_eigen": lambda ck, d: ["plot_hessian_eigen.py", *MLP, "--model_file", ck, "--top_k", "1",
                                         "--spectrum_file", f"{d}/point.h5"],
    "hessian_directions": lambda ck, d: ["hessian_directions.py", *MLP, "--model_file", ck,
                                         "--dir_file", f"{d}/hdirs.h5"],
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ck") / "mlp.t7")
    torch.save({"state_dict": model_loader.build_model("digits_mlp").state_dict()}, path)
    return path


def _check_outcome(p, disk):
    assert p.returncode in (0, 2), (p.returncode, p.stderr)  # never a crash (negative: a signal)
    if p.returncode == 2:
        line = assert_one_line_error(p)
        assert "cannot write" in line and "space" in line, line
        assert sum(line.startswith("error:") for line in p.stderr.splitlines()) == 1, p.stderr
    names = os.listdir(disk)
    assert not [n for n in names if n.endswith((".tmp", ".lock", ".image"))], names
    for n in names:
        if n != "filler":
            with h5py.File(os.path.join(disk, n), "r") as f:
                assert len(f.attrs) and len(f.keys())  # whole, readable


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_disk_filling_up_is_one_line_and_leaves_whole_files(writer, size, ckpt, small_disk):
    disk = small_disk(size)
    p = run_script(WRITERS[writer](ckpt, disk))
    _check_outcome(p, disk)
    if size == SIZES[0]:
        assert p.returncode == 2, p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_keeps_the_last_good_file(writer, ckpt, small_disk):
    """A finished run, then the disk fills, then a rerun that must write anew (--overwrite,
    another seed): one line, the files byte-identical."""
    disk = small_disk("256k")
    cmd = WRITERS[writer](ckpt, disk)
    assert run_script(cmd).returncode == 0
    before = {n: open(os.path.join(disk, n), "rb").read() for n in os.listdir(disk)}
    fill_disk(disk)
    p = run_script(cmd + ["--overwrite", "--seed", "1"])
    assert p.returncode == 2
    _check_outcome(p, disk)
    assert {n: open(os.path.join(disk, n), "rb").read() for n in before} == before
