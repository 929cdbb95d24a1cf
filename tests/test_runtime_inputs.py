"""The shared runtime's edges, once for every computing script (issue 15, section 6):

- no output may be an input (a checkpoint, a direction file), with or without --overwrite;
- --overwrite replaces only files of this toolkit, never a text or a checkpoint put there;
- a damaged file of ours (settings that do not parse, a ``done`` mask of the wrong shape,
  a finished item without its value, a direction file without its eigenvectors or
  eigenvalues) is one line that says to pass --overwrite, and --overwrite replaces it;
- every input is checked before the first write: a NaN checkpoint is refused before any
  file exists, so the repaired checkpoint at the same path is never blocked;
- a run holds its output exclusively: a second run on the same output is refused.

Each case runs the script's real entry (errors.run_main) in-process and asserts exit 2,
exactly one ``error:`` line naming the problem, no traceback, every file of the folder
byte-identical and nothing new created.
"""
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import errors
import model_loader
from conftest import snapshot_files

MLP = ["--model", "digits_mlp", "--max_samples", "20", "--threads", "1", "--no_progress"]


def _ckpt(path, seed=0, nan=False):
    torch.manual_seed(seed)
    sd = model_loader.build_model("digits_mlp").state_dict()
    if nan:
        next(v for v in sd.values() if v.is_floating_point())[0] = float("nan")
    torch.save({"state_dict": sd}, path)
    return str(path)


def _main(script):
    import importlib
    return importlib.import_module(script).main


def _copy_and_edit(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return str(dst)


def _set(f, name, value):
    del f[name]
    f[name] = value


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoints (good, another, NaN), finished outputs of every kind and damaged copies."""
    d = tmp_path_factory.mktemp("runtime_inputs")
    good, other, nan = _ckpt(d / "mlp.t7"), _ckpt(d / "other.t7", 1), _ckpt(d / "nan.t7", nan=True)
    m = MLP + ["--model_file", good]
    errors.run_main(_main("plot_surface"), m + ["--x=0:1:2", "--dir_file", str(d / "dirs.h5"),
                                                  "--surf_file", str(d / "surf.h5")])
    errors.run_main(_main("hessian_spectrum"), m + ["--n_v", "2", "--lanczos_steps", "3",
                                                    "--spectrum_file", str(d / "spec.h5")])
    errors.run_main(_main("layer_curvature"), m + ["--trace_samples", "2", "--exact_trace_max", "0",
                                                   "--curvature_file", str(d / "layers.h5")])
    errors.run_main(_main("hessian_directions"), m + ["--k", "2", "--dir_file", str(d / "hdirs.h5")])
    (d / "notes.txt").write_text("my notes, not HDF5\n")
    w = {k: str(d / v) for k, v in dict(surf="surf.h5", dirs="dirs.h5", spec="spec.h5", layers="layers.h5",
                                         hdirs="hdirs.h5", notes="notes.txt").items()}
    w.update(d=str(d), good=good, other=other, nan=nan)
    w["spec_json"] = _copy_and_edit(w["spec"], d / "spec_json.h5", lambda f: f.attrs.__setitem__("settings", "{x"))
    w["layers_done"] = _copy_and_edit(w["layers"], d / "layers_done.h5", lambda f: _set(f, "done", np.ones(7, "u1")))
    w["layers_field"] = _copy_and_edit(w["layers"], d / "layers_field.h5", lambda f: f.__delitem__("trace"))
    w["surf_done"] = _copy_and_edit(w["surf"], d / "surf_done.h5", lambda f: _set(f, "done", np.ones(5, "u1")))
    w["hdirs_eig"] = _copy_and_edit(w["hdirs"], d / "hdirs_eig.h5", lambda f: f.attrs.__delitem__("eigenvalues"))
    w["hdirs_x"] = _copy_and_edit(w["hdirs"], d / "hdirs_x.h5", lambda f: f.__delitem__("xdirection"))
    w["hdirs_y"] = _copy_and_edit(w["hdirs"], d / "hdirs_y.h5", lambda f: f.__delitem__("ydirection"))
    return w


def _surface(w, *extra):
    return ["plot_surface", MLP + ["--model_file", w["good"], "--x=0:1:2", "--dir_file", w["dirs"], *extra]]


def _spectrum(w, *extra, model="good"):
    return ["hessian_spectrum", MLP + ["--model_file", w[model], "--n_v", "2", "--lanczos_steps", "3", *extra]]


def _layers(w, *extra, model="good"):
    return ["layer_curvature", MLP + ["--model_file", w[model], "--trace_samples", "2", "--exact_trace_max", "0",
                                      *extra]]


def _point(w, *extra, model="good"):
    return ["plot_hessian_eigen", MLP + ["--model_file", w[model], "--top_k", "1", *extra]]


def _hdirs(w, *extra, model="good"):
    return ["hessian_directions", MLP + ["--model_file", w[model], "--k", "2", *extra]]


def _new(w, name):
    return os.path.join(w["d"], name)


NOT_OURS = "not a file of this toolkit"
CASES = {
    # no output may be an input, --overwrite or not
    "surface-on-checkpoint": (lambda w: _surface(w, "--surf_file", w["good"], "--overwrite"), "is the --model_file"),
    "surface-on-checkpoint2": (lambda w: _surface(w, "--surf_file", w["other"], "--model_file2", w["other"],
                                                  "--dir_file", _new(w, "d2.h5")), "is the --model_file2"),
    "spectrum-on-checkpoint": (lambda w: _spectrum(w, "--spectrum_file", w["good"], "--overwrite"),
                               "is the --model_file"),
    "layers-on-checkpoint": (lambda w: _layers(w, "--curvature_file", w["good"], "--overwrite"), "is the --model_file"),
    "point-on-checkpoint": (lambda w: _point(w, "--spectrum_file", w["good"], "--overwrite"), "is the --model_file"),
    "point-on-direction-file": (lambda w: _point(w, "--at", "0.5", "--dir_file", w["hdirs"], "--dir_type", "weights",
                                                 "--spectrum_file", w["hdirs"], "--overwrite"), "is the --dir_file"),
    "hdirs-on-checkpoint": (lambda w: _hdirs(w, "--dir_file", w["good"], "--overwrite"), "is the --model_file"),
    "direction-file-on-checkpoint": (lambda w: ["plot_surface", MLP + [
        "--model_file", w["good"], "--x=0:1:2", "--model_file2", w["other"], "--dir_file", w["other"],
        "--surf_file", _new(w, "s.h5")]], "HDF5"),
    # --overwrite replaces only our own files
    "surface-over-text": (lambda w: _surface(w, "--surf_file", w["notes"], "--overwrite"), NOT_OURS),
    "spectrum-over-text": (lambda w: _spectrum(w, "--spectrum_file", w["notes"], "--overwrite"),
                           NOT_OURS),
    "layers-over-text": (lambda w: _layers(w, "--curvature_file", w["notes"], "--overwrite"),
                         NOT_OURS),
    "point-over-text": (lambda w: _point(w, "--spectrum_file", w["notes"], "--overwrite"), NOT_OURS),
    "hdirs-over-text": (lambda w: _hdirs(w, "--dir_file", w["notes"], "--overwrite"), NOT_OURS),
    # our own files, damaged: one line that says --overwrite
    "spectrum-settings-json": (lambda w: _spectrum(w, "--spectrum_file", w["spec_json"]), "not valid JSON"),
    "layers-done-shape": (lambda w: _layers(w, "--curvature_file", w["layers_done"]), "--overwrite"),
    "layers-item-without-value": (lambda w: _layers(w, "--curvature_file", w["layers_field"]), "no 'trace'"),
    "surface-done-shape": (lambda w: _surface(w, "--surf_file", w["surf_done"]), "'done' has shape"),
    "hdirs-without-eigenvalues": (lambda w: _hdirs(w, "--dir_file", w["hdirs_eig"]), "no eigenvalues"),
    "hdirs-without-xdirection": (lambda w: _hdirs(w, "--dir_file", w["hdirs_x"]), "no xdirection"),
    "hdirs-without-ydirection": (lambda w: _hdirs(w, "--dir_file", w["hdirs_y"]), "no ydirection"),
    "spectrum-other-kind": (lambda w: _spectrum(w, "--spectrum_file", w["layers"]), "not a spectrum file"),
    "layers-other-kind": (lambda w: _layers(w, "--curvature_file", w["spec"]), "not a layer curvature file"),
    # every input checked before the first write: a NaN checkpoint writes nothing
    "surface-nan": (lambda w: ["plot_surface", MLP + ["--model_file", w["nan"], "--x=0:1:2", "--surf_file",
                                                      _new(w, "n.h5"), "--dir_file", _new(w, "nd.h5")]], "NaN"),
    "surface-nan-model2": (lambda w: ["plot_surface", MLP + [
        "--model_file", w["good"], "--model_file2", w["nan"], "--x=0:1:2", "--surf_file", _new(w, "n.h5"),
        "--dir_file", _new(w, "nd.h5")]], "NaN"),
    "spectrum-nan": (lambda w: _spectrum(w, "--spectrum_file", _new(w, "n.h5"), model="nan"), "NaN"),
    "layers-nan": (lambda w: _layers(w, "--curvature_file", _new(w, "n.h5"), model="nan"), "NaN"),
    "point-nan": (lambda w: _point(w, "--spectrum_file", _new(w, "n.h5"), model="nan"), "NaN"),
    "hdirs-nan": (lambda w: _hdirs(w, "--dir_file", _new(w, "n.h5"), model="nan"), "NaN"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_runtime_input_is_one_line_and_changes_nothing(name, world, capsys):
    script, argv = CASES[name][0](world)
    needle = CASES[name][1]
    before = snapshot_files(world["d"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        errors.run_main(_main(script), argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("note:")]
    assert e.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert snapshot_files(world["d"]) == before


LOCKED = {
    "plot_surface": lambda w, out: _surface(w, "--surf_file", out)[1],
    "hessian_spectrum": lambda w, out: _spectrum(w, "--spectrum_file", out)[1],
    "layer_curvature": lambda w, out: _layers(w, "--curvature_file", out)[1],
    "plot_hessian_eigen": lambda w, out: _point(w, "--spectrum_file", out)[1],
}


@pytest.mark.parametrize("script", list(LOCKED))
def test_a_second_run_on_the_same_output_is_refused(script, world, tmp_path, capsys):
    """Another run holds the output (its lock): refused in one line, the file untouched;
    once that run ends (the kernel drops its lock), the same command runs."""
    from store import Lock
    out = str(tmp_path / "out.h5")
    lock = Lock(out, "output")
    before = snapshot_files(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        errors.run_main(_main(script), LOCKED[script](world, out))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert "in use by another run" in err
    assert snapshot_files(str(tmp_path)) == before
    lock.release()
    errors.run_main(_main(script), LOCKED[script](world, out))
    assert os.listdir(tmp_path) == ["out.h5"]  # the lock file goes with the run


@pytest.mark.parametrize("kind", ["spec_json", "layers_done", "layers_field", "hdirs_eig", "hdirs_x"])
def test_overwrite_replaces_a_damaged_file_of_ours(kind, world, tmp_path):
    out = str(tmp_path / "damaged.h5")
    shutil.copy(world[kind], out)
    make = {"spec": _spectrum, "layers": _layers, "hdirs": _hdirs}[kind.split("_")[0]]
    flag = {"spec": "--spectrum_file", "layers": "--curvature_file", "hdirs": "--dir_file"}[kind.split("_")[0]]
    script, argv = make(world, flag, out, "--overwrite")
    errors.run_main(_main(script), argv)
    with h5py.File(out, "r") as f:
        assert "settings" in f.attrs


def test_a_repaired_checkpoint_at_the_same_path_runs(world, tmp_path):
    """The NaN checkpoint was refused before any write; repaired in place, it runs."""
    ckpt = _ckpt(tmp_path / "m.t7", nan=True)
    argv = MLP + ["--model_file", ckpt, "--x=0:1:2"]
    with pytest.raises(SystemExit):
        errors.run_main(_main("plot_surface"), argv)
    assert os.listdir(tmp_path) == ["m.t7"]
    _ckpt(ckpt)
    errors.run_main(_main("plot_surface"), argv)
    assert len(os.listdir(tmp_path)) == 3  # checkpoint, direction file, surface file


@pytest.mark.slow
def test_two_runs_on_one_surface_file_at_once(world, tmp_path):
    """A long run holds its surface file; a 21x21 run on the same file at the same time,
    even with --overwrite, is refused in one line (two such runs used to both print done:,
    and the file kept one of them); the first, stopped, says how to resume."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import REPO, assert_one_line_error, run_script
    surf = str(tmp_path / "s.h5")
    cmd = ["plot_surface.py", "--model", "digits_mlp", "--max_samples", "200", "--threads", "1", "--no_progress",
           "--model_file", world["good"], "--dir_file", str(tmp_path / "d.h5"), "--surf_file", surf]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable] + cmd + ["--x=-1:1:301", "--y=-1:1:301", "--save_every", "0.2"],
                             cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(surf) and time.monotonic() < deadline:  # the lock is taken before the file
            time.sleep(0.05)
        assert os.path.exists(tmp_path / ".s.h5.lock")
        second = run_script(cmd + ["--x=-1:1:21", "--y=-1:1:21", "--overwrite"])
        assert first.poll() is None, "the first run ended too soon to test the lock"
        assert "in use by another run" in assert_one_line_error(second) and second.returncode == 2
    finally:
        first.send_signal(signal.SIGTERM)
        err = first.communicate(timeout=60)[1]
    assert first.returncode == 128 + signal.SIGTERM and "rerun the same command to resume" in err, err
    assert sorted(os.listdir(tmp_path)) == ["d.h5", "s.h5"]
