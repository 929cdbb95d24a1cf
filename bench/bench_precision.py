"""Speed and error of the faster evaluation precisions against fp32, on one device.

For a model on a data set, evaluates the same grid points in fp32, tf32 and bf16
(tf32 only changes anything on NVIDIA GPUs) and reports points/s, the floor (a bare
fp32 forward pass at batch 128 over the same preloaded tensors) and the largest
absolute loss and accuracy differences to fp32.

    python bench/bench_precision.py                         # digits_cnn on digits, CPU
    python bench/bench_precision.py --model resnet56 --images 50000 --cuda --batch_size 1000
        # ResNet-56, released checkpoint, 50,000 CIFAR-format images on the GPU
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
RELEASED = os.path.join(ROOT, "tests", "compat",
                        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")

import model_loader  # noqa: E402
import net_plotter  # noqa: E402
from evaluation import Evaluator, get_loss_fn  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--images", type=int, default=0, help="CIFAR-format random images (0: digits data)")
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--cuda", action="store_true")
    a = ap.parse_args()
    device = torch.device("cuda" if a.cuda else "cpu")
    if a.images:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(a.images, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (a.images,), generator=g)
    else:
        import dataloader
        d = dataloader.load_data(dataloader.add_data_args(argparse.ArgumentParser()).parse_args([]))
        x, y = d.train_x, d.train_y
    net = model_loader.load(a.model, RELEASED if a.model == "resnet56" else None).to(device)
    d = net_plotter.random_direction(net, "weights", "filter", "biasbn", torch.Generator().manual_seed(0))
    move = net_plotter.Perturbation(net, "weights", d)
    coords = torch.linspace(-1, 1, a.points).tolist()
    xd = x.to(device)

    def sync():
        if a.cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        net(xd[:128])
        sync()
        t = time.perf_counter()
        for i in range(0, len(xd), 128):
            net(xd[i:i + 128])
        sync()
        floor = time.perf_counter() - t
    results = {}
    for prec in ("fp32", "tf32", "bf16"):
        ev = Evaluator(net, x, y, get_loss_fn("crossentropy"), a.batch_size, device, prec)
        move.set(coords[0])
        ev()  # warm-up
        t = time.perf_counter()
        vals = []
        for c in coords:
            move.set(c)
            vals.append(ev())
        results[prec] = (time.perf_counter() - t, vals)
    name = torch.cuda.get_device_name() if a.cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.model}, {len(x)} images, batch {a.batch_size}, {name}; floor (fp32 forward, batch 128): "
          f"{floor:.3f} s per pass\n")
    print("| precision | s per point | ratio to floor | max abs loss error | max abs acc error (points) |")
    print("|---|---|---|---|---|")
    ref = results["fp32"][1]
    for prec, (secs, vals) in results.items():
        le = max(abs(v[0] - r[0]) for v, r in zip(vals, ref))
        ae = max(abs(v[1] - r[1]) for v, r in zip(vals, ref))
        print(f"| {prec} | {secs / len(coords):.4f} | {secs / len(coords) / floor:.2f} | {le:.2e} | {ae:.3f} |")


if __name__ == "__main__":
    main()
