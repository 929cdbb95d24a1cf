"""Every bad input to the plotting scripts (plot_1D.py, plot_2D.py and its trajectory
figure, h52vtp.py) is one line: exit status 2, exactly one ``error:`` line on stderr,
no traceback, and nothing damaged -- every file in the folder (the surface files and
the figures and .vtp of an earlier run) is byte-identical afterwards, and no file or
folder is added.

One table over the classes of bad input: non-finite flag values, flag values out of
range, output folders that are files or cannot be created, missing / empty / text /
truncated / malformed surface files, the wrong kind of surface, a surface with nothing
computed, and writes that fail (the file size limit, RLIMIT_FSIZE, stands in for a full
disk: the write fails with EFBIG exactly where a full disk fails with ENOSPC). The
cases run the scripts' main(argv) in this process through errors.run_main; a few run
them as real subprocesses."""
import json
import os
import shutil

import h5py
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import h52vtp  # noqa: E402
import plot_1D  # noqa: E402
import plot_2D  # noqa: E402
from conftest import assert_one_line_error, run_script  # noqa: E402
from conftest import SURFACE_SETTINGS as SETTINGS  # noqa: E402
from conftest import grid_points as grid  # noqa: E402
from conftest import assert_one_error_line, run_main_error, snapshot, write_ours  # noqa: E402

SCRIPTS = {"plot_1D": plot_1D, "plot_2D": plot_2D, "h52vtp": h52vtp}
pytestmark = pytest.mark.usefixtures("quick_dpi")


def _copy_and_edit(folder, source, name, edit):
    path = os.path.join(folder, name)
    shutil.copyfile(os.path.join(folder, source), path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(f, name, value):
    del f[name]
    f[name] = value


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good and broken surface files, and the outputs of an earlier run."""
    d = str(tmp_path_factory.mktemp("bad_inputs"))
    xs, ys, X, Y = grid(7, 5)
    write_ours(os.path.join(d, "s2.h5"), xs, ys,
               {"train_loss": 0.1 + X ** 2 + Y ** 2, "train_acc": 90 - X ** 2})
    x = np.linspace(-1, 1, 9)
    write_ours(os.path.join(d, "s1.h5"), x, None, {"train_loss": 0.1 + x ** 2, "train_acc": 90 - x ** 2})
    write_ours(os.path.join(d, "todo.h5"), xs, ys, {"train_loss": X}, done=np.zeros((7, 5), bool))
    with open(os.path.join(d, "empty.h5"), "wb"):
        pass
    with open(os.path.join(d, "text.h5"), "w") as f:
        f.write("train_loss = 1.0\n")
    raw = open(os.path.join(d, "s2.h5"), "rb").read()
    with open(os.path.join(d, "truncated.h5"), "wb") as f:
        f.write(raw[:len(raw) // 2])
    _copy_and_edit(d, "s2.h5", "bad_json.h5", lambda f: f.attrs.__setitem__("settings", "{model: "))
    _copy_and_edit(d, "s2.h5", "list_json.h5", lambda f: f.attrs.__setitem__("settings", "[1, 2]"))
    _copy_and_edit(d, "s2.h5", "no_done.h5", lambda f: f.__delitem__("done"))
    _copy_and_edit(d, "s2.h5", "done_shape.h5", lambda f: _replace(f, "done", np.ones(35, np.uint8)))
    _copy_and_edit(d, "s2.h5", "metric_shape.h5", lambda f: _replace(f, "train_loss", np.ones((5, 7))))
    _copy_and_edit(d, "s2.h5", "no_x.h5", lambda f: f.__delitem__("xcoordinates"))
    _copy_and_edit(d, "s2.h5", "text_x.h5", lambda f: _replace(f, "xcoordinates", "abc"))
    _copy_and_edit(d, "s2.h5", "nan_x.h5", lambda f: _replace(f, "xcoordinates", np.full(7, np.nan)))
    _copy_and_edit(d, "s2.h5", "text_version.h5", lambda f: f.attrs.__setitem__("format_version", "two"))
    with h5py.File(os.path.join(d, "proj_ragged.h5"), "w") as f:
        f["proj_xcoord"], f["proj_ycoord"] = np.zeros(4), np.zeros(3)
    with h5py.File(os.path.join(d, "proj.h5"), "w") as f:
        f["proj_xcoord"], f["proj_ycoord"] = np.linspace(-1, 0, 5), np.linspace(-1, 0, 5) ** 2
    with h5py.File(os.path.join(d, "proj_nan.h5"), "w") as f:
        f["proj_xcoord"], f["proj_ycoord"] = np.array([0, np.nan]), np.zeros(2)
    with open(os.path.join(d, "a_file"), "w") as f:
        f.write("not a folder\n")
    # an earlier run's outputs (under the names a run writes), which a failed run must
    # leave as they are
    earlier = [f"s2.h5_train_loss_{k}.png" for k in ("2dcontour", "2dcontourf", "2dheat", "3dsurface")]
    earlier += ["s2.h5_train_loss_interactive.html", "s2.h5_train_loss_zmax_1.vtp"]
    earlier += [f"s1.h5_1d_{k}.png" for k in ("loss_acc", "loss", "err")] + ["proj.h5_trajectory.png"]
    for name in earlier:
        with open(os.path.join(d, name), "wb") as f:
            f.write(f"earlier output {name}\n".encode())
    assert json.loads(h5py.File(os.path.join(d, "s2.h5"), "r").attrs["settings"]) == SETTINGS
    return d


# (script, argv with {d} for the folder, words the message must hold)
CASES = [
    # non-finite values
    ("plot_2D", "--surf_file {d}/s2.h5 --vmin nan", "finite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vmax inf", "finite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vlevel nan", "finite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --zlim=-inf", "finite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --zmax nan", "finite"),
    ("plot_1D", "--surf_file {d}/s1.h5 --xmin nan", "finite"),
    ("plot_1D", "--surf_file {d}/s1.h5 --xmax inf", "finite"),
    ("plot_1D", "--surf_file {d}/s1.h5 --loss_max nan", "finite"),
    ("h52vtp", "--surf_file {d}/s2.h5 --zmax nan", "finite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vmin abc", "expected a number"),
    # values out of range
    ("plot_2D", "--surf_file {d}/s2.h5 --vlevel 0", "--vlevel must be positive"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vlevel -0.5", "--vlevel must be positive"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vmin 5 --vmax 1", "must be below --vmax"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vmin 1 --vmax 1", "must be below --vmax"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vlevel 1e-9", "contour levels"),
    ("plot_2D", "--surf_file {d}/s2.h5 --log --vmin -1", "above 0"),
    ("plot_2D", "--surf_file {d}/s2.h5 --vmin 0.5 --zlim 0.2", "--zlim"),
    ("plot_1D", "--surf_file {d}/s1.h5 --xmin 1 --xmax -1", "must be below --xmax"),
    ("plot_1D", "--surf_file {d}/s1.h5 --log --loss_max 0.01", "--loss_max"),
    ("h52vtp", "--surf_file {d}/s2.h5 --interp 100000", "at most --interp 2000"),
    ("h52vtp", "--surf_file {d}/s2.h5 --interp 1", "at least 2"),
    ("h52vtp", "--surf_file {d}/s2.h5 --interp 1e9", "invalid int value"),
    # output folders
    ("plot_2D", "--surf_file {d}/s2.h5 --out_dir {d}/a_file", "is a file"),
    ("plot_2D", "--surf_file {d}/s2.h5 --out_dir {d}/a_file/figs", "cannot create"),
    ("plot_1D", "--surf_file {d}/s1.h5 --out_dir {d}/a_file", "is a file"),
    ("h52vtp", "--surf_file {d}/s2.h5 --out_dir {d}/a_file/vtp", "cannot create"),
    ("plot_2D", "--proj_file {d}/proj_ragged.h5 --out_dir {d}/a_file", "proj_xcoord has 4"),
    # surface files that are missing, not HDF5, damaged or malformed
    ("plot_2D", "--surf_file {d}/missing.h5", "not found"),
    ("plot_2D", "--surf_file {d}/empty.h5", "cannot read"),
    ("plot_1D", "--surf_file {d}/text.h5", "cannot read"),
    ("h52vtp", "--surf_file {d}/truncated.h5", "cannot read"),
    ("plot_2D", "--surf_file {d}/bad_json.h5", "not valid JSON"),
    ("plot_1D", "--surf_file {d}/list_json.h5", "not a JSON object"),
    ("plot_2D", "--surf_file {d}/no_done.h5", "no 'done' mask"),
    ("h52vtp", "--surf_file {d}/done_shape.h5", "'done' has shape (35,)"),
    ("plot_2D", "--surf_file {d}/metric_shape.h5", "'train_loss' has shape (5, 7)"),
    ("plot_2D", "--surf_file {d}/no_x.h5", "no 'xcoordinates'"),
    ("plot_1D", "--surf_file {d}/text_x.h5", "not a list of numbers"),
    ("h52vtp", "--surf_file {d}/nan_x.h5", "NaN or infinite coordinates"),
    ("plot_2D", "--surf_file {d}/text_version.h5", "surface file"),     # anything else
    # the wrong surface, or the wrong quantity
    ("plot_2D", "--surf_file {d}/s2.h5 --surf_name tset_loss", "available: train_acc, train_loss"),
    ("h52vtp", "--surf_file {d}/s2.h5 --surf_name max_eig", "unknown --surf_name"),
    ("plot_2D", "--surf_file {d}/s1.h5", "1D surface"),
    ("h52vtp", "--surf_file {d}/s1.h5", "1D surface"),
    ("plot_1D", "--surf_file {d}/s2.h5", "2D surface"),
    ("plot_2D", "--surf_file {d}/todo.h5", "no computed points"),
    ("plot_1D", "--surf_file {d}/s1.h5 {d}/todo.h5", "2D surface"),
    # trajectories
    ("plot_2D", "--proj_file {d}/missing_proj.h5", "not found"),
    ("plot_2D", "--proj_file {d}/s2.h5", "not a projection file"),
    ("plot_2D", "--proj_file {d}/proj_nan.h5", "NaN or infinite"),
    ("plot_2D", "--surf_file {d}/s2.h5 --proj_file {d}/proj_ragged.h5", "proj_xcoord has 4"),
    ("plot_2D", "--proj_file {d}/proj.h5 --dir_file {d}/missing_dirs.h5", "not found"),
    ("plot_2D", "--surf_file {d}/s2.h5 --proj_file {d}/proj.h5 --dir_file {d}/text.h5", "cannot read"),
    ("plot_2D", "", "nothing to plot"),
]


def run_in_process(capsys, script, argv):
    return run_main_error(SCRIPTS[script].main, argv, capsys)


def check_one_line(code, err, expected):
    assert code == 2, (code, err)
    assert expected in assert_one_error_line(err, only=True)


@pytest.mark.parametrize("script,argv,expected", CASES,
                         ids=[f"{s}:{a.replace('{d}/', '')}" for s, a, _ in CASES])
def test_bad_input_is_one_line_and_damages_nothing(folder, capsys, script, argv, expected):
    before = snapshot(folder)
    code, err = run_in_process(capsys, script, argv.format(d=folder).split())
    check_one_line(code, err, expected)
    assert snapshot(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("script,argv", [
    ("plot_2D", "--surf_file {d}/s2.h5 --format png"),
    ("plot_2D", "--proj_file {d}/proj.h5 --format png"),
    ("plot_1D", "--surf_file {d}/s1.h5 --format png"),
    ("h52vtp", "--surf_file {d}/s2.h5 --zmax 1 --ascii"),
])
def test_failed_write_keeps_earlier_outputs(folder, capsys, file_size_limit, script, argv):
    """The disk fills up while a figure, page or .vtp is written over an earlier one:
    one line, and the earlier file is still there, whole (writes are atomic)."""
    before = snapshot(folder)
    code, err = run_in_process(capsys, script, argv.format(d=folder).split())
    check_one_line(code, err, "cannot write")
    assert "File too large" in err
    assert snapshot(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("script,argv,expected", [
    ("plot_2D", "--surf_file {d}/s2.h5 --vmax nan", "finite"),
    ("plot_1D", "--surf_file {d}/truncated.h5", "cannot read"),
    ("h52vtp", "--surf_file {d}/s2.h5 --interp 99999", "at most --interp 2000"),
])
def test_bad_input_as_a_user_runs_it(folder, script, argv, expected):
    before = snapshot(folder)
    p = run_script([f"{script}.py"] + argv.format(d=folder).split())
    assert p.returncode == 2
    assert expected in assert_one_line_error(p)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert snapshot(folder) == before


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs filled up (needs root, as in CI); skipped where it cannot be mounted."""
    import subprocess
    d = tmp_path / "full"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(folder):
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
    for chunk in (4096, 1):                                # take every remaining byte
        try:
            while os.write(fd, b"\0" * chunk):
                pass
        except OSError:
            pass
    os.close(fd)


@pytest.mark.slow
def test_full_disk_keeps_earlier_outputs(folder, full_disk, capsys):
    """A real full disk (ENOSPC) under --out_dir: one line, earlier outputs whole."""
    for name in ("s2.h5_train_loss_2dcontour.png", "s2.h5_train_loss_zmax_1.vtp"):
        with open(os.path.join(full_disk, name), "w") as f:
            f.write(f"earlier output {name}\n")
    fill(full_disk)
    before = snapshot(full_disk)
    for script, argv in (("plot_2D", f"--surf_file {folder}/s2.h5 --format png"),
                         ("h52vtp", f"--surf_file {folder}/s2.h5 --zmax 1")):
        code, err = run_in_process(capsys, script, argv.split() + ["--out_dir", full_disk])
        check_one_line(code, err, "No space left on device")
        assert snapshot(full_disk) == before
