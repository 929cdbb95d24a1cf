"""Put a second network into the permutation of a first one (barriers modulo permutation)
and merge networks, for any model torch.fx can trace.

    python align.py --model digits_mlp --model_file A.t7 --model_file2 B.t7 --out B_aligned.t7
    python align.py --model resnet20 --model_file A.t7 --model_file2 B.t7 --out B_al.t7 \\
        --method activation --max_samples 5000 --barrier
    python align.py --model digits_cnn --model_file A.t7 --model_file2 B.t7 C.t7 --merge --out merged.t7

Hidden units can be permuted without changing what a network computes; two networks
trained from different seeds differ by such a permutation as much as by anything else.
The permutation groups (which axes of which tensors move together) are inferred from the
model's torch.fx graph (alignment.py says how); ``--method weight`` matches the units by
their weights (Git Re-Basin's weight matching: coordinate descent over the groups, one
linear assignment per step, until no group improves), ``--method activation`` by the
correlation of their activations on the training data (``--max_samples`` of them).

Before anything is written, the aligned B is checked to compute the same function as B
(the largest logit difference on real inputs, printed and stored): a model that does not
is refused. Written: ``--out`` (a checkpoint in the original format {'state_dict', 'acc',
'epoch'} with an 'alignment' entry, JSON text) and the report ``<out>.json`` (groups and
sizes, fraction of units moved, objective before and after, parameters left unpermuted,
the logit check, the barrier table and the merge's metrics when asked).

``--barrier``: the loss and accuracy along the straight line A→B (naive), A→aligned B,
and, for models with BatchNorm, the same with the running statistics re-estimated at each
point on ``--bn_update`` training batches; barrier_max and barrier_interp (as in
mode_connectivity.py) of the loss and of the error (100 − accuracy), train and test.
``--merge [T]``: writes the point T of the aligned line ((1−T)·A + T·aligned B, BN
statistics re-estimated with ``--bn_update``) instead of the aligned B, with its loss and
accuracy; with several ``--model_file2`` each is aligned to A and ``--out`` is their mean.
``plot_surface.py --model_file A --model_file2 B_aligned.t7 --dir_type states`` draws the
aligned line as any line (add ``--bn_update N`` for BatchNorm models).
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import dataloader
import flags
from errors import UserError, run_main

if TYPE_CHECKING:  # torch is imported only once the flags are checked
    import torch

METHODS = ("weight", "activation")
TOLERANCE = 1e-4  # the largest logit difference allowed, relative to the largest logit


def build_parser() -> argparse.ArgumentParser:
    p = flags.command_parser(__file__, __doc__)
    g = p.add_argument_group("models")
    g.add_argument("--model", default="digits_mlp", help="zoo name (vgg9, resnet20, ..., digits_cnn) or "
                   "package.module:factory")
    g.add_argument("--model_file", default="", help="checkpoint A (the reference; never changed)")
    g.add_argument("--model_file2", nargs="+", default=[], help="checkpoint B to align to A (several: "
                   "each aligned to A, with --merge)")
    g.add_argument("--unsafe_load", action="store_true", help="allow full unpickling of trusted checkpoint files")
    g.add_argument("--loss_name", "-l", default="crossentropy", help="crossentropy, mse or package.module:function")
    g = p.add_argument_group("alignment")
    g.add_argument("--method", default="weight", choices=METHODS, help="match units by weights or by "
                   "the correlation of their activations on the training data")
    g.add_argument("--seed", type=int, default=0, help="random order of the groups in weight matching")
    g.add_argument("--max_sweeps", type=int, default=100, help="most sweeps over the groups (weight matching)")
    g.add_argument("--batch_size", type=int, default=128, help="batch size of every evaluation")
    dataloader.add_data_args(p)
    g = p.add_argument_group("barriers and merging")
    g.add_argument("--barrier", action="store_true", help="print and store the barrier table")
    g.add_argument("--points", type=int, default=11, help="points along each line of the barrier table")
    g.add_argument("--bn_update", type=int, default=10, help="training batches to re-estimate BatchNorm "
                   "statistics on (barrier table and merge; 0: none)")
    g.add_argument("--curve_file", default="", help="with --barrier: the result file of mode_connectivity.py "
                   "for the same pair (its --out_dir/mode_connectivity.h5): the trained curve as one more row")
    g.add_argument("--merge", type=float, nargs="?", const=0.5, default=None,
                   help="write the point T of the aligned line (default T when given without a value: 0.5)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="", help="the aligned (or merged) checkpoint; the report is <out>.json")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _check_paths(args: argparse.Namespace) -> None:
    if not args.model_file or not args.model_file2:
        raise UserError("give the two models: --model_file A.t7 --model_file2 B.t7")
    if not args.out:
        raise UserError("give the output checkpoint: --out B_aligned.t7")
    ins = [os.path.abspath(p) for p in [args.model_file, *args.model_file2]]
    if len(set(ins)) != len(ins):
        raise UserError("--model_file and --model_file2 name the same file twice; give different checkpoints")
    if os.path.abspath(args.out) in ins:
        raise UserError(f"--out {args.out} is one of the input checkpoints; choose another file name")
    for path in ins:
        if not os.path.isfile(path):
            raise UserError(f"checkpoint not found: {path}")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; give a file name")
    if os.path.exists(args.out) and not args.overwrite:
        raise UserError(f"--out {args.out} exists; pass --overwrite to replace it or choose another name")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (before torch is imported); every problem is one line."""
    args = build_parser().parse_args(argv)
    _check_paths(args)
    for flag, low in (("points", 2), ("batch_size", 1), ("bn_update", 0), ("seed", 0), ("max_sweeps", 1)):
        if getattr(args, flag) < low:
            raise UserError(f"--{flag} must be >= {low} (got {getattr(args, flag)})")
    if args.merge is not None and not 0.0 <= args.merge <= 1.0:
        raise UserError(f"--merge T must be in [0, 1] (got {args.merge})")
    if len(args.model_file2) > 1 and args.merge is None:
        raise UserError("several --model_file2 are merged into one: add --merge")
    if len(args.model_file2) > 1 and args.merge != 0.5:
        raise UserError("--merge T is for two models; with several --model_file2 the merge is their mean: "
                        "give --merge without a value")
    if len(args.model_file2) > 1 and args.barrier:
        raise UserError("--barrier is for one pair: give a single --model_file2")
    if args.curve_file and not args.barrier:
        raise UserError("--curve_file adds a row to the barrier table: add --barrier")
    if args.curve_file and not os.path.isfile(args.curve_file):
        raise UserError(f"--curve_file {args.curve_file} not found (mode_connectivity.py writes "
                        "<out_dir>/mode_connectivity.h5)")
    return args


# ============================================================================== story
def load(args: argparse.Namespace) -> dict:
    """The data, model A and its permutation spec."""
    import model_loader
    from alignment import infer_spec
    from evaluation import get_loss_fn
    data = dataloader.load_data(args)
    net = model_loader.load(args.model, args.model_file, args.unsafe_load)
    loss_fn = get_loss_fn(args.loss_name)
    model_loader.check_fits(net, data, args.model, loss_fn=loss_fn, loss_name=args.loss_name)
    spec = infer_spec(net, data.train_x[:8], f"--model {args.model}")
    state_a = {k: v.clone() for k, v in net.state_dict().items()}
    return {"data": data, "net": net, "spec": spec, "state_a": state_a, "loss_fn": loss_fn}


def load_b(run: dict, path: str, args: argparse.Namespace) -> dict:
    """Checkpoint B as a state_dict of A's architecture; one line if it is another one or A itself."""
    import torch

    import model_loader
    state = model_loader.load_state_dict(path, args.unsafe_load)
    net = model_loader.build_model(args.model)
    try:
        model_loader.apply_state_dict(net, state, path)
    except UserError as e:
        raise UserError(f"--model_file2 {path} is not a {args.model} like --model_file ({e})")
    state = net.state_dict()
    if all(torch.equal(state[k], v) for k, v in run["state_a"].items()):
        raise UserError(f"--model_file2 {path} holds the same weights as --model_file; give another checkpoint")
    return {k: v.clone() for k, v in state.items()}


def align_one(run: dict, path: str, args: argparse.Namespace) -> dict:
    """B aligned to A, checked to compute B's function."""
    import time

    import alignment as al
    spec, net, state_a = run["spec"], run["net"], run["state_a"]
    state_b = load_b(run, path, args)
    keys = [k for k, _ in net.named_parameters()]
    t0 = time.perf_counter()
    if args.method == "weight":
        perms, sweeps = al.weight_matching(spec, state_a, state_b, keys, args.seed, args.max_sweeps)
    else:
        net_b = model_with(args, state_b)
        perms, sweeps = al.activation_matching(spec, net, net_b, run["data"].train_x, args.batch_size), 1
    seconds = time.perf_counter() - t0
    aligned = al.permute_state(state_b, spec, perms)
    diff, rel = al.max_logit_difference(net, state_b, aligned, run["data"].train_x[:256])
    net.load_state_dict(state_a)
    print(f"{path}: {args.method} matching in {seconds:.2f} s ({sweeps} sweeps), {al.moved_fraction(perms):.1%} "
          f"of the units moved; largest logit difference aligned vs original {diff:.3g} (relative {rel:.3g})",
          flush=True)
    if not rel <= TOLERANCE:
        raise UserError(f"the aligned {path} does not compute the same function as the original (largest "
                        f"logit difference {diff:.3g}, relative {rel:.3g} > {TOLERANCE}): a pattern of this "
                        "model was misread; nothing written")
    return {"path": path, "state": aligned, "perms": perms, "seconds": seconds, "sweeps": sweeps,
            "logit_diff": diff, "logit_diff_relative": rel,
            "objective": [al.inner_product(state_a, state_b, keys), al.inner_product(state_a, aligned, keys)],
            "distance": [al.distance(state_a, state_b, keys), al.distance(state_a, aligned, keys)]}


def model_with(args: argparse.Namespace, state: dict) -> torch.nn.Module:
    import model_loader
    net = model_loader.build_model(args.model)
    net.load_state_dict(state)
    return net.eval()


def report(run: dict, results: list, args: argparse.Namespace) -> dict:
    """The groups, what moved and what did not (printed and returned for the JSON file)."""
    import alignment as al
    spec, net = run["spec"], run["net"]
    params = [k for k, _ in net.named_parameters()]
    unpermuted = spec.unpermuted(params)
    groups = [{"size": g.size, "entries": [f"{k}[axis {a}]" for k, a, _, _ in g.entries]}
              for g in spec.groups.values()]
    sizes = sorted(g["size"] for g in groups)
    print(f"{len(groups)} permutation groups (sizes {sizes[:12]}{' ...' if len(sizes) > 12 else ''}); "
          f"{len(params) - len(unpermuted)} of {len(params)} parameters permuted", flush=True)
    if unpermuted:
        print(f"left unpermuted: {', '.join(unpermuted[:8])}{' ...' if len(unpermuted) > 8 else ''} "
              "(inputs and outputs of the network stay fixed)", flush=True)
    for note in spec.notes:
        print(f"note: {note}", flush=True)
    for r in results:
        print(f"{r['path']}: objective Σ<A, B> {r['objective'][0]:.6g} -> {r['objective'][1]:.6g}; "
              f"|A - B| {r['distance'][0]:.6g} -> {r['distance'][1]:.6g}", flush=True)
    aligned = []
    for r in results:
        entry = {k: v for k, v in r.items() if k not in ("state", "perms")}
        entry["moved_fraction"] = al.moved_fraction(r["perms"])
        entry["perms"] = [[int(u) for u in p] for p in r["perms"].values()]  # in the order of "groups"
        aligned.append(entry)
    return {"format": "loss-landscape-alignment", "version": 1, "model": args.model,
            "model_file": os.path.abspath(args.model_file), "method": args.method, "groups": groups,
            "unpermuted": unpermuted, "notes": spec.notes, "aligned": aligned}


def evaluators(run: dict, args: argparse.Namespace) -> dict:
    import torch

    from evaluation import Evaluator
    return {s: Evaluator(run["net"], *run["data"].split(s), run["loss_fn"], args.batch_size,
                         torch.device("cpu"), engine="eager")
            for s in ("train", "test") if len(run["data"].split(s)[1])}


def bn_batches(run: dict, args: argparse.Namespace) -> torch.Tensor | None:
    return run["data"].train_x[:args.bn_update * args.batch_size] if args.bn_update else None


def barrier_table(run: dict, aligned: dict, args: argparse.Namespace) -> dict:
    """Naive and aligned lines (and with BN re-estimation for BatchNorm models): printed table."""
    import numpy as np

    import merging
    from curves import has_batchnorm
    state_b = load_b(run, args.model_file2[0], args)
    paths = {"naive": (state_b, False), "aligned": (aligned, False)}
    if has_batchnorm(run["net"]) and args.bn_update:
        paths.update({"naive_bn": (state_b, True), "aligned_bn": (aligned, True)})
    ts = np.linspace(0.0, 1.0, args.points)
    curve = curve_row(args) if args.curve_file else None  # checked before the long evaluations
    table = merging.barrier_table(run["net"], run["state_a"], paths, ts, evaluators(run, args),
                                  bn_batches(run, args), args.batch_size)
    if curve is not None:
        table["curve"] = curve
    run["net"].load_state_dict(run["state_a"])
    print("barriers (barrier_max = max_t L(t) - max(L(0), L(1)); barrier_interp = max_t [L(t) - "
          "((1-t) L(0) + t L(1))]; error = 100 - accuracy %):")
    for name, row in table.items():
        text = "  ".join(f"{what} {b['barrier_max']:.4f}/{b['barrier_interp']:.4f}"
                         for what, b in row["barriers"].items())
        print(f"  {name:<11} {text}", flush=True)
    table["t"] = ts.tolist()
    return table


def curve_row(args: argparse.Namespace) -> dict:
    """The trained curve of mode_connectivity.py between the same A and B (read from its
    result file, refused if it was trained for another pair): values and barrier heights
    at the curve's own t, by the same definitions as the lines."""
    import numpy as np

    import merging
    import model_loader
    from curves import read_results
    res = read_results(args.curve_file)
    settings = res.get("settings") or {}
    want = {"model_hash": model_loader.file_hash(args.model_file),
            "model_hash2": model_loader.file_hash(args.model_file2[0])}
    if any(settings.get(k) != v for k, v in want.items()):
        raise UserError(f"--curve_file {args.curve_file} was trained between other checkpoints than "
                        "--model_file and --model_file2; give the result file of this pair")
    values = {k[len("curve_"):]: np.asarray(res[k], dtype=np.float64).tolist() for k in res
              if k.startswith(("curve_train_", "curve_test_")) and k.endswith(("_loss", "_acc"))}
    return {"values": values, "barriers": merging.barriers(np.asarray(res["t"]), values),
            "t": np.asarray(res["t"], dtype=np.float64).tolist()}


def merge(run: dict, aligned: list, args: argparse.Namespace) -> tuple[dict, dict]:
    """The merged state (point T of the aligned line, or the mean of A and every aligned
    model) with its loss and accuracy."""
    import merging
    from curves import line_state
    if len(aligned) == 1:
        state = line_state(run["state_a"], aligned[0], args.merge)
    else:
        state = merging.mean_state([run["state_a"], *aligned])
    net = merging.at(run["net"], state, bn_batches(run, args), args.batch_size)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    metrics = {"t": args.merge if len(aligned) == 1 else None, "models": 1 + len(aligned)}
    for split, evaluate in evaluators(run, args).items():
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = evaluate()
    print("merged: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("loss", "acc"))),
          flush=True)
    return state, metrics


def write(args: argparse.Namespace, state: dict, rep: dict) -> None:
    """The checkpoint (original format) and its report, each written atomically."""
    import json


    from fileio import save_torch, written_atomically
    acc = rep.get("merge", {}).get("test_acc", rep.get("merge", {}).get("train_acc"))
    obj = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "acc": acc,
           "epoch": None, "alignment": json.dumps({k: rep[k] for k in ("model", "model_file", "method")})}
    save_torch(obj, args.out)
    with written_atomically(args.out + ".json") as tmp, open(tmp, "w") as f:
        json.dump(rep, f, indent=1)
    print(f"done: {args.out} (report {args.out}.json)", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    torch.manual_seed(0)
    run = load(args)
    results = [align_one(run, path, args) for path in args.model_file2]
    rep = report(run, results, args)
    if args.barrier:
        rep["barriers"] = barrier_table(run, results[0]["state"], args)
    if args.merge is not None:
        state, rep["merge"] = merge(run, [r["state"] for r in results], args)
    else:
        state = results[0]["state"]
    write(args, state, rep)


if __name__ == "__main__":
    run_main(main)
