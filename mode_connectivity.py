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
``barrier_max``     max_t L(t) − max(L0, L1)
``barrier_interp``  max_t [L(t) − ((1−t) L0 + t L1)]
each against two references, both stored and printed: ``barriers`` with L0, L1 = L(0),
L(1), the path's own ends (BN statistics re-estimated there with --bn_update), and
``barriers_checkpoints`` with L0, L1 = the checkpoints' own losses (their saved BN
statistics). Without BN re-estimation the two are the same.

Outputs in ``--out_dir`` (default: mode_connectivity_<curve> next to --model_file):
``bend.t7``, ``midpoint.t7`` (θ(0.5) = (θ_A + 2θ_b + θ_B)/4, on the curve, BN
statistics re-estimated with --bn_update) and ``curve.t7`` (state_dict = the
midpoint, plus the whole curve: ``curves.load_curve``), all in the original checkpoint
format {'state_dict': ...}; ``mode_connectivity.h5`` (a 1D surface file over t: line_* and
curve_* losses and accuracies, barrier heights and settings as attributes;
``curves.read_results``); with ``--plot`` ``mode_connectivity.pdf/.png`` (both paths, loss and
accuracy vs t); ``curve_proj.h5`` (the curve's (x, y) in the plane through θ_A, θ_B
and the bend: ``plot_2D.py --proj_file`` draws it on that plane's contours);
``train_state.pt`` (the bend and the optimizer after every epoch).

Resume: a rerun of the same command continues training from the last finished epoch
and computes only the evaluation points not yet saved; with other settings it is
refused unless ``--overwrite``; a file in ``--out_dir`` that this script did not write
(or an input of the run) is never replaced, not even with ``--overwrite``. ``--mpi``:
training runs on rank 0 (the other ranks wait without spinning; SIGTERM/SIGINT to any
rank stops it after the step at hand, every rank exits with 128 + the signal), the
evaluation points are shared among all ranks. The curve, its training and the barrier
heights are the library ``curves.py``.
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
import sys
import time

import numpy as np
import torch

import dataloader
import model_loader
import mpi4pytorch
from curves import (CURVES, FORMAT, Curve, aliases, barrier_heights, check_trainable, curve_projection,
                    has_batchnorm, is_own_file, line_state, make_optimizer, read_results, save_torch, train_epoch,
                    update_bn)
from errors import UserError, run_main
from evaluation import Evaluator, get_loss_fn
import grid
import runner
from fileio import check_not_input, check_output_path, check_reuse, h5_written_atomically
from store import Lock
from surface import SurfaceStore

TRAIN_STATE, BEND, MIDPOINT, CURVE, RESULTS, PROJ = ("train_state.pt", "bend.t7", "midpoint.t7", "curve.t7",
                                                     "mode_connectivity.h5", "curve_proj.h5")


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
OUTPUTS = (TRAIN_STATE, BEND, MIDPOINT, CURVE, RESULTS, PROJ)


def load_endpoints(args, comm):
    """Device, data, the model (at θ_A) and the two end states; checks they differ."""
    device, data, net = grid.load_run(args, comm)
    state_a = {k: v.clone() for k, v in net.state_dict().items()}
    state_b = model_loader.load(args.model, args.model_file2, args.unsafe_load).state_dict()
    if all(torch.equal(state_a[k], state_b[k]) for k in aliases(net)):
        raise UserError(f"--model_file and --model_file2 hold the same weights ({args.model_file}, "
                        f"{args.model_file2}): there is no path between them to train")
    return device, data, net.to(device), state_a, state_b


def check_inputs(args, net, curve, data, device):
    """Rank 0, before anything is written: no output may be an input or a file this
    script did not write (not even with --overwrite), and the loss must train the curve."""
    for name in OUTPUTS:
        path = os.path.join(args.out_dir, name)
        check_not_input(path, "output file", runner.inputs_of(args))
        if os.path.exists(path) and not is_own_file(path):
            raise UserError(f"{path} exists and was not written by mode_connectivity.py; move it away or choose "
                            "another --out_dir (--overwrite replaces only files this script wrote)")
    if args.epochs > 0:
        x, y = data.train_x[:2].to(device), data.train_y[:2].to(device)
        check_trainable(net, curve, x, y, get_loss_fn(args.loss_name), args.loss_name)


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
    except Exception as e:  # a damaged file: say so in one line
        raise UserError(f"cannot read {path} ({str(e).splitlines()[0][:120]}); rerun with --overwrite")


def resume_training(args, curve, optimizer, settings) -> int:
    """The last finished epoch of a saved training with the same settings (0: none)."""
    path = os.path.join(args.out_dir, TRAIN_STATE)
    if not os.path.exists(path) or args.overwrite:
        return 0
    saved = _load_train_state(path)
    check_reuse(path, saved.get("settings") if isinstance(saved, dict) else None, settings,
                "the curve training", hint="rerun with --overwrite to start fresh or choose another --out_dir")
    curve.set_bend(saved["bend"])
    optimizer.load_state_dict(saved["optimizer"])
    start = int(saved["epoch"])
    print(f"resuming the curve training after epoch {start} of {args.epochs} ({path})"
          if start < args.epochs else f"curve already trained ({args.epochs} epochs, {path})",
          file=sys.stderr, flush=True)
    return start


def train(args, net, curve, data, device, settings, stop) -> bool:
    """Rank 0: train the bend (or resume/reuse a finished training); save it every epoch.
    False when ``stop()`` ended it early (the last finished epoch is saved)."""
    path = os.path.join(args.out_dir, TRAIN_STATE)
    optimizer = make_optimizer(curve, args.lr, args.momentum)
    start = resume_training(args, curve, optimizer, settings)
    loss_fn = get_loss_fn(args.loss_name)
    x, y = data.train_x.to(device), data.train_y.to(device)
    for epoch in range(start + 1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(net, curve, optimizer, x, y, loss_fn, epoch, args.epochs, args.lr,
                           args.batch_size, args.weight_decay, args.seed, stop=stop)
        if loss is None:
            return False
        if not math.isfinite(loss):
            raise UserError(f"the curve training diverged (loss {loss} in epoch {epoch}); lower --lr and "
                            "rerun with --overwrite")
        save_train_state(path, curve, optimizer, epoch, settings)
        print(f"curve epoch {epoch}/{args.epochs}: train loss on the curve {loss:.4f} "
              f"({time.perf_counter() - t0:.2f} s)", flush=True)
        if stop():
            return False
    if args.epochs == 0:  # the bend stays the midpoint: the curve is the line
        save_train_state(path, curve, optimizer, 0, settings)
    return True


def save_train_state(path, curve, optimizer, epoch, settings):
    save_torch({"format": FORMAT, "epoch": epoch, "settings": settings, "optimizer": optimizer.state_dict(),
                "bend": {k: v.detach().cpu() for k, v in curve.bend.items()}}, path)


def save_checkpoints(args, net, curve, data, device, bn_update, settings):
    """Rank 0: bend.t7, midpoint.t7 and curve.t7, in the original checkpoint format."""
    mid = curve.state_at(0.5)
    if bn_update:
        net.load_state_dict(mid)
        update_bn(net, data.train_x.to(device), args.batch_size)
        mid = net.state_dict()
    cpu = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}
    info = {"format": FORMAT, "curve": args.curve, "model": args.model,
            "model_file": os.path.abspath(args.model_file), "model_file2": os.path.abspath(args.model_file2),
            "settings": settings}
    write_curve_projection(os.path.join(args.out_dir, PROJ), curve, np.linspace(0, 1, max(args.points, 51)))
    for name, obj in ((BEND, {"state_dict": cpu(curve.bend_state()), **info}),
                      (MIDPOINT, {"state_dict": cpu(mid), "t": 0.5, **info}),
                      (CURVE, {"state_dict": cpu(mid), **info,
                               "curve": {"kind": curve.kind, "start": cpu(curve.start),
                                         "bend": cpu(curve.bend), "end": cpu(curve.end)}})):
        save_torch(obj, os.path.join(args.out_dir, name))


def write_curve_projection(path: str, curve: Curve, ts) -> None:
    """curves.curve_projection as a projection file for plot_2D.py --proj_file."""
    xy = curve_projection(curve, ts)
    with h5_written_atomically(path) as f:
        f["proj_xcoord"], f["proj_ycoord"], f["t"] = xy[:, 0], xy[:, 1], np.asarray(ts, dtype=np.float64)
        f.attrs["method"] = f"{curve.kind} curve in the plane (θ_B − θ_A, θ_bend − θ_A)"
        f.attrs["format"] = FORMAT


def point_compute(args, net, curve, evaluators, ts, bn_update):
    """compute(k): loss and accuracy of both paths at t = ts[k] (BN re-estimated first with bn_update)."""
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
    return compute


def evaluate(args, comm, rank, net, curve, data, device, bn_update, settings):
    """Loss and accuracy at ``--points`` values of t on both paths, points shared by the
    ranks (the one result store and runner); rank 0 also evaluates the checkpoints
    themselves (their own BN statistics): the second barrier reference."""
    splits = ["train"] + (["test"] if args.test else [])
    metrics = [f"{path}_{s}_{m}" for path in ("line", "curve") for s in splits for m in ("loss", "acc")]
    ts = np.linspace(0.0, 1.0, args.points)
    t0 = time.perf_counter()
    store = mpi4pytorch.check_all(comm, lambda: SurfaceStore(
        os.path.join(args.out_dir, RESULTS), ts, None, metrics, settings, overwrite=args.overwrite,
        inputs=runner.inputs_of(args)))
    loss_fn = get_loss_fn(args.loss_name)
    evaluators = {s: Evaluator(net, *data.split(s), loss_fn, args.batch_size, device, args.precision)
                  for s in splits}
    runner.run(comm, store, point_compute(args, net, curve, evaluators, ts, bn_update), what="points",
               desc="mode connectivity", save_every=args.save_every, progress=not args.no_progress,
               setup_seconds=time.perf_counter() - t0,
               notes=["BN re-estimated at each point" if bn_update else "no BN re-estimation"])
    ends = {}
    if rank == 0:
        for s, ev in evaluators.items():
            ends[s] = []
            for state in (curve.start, curve.end):
                net.load_state_dict(state)
                net.eval()
                ends[s].append(ev()[0])
    return store, ts, splits, ends


def summarize(store, ts, splits, ends):
    """Rank 0: barrier heights of both paths into the results file; a printed table.

    ``barriers``: against the path's own ends L(0), L(1) (BN statistics re-estimated
    there with --bn_update); ``barriers_checkpoints``: against the checkpoints' own
    losses (their saved BN statistics)."""
    table, own = {}, {}
    for path in ("line", "curve"):
        for s in splits:
            name = f"{path}_{s}_loss"
            table[name] = barrier_heights(ts, store.values[name])
            own[name] = barrier_heights(ts, store.values[name], ends=tuple(ends[s]))
    store.attrs["barriers"] = json.dumps(table, sort_keys=True)
    store.attrs["barriers_checkpoints"] = json.dumps(own, sort_keys=True)
    store.attrs["checkpoint_losses"] = json.dumps(ends, sort_keys=True)
    for name, b in table.items():
        store.attrs[f"{name}_barrier_max"] = b["barrier_max"]
        store.attrs[f"{name}_barrier_interp"] = b["barrier_interp"]
    store.dirty = True
    store.save()
    print("barrier heights of the loss (barrier_max = max_t L(t) - max(L0, L1); "
          "barrier_interp = max_t [L(t) - ((1-t) L0 + t L1)]):")
    for label, tab, ref in (("path ends", table, "L0, L1 = L(0), L(1) on the path"),
                            ("checkpoints", own, "L0, L1 = the checkpoints' own losses")):
        print(f" against the {label} ({ref}):")
        for name, b in tab.items():
            print(f"  {name:<16} barrier_max {b['barrier_max']:9.4f} (t={b['t_max']:.3f})   "
                  f"barrier_interp {b['barrier_interp']:9.4f} (t={b['t_interp']:.3f})")
    return table


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


def set_up(args, comm):
    """The model, data, end points and curve, every input checked (on rank 0) before any write."""
    device, data, net, state_a, state_b = load_endpoints(args, comm)
    bn_update = has_batchnorm(net) if args.bn_update is None else args.bn_update
    curve = Curve(net, state_a, state_b, args.curve).to(device)
    mpi4pytorch.check_all(comm, lambda: check_inputs(args, net, curve, data, device))
    return device, data, net, curve, bn_update, train_settings(args, data)


def main(argv=None):
    args = parse_args(argv)
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    state_file = os.path.join(args.out_dir, TRAIN_STATE)
    with runner.Signals() as sig:  # until the evaluation (runner.run's own): honoured at the next phase boundary
        device, data, net, curve, bn_update, settings = set_up(args, comm)

        def train_on_rank0(stop):
            os.makedirs(args.out_dir, exist_ok=True)
            lock = Lock(state_file, "the curve training")  # one run per --out_dir
            try:
                if train(args, net, curve, data, device, settings, stop):
                    save_checkpoints(args, net, curve, data, device, bn_update, settings)
            finally:
                lock.release()

        saved = f"the curve training is saved in {state_file} up to its last finished epoch"
        runner.on_rank0(comm, train_on_rank0, saved, sig)
        if rank != 0:  # the bend trained on rank 0
            curve.set_bend({k: v.to(device) for k, v in _load_train_state(state_file)["bend"].items()})
        runner.stop_if_signalled(comm, sig, saved)
    bend_hash = dataloader.tensor_hash(*(curve.bend[k] for k in sorted(curve.bend)))
    eval_settings = {**settings, "kind": "mode_connectivity", "bend_hash": bend_hash,
                     "points": args.points, "bn_update": bool(bn_update), "precision": args.precision,
                     "test": bool(args.test)}
    store, ts, splits, ends = evaluate(args, comm, rank, net, curve, data, device, bn_update, eval_settings)
    if rank == 0:
        summarize(store, ts, splits, ends)
        store.close()
        print(f"done: {os.path.join(args.out_dir, RESULTS)}; checkpoints {BEND}, {MIDPOINT}, {CURVE} "
              f"in {args.out_dir}", flush=True)
        if args.plot:
            plot(args, store.path)


if __name__ == "__main__":
    run_main(main)
