"""Seconds per grid point of plot_hessian_eigen.py (λmax and λmin of the Hessian) on the CPU.

    python bench/bench_hessian.py                 # digits_cnn and ResNet-20, 2 threads
    python bench/bench_hessian.py --skip_resnet --points 3

Cases (as in doc/trajectory_hessian.md): digits_cnn (trained 3 epochs with
cifar10/main.py) on the digits test set (360 images), and ResNet-20 (initial weights)
on 500 CIFAR-format images (random pixels, written like the real python batches).
Each point is a step along a filter-normalized random direction (x = 0, 0.25, ...),
computed exactly as a grid point is: the weights written in place, then
``min_max_eigs`` with the default tolerance. Reported per point: wall and CPU seconds,
Hessian-vector products, and per product the ratio to one forward+backward pass over
the same data (the cost of a gradient), measured in the same process. Start-up (data,
model) is excluded.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import torch  # noqa: E402

import dataloader  # noqa: E402
import model_loader  # noqa: E402
import net_plotter  # noqa: E402
from evaluation import get_loss_fn  # noqa: E402
from hess_vec_prod import DEFAULT_CACHE_MB, DEFAULT_TOL, Hessian, min_max_eigs  # noqa: E402


def data_args(**kw):
    p = argparse.ArgumentParser()
    dataloader.add_data_args(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def gradient_seconds(net, x, y, loss_sum, batch_size, repeat=2):
    params = [p for p in net.parameters() if p.dim() > 1]

    def once():
        for i in range(0, len(y), batch_size):
            torch.autograd.grad(loss_sum(net(x[i:i + batch_size]), y[i:i + batch_size]), params)
    once()
    t = time.perf_counter()
    for _ in range(repeat):
        once()
    return (time.perf_counter() - t) / repeat


def bench(name, net, x, y, batch_size, points, cache_mb):
    loss_sum = get_loss_fn("crossentropy")
    net.eval()
    grad_s = gradient_seconds(net, x, y, loss_sum, batch_size)
    op = Hessian(net, x, y, loss_sum, batch_size, cache_mb=cache_mb)
    gen = net_plotter.make_generator(0, 0)
    move = net_plotter.Perturbation(net, "weights", net_plotter.random_direction(net, "weights", "filter",
                                                                               "biasbn", gen))
    rows = []
    for k in range(points):
        move.set(0.25 * k)
        c0, w0, p0 = op.count, time.perf_counter(), time.process_time()
        lmax, lmin = min_max_eigs(op)
        wall, cpu, n = time.perf_counter() - w0, time.process_time() - p0, op.count - c0
        rows.append((wall, cpu, n))
        print(f"{name}: x={0.25 * k:.2f}  max_eig {lmax:.5g}  min_eig {lmin:.5g}  {n} products  "
              f"{wall:.1f} s wall  {cpu:.1f} s CPU  ({wall / n / grad_s:.2f}x a gradient per product; "
              f"graph cache {op.cache_bytes / 2**20:.0f} MiB)", flush=True)
    wall = sum(r[0] for r in rows) / len(rows)
    cpu = sum(r[1] for r in rows) / len(rows)
    products = sum(r[2] for r in rows) / len(rows)
    return {"case": name, "params": op.shape[0], "images": len(y), "s_per_point": wall,
            "cpu_s_per_point": cpu, "products": products, "s_per_product": wall / products,
            "gradient_s": grad_s}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--points", type=int, default=2)
    p.add_argument("--hess_cache_mb", type=float, default=DEFAULT_CACHE_MB,
                   help="graph cache of the Hessian operator (plot_hessian_eigen.py's default)")
    p.add_argument("--skip_resnet", action="store_true")
    p.add_argument("--skip_digits", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, tol {DEFAULT_TOL}, "
          f"graph cache {args.hess_cache_mb:.0f} MiB, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_digits:
            subprocess.run([sys.executable, os.path.join(REPO, "cifar10", "main.py"), "--dataset", "digits",
                            "--model", "digits_cnn", "--epochs", "3", "--save_epoch", "3", "--lr", "0.05",
                            "--batch_size", "64", "--save", tmp], check=True, capture_output=True,
                           env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            model_file = glob.glob(os.path.join(tmp, "digits_cnn_*", "model_3.t7"))[0]
            data = dataloader.load_data(data_args())
            net = model_loader.load("digits_cnn", model_file)
            results.append(bench("digits_cnn, digits test set", net, data.test_x, data.test_y, 360,
                                 args.points, args.hess_cache_mb))
        if not args.skip_resnet:
            from conftest import write_cifar_batches
            write_cifar_batches(tmp, n_train=500, n_test=10)
            data = dataloader.load_data(data_args(dataset="cifar10", datapath=tmp))
            torch.manual_seed(0)
            net = model_loader.load("resnet20")
            results.append(bench("resnet20, 500 CIFAR-format images", net, data.train_x, data.train_y, 128,
                                 args.points, args.hess_cache_mb))
    print("\n| case | parameters (>1-D) | products/point | s/point (wall) | s/point (CPU) | "
          "s/product | gradient s | product/gradient |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['params']} | {r['products']:.0f} | {r['s_per_point']:.1f} | "
              f"{r['cpu_s_per_point']:.1f} | {r['s_per_product']:.3f} | {r['gradient_s']:.3f} | "
              f"{r['s_per_product'] / r['gradient_s']:.2f} |")


if __name__ == "__main__":
    main()
