"""Bad inputs of the grid scripts (plot_surface.py, and through the same flags and set-up,
plot_hessian_eigen.py): one table, each case a one-line error that says what to do, no
traceback, every existing file byte-identical, and nothing new written that would block the
corrected rerun.

The cases run in-process through errors.run_main (the scripts' own entry), so the table
stays fast; test_surface.py runs the same paths as real subprocesses and MPI ranks.
"""
import json
import os

import h5py
import numpy as np
import pytest
import torch

import errors
import model_loader
import plot_hessian_eigen
import plot_surface
from conftest import fill_disk, run_main_error, snapshot

SMALL = ["--model", "digits_cnn", "--dataset", "digits", "--max_samples", "60", "--no_progress"]


def save_ckpt(path, seed):
    torch.manual_seed(seed)
    net = model_loader.build_model("digits_cnn")
    torch.save({"acc": 0.0, "epoch": 1, "state_dict": net.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two checkpoints (one copied: same content, other path), a finished 1D surface with its
    direction file, and a few broken files."""
    d = tmp_path_factory.mktemp("grid_inputs")
    a = save_ckpt(d / "a.t7", 0)
    b = save_ckpt(d / "b.t7", 1)
    a_copy = str(d / "a_copy.t7")
    with open(a, "rb") as src, open(a_copy, "wb") as dst:
        dst.write(src.read())
    surf, dirf = str(d / "surf.h5"), str(d / "dirs.h5")
    assert errors.run_main(plot_surface.main, SMALL + ["--model_file", a, "--x=-1:1:3", "--surf_file", surf,
                                                      "--dir_file", dirf]) is None
    bad_settings = str(d / "bad_settings.h5")
    no_done = str(d / "no_done.h5")
    for path in (bad_settings, no_done):
        with open(surf, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
    with h5py.File(bad_settings, "a") as f:
        f.attrs["settings"] = "{not json"
    with h5py.File(no_done, "a") as f:
        del f["done"]
    missing_entry = str(d / "orig_dirs_missing.h5")  # an original-format direction file, entry "3" gone
    net = model_loader.load("digits_cnn", a)
    with h5py.File(missing_entry, "w") as f:
        g = f.create_group("xdirection")
        for i, (_, p) in enumerate(net.named_parameters()):
            if i != 3:
                g[str(i)] = np.zeros(tuple(p.shape), np.float32)
    a_file = str(d / "a_file")
    open(a_file, "w").write("I am a file\n")
    return dict(d=str(d), a=a, b=b, a_copy=a_copy, surf=surf, dirf=dirf, bad_settings=bad_settings,
                no_done=no_done, missing_entry=missing_entry, a_file=a_file)


def cases(w):
    """(script main, argv, needle in the error line)."""
    d, a = w["d"], w["a"]
    s = ["--model_file", a]
    new = ["--surf_file", os.path.join(d, "new.h5")]
    ps, he = plot_surface.main, plot_hessian_eigen.main
    return [
        # grid ranges
        (ps, SMALL + s + new + ["--x=nan:1:3"], "finite"),
        (ps, SMALL + s + new + ["--x=-inf:1:3"], "finite"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--y=0:inf:3"], "finite"),
        (ps, SMALL + s + new + ["--x=-1:1:1"], "integer >= 2"),
        (ps, SMALL + s + new + ["--x=-1:1:2.5"], "integer >= 2"),
        (ps, SMALL + s + new + ["--x=-1:1:nan"], "integer >= 2"),
        (ps, SMALL + s + new + ["--x=-1:1"], "min:max:num"),
        (ps, SMALL + s + new + ["--x=a:b:3"], "min:max:num"),
        (ps, SMALL + s + new + ["--x=-1:1:40000", "--y=-1:1:40000"], "fewer points"),
        (ps, SMALL + s + new + ["--x=-1:1:1000000000"], "fewer points"),
        # numbers that must be >= 0 or finite
        (ps, SMALL + s + new + ["--x=-1:1:3", "--seed=-1"], "--seed must be >= 0"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--idx=-2"], "--idx must be >= 0"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--threads=-1"], "--threads must be >= 0"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--save_every", "nan"], "--save_every"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--save_every", "0"], "--save_every"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--batch_size", "0"], "--batch_size"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--ngpu", "2"], "--ngpu needs --cuda"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--ngpu", "0"], "--ngpu must be >= 1"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--vmin", "nan"], "finite"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--vlevel", "0"], "--vlevel"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--points_per_pass", "0"], "--points_per_pass"),
        # directions
        (ps, SMALL + s + new + ["--x=-1:1:3", "--xignore", "bias"], "unknown --xignore"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--y=-1:1:3", "--yignore", "bn"], "unknown --yignore"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--xnorm", "filters"], "unknown --xnorm"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--dir_type", "weight"], "unknown --dir_type"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--dir_file", w["missing_entry"]], "not entry '3'"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--y=-1:1:3", "--dir_file", w["dirf"]], "only an x direction"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--dir_file", w["a_file"]], "HDF5"),
        # checkpoints
        (ps, SMALL + s + new + ["--x=-1:1:3", "--model_file2", a], "same file"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--model_file2", w["a_copy"], "--dir_file",
                                os.path.join(d, "new_dirs.h5")], "direction between them is zero"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--model_file2", os.path.join(d, "absent.t7"), "--dir_file",
                                os.path.join(d, "new_dirs.h5")], "not found"),
        (ps, SMALL + new + ["--x=-1:1:3", "--model_file2", w["b"]], "need --model_file"),
        (ps, SMALL + s + new + ["--x=-1:1:3", "--model_file3", w["b"]], "give --y too"),
        (ps, SMALL + new + ["--model_file", os.path.join(d, "absent.t7"), "--x=-1:1:3"], "not found"),
        (ps, ["--model", "resnet20", "--dataset", "digits", "--max_samples", "60"] + s + new + ["--x=-1:1:3"],
         "does not fit"),
        (ps, ["--model", "vgg9", "--dataset", "digits", "--max_samples", "60", "--x=-1:1:3"] + new, "--dataset"),
        # output files
        (ps, SMALL + s + ["--x=-1:1:3", "--surf_file", d], "is a folder"),
        (ps, SMALL + s + ["--x=-1:1:3", "--surf_file", os.path.join(w["a_file"], "s.h5")], "is a file"),
        (ps, SMALL + s + ["--x=-1:1:3", "--dir_file", w["dirf"], "--surf_file", w["dirf"], "--overwrite"],
         "would destroy the directions"),
        (ps, SMALL + s + ["--x=-1:1:3", "--dir_file", os.path.join(w["a_file"], "d.h5"), "--surf_file",
                          os.path.join(d, "new.h5")], "is a file"),
        (ps, SMALL + s + ["--x=-1:1:3", "--surf_file", w["surf"], "--dir_file", w["dirf"], "--loss_name", "mse"],
         "different settings"),
        (ps, SMALL + s + ["--x=-1:1:5", "--surf_file", w["surf"], "--dir_file", w["dirf"]], "different settings"),
        (ps, SMALL + s + ["--x=-1:1:3", "--surf_file", w["bad_settings"], "--dir_file", w["dirf"]],
         "not valid JSON"),
        (ps, SMALL + s + ["--x=-1:1:3", "--surf_file", w["no_done"], "--dir_file", w["dirf"]], "no 'done'"),
        # the Hessian script shares the flags and the set-up
        (he, SMALL + s + new + ["--x=nan:1:3"], "finite"),
        (he, SMALL + s + new + ["--x=-1:1:3", "--xignore", "x"], "unknown --xignore"),
        (he, SMALL + s + ["--x=-1:1:3", "--surf_file", d], "is a folder"),
    ]


# The table's size and order, known before the files exist (the paths are only joined).
_CASE_IDS = [f"{i}-{needle}" for i, (_, _, needle) in enumerate(cases({k: k for k in (
    "d", "a", "b", "a_copy", "surf", "dirf", "bad_settings", "no_done", "missing_entry", "a_file")}))]


def test_the_table_has_the_cases():
    assert len(_CASE_IDS) >= 45


@pytest.mark.parametrize("i", range(len(_CASE_IDS)), ids=_CASE_IDS)
def test_bad_grid_input_is_one_line_error_and_writes_nothing(world, capsys, i):
    main, argv, needle = cases(world)[i]
    before = snapshot(world["d"])
    code, err = run_main_error(main, argv, capsys)
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("note:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert snapshot(world["d"]) == before  # nothing changed or created


def test_help_shows_every_default_and_how_to_turn_biasbn_off(capsys):
    with pytest.raises(SystemExit):
        plot_surface.main(["--help"])
    out = capsys.readouterr().out
    assert "--xignore '' moves them too" in out
    assert "(default: biasbn)" in out and "(default: 128)" in out and "(default: -1:1:51)" in out


@pytest.mark.slow
def test_help_is_fast_and_does_not_import_torch():
    import subprocess
    import sys
    from conftest import REPO
    code = "import sys, flags; flags.build_parser(); print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False"


def test_random_init_is_said_on_stderr_and_in_the_settings(tmp_path, capsys):
    surf = str(tmp_path / "init.h5")
    errors.run_main(plot_surface.main, SMALL + ["--x=-1:1:2", "--surf_file", surf,
                                                "--dir_file", str(tmp_path / "init_dir.h5")])
    assert "randomly initialised" in capsys.readouterr().err
    from surface import read_surface
    st = read_surface(surf).settings
    assert st["random_init"] is True and st["model_hash"].startswith("init")
    assert json.dumps(st)  # plain JSON


def test_a_file_without_results_never_blocks_the_corrected_run(world, tmp_path):
    """A surface file of ours with no computed point (a run that failed at its first point)
    is replaced by the corrected run; one with results is refused (table above)."""
    from surface import SurfaceWriter, read_surface
    surf = str(tmp_path / "failed_run.h5")
    SurfaceWriter(surf, np.linspace(-1, 1, 3), None, ["train_loss"], {"loss_name": "other"}).save()
    code = errors.run_main(plot_surface.main, SMALL + ["--model_file", world["a"], "--x=-1:1:3",
                                                      "--surf_file", surf, "--dir_file", world["dirf"]])
    assert code is None and read_surface(surf).complete


@pytest.fixture
def full_disk(small_disk):
    """A 256 KiB tmpfs (conftest.small_disk)."""
    return small_disk("256k")


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_old_file(world, full_disk, capsys):
    surf = os.path.join(full_disk, "s.h5")
    assert errors.run_main(plot_surface.main, SMALL + ["--model_file", world["a"], "--x=-1:1:3",
                                                      "--surf_file", surf, "--dir_file", world["dirf"]]) is None
    before = open(surf, "rb").read()
    fill_disk(full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        errors.run_main(plot_surface.main, SMALL + ["--model_file", world["a"], "--x=-1:1:3", "--surf_file", surf,
                                                   "--dir_file", world["dirf"], "--loss_name", "mse", "--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert [l for l in err.splitlines() if l.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert "cannot write" in err and "space" in err
    assert open(surf, "rb").read() == before
    assert sorted(os.listdir(full_disk)) == ["filler", "s.h5"]  # no temporary file left behind
