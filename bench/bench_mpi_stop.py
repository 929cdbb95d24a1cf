"""How fast an MPI job ends when something goes wrong, and the scheduler's cost per point.

    python bench/bench_mpi_stop.py            # needs mpiexec; about a minute

Under ``mpiexec -n 2``, with the small run_grid job of tests/test_mpi_failures.py (a real
SurfaceWriter, a compute that sleeps), it reports the seconds from the event to the end
of the whole job:

- SIGTERM to rank 1 only, mid-grid;
- SIGTERM to rank 0 only while rank 1 is inside a 60 s point;
- a UserError on rank 1 only, while rank 0 waits in a collective call;
- the surface file cannot be saved any more on rank 0 (its next temporary file blocked).

And the scheduler's own cost per grid point (compute does nothing): seconds per point
with ``chunk=1`` and ``chunk=16`` on 2 ranks, as a ratio within this run.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from test_mpi_failures import GRID  # noqa: E402

from surface import read_surface  # noqa: E402


def start(folder, n, chunk, sleep, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(["mpiexec", "-n", "2", sys.executable, os.path.join(folder, "grid.py"),
                             "g.h5", str(n), str(chunk), str(sleep)], cwd=folder, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_points(folder, k):
    while True:
        try:
            if read_surface(os.path.join(folder, "g.h5")).n_done >= k:
                return
        except Exception:
            pass
        time.sleep(0.02)


def pid(folder, rank):
    return int(open(os.path.join(folder, f"pid.{rank}")).read())


def case(name, event, n=2000, sleep=0.02, **env):
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "grid.py"), "w").write(GRID.format(repo=REPO))
        p = start(d, n, 1, sleep, **env)
        t0 = event(d)
        try:
            p.communicate(timeout=120)
            dt = f"{time.time() - t0:6.2f} s"
        except subprocess.TimeoutExpired:
            p.kill()
            dt = "  > 120 s (hung)"
        print(f"{name:58s} {dt}   exit {p.returncode}", flush=True)


def sigterm(rank):
    def ev(d):
        wait_points(d, 5)
        os.kill(pid(d, rank), signal.SIGTERM)
        return time.time()
    return ev


def rank1_fails(d):
    while not os.path.exists(os.path.join(d, "pid.1")):
        time.sleep(0.01)
    return time.time()  # it raises right after writing its pid


def block_save(d):
    wait_points(d, 5)
    os.mkdir(os.path.join(d, f".g.h5.{pid(d, 0)}.tmp"))
    return time.time()


def overhead(chunk, n=3000):
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "grid.py"), "w").write(GRID.format(repo=REPO))
        p = start(d, n, chunk, 0.0)
        out, err = p.communicate(timeout=300)
        t = float(re.search(r"grid done in ([\d.]+) s", out).group(1))
        return t / n


if __name__ == "__main__":
    case("SIGTERM to rank 1 only", sigterm(1))
    case("SIGTERM to rank 0 only, rank 1 inside a 60 s point", sigterm(0), LONG_ON_RANK1="1")
    case("UserError on rank 1 only (rank 0 in a collective)", rank1_fails, FAIL_ON_RANK1="1")
    case("surface file cannot be saved on rank 0", block_save)
    a, b = overhead(1), overhead(16)
    print(f"scheduler cost per point, 2 ranks: chunk=1 {a * 1e3:.3f} ms, chunk=16 {b * 1e3:.3f} ms "
          f"(ratio {a / b:.1f})")
