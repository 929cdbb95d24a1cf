"""Benchmark: one table of the evaluation engines on one device (made for a GPU).

ResNet-56 (the released checkpoint) over random CIFAR-format images generated in memory
(uint8 pixels normalized as the data loader does), resident on the device. For each
precision (fp32, tf32, bf16) and engine (eager, fused, compiled, fused with K points per
pass): seconds per grid point, the projected time of a 51x51 surface (2,601 points on
one device) over all ``--images``, the ratio to the device's forward-pass floor (a bare
eager fp32 forward pass over the same images at the same batch size, in this process),
and the largest relative loss error against fp32 eager over the timed points.

``--timed_images N`` times each row over the first N of the resident images and projects
linearly to all of them (the floor is timed over the same N, so the ratio is measured, not
projected): that trims the seconds of a row, never a row. Rows run cheapest first (every
precision's eager, fused, K rows, then the compiled ones), and the table is rewritten after
each row, so a run cut short keeps what it measured; ``--budget`` seconds: rows not started
by then are listed as skipped.

    python bench/bench_gpu.py --out gpu_table.md --json gpu_table.json       # on a GPU
    python bench/bench_gpu.py --smoke --out /tmp/t.md                         # CPU, tiny (the tests)
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
RELEASED = os.path.join(ROOT, "tests", "compat",
                        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")
POINTS_51x51 = 2601

import model_loader  # noqa: E402
import net_plotter  # noqa: E402
from evaluation import Evaluator, get_loss_fn, keep_freed_memory, precision_mode  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def cifar_like(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).float() / 255
    return (x - MEAN) / STD, torch.randint(0, 10, (n,), generator=g)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device):
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count)
    else:
        info["name"] = f"CPU, {torch.get_num_threads()} threads"
    return info


def row_order(precisions, engines):
    """(precision, engine) rows, cheapest first: everything but compiled, then compiled (the
    lowest precision first: the likeliest to meet the 5-minute goal); fp32 eager (the
    reference of the error column) first."""
    plain = [e for e in engines if e != "compiled"]
    rows = [(p, e) for e in plain for p in precisions]
    rows += [(p, "compiled") for p in reversed(precisions) if "compiled" in engines]
    ref = ("fp32", "eager")
    return ([ref] if ref in rows else []) + [r for r in rows if r != ref]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50000, help="images resident on the device")
    ap.add_argument("--timed_images", type=int, default=0,
                    help="time each row over the first N images and project to --images (0: all)")
    ap.add_argument("--batch_size", type=int, default=0, help="default: 1000 on a GPU, 128 on a CPU")
    ap.add_argument("--points", type=int, default=4, help="grid points per timed round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--engines", default="eager,fused,compiled,K=4,K=16",
                    help="comma list of eager, fused, compiled, K=<points per pass>")
    ap.add_argument("--budget", type=float, default=0,
                    help="seconds: rows not started by then are listed as skipped (0: no limit)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU run: 32 images, resnet20, no compile (for the tests)")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    ap.add_argument("--json", default="", help="also write the rows and the machine (JSON) here")
    a = ap.parse_args(argv)
    if a.smoke:
        a.images, a.device, a.model, a.points, a.rounds = 32, "cpu", "resnet20", 2, 1
        a.batch_size, a.timed_images = 16, min(a.timed_images, 32)
        a.engines = ",".join(e for e in a.engines.split(",") if e != "compiled" and e != "K=16").replace("K=4", "K=2")
    return a


def time_floor(net, move, xt, batch, device, rounds):
    """Median seconds of one plain forward pass over ``xt`` at the origin (fp32): the floor."""
    def floor():
        with torch.inference_mode(), precision_mode("fp32", device):  # cuDNN's default is TF32
            for i in range(0, len(xt), batch):
                net(xt[i:i + batch])
    move.set(0.0)
    floor()
    sync(device)
    floors = []
    for _ in range(max(2, rounds)):
        t = time.perf_counter()
        floor()
        sync(device)
        floors.append(time.perf_counter() - t)
    return statistics.median(floors)


def time_row(ev, move, eng, coords, rounds, device):
    """(the points, their values, seconds per point of each round) of one engine row."""
    pts = [coords[i % len(coords)] for i in range(int(eng[2:]))] if eng.startswith("K=") else coords

    def run():
        if eng.startswith("K="):
            return ev.evaluate_points(move, pts)
        out = []
        for c in pts:
            move.set(*c)
            out.append(ev())
        return out
    vals = run()  # warm-up (and compilation)
    sync(device)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        vals = run()
        sync(device)
        times.append((time.perf_counter() - t) / len(pts))
    return pts, vals, times


def main(argv=None):
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; use --device cpu (or --smoke)")
    t_start = time.perf_counter()
    batch = a.batch_size or (1000 if device.type == "cuda" else 128)
    keep_freed_memory()
    x, y = cifar_like(a.images)
    xd, yd = x.to(device), y.to(device)  # resident once; every evaluator takes views of it
    timed = min(a.timed_images or a.images, a.images)
    scale = a.images / timed
    xt, yt = xd[:timed], yd[:timed]
    torch.manual_seed(0)
    net = model_loader.load(a.model, RELEASED if a.model == "resnet56" else None).to(device).eval()
    d = net_plotter.random_direction(net, "weights", "filter", "biasbn", torch.Generator().manual_seed(0))
    move = net_plotter.Perturbation(net, "weights", d)
    coords = [(float(c), 0.0) for c in torch.linspace(-1, 1, a.points)]
    loss = get_loss_fn("crossentropy")
    t_floor = time_floor(net, move, xt, batch, device, a.rounds)
    info = device_info(device)
    head = {**info, "model": a.model, "images": a.images, "timed_images": timed, "batch_size": batch,
            "points": a.points, "rounds": a.rounds, "floor_s": t_floor * scale,
            "floor_51x51_min": t_floor * scale * POINTS_51x51 / 60}
    rows, ref, evs = [], {}, {}

    def write():
        text = table(head, rows)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": head, "rows": rows}, f, indent=1)
        return text

    for prec, eng in row_order(a.precisions.split(","), a.engines.split(",")):
        label = eng if not eng.startswith("K=") else f"fused, {eng}"
        row = {"precision": prec, "engine": label}
        rows.append(row)
        if a.budget and time.perf_counter() - t_start > a.budget:
            row["path"] = f"skipped: --budget {a.budget:.0f} s spent"
            write()
            continue
        base = "fused" if eng.startswith("K=") else eng
        t = time.perf_counter()
        try:
            ev = evs.get((prec, base)) or Evaluator(net, xt, yt, loss, batch, device, prec, engine=base)
            evs[(prec, base)] = ev
            setup = time.perf_counter() - t
            pts, vals, times = time_row(ev, move, eng, coords, a.rounds, device)
        except Exception as e:  # report, do not stop the table
            row["path"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            write()
            continue
        if not ref:
            ref.update({c: v[0] for c, v in zip(pts, vals)})  # fp32 eager, the reference
        err = max(abs(v[0] - ref[c]) / abs(ref[c]) for c, v in zip(pts, vals)) if ref else None
        sec = statistics.median(times) * scale
        row.update(path=ev.path + (f", {eng}" if eng.startswith("K=") else ""), s_per_point=sec,
                   surface_51x51_min=sec * POINTS_51x51 / 60, ratio_to_floor=sec / (t_floor * scale),
                   rel_loss_error_vs_fp32=err, setup_s=setup)
        print(f"{prec} {label}: {sec:.4f} s per point", file=sys.stderr, flush=True)
        write()
    print(write())


def table(head, rows):
    lines = [f"{head['model']}, {head['images']} CIFAR-format images resident on the device (timed over "
             f"{head['timed_images']}, projected to all), batch {head['batch_size']}, {head['name']}, "
             f"torch {head['torch']}, CUDA {head['cuda']}; floor (bare eager fp32 forward pass): "
             f"{head['floor_s']:.4f} s, 51x51 at the floor: {head['floor_51x51_min']:.1f} min", "",
             "| precision | engine | path | s per point | 51x51 surface (min) | ratio to floor | "
             "max rel. loss error vs fp32 eager | set-up (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "s_per_point" not in r:
            lines.append(f"| {r['precision']} | {r['engine']} | {r.get('path', '')} | | | | | |")
            continue
        err = "" if r["rel_loss_error_vs_fp32"] is None else f"{r['rel_loss_error_vs_fp32']:.1e}"
        lines.append(f"| {r['precision']} | {r['engine']} | {r['path']} | {r['s_per_point']:.4f} | "
                     f"{r['surface_51x51_min']:.1f} | {r['ratio_to_floor']:.3f} | {err} | {r['setup_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
