"""Benchmark: one table of the evaluation engines on one device (made for a GPU).

ResNet-56 (the released checkpoint) over random CIFAR-format images generated in memory
(uint8 pixels normalized as the data loader does), resident on the device. For each
precision (fp32, tf32, bf16) and engine (eager, fused, compiled, fused with K points per
pass): seconds per grid point, the projected time of a 51x51 surface (2,601 points on
one device), the ratio to the device's forward-pass floor (a bare eager fp32 forward
pass over the same images at the same batch size), and the largest relative loss error
against fp32 eager over the timed points.

    python bench/bench_gpu.py --out gpu_table.md                # on a GPU: 50,000 images
    python bench/bench_gpu.py --smoke --out /tmp/t.md           # CPU, tiny (what the tests run)
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
RELEASED = os.path.join(ROOT, "tests", "compat",
                        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")

import model_loader  # noqa: E402
import net_plotter  # noqa: E402
from evaluation import Evaluator, get_loss_fn, keep_freed_memory  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def cifar_like(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).float() / 255
    return (x - MEAN) / STD, torch.randint(0, 10, (n,), generator=g)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--batch_size", type=int, default=0, help="default: 1000 on a GPU, 128 on a CPU")
    ap.add_argument("--points", type=int, default=4, help="grid points per timed round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--engines", default="eager,fused,compiled,K=4,K=16",
                    help="comma list of eager, fused, compiled, K=<points per pass>")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU run: 32 images, resnet20, no compile (for the tests)")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    a = ap.parse_args()
    if a.smoke:
        a.images, a.device, a.model, a.points, a.rounds = 32, "cpu", "resnet20", 2, 1
        a.batch_size, a.engines = 16, "eager,fused,K=2"
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; use --device cpu (or --smoke)")
    batch = a.batch_size or (1000 if device.type == "cuda" else 128)
    keep_freed_memory()
    x, y = cifar_like(a.images)
    torch.manual_seed(0)
    net = model_loader.load(a.model, RELEASED if a.model == "resnet56" else None).to(device).eval()
    d = net_plotter.random_direction(net, "weights", "filter", "biasbn", torch.Generator().manual_seed(0))
    move = net_plotter.Perturbation(net, "weights", d)
    coords = [(float(c), 0.0) for c in torch.linspace(-1, 1, a.points)]
    loss = get_loss_fn("crossentropy")
    xd = x.to(device)

    def floor():
        with torch.inference_mode():
            for i in range(0, len(xd), batch):
                net(xd[i:i + batch])
    move.set(0.0)
    floor()
    sync(device)
    floors = []
    for _ in range(max(2, a.rounds)):
        t = time.perf_counter()
        floor()
        sync(device)
        floors.append(time.perf_counter() - t)
    t_floor = statistics.median(floors)

    rows, ref = [], None
    for prec in a.precisions.split(","):
        evs = {}
        for eng in a.engines.split(","):
            base = "fused" if eng.startswith("K=") else eng
            t = time.perf_counter()
            try:
                ev = evs.get(base) or Evaluator(net, x, y, loss, batch, device, prec, engine=base)
            except Exception as e:  # report, do not stop the table
                rows.append((prec, eng, f"failed: {type(e).__name__}", None, None, None, None))
                continue
            evs[base] = ev
            setup = time.perf_counter() - t
            if eng.startswith("K="):
                k = int(eng[2:])
                pts = [coords[i % len(coords)] for i in range(k)]

                def run(ev=ev, pts=pts):
                    return ev.evaluate_points(move, pts)
                n_pts = k
            else:
                def run(ev=ev):
                    out = []
                    for c in coords:
                        move.set(*c)
                        out.append(ev())
                    return out
                n_pts = len(coords)
            vals = run()  # warm-up (and compilation)
            sync(device)
            times = []
            for _ in range(a.rounds):
                t = time.perf_counter()
                vals = run()
                sync(device)
                times.append((time.perf_counter() - t) / n_pts)
            if ref is None:
                ref = vals  # fp32 eager, the reference
            ref_by_point = {c: r for c, r in zip(coords, ref)}
            want = [ref_by_point[pts[i]] for i in range(k)] if eng.startswith("K=") else ref
            err = max(abs(v[0] - r[0]) / abs(r[0]) for v, r in zip(vals, want))
            sec = statistics.median(times)
            path = ev.path + (f", {eng}" if eng.startswith("K=") else "")
            rows.append((prec, eng if not eng.startswith("K=") else f"fused, {eng}", path, sec,
                         sec * 2601, err, setup))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{a.model}, {len(x)} CIFAR-format images, batch {batch}, {name}, torch {torch.__version__}; "
             f"floor (bare eager fp32 forward pass): {t_floor:.4f} s, 51x51 at the floor: "
             f"{t_floor * 2601 / 60:.1f} min", "",
             "| precision | engine | path | s per point | 51x51 surface (min) | ratio to floor | "
             "max rel. loss error vs fp32 eager | set-up (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for prec, eng, path, sec, proj, err, setup in rows:
        if sec is None:
            lines.append(f"| {prec} | {eng} | {path} | | | | | |")
        else:
            lines.append(f"| {prec} | {eng} | {path} | {sec:.4f} | {proj / 60:.1f} | "
                         f"{sec / t_floor:.3f} | {err:.1e} | {setup:.1f} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
