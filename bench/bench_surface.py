"""Benchmark: plot_surface.py against the compute floor, on the CPU.

ResNet-56 (the released checkpoint) on 2,000 CIFAR-format images, 1D grid, fp32.
The floor is one bare forward pass at batch 128 over the same preloaded tensors, in
this process, with the same thread count; plot_surface.py runs as a user runs it (a
subprocess, 1 rank x 2 threads, then 2 ranks x 1 thread). Everything is measured in
one run, so the ratios are comparable even on a shared machine.

    python bench/bench_surface.py [--points 8] [--images 2000] [--batch_size 128]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
RELEASED = os.path.join(ROOT, "tests", "compat",
                        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")


def floor_seconds(datapath, n, threads, reps=3):
    import dataloader
    import model_loader
    torch.set_num_threads(threads)
    args = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", "cifar10", "--datapath", datapath, "--max_samples", str(n)])
    x = dataloader.load_data(args).train_x
    net = model_loader.load("resnet56", RELEASED)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(0, len(x), 128):
                net(x[i:i + 128])
            best = min(best, time.perf_counter() - t)
    return best


def run_surface(datapath, n, points, batch_size, out, mpi):
    cmd = [sys.executable, "plot_surface.py", "--model", "resnet56", "--model_file", RELEASED,
           "--dataset", "cifar10", "--datapath", datapath, "--max_samples", str(n),
           f"--x=-1:1:{points}", "--surf_file", out, "--dir_file", out + ".dir.h5",
           "--batch_size", str(batch_size), "--no_progress", "--overwrite"]
    cmd = (["mpiexec", "-n", "2"] + cmd + ["--mpi", "--threads", "1"]) if mpi else cmd + ["--threads", "2"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(p.stderr)
    m = re.search(r"timing: (\d+) points in ([\d.]+) s, ([\d.]+) s per point", p.stderr)
    grid = float(m.group(2))
    return {"per_point": float(m.group(3)), "grid": grid, "startup": wall - grid, "wall": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch_size", type=int, default=128)
    a = ap.parse_args()
    from conftest import write_cifar_batches
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar_batches(tmp, n_train=a.images, n_test=10)
        floor = floor_seconds(tmp, a.images, 2)
        one = run_surface(tmp, a.images, a.points, a.batch_size, os.path.join(tmp, "one.h5"), False)
        two = run_surface(tmp, a.images, a.points, a.batch_size, os.path.join(tmp, "two.h5"), True)
        floor2 = floor_seconds(tmp, a.images, 2)
    floor = min(floor, floor2)
    print(f"| measure | value |\n|---|---|\n"
          f"| floor: bare forward, batch 128, 2 threads (s per pass) | {floor:.3f} |\n"
          f"| plot_surface 1 rank x 2 threads (s per point, batch {a.batch_size}) | {one['per_point']:.3f} |\n"
          f"| ratio to floor | {one['per_point'] / floor:.3f} |\n"
          f"| start-up, 1 rank (s: wall - grid) | {one['startup']:.2f} |\n"
          f"| plot_surface 2 ranks x 1 thread (s per point) | {two['per_point']:.3f} |\n"
          f"| throughput 2 ranks x 1 thread / 1 rank x 2 threads | {one['per_point'] / two['per_point']:.3f} |\n"
          f"| start-up, 2 ranks (s) | {two['startup']:.2f} |")


if __name__ == "__main__":
    main()
