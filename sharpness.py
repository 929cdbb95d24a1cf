"""Sharpness numbers of one or several checkpoints in one table: λmax, the trace of the
Hessian, and the loss increase at filter-normalized radius ρ (random directions and the
worst case found by projected gradient ascent).

    python sharpness.py --model digits_cnn --model_file A.t7 [B.t7 ...] [--rho 0.05,0.1]
        [--n_dirs 10] [--ascent_steps 5] [--trace_samples 50] [--out PREFIX] [--overwrite]
    mpirun -n 4 python sharpness.py --mpi --cuda --model resnet56 --model_file A.t7 B.t7

For each checkpoint θ (model in eval mode, L = the exact mean training loss over the
whole evaluation set, evaluation.Evaluator):

- ``train_loss``/``train_acc``: L(θ) and the accuracy;
- ``lambda_max``: the largest eigenvalue of the Hessian of L with respect to the
  parameters with more than one dimension (hess_vec_prod: Lanczos, ``--eig_tol``);
- ``trace``: Hutchinson's estimate of its trace with ``--trace_samples`` Rademacher
  vectors, and the standard error of that mean;
- for each ρ in ``--rho``: ``random``: L(θ + ρ·d) − L(θ) over ``--n_dirs`` random
  directions d, Gaussian and filter-normalized with biases and BatchNorm parameters left
  alone (the paper's directions: direction i is the x direction of
  ``plot_surface.py --idx i --seed S --xnorm filter --xignore biasbn``, so ρ = 1 is the
  paper's α = 1); mean and standard deviation over the directions;
- ``worst``: the largest L(θ + δ) − L(θ) found by projected gradient ascent on the
  filter-normalized ball {δ : ‖δ_f‖ ≤ ρ‖θ_f‖ for every filter f}: start at ρ·d for the
  random direction with the largest increase, then ``--ascent_steps`` times: the gradient
  g of L at θ + δ, per filter δ_f += ``--ascent_lr``·ρ‖θ_f‖·g_f/‖g_f‖, and δ_f scaled back
  onto the ball where it left it. The increase after every step is stored; ``worst`` is
  the largest of them (so it is at least the largest random increase).

Work is split into items (checkpoint × quantity: loss, λmax, trace, each random
direction, each ascent), kept in one result store (store.KeyedStore, by runner.run);
with ``--mpi`` the ranks take items from a shared counter
(scheduler.run_grid) and rank 0 saves them. Output: a text table on stdout and in
``PREFIX.txt``, an HTML table ``PREFIX.html``, and ``PREFIX.h5`` with every number
and the settings (model and checkpoint hashes, data, ρ, directions, seeds, steps). A
rerun with the same settings computes only the missing items; other settings are
refused unless ``--overwrite``. Default PREFIX: ``<first model_file>_sharpness``.
"""
import argparse
import math
import os

import flags
from errors import UserError, run_main
from fileio import check_output_path
from hessian_options import DEFAULT_CACHE_MB, DEFAULT_TOL
from tables import SHARPNESS_FORMAT

FORMAT = SHARPNESS_FORMAT
FORMAT_VERSION = 1
HTML_MARK = "<!-- written by loss-landscape sharpness.py -->"
TXT_MARK = "# sharpness table written by loss-landscape sharpness.py"


# ----------------------------------------------------------------------------- flags
def build_parser() -> flags.ArgumentParser:
    p = flags.command_parser(__file__, __doc__)
    flags.add_run_group(p, ngpu=False, mpi_help="use MPI (items are shared among the ranks)")
    flags.add_grid_group(p, axes="", engine=False, precision=False)
    flags.add_data_group(p)
    flags.add_model_group(p, checkpoints="many")
    g = p.add_argument_group("sharpness")
    g.add_argument("--rho", default="0.05,0.1", help="radii, comma-separated (filter-normalized)")
    g.add_argument("--n_dirs", type=int, default=10, help="random directions per radius")
    g.add_argument("--ascent_steps", type=int, default=5, help="projected gradient ascent steps (0: none)")
    g.add_argument("--ascent_lr", type=float, default=0.5,
                   help="ascent step per filter, as a fraction of ρ·‖filter‖")
    g.add_argument("--trace_samples", type=int, default=50, help="Rademacher vectors for the trace")
    g.add_argument("--eig_tol", type=float, default=DEFAULT_TOL, help="Lanczos tolerance of λmax")
    g.add_argument("--eig_maxiter", type=int, default=None, help="Lanczos restarts before giving up")
    g.add_argument("--hess_cache_mb", type=float, default=DEFAULT_CACHE_MB,
                   help="memory for the gradient graphs kept between Hessian products (0: none)")
    flags.add_seed(p, "seed of the directions, Lanczos start and trace vectors")
    g = flags.add_output_group(p, surf_file=False, test=False,
                               overwrite_help="recompute an existing PREFIX.h5 from scratch")
    g.add_argument("--out", default="", help="output prefix: PREFIX.h5, PREFIX.html, PREFIX.txt "
                   "(default: <first model_file>_sharpness)")
    flags.add_check(p, check_args)
    return p


def parse_rho(text: str) -> list[float]:
    try:
        radii = [float(v) for v in str(text).split(",")]
    except ValueError:
        radii = []
    if not radii or not all(math.isfinite(r) and r > 0 for r in radii):
        raise UserError(f"--rho must be positive numbers separated by commas, e.g. 0.05,0.1 (got '{text}')")
    if len(set(radii)) != len(radii):
        raise UserError(f"--rho lists a radius twice ('{text}')")
    return radii


def check_args(args: argparse.Namespace) -> None:
    """This script's flags (after the groups' checks, which join --model_folder)."""
    args.radii = parse_rho(args.rho)
    if not args.model_file:
        raise UserError("give at least one checkpoint: --model_file A.t7 [B.t7 ...]")
    for f in args.model_file:
        if not os.path.isfile(f):
            raise UserError(f"checkpoint not found: {f}")
    checks = [(args.n_dirs >= 1, "--n_dirs must be >= 1"),
              (args.ascent_steps >= 0, "--ascent_steps must be >= 0"),
              (math.isfinite(args.ascent_lr) and args.ascent_lr > 0, "--ascent_lr must be a positive number"),
              (args.trace_samples >= 2, "--trace_samples must be >= 2 (the standard error needs two)"),
              (math.isfinite(args.eig_tol) and args.eig_tol >= 0, "--eig_tol must be a finite number >= 0"),
              (args.eig_maxiter is None or args.eig_maxiter >= 1, "--eig_maxiter must be >= 1")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    args.out = args.out or args.model_file[0] + "_sharpness"
    _check_out(args.out, args.overwrite)


def _check_out(out: str, overwrite: bool) -> None:
    for ext in ("", ".h5", ".html", ".txt"):
        if os.path.isdir(out + ext):
            raise UserError(f"--out {out}: {out + ext} is a folder; give a file prefix "
                            f"(e.g. {os.path.join(out, 'sharpness')})")
        check_output_path(out + ext, "--out")
    for ext, mark in ((".html", HTML_MARK), (".txt", TXT_MARK)):
        path = out + ext
        if os.path.isfile(path):  # --overwrite too: it replaces only our own files
            with open(path, errors="replace") as f:
                if mark not in f.read(300):
                    raise UserError(f"{path} exists and was not written by sharpness.py; move it away or "
                                    "choose another --out (--overwrite replaces only files sharpness.py wrote)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return flags.parse_args(build_parser(), argv)


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import html  # noqa: E402
import time

import numpy as np
import torch

import dataloader
import model_loader
import mpi4pytorch
import net_plotter
from evaluation import Evaluator, get_loss_fn
from fileio import written_atomically
from hess_vec_prod import hessian_operator, hessian_params, hutchinson_trace, top_k
import runner
from store import KeyedStore
from tables import html_table, sharpness_table, text_table, write_sharpness_rows

from grid import load_run


# ----------------------------------------------------------------------------- items
def make_items(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Phase 1 (independent) and phase 2 (ascents, which start from the random results)."""
    n = len(args.model_file)
    first = [f"{c}/{q}" for c in range(n) for q in ("base", "lmax", "trace")]
    first += [f"{c}/random/{i}" for c in range(n) for i in range(args.n_dirs)]
    second = [f"{c}/ascent/{r}" for c in range(n) for r in range(len(args.radii))] if args.ascent_steps else []
    return first, second


def settings_of(args: argparse.Namespace, data) -> dict:
    return {"kind": "sharpness", "model": args.model,
            "checkpoints": [{"model_file": _short(f), "model_hash": model_loader.file_hash(f)}
                            for f in args.model_file],
            **dataloader.data_settings(args, data), "loss_name": args.loss_name, "precision": "fp32",
            "rho": args.radii, "n_dirs": args.n_dirs,
            "directions": {"dir_type": "weights", "norm": "filter", "ignore": "biasbn",
                           "generator": "net_plotter.make_generator(seed, i)"},
            "seed": args.seed, "ascent_steps": args.ascent_steps, "ascent_lr": args.ascent_lr,
            "trace_samples": args.trace_samples, "eig_tol": args.eig_tol, "eig_maxiter": args.eig_maxiter}


def _short(path):
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def open_store(args: argparse.Namespace, settings: dict, keys: list[str]) -> KeyedStore:
    """Rank 0: the sharpness file, one item per (checkpoint, quantity) named by its key
    (``0/base``, ``0/random/3``, ``1/ascent/0``...): store.KeyedStore, the ``items/<key>``
    layout; once finished, also the table's rows (``checkpoint_<c>`` groups)."""
    return KeyedStore(args.out + ".h5", FORMAT, "sharpness file", keys, settings, format_version=FORMAT_VERSION,
                      overwrite=args.overwrite, inputs=runner.inputs_of(args),
                      hint="rerun with --overwrite to start fresh or choose another --out")


# ----------------------------------------------------------------------- computing
class _OnCPU:
    """The model's parameters copied to the CPU, where the random directions are drawn
    (the same numbers whatever the device; the generator is a CPU generator)."""

    def __init__(self, net):
        self.params = [(n, p.detach().cpu()) for n, p in net.named_parameters()]

    def named_parameters(self):
        return iter(self.params)


class Worker:
    """One rank's model, data and operators; computes items of any checkpoint."""

    def __init__(self, args, device, data, net):
        self.args, self.device = args, device
        self.net = net.to(device).eval()
        self.loss_sum = get_loss_fn(args.loss_name)
        self.evaluate = Evaluator(self.net, data.train_x, data.train_y, self.loss_sum, args.batch_size, device)
        self.x, self.y = self.evaluate.x, self.evaluate.y
        self.names = [n for n, _ in hessian_params(self.net)]
        self.params = [p for _, p in hessian_params(self.net)]
        self.op = hessian_operator(self.net, self.x, self.y, self.loss_sum, args.batch_size, self.params,
                                   args.hess_cache_mb)
        self.current = None
        self.start_dirs = {}

    def use(self, c):
        """Load checkpoint c into the model (if it is not there)."""
        if self.current != c:
            path = self.args.model_file[c]
            state = model_loader.load_state_dict(path, self.args.unsafe_load)
            model_loader.apply_state_dict(self.net, state, path)
            self.net.eval()
            self.current = c

    def direction(self, i):
        """Random direction i: filter-normalized, biasbn ignored (plot_surface's --idx i x direction)."""
        gen = net_plotter.make_generator(self.args.seed, i)
        d = net_plotter.random_direction(_OnCPU(self.net), "weights", "filter", "biasbn", gen)
        return [t.to(self.device) for t in d]

    def compute(self, key):
        parts = key.split("/")
        c, kind = int(parts[0]), parts[1]
        self.use(c)
        if kind == "base":
            loss, acc = self.evaluate()
            return {"train_loss": loss, "train_acc": acc}
        if kind == "lmax":  # products: those of this item alone (the operator counts every one)
            before = self.op.count
            lmax = float(top_k(self.op, 1, self.args.eig_tol, self.args.seed, self.args.eig_maxiter)[0])
            return {"lambda_max": lmax, "products": self.op.count - before}
        if kind == "trace":
            est, se, samples = hutchinson_trace(self.op, self.args.trace_samples, self.args.seed)
            return {"trace": est, "trace_stderr": se, "trace_samples": samples}
        if kind == "random":
            loss0 = self.evaluate()[0]
            perturb = net_plotter.Perturbation(self.net, "weights", self.direction(int(parts[2])))
            losses = []
            for rho in self.args.radii:
                perturb.set(rho)
                losses.append(self.evaluate()[0])
            perturb.set(0.0)
            return {"loss0": loss0, "loss": np.array(losses), "increase": np.array(losses) - loss0}
        if kind == "ascent":
            r = int(parts[2])
            return self.ascent(self.args.radii[r], self.start_dirs[(c, r)])
        raise ValueError(key)

    def mean_gradient(self):
        n = len(self.y)
        grads = [torch.zeros_like(p) for p in self.params]
        bs = self.args.batch_size
        with torch.enable_grad():
            for i in range(0, n, bs):
                loss = self.loss_sum(self.net(self.x[i:i + bs]), self.y[i:i + bs])
                for acc, g in zip(grads, torch.autograd.grad(loss, self.params, allow_unused=True)):
                    if g is not None:
                        acc += g
        return [g / n for g in grads]

    @torch.no_grad()
    def ascent(self, rho, start):
        """Projected gradient ascent on the filter-normalized ball of radius rho."""
        loss0 = self.evaluate()[0]
        base = [p.detach().clone() for p in self.params]
        cap = [rho * b.reshape(len(b), -1).norm(dim=1) for b in base]
        full = dict(zip([n for n, _ in self.net.named_parameters()], self.direction(start)))
        delta = [rho * full[n].to(p.dtype) for n, p in zip(self.names, self.params)]

        def move():
            torch._foreach_copy_(self.params, base)
            torch._foreach_add_(self.params, delta)
            return self.evaluate()[0] - loss0

        increases = [move()]
        try:
            for _ in range(self.args.ascent_steps):
                grads = self.mean_gradient()
                for d, g, cp in zip(delta, grads, cap):
                    gf, df = g.reshape(len(g), -1), d.view(len(d), -1)
                    gn = gf.norm(dim=1, keepdim=True)
                    df += self.args.ascent_lr * cp.unsqueeze(1) * torch.where(gn > 0, gf / gn.clamp_min(1e-30), 0)
                    dn = df.norm(dim=1)
                    df *= torch.where(dn > cp, cp / dn.clamp_min(1e-30), 1).unsqueeze(1)
                increases.append(move())
            ratio = max(float((d.reshape(len(d), -1).norm(dim=1) / torch.where(cp > 0, cp, 1)).max())
                        for d, cp in zip(delta, cap))
        finally:
            torch._foreach_copy_(self.params, base)
        inc = np.array(increases)
        finite = inc[np.isfinite(inc)]
        return {"loss0": loss0, "increase": inc, "worst": float(finite.max()) if len(finite) else np.nan,
                "start_direction": start, "max_filter_ratio": ratio}


# ----------------------------------------------------------------------- summary
def summarize(args: argparse.Namespace, store: KeyedStore) -> list[dict]:
    """Per checkpoint: every number of the table (from the item results)."""
    rows = []
    for c, path in enumerate(args.model_file):
        get = lambda q, c=c: store.items[f"{c}/{q}"]
        rand = np.array([get(f"random/{i}")["increase"] for i in range(args.n_dirs)])
        row = {"label": args.labels[c] if args.labels else _short(path), "model_file": path,
               "model_hash": model_loader.file_hash(path),
               "train_loss": float(get("base")["train_loss"]), "train_acc": float(get("base")["train_acc"]),
               "lambda_max": float(get("lmax")["lambda_max"]), "trace": float(get("trace")["trace"]),
               "trace_stderr": float(get("trace")["trace_stderr"]),
               "random_increase": rand, "random_mean": rand.mean(axis=0),
               "random_std": rand.std(axis=0, ddof=1) if args.n_dirs > 1 else np.zeros(len(args.radii))}
        if args.ascent_steps:
            asc = [get(f"ascent/{r}") for r in range(len(args.radii))]
            row["ascent_increase"] = np.array([a["increase"] for a in asc])
            row["worst"] = np.array([float(a["worst"]) for a in asc])
            row["ascent_start_direction"] = np.array([int(a["start_direction"]) for a in asc])
        rows.append(row)
    return rows


def write_outputs(args, store, rows):
    header, cells, note = sharpness_table(store.settings, rows)
    text = text_table(header, cells, note)
    page = "\n".join(["<!DOCTYPE html>", HTML_MARK, "<html><head><meta charset='utf-8'><title>sharpness</title>",
                      "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
                      "td,th{border:1px solid #aaa;padding:4px 8px}</style></head><body>",
                      "<h1>Sharpness</h1>", html_table(header, cells, note, "sharpness"),
                      f"<p>Every number and its settings: <code>{html.escape(os.path.basename(store.path))}"
                      "</code></p>", "</body></html>"])
    store.write_more = lambda f: write_sharpness_rows(f, rows)
    store.dirty = True
    store.save()
    for path, content in ((args.out + ".html", page), (args.out + ".txt", TXT_MARK + "\n" + text)):
        with written_atomically(path) as tmp, open(tmp, "w") as f:
            f.write(content + "\n")
    return text


# --------------------------------------------------------------------------- main
def run_phase(args, comm, store, worker, keys, n, desc, setup_seconds=0.0):
    """The items of one phase (the first ``n`` of the store, or all): runner.run."""
    runner.run(comm, store, lambda k: worker.compute(keys[k]), what="items", desc=desc, n=n,
               save_every=args.save_every, progress=not args.no_progress, setup_seconds=setup_seconds)


def ascent_starts(args, store) -> dict:
    """(checkpoint, radius) -> the random direction with the largest increase there."""
    starts = {}
    for c in range(len(args.model_file)):
        inc = np.array([store.items[f"{c}/random/{i}"]["increase"] for i in range(args.n_dirs)])
        inc = np.where(np.isfinite(inc), inc, -np.inf)
        for r in range(len(args.radii)):
            starts[(c, r)] = int(np.argmax(inc[:, r]))
    return starts


def check_checkpoints(args: argparse.Namespace, net) -> None:
    """Every later checkpoint fits the model (the first was loaded with it): checked before
    the first write, so that a bad one never leaves a file behind."""
    for path in args.model_file[1:]:
        model_loader.apply_state_dict(net, model_loader.load_state_dict(path, args.unsafe_load), path)
    if len(args.model_file) > 1:  # the model back at the first checkpoint
        model_loader.apply_state_dict(net, model_loader.load_state_dict(args.model_file[0], args.unsafe_load),
                                      args.model_file[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    first_args = argparse.Namespace(**{**vars(args), "model_file": args.model_file[0], "model_file2": "",
                                       "model_file3": ""})
    device, data, net = load_run(first_args, comm)
    mpi4pytorch.check_all(comm, lambda: check_checkpoints(args, net))
    settings = settings_of(args, data)
    first, second = make_items(args)
    store = mpi4pytorch.check_all(comm, lambda: open_store(args, settings, first + second))
    worker = Worker(args, device, data, net)
    run_phase(args, comm, store, worker, first + second, len(first), "sharpness", time.perf_counter() - t0)
    if second:
        worker.start_dirs = mpi4pytorch.bcast(comm, ascent_starts(args, store) if rank == 0 else None)
        run_phase(args, comm, store, worker, first + second, None, "ascent")
    if rank == 0:
        text = write_outputs(args, store, summarize(args, store))
        store.close()
        print(text)
        print(f"wrote {args.out}.h5, {args.out}.html, {args.out}.txt ({time.perf_counter() - t0:.1f} s, "
              f"{mpi4pytorch.size(comm)} rank(s))", flush=True)


if __name__ == "__main__":
    run_main(main)
