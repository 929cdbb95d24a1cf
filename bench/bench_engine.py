"""Benchmark: the evaluation engines against the eager forward-pass floor, on the CPU.

One run gives ratios measured side by side (rounds interleaved, median per engine), so
they hold on a shared machine:

1. ResNet-56 (the released checkpoint) on CIFAR-format images (written with the test
   suite's batch writer, read by the data loader): seconds per grid point for the
   ``eager``, ``fused`` (and with ``--compiled``, ``compiled``) engines, and the ratio to
   the floor -- one bare eager forward pass over the same images at the same batch
   size, no loss, no weight moves.
2. Other zoo models (``--zoo``): eager and fused seconds per point, to show no slowdown.
3. Several points per pass: points per second at K = 1, 4, 16 for digits_cnn and
   digits_mlp on the digits data and ResNet-20 on CIFAR-format images.

    python bench/bench_engine.py                       # everything, 2 threads (~10 min)
    python bench/bench_engine.py --images 500 --rounds 2 --zoo "" --no_points  # quick
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
RELEASED = os.path.join(ROOT, "tests", "compat",
                        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")

import dataloader  # noqa: E402
import model_loader  # noqa: E402
import net_plotter  # noqa: E402
from evaluation import Evaluator, get_loss_fn, keep_freed_memory  # noqa: E402

CPU = torch.device("cpu")


def load_cifar(tmp, n):
    from conftest import write_cifar_batches
    write_cifar_batches(tmp, n_train=n, n_test=10)
    args = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", "cifar10", "--datapath", tmp, "--max_samples", str(n)])
    d = dataloader.load_data(args)
    return d.train_x, d.train_y


def load_digits():
    d = dataloader.load_data(dataloader.add_data_args(argparse.ArgumentParser()).parse_args([]))
    return d.train_x, d.train_y


def floor_fn(net, x, batch):
    def run():
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                net(x[i:i + batch])
    return run


def per_point_fn(ev, move, coords):
    def run():
        for c in coords:
            move.set(c)
            ev()
    return run


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def engines_table(name, ckpt, x, y, batch, points, rounds, engines):
    """{engine: median s per point}, plus 'floor' (s per pass) and the paths."""
    torch.manual_seed(0)
    net = model_loader.load(name, ckpt).eval()
    d = net_plotter.random_direction(net, "weights", "filter", "biasbn",
                                     torch.Generator().manual_seed(0))
    move = net_plotter.Perturbation(net, "weights", d)
    coords = torch.linspace(-1, 1, points).tolist()
    loss = get_loss_fn("crossentropy")
    evs, setup, vals = {}, {}, {}
    for e in engines:
        t = time.perf_counter()
        evs[e] = Evaluator(net, x, y, loss, batch, CPU, "fp32", engine=e)
        setup[e] = time.perf_counter() - t
    fns = {"floor": floor_fn(net, x, batch)}
    fns.update({e: per_point_fn(ev, move, coords) for e, ev in evs.items()})
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn) / (1 if k == "floor" else points))
    for e, ev in evs.items():
        move.set(0.5)
        vals[e] = ev()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    err = {e: abs(vals[e] - vals["eager"]) / abs(vals["eager"]) for e in vals} if "eager" in vals else {}
    return med, {e: ev.path for e, ev in evs.items()}, setup, err


def points_table(name, x, y, batch, ks, rounds, ckpt=None):
    torch.manual_seed(0)
    net = model_loader.load(name, ckpt).eval()
    gen = torch.Generator().manual_seed(0)
    dx = net_plotter.random_direction(net, "weights", "filter", "biasbn", gen)
    dy = net_plotter.random_direction(net, "weights", "filter", "biasbn", gen)
    move = net_plotter.Perturbation(net, "weights", dx, dy)
    ev = Evaluator(net, x, y, get_loss_fn("crossentropy"), batch, CPU, "fp32", engine="auto")
    n = max(ks)
    pts = [(-1 + 2 * i / (n - 1), 0.3) for i in range(n)]
    fns = {k: (lambda k=k: [r for i in range(0, n, k) for r in ev.evaluate_points(move, pts[i:i + k])])
           for k in ks}
    for fn in fns.values():
        fn()
    times = {k: [] for k in ks}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    ref = fns[1]()
    worst = max(abs(a[0] - b[0]) / abs(b[0]) for a, b in zip(fns[max(ks)](), ref))
    chosen = ev.probe_points_per_pass(move, ks)
    return {k: n / statistics.median(v) for k, v in times.items()}, ev.path, chosen, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--points", type=int, default=3, help="grid points per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compiled", action="store_true", help="also time torch.compile (minutes to build)")
    ap.add_argument("--zoo", default="resnet20,resnet56_noshort,vgg9,densenet121",
                    help="other zoo models, eager against fused (comma list; '' for none)")
    ap.add_argument("--zoo_images", type=int, default=500)
    ap.add_argument("--no_points", action="store_true", help="skip the K points per pass table")
    ap.add_argument("--out", default="", help="also write the tables to this file")
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(a.threads)
    def show(*new):
        lines.extend(new)
        print("\n".join(new), flush=True)
    lines = []
    show(f"machine: {os.cpu_count()} CPUs, {a.threads} threads, torch {torch.__version__}, "
             f"load average at start {os.getloadavg()[0]:.1f}; median of {a.rounds} rounds", "")
    with tempfile.TemporaryDirectory() as tmp:
        x, y = load_cifar(tmp, a.images)
    engines = ["eager", "fused"] + (["compiled"] if a.compiled else [])
    med, paths, setup, err = engines_table("resnet56", RELEASED, x, y, a.batch_size, a.points,
                                           a.rounds, engines)
    show(f"ResNet-56 (released checkpoint), {len(x)} CIFAR-format images, batch {a.batch_size}; "
              f"floor (bare eager forward pass): {med['floor']:.3f} s", "",
              "| engine | path | set-up (s) | s per point | ratio to floor | rel. loss error |",
              "|---|---|---|---|---|---|")
    for e in engines:
        show(f"| {e} | {paths[e]} | {setup[e]:.1f} | {med[e]:.3f} | "
                     f"{med[e] / med['floor']:.3f} | {err.get(e, 0):.1e} |")
    zoo = [m for m in a.zoo.split(",") if m]
    if zoo:
        show("", f"Other zoo models (random weights), {a.zoo_images} CIFAR-format images:", "",
                  "| model | fused path | floor (s) | eager s/point | fused s/point | fused / eager |",
                  "|---|---|---|---|---|---|")
        for m in zoo:
            n = a.zoo_images if m != "densenet121" else min(a.zoo_images, 128)
            zm, zp, _, _ = engines_table(m, None, x[:n], y[:n], a.batch_size, 2, a.rounds,
                                         ["eager", "fused"])
            show(f"| {m} ({n} images) | {zp['fused']} | {zm['floor']:.3f} | {zm['eager']:.3f} | "
                         f"{zm['fused']:.3f} | {zm['fused'] / zm['eager']:.3f} |")
    if not a.no_points:
        ks = [1, 4, 16]
        show("", "Several grid points per pass (points per second; engine auto):", "",
                  "| model | path | " + " | ".join(f"K={k}" for k in ks) +
                  " | probe picks | max rel. diff K=16 vs 1 |",
                  "|---|---|" + "---|" * len(ks) + "---|---|")
        dx, dy = load_digits()
        for m, (px, py) in (("digits_cnn", (dx, dy)), ("digits_mlp", (dx, dy)),
                            ("resnet20", (x[:128], y[:128]))):
            pps, path, chosen, worst = points_table(m, px, py, a.batch_size, ks, a.rounds)
            show(f"| {m} ({len(px)} images) | {path} | " +
                         " | ".join(f"{pps[k]:.2f}" for k in ks) + f" | {chosen} | {worst:.1e} |")
    text = "\n".join(lines)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
