"""The end-to-end demo at reduced size (--quick, 2 MPI ranks where MPI works): every
step's files exist and are what they claim to be, index.html shows them all, and the
flatness table holds the numbers of the surface files (recomputed here from the raw
HDF5 datasets) with a verdict that follows them."""
import glob
import json
import os
import re

import h5py
import numpy as np
import pytest

import demo
from conftest import assert_one_line_error, run_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    p = run_script(["demo.py", "--quick", "--out", out], timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return str(out), p


@pytest.mark.slow
def test_steps_and_progress_are_shown(quick):
    out, p = quick
    for n in range(1, 7):
        assert f"[{n}/6" in p.stdout
    assert "python cifar10/main.py --dataset digits" in p.stdout
    assert "python plot_surface.py --mpi" in p.stdout or "$ python plot_surface.py" in p.stdout
    # plot_surface's progress: a bar on a terminal, lines in a pipe (as here)
    assert re.search(r"surface: (100%|(\d+)/\2 points)", p.stderr), p.stderr[-2000:]
    assert "demo done in" in p.stdout


@pytest.mark.slow
def test_figures_vtp_and_html_exist(quick):
    out, _ = quick
    figs = os.path.join(out, "figures")
    for group in ("interpolation", "random_1d", "random_1d_all", "small_batch", "large_batch"):
        pngs = glob.glob(os.path.join(figs, group, "*.png"))
        assert pngs, group
        for f in pngs:
            with open(f, "rb") as fh:
                assert fh.read(8) == PNG_MAGIC and os.path.getsize(f) > 5000, f
    for key in ("small_batch", "large_batch"):
        kinds = {k for k in ("2dcontour", "2dcontourf", "2dheat", "3dsurface")
                 if glob.glob(os.path.join(figs, key, f"*train_loss_{k}.png"))}
        assert kinds == {"2dcontour", "2dcontourf", "2dheat", "3dsurface"}, key
        (page,) = glob.glob(os.path.join(figs, key, "*interactive.html"))
        text = open(page).read()
        assert "Plotly.newPlot" in text and not re.search(r"<script[^>]+src=['\"]?http", text)
        (vtp,) = glob.glob(os.path.join(figs, key, "*.vtp"))
        vtk = pytest.importorskip("vtk")
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(vtp)
        reader.Update()
        grid = demo.SIZES["quick"]["grid"]
        assert reader.GetOutput().GetNumberOfPoints() == grid * grid
        assert reader.GetOutput().GetNumberOfPolys() == (grid - 1) ** 2


@pytest.mark.slow
def test_index_shows_every_figure(quick):
    out, _ = quick
    index = open(os.path.join(out, "index.html")).read()
    links = set(re.findall(r"(?:src|href)='([^']+)'", index))
    made = {os.path.relpath(f, out) for f in glob.glob(os.path.join(out, "figures", "*", "*"))}
    assert made and made <= links                          # every figure, page and .vtp
    shown = set(re.findall(r"<img src='([^']+)'", index))
    assert {f for f in made if f.endswith(".png")} <= shown          # shown, not only linked
    for link in links:                                     # relative, and they resolve
        assert not link.startswith(("/", "http")) and os.path.isfile(os.path.join(out, link))
    assert "<table>" in index and "small batch" in index and "large batch" in index


def raw_train_loss(path):
    """x and train_loss straight from the HDF5 file (not through surface.py)."""
    with h5py.File(path, "r") as f:
        return f["xcoordinates"][()], f["train_loss"][()]


@pytest.mark.slow
def test_flatness_table_matches_the_surfaces(quick):
    out, p = quick
    table = json.load(open(os.path.join(out, "flatness.json")))
    assert table["radii"] == [0.25, 0.5]
    rows = {r["minimizer"]: r for r in table["rows"]}
    assert list(rows) == ["small_batch", "large_batch"]
    size = demo.SIZES["quick"]
    pattern = f"model_*.t7_weights_xignore=biasbn_xnorm=filter*.h5_[[]-1.0,1.0,{size['line']}[]].h5"
    for key, row in rows.items():
        batch = dict(small_batch=16, large_batch=1024)[key]
        (folder,) = [d for d in glob.glob(os.path.join(out, "models", f"digits_cnn_*_bs={batch}_*"))
                     if os.path.isdir(d)]
        files = sorted(glob.glob(os.path.join(folder, pattern)))
        assert len(files) == size["dirs"] == row["directions"]
        curves = [raw_train_loss(f) for f in files]
        loss0 = np.mean([loss[np.isclose(x, 0)][0] for x, loss in curves])
        assert row["train_loss"] == pytest.approx(loss0, rel=1e-9)
        for r in (0.25, 0.5):
            inc = [(loss[np.isclose(x, r)][0] + loss[np.isclose(x, -r)][0]) / 2 - loss0
                   for x, loss in curves]
            got = row["increase"][str(r)]
            assert got["per_direction"] == pytest.approx(inc, rel=1e-9)
            assert got["mean"] == pytest.approx(np.mean(inc), rel=1e-9)
            assert got["std"] == pytest.approx(np.std(inc, ddof=1), rel=1e-9)
        assert 0 <= row["test_acc"] <= 100 and 0 <= row["train_acc"] <= 100
    md = open(os.path.join(out, "flatness.md")).read()
    table_lines = [l for l in md.splitlines() if l.startswith("| ") and "---" not in l]
    assert [l.split(" | ")[0] for l in table_lines] == \
        ["| minimizer", "| small batch (bs=16)", "| large batch (bs=1024)"]
    assert f"{rows['small_batch']['increase']['0.5']['mean']:.4f}" in md
    # the claim is made exactly when the numbers show it
    s, l = rows["small_batch"]["increase"], rows["large_batch"]["increase"]
    shows = all(s[k]["mean"] + s[k]["std"] < l[k]["mean"] - l[k]["std"] for k in ("0.25", "0.5"))
    assert table["small_batch_flatter"] == shows
    assert ("small-batch minimizer is flatter" in (md + p.stdout).lower()) == shows


def test_verdict_follows_the_numbers():
    def row(m25, s25, m50, s50):
        return {"increase": {"0.25": {"mean": m25, "std": s25}, "0.5": {"mean": m50, "std": s50}}}
    assert demo.flatness_verdict(row(0.01, 0.001, 0.1, 0.01), row(0.1, 0.01, 1, 0.1)).startswith(
        "The small-batch minimizer is flatter")
    overlap = demo.flatness_verdict(row(0.01, 0.05, 0.1, 0.5), row(0.02, 0.05, 0.2, 0.5))
    reverse = demo.flatness_verdict(row(0.1, 0.01, 1, 0.1), row(0.01, 0.001, 0.1, 0.01))
    mixed = demo.flatness_verdict(row(0.01, 0.001, 1, 0.1), row(0.1, 0.01, 0.1, 0.01))
    for text in (overlap, reverse, mixed):
        assert "is flatter" not in text.replace("neither minimizer is flatter", "")
    assert "not reproduced" in reverse and mixed.startswith("Mixed")


def test_existing_checkpoint_is_reused(tmp_path, capsys):
    _, checkpoint = demo.training(str(tmp_path), 16, 0.05, 3)   # where main.py saves it
    os.makedirs(os.path.dirname(checkpoint))
    open(checkpoint, "wb").close()
    d = demo.Demo(str(tmp_path), [])
    assert d.train("small_batch", 16, 0.05, 3) == checkpoint
    assert "reusing" in capsys.readouterr().out
    assert os.listdir(os.path.dirname(checkpoint)) == ["model_3.t7"]   # nothing was trained


@pytest.mark.slow
def test_bad_input_is_one_line_error(tmp_path):
    assert "--np" in assert_one_line_error(run_script(["demo.py", "--np", "0", "--out", tmp_path]))
    (tmp_path / "index.html").write_text("<html>my own page</html>")   # never overwritten
    msg = assert_one_line_error(run_script(["demo.py", "--out", tmp_path]))
    assert "index.html" in msg
    assert (tmp_path / "index.html").read_text() == "<html>my own page</html>"


@pytest.mark.slow
def test_single_process_without_mpiexec(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))                # no launcher to be found
    assert demo.launcher(2) == [] and demo.launcher(1) == []
    assert "runs as one process (no mpiexec or mpirun on the PATH)" in capsys.readouterr().out
