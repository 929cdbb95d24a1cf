"""Seconds of ``python SCRIPT --help`` for every command, in a fresh interpreter each time:
the flags are parsed (and --help printed) before torch is imported.

    python bench/bench_help.py [--repeat 3] [--other /path/to/another/checkout]

Prints the minimum over ``--repeat`` runs per command; with ``--other``, the same
command in another checkout is timed alternately with this one (same load for both).
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["plot_surface", "plot_hessian_eigen", "hessian_spectrum", "layer_curvature", "hessian_directions",
            "sharpness", "mode_connectivity", "projection", "plot_trajectory", "plot_1D", "plot_2D", "h52vtp",
            "demo"]


def seconds(tree: str, script: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, f"{script}.py", "--help"], cwd=tree, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--other", default="", help="another checkout to time alternately (e.g. before a change)")
    a = ap.parse_args()
    trees = [REPO] + ([a.other] if a.other else [])
    for script in COMMANDS:
        best = dict.fromkeys(trees, float("inf"))
        for _ in range(a.repeat):
            for t in trees:  # alternately: both under the same load
                best[t] = min(best[t], seconds(t, script))
        print(f"{script:20s} " + "  ".join(f"{best[t]:.2f} s" for t in trees), flush=True)


if __name__ == "__main__":
    main()
