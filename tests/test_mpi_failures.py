"""MPI failures end the job, fast, with the message shown; signals to one rank; failed
saves; threads; progress output; several points per pass.

Real `mpiexec -n 2` jobs of plot_surface.py (and of a small run_grid script written by
the test), real signals to one rank's pid, real HDF5 files."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error

import mpi4pytorch
from surface import read_surface

HAVE_MPIEXEC = shutil.which("mpiexec") is not None
mpi = pytest.mark.skipif(not HAVE_MPIEXEC, reason="mpiexec not installed")

# A --dataset and a --loss_name for plot_surface.py, importable from the test's cwd: the
# data function writes this rank's pid to pid.<rank> and fails on rank 1 when asked; the
# loss sleeps so that a point takes a known time.
JOB = textwrap.dedent("""
    import os, time
    import numpy as np
    import torch.nn.functional as F
    import errors

    RANK = os.environ.get("PMI_RANK", "0")

    def data():
        with open(f"pid.{RANK}", "w") as f:
            f.write(str(os.getpid()))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 1, 8, 8)).astype("float32")
        y = rng.integers(0, 10, size=64)
        return (x, y), (x, y)

    def data_user_error_on_rank1():
        if RANK == "1":
            raise errors.UserError("checkpoint not found: /node2/model.t7")
        return data()

    def data_user_error_everywhere():
        raise errors.UserError("data file not found: /shared/data.npz")

    def data_oserror_on_rank1():
        if RANK == "1":
            raise FileNotFoundError(2, "No such file or directory", "/node2/data.npz")
        return data()

    def slow_loss(out, y):
        time.sleep(float(os.environ.get("POINT_SLEEP", "0.1")))
        return F.cross_entropy(out, y, reduction="none")
""")

# run_grid directly, with a cheap compute and a real SurfaceWriter (no torch).
GRID = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    import numpy as np
    import errors, mpi4pytorch, scheduler
    from surface import SurfaceWriter

    def main(argv):
        out, n, chunk, sleep = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
        comm = mpi4pytorch.setup(True)
        rank = mpi4pytorch.rank(comm)
        with open(f"pid.{{rank}}", "w") as f:
            f.write(str(os.getpid()))
        writer, todo = None, None
        if rank == 0:
            writer = SurfaceWriter(out, np.arange(n, dtype=float), None, ["v", "w"], {{"n": n}})
            writer.save()
            todo = writer.todo()
        todo = mpi4pytorch.bcast(comm, todo)
        if os.environ.get("FAIL_ON_RANK1") == "1" and rank == 1:
            raise errors.UserError("checkpoint not found: /node2/model.t7")
        calls = []
        long_on_1 = os.environ.get("LONG_ON_RANK1") == "1" and rank == 1

        def compute(k):
            calls.append(k)
            time.sleep(60 if long_on_1 and len(calls) == 2 else sleep)
            ks = k if isinstance(k, list) else [k]
            v = {{"v": [x * x + 0.5 for x in ks], "w": [-x for x in ks]}}
            return v if isinstance(k, list) else {{m: a[0] for m, a in v.items()}}

        t0 = time.perf_counter()
        try:
            scheduler.run_grid(comm, todo, compute, writer, save_every=0.05, progress=False,
                               chunk=chunk)
        except scheduler.Interrupted as e:
            sys.exit(128 + e.signum)
        finally:
            with open(f"calls.{{rank}}", "w") as f:
                json.dump(calls, f)
        if rank == 0:
            print(f"grid done in {{time.perf_counter() - t0:.3f}} s", flush=True)

    errors.run_main(main, sys.argv[1:])
""")


def _env(**extra):
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return e


def _surface_cmd(surf, *extra, n=2):
    return (["mpiexec", "-n", str(n)] if n > 1 else []) + [
        sys.executable, os.path.join(REPO, "plot_surface.py"), *(["--mpi"] if n > 1 else []),
        "--model", "digits_cnn", "--dataset", "job:data", "--surf_file", surf,
        "--dir_file", "d.h5", "--threads", "1", *extra]


def _wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _n_done(path):
    return read_surface(path).n_done


def _pid(folder, rank):
    return int((folder / f"pid.{rank}").read_text())


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


@pytest.fixture
def grid_script(tmp_path):
    path = tmp_path / "grid_job.py"
    path.write_text(GRID.format(repo=REPO))
    return str(path)


# ------------------------------------------------------------------ 1. one rank fails
@pytest.mark.slow
@mpi
@pytest.mark.parametrize("fn,needle", [
    ("data_user_error_on_rank1", "error: (rank 1) checkpoint not found: /node2/model.t7"),
    ("data_oserror_on_rank1", "No such file or directory: '/node2/data.npz'"),
    ("data_user_error_everywhere", "error: data file not found: /shared/data.npz"),
])
def test_errors_on_one_or_every_rank_end_the_job_with_the_message(job_dir, fn, needle):
    cmd = _surface_cmd("s.h5", "--x=-1:1:3", "--no_progress")
    cmd[cmd.index("job:data")] = f"job:{fn}"
    t0 = time.time()
    p = subprocess.run(cmd, cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 30, "the job did not end promptly"
    assert p.returncode != 0
    assert needle in p.stderr, p.stderr
    if "oserror" in fn:
        return  # another exception: its traceback, then MPI_Abort
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("error:") == 1, p.stderr
    if "everywhere" in fn:  # every rank failed alike: printed once, exit 2, no abort
        assert_one_line_error(p)
        assert p.returncode == 2 and "Abort" not in p.stderr, p.stderr


# --------------------------------------------- 2. SIGTERM to one rank, then resume
@pytest.mark.slow
@mpi
def test_sigterm_to_rank1_only_saves_resumes_and_equals_uninterrupted(job_dir):
    cmd = _surface_cmd("s.h5", "--x=-1:1:40", "--loss_name", "job:slow_loss", "--save_every", "0.1")
    env = _env(POINT_SLEEP="0.15")
    proc = subprocess.Popen(cmd + ["--no_progress"], cwd=job_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _n_done(job_dir / "s.h5") >= 4, what="4 points saved")
        t0 = time.time()
        os.kill(_pid(job_dir, 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 30
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "rerun the same command to resume" in err, err
    part = read_surface(str(job_dir / "s.h5"))
    assert 4 <= part.n_done < 40
    assert np.isfinite(part.values["train_loss"][part.done]).all()

    # the same command again (progress on, stdout and stderr merged) finishes the file
    p = subprocess.run(cmd, cwd=job_dir, env=_env(POINT_SLEEP="0"), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    assert p.returncode == 0, p.stdout
    assert f"{part.n_done} already done" in p.stdout
    lines = p.stdout.splitlines()
    assert [ln for ln in lines if "done:" in ln] == ["done: s.h5"], repr(p.stdout)  # its own line
    assert "\r" not in p.stdout, repr(p.stdout)    # no terminal bar in a pipe
    left = 40 - part.n_done
    assert any(ln.startswith(f"surface: {left}/{left} points") for ln in lines), p.stdout
    assert any(ln.startswith(f"timing: {left} points") for ln in lines), p.stdout
    assert "UCX" not in p.stdout and "WARN" not in p.stdout, p.stdout

    p = subprocess.run(_surface_cmd("full.h5", "--x=-1:1:40", "--loss_name", "job:slow_loss",
                                    "--no_progress", n=1),
                       cwd=job_dir, env=_env(POINT_SLEEP="0"), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    a, b = read_surface(str(job_dir / "full.h5")), read_surface(str(job_dir / "s.h5"))
    assert b.complete
    np.testing.assert_allclose(a.values["train_loss"], b.values["train_loss"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.values["train_acc"], b.values["train_acc"])

    # an error that every rank raises together (a settings mismatch, checked on rank 0):
    # printed once, exit 2, no abort, the file untouched
    before = (job_dir / "s.h5").read_bytes()
    p = subprocess.run(cmd + ["--loss_name", "mse", "--no_progress"], cwd=job_dir, env=_env(),
                       capture_output=True, text=True, timeout=120)
    line = assert_one_line_error(p)
    assert p.returncode == 2 and "different settings" in line and "(rank" not in line, p.stderr
    assert p.stderr.count("error:") == 1 and "Abort" not in p.stderr, p.stderr
    assert (job_dir / "s.h5").read_bytes() == before


def _start_grid(grid_script, folder, n, chunk, sleep, **env):
    return subprocess.Popen(["mpiexec", "-n", "2", sys.executable, grid_script, "g.h5", str(n),
                             str(chunk), str(sleep)], cwd=folder, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@mpi
def test_sigterm_to_rank0_stops_a_busy_rank1_at_once(grid_script, tmp_path):
    """Rank 1 is inside a 60 s point: rank 0's STOP interrupts it (no drain timeout, no abort)."""
    proc = _start_grid(grid_script, tmp_path, 200, 1, 0.05, LONG_ON_RANK1="1")
    try:
        _wait_for(lambda: _n_done(tmp_path / "g.h5") >= 5, what="5 points saved")
        t0 = time.time()
        os.kill(_pid(tmp_path, 0), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 8, "rank 1 was not interrupted inside its point"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "still busy" not in err and "Abort" not in err, err
    s = read_surface(str(tmp_path / "g.h5"))
    assert 5 <= s.n_done < 200
    np.testing.assert_array_equal(s.values["v"][s.done], s.x[s.done] ** 2 + 0.5)


@pytest.mark.slow
@mpi
def test_two_ranks_signalled_a_moment_apart_exit_like_one(grid_script, tmp_path):
    proc = _start_grid(grid_script, tmp_path, 300, 2, 0.03)
    try:
        _wait_for(lambda: _n_done(tmp_path / "g.h5") >= 6, what="6 points saved")
        os.kill(_pid(tmp_path, 0), signal.SIGTERM)
        time.sleep(0.02)  # a moment apart; the job may stop faster than that (rank 1 then is gone)
        with contextlib.suppress(ProcessLookupError):
            os.kill(_pid(tmp_path, 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    s = read_surface(str(tmp_path / "g.h5"))
    assert 6 <= s.n_done < 300
    np.testing.assert_array_equal(s.values["w"][s.done], -s.x[s.done])


# -------------------------------------------------------------- 6. chunks of points
@pytest.mark.slow
@mpi
def test_chunks_of_three_on_two_ranks_equal_chunks_of_one(grid_script, tmp_path):
    import json
    files = {}
    for chunk in (1, 3):
        d = tmp_path / f"c{chunk}"
        d.mkdir()
        p = _start_grid(grid_script, d, 10, chunk, 0.01)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        files[chunk] = read_surface(str(d / "g.h5"))
        calls = [json.loads((d / f"calls.{r}").read_text()) for r in (0, 1)]
        flat = sorted(k for c in calls for call in c for k in (call if chunk > 1 else [call]))
        assert flat == list(range(10))  # every point once, over both ranks
        for c in calls:
            for call in c:
                if chunk == 1:
                    assert isinstance(call, int)
                else:
                    assert isinstance(call, list) and 1 <= len(call) <= 3
                    assert call == list(range(call[0], call[0] + len(call)))
    a, b = files[1], files[3]
    assert a.complete and b.complete
    for m in ("v", "w"):
        np.testing.assert_array_equal(a.values[m], b.values[m])


# --------------------------------------------------------------- 3. a save fails
@pytest.mark.slow
def test_failed_save_stops_the_run_with_one_line_and_keeps_the_last_file(job_dir):
    """The temporary file of the next save is made impossible (a folder in its place):
    the run must stop at once, not go on computing without saving."""
    out = job_dir / "out"
    out.mkdir()
    surf = out / "s.h5"
    cmd = _surface_cmd(str(surf), "--x=-1:1:200", "--loss_name", "job:slow_loss",
                       "--save_every", "0.1", "--no_progress", n=1)
    proc = subprocess.Popen(cmd, cwd=job_dir, env=_env(POINT_SLEEP="0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _n_done(surf) >= 3, what="3 points saved")
        (out / f".s.h5.{proc.pid}.tmp").mkdir()
        kept = _n_done(surf)
        t0 = time.time()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 15, "the run went on computing without saving"
    p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    line = assert_one_line_error(p)
    assert "s.h5" in line and "stopped" in line, line
    s = read_surface(str(surf))  # the last good save, intact
    assert kept <= s.n_done < 200 and "done:" not in stdout


@pytest.mark.slow
@mpi
def test_failed_save_on_rank0_ends_the_mpi_job(grid_script, tmp_path):
    proc = _start_grid(grid_script, tmp_path, 400, 1, 0.03)
    try:
        _wait_for(lambda: _n_done(tmp_path / "g.h5") >= 4, what="4 points saved")
        (tmp_path / f".g.h5.{_pid(tmp_path, 0)}.tmp").mkdir()
        kept = _n_done(tmp_path / "g.h5")
        t0 = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 10
    assert proc.returncode == 2, err
    assert "error: (rank 0) " in err and "g.h5" in err and "Traceback" not in err, err
    s = read_surface(str(tmp_path / "g.h5"))
    assert kept <= s.n_done < 400 and "grid done" not in out


# ------------------------------------------------------------------- 4. threads
def test_default_threads_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert mpi4pytorch.default_threads(None) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert mpi4pytorch.default_threads(None) == cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert mpi4pytorch.default_threads(None) == cores


def test_check_all_raises_a_shared_error_in_one_process():
    import errors

    def bad():
        raise errors.UserError("nope")
    with pytest.raises(errors.UserError, match="nope"):
        mpi4pytorch.check_all(None, bad)


# ------------------------------------------- run_grid in this process (fast tier)
class _FlakyWriter:
    """A real SurfaceWriter whose saves start failing like a full disk after ``ok`` saves."""

    def __init__(self, path, n, ok):
        from surface import SurfaceWriter
        self.w = SurfaceWriter(path, np.arange(n, dtype=float), None, ["v"], {"n": n})
        self.ok, self.path = ok, path

    def __getattr__(self, name):
        return getattr(self.w, name)

    def save(self):
        if self.ok <= 0:
            raise OSError(28, "No space left on device")
        self.ok -= 1
        self.w.save()


def test_run_grid_chunks_in_one_process_equal_single_points(tmp_path):
    import scheduler
    from surface import SurfaceWriter
    got = {}
    for chunk in (1, 4):
        path = str(tmp_path / f"c{chunk}.h5")
        w = SurfaceWriter(path, np.arange(10, dtype=float), None, ["v"], {"n": 10})
        calls = []

        def compute(k, calls=calls):
            calls.append(k)
            ks = k if isinstance(k, list) else [k]
            return {"v": [x * 3.0 for x in ks]} if isinstance(k, list) else {"v": k * 3.0}
        scheduler.run_grid(None, w.todo(), compute, w, progress=False, chunk=chunk)
        got[chunk] = read_surface(path)
        if chunk == 4:
            assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        else:
            assert calls == list(range(10))
    assert got[4].complete
    np.testing.assert_array_equal(got[1].values["v"], got[4].values["v"])


def test_run_grid_stops_at_once_when_saving_fails(tmp_path):
    import errors
    import scheduler
    path = str(tmp_path / "s.h5")
    w = _FlakyWriter(path, 1000, ok=2)
    w.save()  # the last good file: 0 points
    calls = []

    def compute(k):
        calls.append(k)
        time.sleep(0.01)
        return {"v": float(k)}
    t0 = time.time()
    with pytest.raises(errors.UserError, match="No space left on device.*stopped computing"):
        scheduler.run_grid(None, np.arange(1000), compute, w, save_every=0.0, progress=False)
    assert time.time() - t0 < 5 and len(calls) < 500  # did not go on computing
    s = read_surface(path)  # the last good save, intact and readable
    assert s.n_done <= len(calls)


def test_run_grid_sigterm_in_one_process_saves_and_raises(tmp_path):
    import scheduler
    from surface import SurfaceWriter
    path = str(tmp_path / "s.h5")
    w = SurfaceWriter(path, np.arange(50, dtype=float), None, ["v"], {"n": 50})

    def compute(k):
        if k == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside compute
            time.sleep(5)
        return {"v": float(k)}
    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(scheduler.Interrupted) as e:
        scheduler.run_grid(None, np.arange(50), compute, w, progress=False)
    assert e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is old  # restored in a single process
    s = read_surface(path)
    assert s.n_done == 7 and s.done[:7].all() and not s.done[7:].any()
