"""Barriers modulo permutation on the embedded digits data: pairs of networks trained
from two seeds by cifar10/main.py, the barrier of the straight line between them before
and after alignment (align.py --barrier), against width; and the time of weight matching
two resnet20s.

    python bench/bench_align.py [--out_dir bench_align] [--figure doc/images/alignment_barriers.png]

Models: digits MLPs 64 -> w -> w -> 10 of widths 32, 128, 512 (cifar10.models.digits:mlp_w*,
60 epochs of Adam, lr 0.003) and digits CNNs with BatchNorm of widths 1x and 4x (16/32 and
64/128 channels, cifar10.models.digits:cnn_w*, 10 epochs of SGD, lr 0.1). Printed: a markdown table of the training loss
barrier (barrier_interp, as mode_connectivity.py defines it) of the naive line, the
aligned line and, for BN models, the aligned line with BN statistics re-estimated, and
the ratio aligned/naive; the figure plots the same against width.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SEEDS = [(1, 2), (3, 4)]  # two independent pairs per model
ADAM = ["--optimizer", "adam", "--lr", "0.003"]
PAIRS = [  # (label, model, width, epochs, training flags)
    ("MLP", "cifar10.models.digits:mlp_w32", 32, 60, ADAM),
    ("MLP", "cifar10.models.digits:mlp_w128", 128, 60, ADAM),
    ("MLP", "cifar10.models.digits:mlp_w512", 512, 60, ADAM),
    ("CNN+BN", "cifar10.models.digits:cnn_w1", 1, 10, ["--lr", "0.1"]),
    ("CNN+BN", "cifar10.models.digits:cnn_w4", 4, 10, ["--lr", "0.1"]),
]


def run(argv):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    p = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{argv} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def train(model, epochs, flags, seed, root):
    save = os.path.join(root, f"{model.split(':')[-1]}_s{seed}")
    found = glob.glob(os.path.join(save, "*", f"model_{epochs}.t7"))
    if not found:
        run(["cifar10/main.py", "--dataset", "digits", "--model", model, "--epochs", str(epochs),
             "--batch_size", "64", *flags, "--save_epoch", str(epochs), "--rand_seed", str(seed),
             "--save", save])
        found = glob.glob(os.path.join(save, "*", f"model_{epochs}.t7"))
    return found[0]


def pair_row(label, model, width, epochs, flags, root, method, seeds):
    a, b = (train(model, epochs, flags, seed, root) for seed in seeds)
    out = os.path.join(root, f"{model.split(':')[-1]}_{method}_{seeds[0]}{seeds[1]}_aligned.t7")
    run(["align.py", "--model", model, "--model_file", a, "--model_file2", b, "--out", out, "--overwrite",
         "--method", method, "--barrier", "--points", "11"])
    rep = json.load(open(out + ".json"))
    table = rep["barriers"]
    row = {"model": label, "width": width, "method": method, "seeds": list(seeds),
           "seconds": rep["aligned"][0]["seconds"]}
    for path in ("naive", "aligned", "naive_bn", "aligned_bn"):
        if path in table:
            row[path] = table[path]["barriers"]["train_loss"]["barrier_interp"]
            row[path + "_test_error"] = table[path]["barriers"]["test_error"]["barrier_interp"]
    best = row.get("aligned_bn", row["aligned"])
    row["ratio"] = best / row["naive"] if row["naive"] > 0 else float("nan")
    return row


def mean_rows(rows):
    """Per model, width and method: the barriers averaged over the pairs, ratio of the means."""
    out = []
    for key in dict.fromkeys((r["model"], r["width"], r["method"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["width"], r["method"]) == key]
        mean = {"model": key[0], "width": key[1], "method": key[2], "seeds": "mean",
                "seconds": sum(r["seconds"] for r in sel) / len(sel)}
        for k in ("naive", "aligned", "naive_bn", "aligned_bn"):
            if all(k in r for r in sel):
                mean[k] = sum(r[k] for r in sel) / len(sel)
        mean["ratio"] = mean.get("aligned_bn", mean["aligned"]) / mean["naive"]
        out.append(mean)
    return out


def matching_time(threads, repeat=3):
    """Weight matching of two random-init resnet20s (seconds, best of ``repeat``)."""
    import torch

    import alignment as al
    import model_loader
    torch.set_num_threads(threads)
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(model_loader.build_model("resnet20"))
    spec = al.infer_spec(nets[0], torch.randn(2, 3, 32, 32))
    keys = [k for k, _ in nets[0].named_parameters()]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        al.weight_matching(spec, nets[0].state_dict(), nets[1].state_dict(), keys)
        times.append(time.perf_counter() - t)
    return min(times)


def figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, label, xlabel in ((axes[0], "MLP", "hidden width"), (axes[1], "CNN+BN", "channel multiplier")):
        sel = [r for r in rows if r["model"] == label and r["method"] == "weight" and r["seeds"] == "mean"]
        w = [r["width"] for r in sel]
        for key, style in (("naive", "o-"), ("aligned", "s-"), ("aligned_bn", "^-")):
            if all(key in r for r in sel):
                ax.plot(w, [r[key] for r in sel], style, label=key.replace("_", " + ").replace("bn", "BN"))
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss barrier")
        ax.set_title(f"digits {label}, mean of two pairs")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", default="bench_align")
    p.add_argument("--figure", default="")
    p.add_argument("--methods", default="weight,activation")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rows = [pair_row(*pair, args.out_dir, method, seeds) for method in args.methods.split(",") for pair in PAIRS
            for seeds in SEEDS]
    rows += mean_rows(rows)
    print("| model | width | method | seeds | naive | aligned | aligned + BN | best/naive | matching (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bn = f"{r['aligned_bn']:.4f}" if "aligned_bn" in r else "-"
        print(f"| {r['model']} | {r['width']} | {r['method']} | {r['seeds']} | {r['naive']:.4f} | {r['aligned']:.4f} | "
              f"{bn} | {r['ratio']:.3f} | {r['seconds']:.2f} |")
    timing = {n: matching_time(n) for n in (1, 2)}
    print("weight matching of two resnet20s: " + ", ".join(f"{s:.2f} s on {n} thread(s)" for n, s in timing.items()))
    json.dump({"rows": rows, "resnet20_matching_seconds": timing}, open(os.path.join(args.out_dir, "results.json"),
                                                                        "w"), indent=1)
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
