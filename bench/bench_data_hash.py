"""How much the data content hash costs: hashing CIFAR-10-sized evaluation data
(50,000 train + 10,000 test float32 images of 3x32x32, int64 labels) against loading
them, in one run (ratios within the run).

    python bench/bench_data_hash.py [--repeat 5]

The surface settings identify the data by ``dataloader.data_settings`` (a SHA-256 of the
tensors and labels); this must stay small next to the set-up it is part of.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import dataloader  # noqa: E402
from conftest import write_cifar_batches  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_cifar_batches(root, n_train=50000, n_test=10000)
        ns = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(
            ["--dataset", "cifar10", "--datapath", root])
        load, hashing = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            data = dataloader.load_data(ns)
            load.append(time.perf_counter() - t)
            t = time.perf_counter()
            settings = dataloader.data_settings(ns, data)
            hashing.append(time.perf_counter() - t)
    mb = sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.test_x,
                                                     data.test_y)) / 1e6
    lo, hh = statistics.median(load), statistics.median(hashing)
    print(f"CIFAR-10 size: {len(data.train_y)} + {len(data.test_y)} images, {mb:.0f} MB as tensors")
    print(f"load_data     median {lo:.3f} s  (min {min(load):.3f})")
    print(f"data_settings median {hh:.3f} s  (min {min(hashing):.3f}), {mb / hh:.0f} MB/s, "
          f"{hh / lo:.2f}x of loading; hash {settings['data_hash']}")


if __name__ == "__main__":
    main()
