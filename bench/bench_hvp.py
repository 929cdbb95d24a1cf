"""Seconds per Hessian-vector product: ours (hess_vec_prod.hessian_operator) against
PyHessian's product, on digits_mlp and digits_cnn over the digits training set (1437 images).

    pip install pyhessian==0.1          # the peer (only for this bench; not a requirement)
    python bench/bench_hvp.py --threads 2
    python bench/bench_hvp.py --threads 1

The peer is PyHessian 0.1's ``hessian.dataloader_hv_product`` (forward, backward with
``create_graph``, ``autograd.grad`` of the gradient with ``grad_outputs=v``, summed over
the batches of a DataLoader) at its usual batch of 128, and with one batch of the whole
set (its single-batch mode, the gradient kept). If PyHessian is not installed, the same
product is written out here. Both take the Hessian with respect to every parameter
(PyHessian's choice), so the products are the same numbers; ours also with respect to
the multi-dimensional parameters only (its default). Ours runs at its default batch,
chosen by memory (``hess_vec_prod.auto_batch``), and at 128. Reported: the minimum and the median of
``--repeat`` timed products after two warm-up products (all variants timed in turn), and the largest relative
difference between our product and the peer's.
"""
import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dataloader  # noqa: E402
from cifar10.models import MODELS  # noqa: E402
from hess_vec_prod import hessian_operator  # noqa: E402


def peer_product(model, criterion, batches, single):
    """PyHessian's product v -> Hv (a list of tensors), as its ``hessian`` class computes it."""
    try:
        from pyhessian import hessian
    except ImportError:
        hessian = None
    if hessian is not None:
        if single:
            h = hessian(model, criterion, data=batches[0], cuda=False)
            return lambda v: torch.autograd.grad(h.gradsH, h.params, grad_outputs=v, retain_graph=True), "pyhessian 0.1"
        h = hessian(model, criterion, dataloader=batches, cuda=False)
        return lambda v: h.dataloader_hv_product(v)[1], "pyhessian 0.1"
    params = [p for p in model.parameters() if p.requires_grad]

    def product(v):
        total = [torch.zeros_like(p) for p in params]
        n = 0
        for x, y in batches:
            g = torch.autograd.grad(criterion(model(x), y), params, create_graph=True)
            hv = torch.autograd.grad(g, params, grad_outputs=v)
            total = [t + h * len(y) for t, h in zip(total, hv)]
            n += len(y)
        return [t / n for t in total]
    return product, "PyHessian's product (written out)"


def interleaved(fns, repeat):
    """(min, median) seconds of each function, timed in turn (so a busy machine slows all
    alike; the minimum is the least disturbed run)."""
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t)) for t in times]


def case(name, x, y, repeat):
    torch.manual_seed(0)
    net = MODELS[name]().eval()
    criterion = torch.nn.CrossEntropyLoss()
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    v = np.random.default_rng(0).standard_normal(n)
    vt = [t.view_as(p).float() for t, p in zip(torch.from_numpy(v).split([p.numel() for p in params]), params)]
    rows, fns = [], []
    for label, batch in (("batch 128", 128), (f"one batch of {len(y)}", len(y))):
        batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]
        peer, peer_name = peer_product(net, criterion, batches, single=len(batches) == 1)
        ref = torch.cat([h.reshape(-1) for h in peer(vt)]).double().numpy()
        rows.append((f"{peer_name}, {label}", 0.0))
        fns.append(lambda peer=peer: peer(vt))
        ours = hessian_operator(net, x, y, "crossentropy", batch if batch == 128 else None, params)
        diff = np.abs(ours.matvec(v) - ref).max() / np.abs(ref).max()
        rows.append((f"ours, {label if batch == 128 else f'batch {ours.batch_size} (by memory)'}", diff))
        fns.append(lambda ours=ours: ours.matvec(v))
    ours = hessian_operator(net, x, y, "crossentropy")
    rows.append((f"ours, >1-D parameters ({ours.shape[0]}), batch {ours.batch_size}", float("nan")))
    fns.append(lambda: ours.matvec(v[:ours.shape[0]]))
    return n, [(label, s, diff) for (label, diff), s in zip(rows, interleaved(fns, repeat))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--models", nargs="+", default=["digits_mlp", "digits_cnn"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    a = argparse.ArgumentParser()
    dataloader.add_data_args(a)
    data = dataloader.load_data(a.parse_args([]))
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("\n| model | parameters | product | ms/product (min) | (median) | max rel. diff to peer |\n"
          "|---|---|---|---|---|---|")
    for name in args.models:
        n, rows = case(name, data.train_x, data.train_y, args.repeat)
        for label, s, diff in rows:
            print(f"| {name} | {n} | {label} | {1000 * s[0]:.2f} | {1000 * s[1]:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
