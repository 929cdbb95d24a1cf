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


# ------------------------------------------------ checkpoints (torch.save): training, align.py
def test_a_checkpoint_save_on_a_full_disk_is_one_user_error_and_keeps_the_old_file(small_disk):
    """fileio.save_torch (cifar10/main.py's checkpoints, align.py's output, mode_connectivity's
    files): torch.save writing a file itself raises RuntimeError on a full disk; ours is a
    UserError, the previous file is whole and no temporary is left."""
    from errors import UserError
    from fileio import save_torch
    d = small_disk("64k")
    path = os.path.join(d, "model_1.t7")
    save_torch({"state_dict": {"w": torch.zeros(4)}}, path)
    before = open(path, "rb").read()
    fill_disk(d)
    with pytest.raises(UserError, match="cannot write"):
        save_torch({"state_dict": {"w": torch.ones(100_000)}}, path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(d)) == ["filler", "model_1.t7"]
    os.remove(os.path.join(d, "filler"))
    save_torch({"state_dict": {"w": torch.ones(4)}}, path)  # the corrected run writes
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(4))


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_one_line(tmp_path, small_disk):
    d = small_disk("24k")
    p = run_script(["cifar10/main.py", "--model", "digits_mlp", "--epochs", "1", "--max_samples", "50",
                    "--threads", "1", "--save", d])
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no space" in assert_one_line_error(p).lower() or "cannot write" in p.stderr
    assert not [f for root, _, fs in os.walk(d) for f in fs if f.endswith(".tmp")]
