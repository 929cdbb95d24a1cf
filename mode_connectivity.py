"""Mode connectivity: train a curve of low loss between two checkpoints, for any model.

    python mode_connectivity.py --model digits_cnn --model_file A.t7 --model_file2 B.t7 --plot
    mpirun -n 4 python mode_connectivity.py --mpi --cuda --model resnet56 \\
        --model_file A.t7 --model_file2 B.t7 --curve bezier --epochs 200 --lr 0.015 --plot

The method of Garipov et al. 2018 ("Loss surfaces, mode connectivity, and fast
ensembling of DNNs"), written with ``torch.func.functional_call`` so that any
``nn.Module`` works unchanged -- no layer is rewritten. Between θ_A (``--model_file``)
and θ_B (``--model_file2``) a curve θ(t), t in [0, 1], is parametrized by one bend
θ_b, the only trained tensors:

``bezier``     θ(t) = (1−t)² θ_A + 2t(1−t) θ_b + t² θ_B (quadratic Bezier curve)
``polychain``  θ(t) = θ_A + 2t (θ_b − θ_A) for t <= 1/2, θ_b + (2t−1)(θ_B − θ_b) after

The bend starts at the midpoint (θ_A + θ_B)/2 (the curve then is the straight line);
each step draws t ~ U(0, 1) and a minibatch and takes an SGD step on the loss of
θ(t) (+ weight_decay/2 · |θ(t)|²), with the model in train mode (BatchNorm uses batch
statistics, as in the paper). Floating buffers (BatchNorm running statistics) are
interpolated linearly between the endpoints; integer buffers are those of the nearer
endpoint, never interpolated. θ(0) = θ_A and θ(1) = θ_B exactly.

Evaluation: at ``--points`` values of t, on the curve and on the straight line
(1−t) θ_A + t θ_B, the exact training loss and accuracy (and test with ``--test``),
model in eval mode. With ``--bn_update`` (default when the model has BatchNorm) the
running statistics are first re-estimated at each point by one pass over the training
data in train mode (the exact average over the batches, as Garipov et al.'s update_bn).
Barrier height of each path, two definitions:
``barrier_max``     max_t L(t) − max(L(0), L(1))
``barrier_interp``  max_t [L(t) − ((1−t) L(0) + t L(1))]

Outputs in ``--out_dir`` (default: mode_connectivity_<curve> next to --model_file):
``bend.t7``, ``midpoint.t7`` (θ(0.5) = (θ_A + 2θ_b + θ_B)/4, on the curve, BN
statistics re-estimated with --bn_update) and ``curve.t7`` (state_dict = the
midpoint, plus the whole curve: ``load_curve``), all in the original checkpoint format
{'state_dict': ...}; ``mode_connectivity.h5`` (a 1D surface file over t: line_* and
curve_* losses and accuracies, barrier heights and settings as attributes;
``read_results``); with ``--plot`` ``mode_connectivity.pdf/.png`` (both paths, loss and
accuracy vs t); ``curve_proj.h5`` (the curve's (x, y) in the plane through θ_A, θ_B
and the bend: ``plot_2D.py --proj_file`` draws it on that plane's contours);
``train_state.pt`` (the bend and the optimizer after every epoch).

Resume: a rerun of the same command continues training from the last finished epoch
and computes only the evaluation points not yet saved; with other settings it is
refused unless ``--overwrite``. ``--mpi``: training runs on rank 0 (the other ranks
wait without spinning), the evaluation points are shared among all ranks.
"""
import argparse

import flags


def build_parser() -> flags.ArgumentParser:
    """The run, data, model (two end points), evaluation, output and plot groups, and this script's own."""
    p = flags.command_parser(__file__, __doc__)
    flags.add_run_group(p, ngpu=False)
    flags.add_grid_group(p, axes="", engine=False)
    flags.add_data_group(p)
    flags.add_model_group(p, checkpoints=2, helps={"model_file": "end point A of the curve (t = 0)",
                                                   "model_file2": "end point B of the curve (t = 1)"})
    flags.add_seed(p, "seed of the training (the values of t and the batches) and of a random model")
    flags.add_output_group(p, surf_file=False,
                           overwrite_help="retrain and re-evaluate from scratch (replaces only files this "
                                          "script wrote)")
    flags.add_plot_group(p, contours=False)
    g = p.add_argument_group("mode connectivity")
    g.add_argument("--curve", default="bezier", help="bezier (quadratic Bezier curve) or polychain")
    g.add_argument("--epochs", type=int, default=20, help="training epochs of the curve (0: the line)")
    g.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (Garipov et al.'s schedule)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", "--wd", type=float, default=5e-4,
                   help="weight decay on the point θ(t) of each step")
    g.add_argument("--points", type=int, default=21, help="values of t evaluated on each path")
    g.add_argument("--bn_update", action="store_const", const=True, default=None,
                   help="re-estimate BatchNorm statistics at each point; None: on when the model has BN")
    g.add_argument("--no_bn_update", dest="bn_update", action="store_const", const=False,
                   help="evaluate with the end points' BatchNorm statistics interpolated linearly")
    g.add_argument("--out_dir", default="", help="output folder; '': mode_connectivity_<curve> next to "
                                                 "--model_file")
    return p


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import json  # noqa: E402
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

import dataloader
import model_loader
import mpi4pytorch
import runner
from errors import UserError, run_main
from evaluation import Evaluator, get_loss_fn
import grid
from fileio import check_output_path, check_reuse, written_atomically
from surface import SurfaceWriter, read_surface

CURVES = ("bezier", "polychain")
TRAIN_STATE, BEND, MIDPOINT, CURVE, RESULTS, PROJ = ("train_state.pt", "bend.t7", "midpoint.t7", "curve.t7",
                                                     "mode_connectivity.h5", "curve_proj.h5")


# ============================================================================ library
def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _aliases(net: nn.Module) -> dict:
    """Every parameter name (tied ones included) -> the canonical name of its tensor."""
    canonical, out = {}, {}
    for name, p in net.named_parameters(remove_duplicate=False):
        out[name] = canonical.setdefault(id(p), name)
    return out


class Curve:
    """A Bezier curve or polygonal chain θ(t) between two states of ``net``.

    ``bend`` holds the trainable tensors (one per parameter of ``net``, leaf tensors
    with requires_grad). ``at(t)`` gives parameters and buffers for
    ``functional_call(net, curve.at(t), x)``: differentiable with respect to the bend;
    ``state_at(t)`` gives a detached, complete state_dict (``net.load_state_dict``).
    """

    def __init__(self, net: nn.Module, state_a: dict, state_b: dict, kind: str = "bezier",
                 bend: dict | None = None):
        if kind not in CURVES:
            raise UserError(f"unknown --curve '{kind}'; use {' or '.join(CURVES)}")
        self.kind = kind
        self.alias = _aliases(net)
        self.keys = list(net.state_dict().keys())
        self.params = list(dict.fromkeys(self.alias.values()))
        self.buffers = [k for k in self.keys if k not in self.alias]
        own = net.state_dict()
        self.start = {k: state_a.get(k, own[k]).detach().clone() for k in self.keys}
        self.end = {k: state_b.get(k, own[k]).detach().clone() for k in self.keys}
        self.bend = {}
        for k in self.params:
            b = (bend[k] if bend is not None else (self.start[k] + self.end[k]) / 2)
            self.bend[k] = b.detach().clone().to(self.start[k].dtype).requires_grad_(True)

    def to(self, device) -> "Curve":
        self.start = {k: v.to(device) for k, v in self.start.items()}
        self.end = {k: v.to(device) for k, v in self.end.items()}
        self.bend = {k: v.detach().to(device).requires_grad_(True) for k, v in self.bend.items()}
        return self

    def coefficients(self, t: float) -> tuple:
        """(c_A, c_b, c_B) with θ(t) = c_A θ_A + c_b θ_b + c_B θ_B."""
        t = float(t)
        if self.kind == "bezier":
            return (1 - t) ** 2, 2 * t * (1 - t), t ** 2
        if t <= 0.5:
            return 1 - 2 * t, 2 * t, 0.0
        return 0.0, 2 - 2 * t, 2 * t - 1

    def params_at(self, t: float) -> dict:
        ca, cb, cB = self.coefficients(t)
        return {k: ca * self.start[k] + cb * self.bend[k] + cB * self.end[k] for k in self.params}

    def buffers_at(self, t: float) -> dict:
        return interpolate_buffers(self.start, self.end, self.buffers, t)

    def at(self, t: float) -> dict:
        """Parameters (differentiable in the bend) and buffers (fresh tensors) at t."""
        return {**self.params_at(t), **self.buffers_at(t)}

    def state_at(self, t: float) -> dict:
        """The complete state_dict at t (detached; tied parameters under every name)."""
        with torch.no_grad():
            p = self.params_at(t)
            b = self.buffers_at(t)
        return {k: (p[self.alias[k]] if k in self.alias else b[k]).detach() for k in self.keys}

    def bend_state(self) -> dict:
        """A complete state_dict holding the bend (buffers: those at t = 0.5)."""
        b = self.buffers_at(0.5)
        return {k: (self.bend[self.alias[k]] if k in self.alias else b[k]).detach().clone()
                for k in self.keys}


def interpolate_buffers(start: dict, end: dict, keys, t: float) -> dict:
    """Floating entries (1−t)·start + t·end; integer ones copied from the nearer end."""
    out = {}
    for k in keys:
        a, b = start[k], end[k]
        if a.is_floating_point():
            out[k] = (1 - t) * a + t * b
        else:
            out[k] = (a if t < 0.5 else b).clone()
    return out


def line_state(start: dict, end: dict, t: float) -> dict:
    """The state_dict at t on the straight line (1−t)θ_A + tθ_B (integer entries: nearer end)."""
    return interpolate_buffers(start, end, list(start), t)


@torch.no_grad()
def update_bn(net: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate BatchNorm running statistics: one pass over ``x`` in train mode, the
    statistics being the exact average of the batch statistics weighted by batch size."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    net.train()
    seen = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        for m in bns:
            m.momentum = len(xb) / (seen + len(xb))
        net(xb)
        seen += len(xb)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.eval()


def lr_factor(epoch: int, epochs: int) -> float:
    """Garipov et al.'s schedule: constant for the first half, then linear down to 1 %
    at 90 % of the epochs (``epoch`` counts from 1)."""
    alpha = (epoch - 1) / max(epochs, 1)
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


def make_optimizer(curve: Curve, lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(curve.bend.values()), lr=lr, momentum=momentum)


def train_epoch(net: nn.Module, curve: Curve, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, loss_fn, epoch: int, epochs: int, lr: float, batch_size: int,
                weight_decay: float, seed: int, stop=lambda: False) -> float | None:
    """One epoch of curve training; the mean training loss, or None if ``stop()`` said so.

    Deterministic given (seed, epoch): the shuffle and the values of t come from a
    generator seeded with both, so a resumed run repeats an uninterrupted one exactly.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr * lr_factor(epoch, epochs)
    net.train()
    total, n = 0.0, 0
    for idx in torch.randperm(len(y), generator=g).split(batch_size):
        t = float(torch.rand((), generator=g))
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        params = curve.params_at(t)
        out = functional_call(net, {**params, **curve.buffers_at(t)}, (xb,))
        loss = loss_fn(out, yb) / len(yb)
        objective = loss
        if weight_decay:
            objective = loss + 0.5 * weight_decay * sum((p * p).sum() for p in params.values())
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        n += len(yb)
        if stop():
            return None
    return total / max(n, 1)


def barrier_heights(t, loss) -> dict:
    """Both barrier heights of a path sampled at ``t`` (increasing, from 0 to 1):
    ``barrier_max`` = max_t L(t) − max(L(0), L(1)) and
    ``barrier_interp`` = max_t [L(t) − ((1−t) L(0) + t L(1))], with the t of each maximum."""
    t, loss = np.asarray(t, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    above_max = loss - max(loss[0], loss[-1])
    above_line = loss - ((1 - t) * loss[0] + t * loss[-1])
    i, j = int(np.argmax(above_max)), int(np.argmax(above_line))
    return {"barrier_max": float(above_max[i]), "t_max": float(t[i]),
            "barrier_interp": float(above_line[j]), "t_interp": float(t[j])}


def load_curve(path: str, model: str) -> Curve:
    """The curve saved in ``curve.t7`` for zoo model (or factory) ``model``."""
    if not os.path.isfile(path):
        raise UserError(f"curve file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "curve" not in obj:
        raise UserError(f"{path} is not a curve file written by mode_connectivity.py")
    c = obj["curve"]
    net = model_loader.build_model(model)
    return Curve(net, c["start"], c["end"], c["kind"], bend=c["bend"])


# ============================================================================== flags
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = flags.parse_args(build_parser(), argv)
    if not args.model_file or not args.model_file2:
        raise UserError("give the two end points: --model_file A.t7 --model_file2 B.t7")
    if args.curve not in CURVES:
        raise UserError(f"unknown --curve '{args.curve}'; use {' or '.join(CURVES)}")
    if args.points < 2:
        raise UserError(f"--points must be >= 2 (got {args.points})")
    if args.epochs < 0:
        raise UserError(f"--epochs must be >= 0 (got {args.epochs})")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number (got {args.lr})")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UserError(f"--weight_decay must be a number >= 0 (got {args.weight_decay})")
    if not (math.isfinite(args.momentum) and 0 <= args.momentum < 1):
        raise UserError(f"--momentum must be in [0, 1) (got {args.momentum})")
    if not args.out_dir:
        args.out_dir = os.path.join(os.path.dirname(args.model_file) or ".", f"mode_connectivity_{args.curve}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"--out_dir {args.out_dir} exists and is not a folder")
    check_output_path(os.path.join(args.out_dir, RESULTS), "--out_dir")
    return args


# ============================================================================== story
def load_endpoints(args, comm):
    """Device, data, the model (at θ_A) and the two end states; checks they differ."""
    device, data, net = grid.load_run(args, comm)
    state_a = {k: v.clone() for k, v in net.state_dict().items()}
    state_b = model_loader.load(args.model, args.model_file2, args.unsafe_load).state_dict()
    params = _aliases(net)
    if all(torch.equal(state_a[k], state_b[k]) for k in params):
        raise UserError(f"--model_file and --model_file2 hold the same weights ({args.model_file}, "
                        f"{args.model_file2}): there is no path between them to train")
    return device, data, net.to(device), state_a, state_b


def train_settings(args, data):
    return {"kind": "mode_connectivity_training", "model": args.model,
            "model_hash": model_loader.file_hash(args.model_file),
            "model_hash2": model_loader.file_hash(args.model_file2),
            **dataloader.data_settings(args, data), "loss_name": args.loss_name,
            "curve": args.curve, "epochs": args.epochs, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size, "seed": args.seed}


def _load_train_state(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say so in one line
        raise UserError(f"cannot read {path} ({str(e).splitlines()[0][:120]}); rerun with --overwrite")


def train(args, net, curve, data, device, settings):
    """Rank 0: train the bend (or resume/reuse a finished training); save it every epoch."""
    path = os.path.join(args.out_dir, TRAIN_STATE)
    optimizer = make_optimizer(curve, args.lr, args.momentum)
    start = 0
    if os.path.exists(path) and not args.overwrite:
        saved = _load_train_state(path)
        check_reuse(path, saved.get("settings") if isinstance(saved, dict) else None, settings,
                    "the curve training", hint="rerun with --overwrite to start fresh or choose another --out_dir")
        with torch.no_grad():
            for k, v in saved["bend"].items():
                curve.bend[k].copy_(v)
        optimizer.load_state_dict(saved["optimizer"])
        start = int(saved["epoch"])
        print(f"resuming the curve training after epoch {start} of {args.epochs} ({path})"
              if start < args.epochs else f"curve already trained ({args.epochs} epochs, {path})",
              file=sys.stderr, flush=True)
    loss_fn = get_loss_fn(args.loss_name)
    x, y = data.train_x.to(device), data.train_y.to(device)
    caught = {"signum": None}

    def on_signal(signum, frame):
        caught["signum"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for epoch in range(start + 1, args.epochs + 1):
            t0 = time.perf_counter()
            loss = train_epoch(net, curve, optimizer, x, y, loss_fn, epoch, args.epochs, args.lr,
                               args.batch_size, args.weight_decay, args.seed,
                               stop=lambda: caught["signum"] is not None)
            if loss is None:
                break
            if not math.isfinite(loss):
                raise UserError(f"the curve training diverged (loss {loss} in epoch {epoch}); lower --lr and "
                                "rerun with --overwrite")
            save_train_state(path, curve, optimizer, epoch, settings)
            print(f"curve epoch {epoch}/{args.epochs}: train loss on the curve {loss:.4f} "
                  f"({time.perf_counter() - t0:.2f} s)", flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if caught["signum"] is not None:
        print(f"interrupted: the curve training is saved in {path} up to its last finished epoch; "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(128 + caught["signum"])
    if args.epochs == 0:  # the bend stays the midpoint: the curve is the line
        save_train_state(path, curve, optimizer, 0, settings)


def save_train_state(path, curve, optimizer, epoch, settings):
    state = {"epoch": epoch, "settings": settings, "optimizer": optimizer.state_dict(),
             "bend": {k: v.detach().cpu() for k, v in curve.bend.items()}}
    with written_atomically(path) as tmp:
        torch.save(state, tmp)


def save_checkpoints(args, net, curve, data, device, bn_update, settings):
    """Rank 0: bend.t7, midpoint.t7 and curve.t7, in the original checkpoint format."""
    mid = curve.state_at(0.5)
    if bn_update:
        net.load_state_dict(mid)
        update_bn(net, data.train_x.to(device), args.batch_size)
        mid = net.state_dict()
    cpu = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}
    info = {"curve": args.curve, "model": args.model, "model_file": os.path.abspath(args.model_file),
            "model_file2": os.path.abspath(args.model_file2), "settings": settings}
    write_curve_projection(os.path.join(args.out_dir, PROJ), curve, np.linspace(0, 1, max(args.points, 51)))
    for name, obj in ((BEND, {"state_dict": cpu(curve.bend_state()), **info}),
                      (MIDPOINT, {"state_dict": cpu(mid), "t": 0.5, **info}),
                      (CURVE, {"state_dict": cpu(mid), **info,
                               "curve": {"kind": curve.kind, "start": cpu(curve.start),
                                         "bend": cpu(curve.bend), "end": cpu(curve.end)}})):
        with written_atomically(os.path.join(args.out_dir, name)) as tmp:
            torch.save(obj, tmp)


def write_curve_projection(path: str, curve: Curve, ts) -> None:
    """The curve in the plane of plot_surface.py --model_file A --model_file2 B
    --model_file3 bend.t7: θ(t) = θ_A + c_B(t) (θ_B − θ_A) + c_b(t) (θ_b − θ_A), so
    (x, y) = (c_B(t), c_b(t)); a projection file for plot_2D.py --proj_file."""
    import h5py
    xy = np.array([curve.coefficients(t)[2:0:-1] for t in ts], dtype=np.float64)
    with written_atomically(path) as tmp, h5py.File(tmp, "w") as f:
        f["proj_xcoord"], f["proj_ycoord"], f["t"] = xy[:, 0], xy[:, 1], np.asarray(ts, dtype=np.float64)
        f.attrs["method"] = f"{curve.kind} curve in the plane (θ_B − θ_A, θ_bend − θ_A)"


def on_rank0(comm, fn):
    """Run ``fn`` on rank 0 while the others wait without spinning; a UserError there is
    raised on every rank."""
    result, err = None, None
    if mpi4pytorch.rank(comm) == 0:
        try:
            result = fn()
        except UserError as e:
            err = str(e)
    if comm is not None:
        req = comm.Ibarrier()
        while not req.Test():
            time.sleep(0.05)
    err = mpi4pytorch.bcast(comm, err)
    if err is not None:
        raise UserError(err)
    return result


def evaluate(args, comm, rank, net, curve, data, device, bn_update, settings):
    """Loss and accuracy at ``--points`` values of t on both paths, points shared by ranks."""
    splits = ["train"] + (["test"] if args.test else [])
    metrics = [f"{path}_{s}_{m}" for path in ("line", "curve") for s in splits for m in ("loss", "acc")]
    ts = np.linspace(0.0, 1.0, args.points)
    surf_file = os.path.join(args.out_dir, RESULTS)

    def open_writer():
        w = SurfaceWriter(surf_file, ts, None, metrics, settings, overwrite=args.overwrite)
        w.save()
        return w

    t0 = time.perf_counter()
    writer = mpi4pytorch.check_all(comm, open_writer)
    loss_fn = get_loss_fn(args.loss_name)
    evaluators = {s: Evaluator(net, *data.split(s), loss_fn, args.batch_size, device, args.precision)
                  for s in splits}
    train_x = evaluators["train"].x  # the copy on the device the evaluator holds

    def compute(k):
        t = float(ts[k])
        out = {}
        for path, state in (("line", line_state(curve.start, curve.end, t)), ("curve", curve.state_at(t))):
            net.load_state_dict(state)
            if bn_update:
                update_bn(net, train_x, args.batch_size)
            net.eval()
            for s, ev in evaluators.items():
                out[f"{path}_{s}_loss"], out[f"{path}_{s}_acc"] = ev()
        return out

    runner.run(comm, writer if rank == 0 else None, compute, desc="mode connectivity", save_every=args.save_every,
               progress=not args.no_progress, setup_seconds=time.perf_counter() - t0,
               notes=["BN re-estimated at each point" if bn_update else "no BN re-estimation"])
    if rank == 0:
        writer.close()
    return writer, ts, splits


def summarize(writer, ts, splits):
    """Rank 0: barrier heights of both paths into the results file; a printed table."""
    table = {}
    for path in ("line", "curve"):
        for s in splits:
            table[f"{path}_{s}_loss"] = barrier_heights(ts, writer.values[f"{path}_{s}_loss"])
    writer.attrs["barriers"] = json.dumps(table, sort_keys=True)
    for name, b in table.items():
        writer.attrs[f"{name}_barrier_max"] = b["barrier_max"]
        writer.attrs[f"{name}_barrier_interp"] = b["barrier_interp"]
    writer.dirty = True
    writer.save()
    print("barrier heights of the loss (barrier_max = max_t L(t) - max(L(0), L(1)); "
          "barrier_interp = max_t [L(t) - ((1-t) L(0) + t L(1))]):")
    for name, b in table.items():
        print(f"  {name:<16} barrier_max {b['barrier_max']:9.4f} (t={b['t_max']:.3f})   "
              f"barrier_interp {b['barrier_interp']:9.4f} (t={b['t_interp']:.3f})")
    return table


def read_results(path: str) -> dict:
    """The results file: t, every metric, and the barrier table."""
    surf = read_surface(path)
    out = {"t": surf.x, **surf.values}
    out["barriers"] = json.loads(surf.attrs.get("barriers", "{}"))
    out["settings"] = surf.settings
    return out


def plot(args: argparse.Namespace, surf_file: str):
    """Loss and accuracy vs t along the line and the curve, one figure (a log loss axis
    with --log, or when the losses span 3 decades; --no-log: linear); returns the Plots."""
    from plot_common import Plots, finish, pyplot, save_figure, value_scale
    r = read_results(surf_file)
    losses = [np.asarray(r[k], float) for k in r if str(k).endswith("_loss")]
    scale = value_scale(np.concatenate(losses), log=args.log)      # the rule of every plot
    plt = pyplot(args.show)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"line": ("tab:red", "straight line"), "curve": ("tab:blue", f"{args.curve} curve")}
    for path, (color, label) in styles.items():
        for s, dash in (("train", "-"), ("test", "--")):
            if f"{path}_{s}_loss" not in r:
                continue
            b = r["barriers"].get(f"{path}_{s}_loss", {})
            extra = f" (barrier {b['barrier_interp']:.3g})" if b else ""
            ax_l.plot(r["t"], r[f"{path}_{s}_loss"], dash, color=color, marker=".", label=f"{label}, {s}{extra}")
            ax_a.plot(r["t"], r[f"{path}_{s}_acc"], dash, color=color, marker=".", label=f"{label}, {s}")
    ax_l.set_xlabel("t")
    ax_l.set_ylabel("loss (log scale)" if scale.log else "loss")
    ax_a.set_xlabel("t")
    ax_a.set_ylabel("accuracy (%)")
    if scale.log:
        ax_l.set_yscale("log")
    ax_l.legend(fontsize=8)
    ax_a.legend(fontsize=8)
    fig.suptitle(f"{args.model}: {os.path.basename(args.model_file)} (t=0) to "
                 f"{os.path.basename(args.model_file2)} (t=1)", fontsize=10)
    plots = Plots()
    save_figure(fig, os.path.join(args.out_dir, "mode_connectivity"), ["pdf", "png"], plots, "paths", args.show)
    return finish(plots, args.show)


def main(argv=None):
    args = parse_args(argv)
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    device, data, net, state_a, state_b = load_endpoints(args, comm)
    bn_update = has_batchnorm(net) if args.bn_update is None else args.bn_update
    curve = Curve(net, state_a, state_b, args.curve).to(device)
    settings = train_settings(args, data)

    def train_on_rank0():
        os.makedirs(args.out_dir, exist_ok=True)
        train(args, net, curve, data, device, settings)
        save_checkpoints(args, net, curve, data, device, bn_update, settings)

    on_rank0(comm, train_on_rank0)
    if rank != 0:  # the bend trained on rank 0
        saved = _load_train_state(os.path.join(args.out_dir, TRAIN_STATE))
        with torch.no_grad():
            for k, v in saved["bend"].items():
                curve.bend[k].copy_(v.to(device))
    bend_hash = dataloader.tensor_hash(*(curve.bend[k] for k in sorted(curve.bend)))
    eval_settings = {**settings, "kind": "mode_connectivity", "bend_hash": bend_hash,
                     "points": args.points, "bn_update": bool(bn_update), "precision": args.precision,
                     "test": bool(args.test)}
    writer, ts, splits = evaluate(args, comm, rank, net, curve, data, device, bn_update, eval_settings)
    if rank == 0:
        summarize(writer, ts, splits)
        print(f"done: {os.path.join(args.out_dir, RESULTS)}; checkpoints {BEND}, {MIDPOINT}, {CURVE} "
              f"in {args.out_dir}", flush=True)
        if args.plot:
            plot(args, writer.path)


if __name__ == "__main__":
    run_main(main)
