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
direction, each ascent); with ``--mpi`` the ranks take items from a shared counter
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

FORMAT = "loss-landscape-sharpness"
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
        if os.path.isfile(path) and not overwrite:
            with open(path, errors="replace") as f:
                if mark not in f.read(300):
                    raise UserError(f"{path} exists and was not written by sharpness.py; pass --overwrite "
                                    "to replace it or choose another --out")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return flags.parse_args(build_parser(), argv)


if __name__ == "__main__":  # the flags and --help before torch is imported
    flags.parse_before_imports(build_parser)

import html  # noqa: E402
import json
import sys
import time

import h5py
import numpy as np
import torch

import dataloader
import model_loader
import mpi4pytorch
import net_plotter
from evaluation import Evaluator, get_loss_fn
from fileio import check_reuse, open_h5, written_atomically
from hess_vec_prod import hessian_operator, hessian_params, hutchinson_trace, top_k
from scheduler import Interrupted, run_grid

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


class Store:
    """Rank 0's results: item key -> {name: value}; saved atomically to PREFIX.h5 with the
    settings, and reloaded on a rerun with the same settings (resume)."""

    def __init__(self, path, settings, overwrite):
        self.path, self.settings = path, json.loads(json.dumps(settings))
        self.results = {}
        self.summary = None
        self.dirty = True
        if os.path.exists(path) and not overwrite:
            self._resume()

    def _resume(self):
        with open_h5(self.path, "sharpness file") as f:
            if f.attrs.get("format") != FORMAT:
                raise UserError(f"{self.path} is not a sharpness file; pass --overwrite to replace it "
                                "or choose another --out")
            stored = json.loads(f.attrs["settings"])
            if check_reuse(self.path, stored, self.settings, "sharpness file",
                           hint="rerun with --overwrite to start fresh or choose another --out"):
                if "items" in f:
                    f["items"].visititems(lambda name, obj: self._load_item(name, obj))

    def _load_item(self, name, obj):
        if isinstance(obj, h5py.Group) and "done" in obj.attrs:
            self.results[name] = {k: obj[k][()] for k in obj}

    def record(self, keys, values):
        for key in keys:
            self.results[key] = values
        self.dirty = True

    def save(self):
        if not self.dirty:
            return
        with written_atomically(self.path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
            for key, values in self.results.items():
                g = f.create_group(f"items/{key}")
                g.attrs["done"] = 1
                for k, v in values.items():
                    g[k] = np.asarray(v)
            if self.summary is not None:
                write_summary(f, self.summary)
        self.dirty = False


class KeyedStore:
    """Adapter for scheduler.run_grid: flat indices -> item keys."""

    def __init__(self, store, keys):
        self.store, self.keys = store, keys

    def record(self, indices, values):
        self.store.record([self.keys[k] for k in indices], values)

    def save(self):
        self.store.save()


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
        if kind == "lmax":
            return {"lambda_max": float(top_k(self.op, 1, self.args.eig_tol, self.args.seed,
                                              self.args.eig_maxiter)[0]),
                    "products": self.op.count}
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
def summarize(args: argparse.Namespace, results: dict) -> list[dict]:
    """Per checkpoint: every number of the table (from the item results)."""
    rows = []
    for c, path in enumerate(args.model_file):
        get = lambda q, c=c: results.get(f"{c}/{q}", {})
        rand = np.array([results[f"{c}/random/{i}"]["increase"] for i in range(args.n_dirs)])
        row = {"label": args.labels[c] if args.labels else _short(path), "model_file": path,
               "model_hash": model_loader.file_hash(path),
               "train_loss": float(get("base")["train_loss"]), "train_acc": float(get("base")["train_acc"]),
               "lambda_max": float(get("lmax")["lambda_max"]), "trace": float(get("trace")["trace"]),
               "trace_stderr": float(get("trace")["trace_stderr"]),
               "random_increase": rand, "random_mean": rand.mean(axis=0),
               "random_std": rand.std(axis=0, ddof=1) if args.n_dirs > 1 else np.zeros(len(args.radii))}
        if args.ascent_steps:
            asc = [results[f"{c}/ascent/{r}"] for r in range(len(args.radii))]
            row["ascent_increase"] = np.array([a["increase"] for a in asc])
            row["worst"] = np.array([float(a["worst"]) for a in asc])
            row["ascent_start_direction"] = np.array([int(a["start_direction"]) for a in asc])
        rows.append(row)
    return rows


def write_summary(f, rows):
    for c, row in enumerate(rows):
        g = f.create_group(f"checkpoint_{c}")
        for k in ("label", "model_file", "model_hash"):
            g.attrs[k] = row[k]
        for k, v in row.items():
            if k not in ("label", "model_file", "model_hash"):
                g[k] = np.asarray(v)


def table(args: argparse.Namespace, rows: list[dict]) -> tuple[list[str], list[list[str]], str]:
    """(header, cells, note) of the sharpness table."""
    header = ["checkpoint", "train loss", "train acc (%)", "λmax", "trace ± s.e."]
    for rho in args.radii:
        header.append(f"ΔL random ρ={rho:g} (mean ± std)")
        if args.ascent_steps:
            header.append(f"ΔL worst ρ={rho:g}")
    cells = []
    for row in rows:
        line = [row["label"], f"{row['train_loss']:.4g}", f"{row['train_acc']:.2f}", f"{row['lambda_max']:.4g}",
                f"{row['trace']:.4g} ± {row['trace_stderr']:.2g}"]
        for r in range(len(args.radii)):
            line.append(f"{row['random_mean'][r]:.4g} ± {row['random_std'][r]:.2g}")
            if args.ascent_steps:
                line.append(f"{row['worst'][r]:.4g}")
        cells.append(line)
    note = ("L: the mean training loss over the whole training set (model in eval mode). "
            f"λmax: Lanczos, tolerance {args.eig_tol:g}; trace: Hutchinson, {args.trace_samples} Rademacher "
            f"vectors, ± its standard error (Hessian w.r.t. the parameters with > 1 dimension). "
            f"ΔL = L(θ + ρ·d) − L(θ) over {args.n_dirs} filter-normalized random directions "
            f"(biases and BN ignored, seed {args.seed}; ρ = 1 is the paper's α = 1)"
            + (f"; worst: the largest ΔL of {args.ascent_steps} steps of projected gradient ascent on the "
               f"filter-normalized ball of radius ρ (step {args.ascent_lr:g}·ρ·‖filter‖), started at the "
               "random direction with the largest ΔL." if args.ascent_steps else "."))
    return header, cells, note


def text_table(header: list[str], cells: list[list[str]], note: str) -> str:
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells] + ["", note])


def html_table(header: list[str], cells: list[list[str]], note: str) -> str:
    row = lambda values, tag: "<tr>" + "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values) + "</tr>"
    return ("<table class='sharpness'>" + row(header, "th") + "".join(row(c, "td") for c in cells)
            + f"</table><p>{html.escape(note)}</p>")


def write_outputs(args, store, rows):
    header, cells, note = table(args, rows)
    text = text_table(header, cells, note)
    page = "\n".join(["<!DOCTYPE html>", HTML_MARK, "<html><head><meta charset='utf-8'><title>sharpness</title>",
                      "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
                      "td,th{border:1px solid #aaa;padding:4px 8px}</style></head><body>",
                      "<h1>Sharpness</h1>", html_table(header, cells, note),
                      f"<p>Every number and its settings: <code>{html.escape(os.path.basename(store.path))}"
                      "</code></p>", "</body></html>"])
    html_file = args.out + ".html"
    store.summary = rows
    store.dirty = True
    store.save()
    for path, content in ((html_file, page), (args.out + ".txt", TXT_MARK + "\n" + text)):
        with written_atomically(path) as tmp, open(tmp, "w") as f:
            f.write(content + "\n")
    return text


def read_table(path: str) -> tuple[list[str], list[list[str]], str, list[dict]]:
    """(header, cells, note) of the table stored in a finished PREFIX.h5, and its rows."""
    with open_h5(path, "sharpness file") as f:
        if f.attrs.get("format") != FORMAT or "checkpoint_0" not in f:
            raise UserError(f"{path} is not a finished sharpness file")
        st = json.loads(f.attrs["settings"])
        args = argparse.Namespace(radii=st["rho"], n_dirs=st["n_dirs"], ascent_steps=st["ascent_steps"],
                                  ascent_lr=st["ascent_lr"], trace_samples=st["trace_samples"],
                                  eig_tol=st["eig_tol"], seed=st["seed"])
        rows = []
        for c in range(len(st["checkpoints"])):
            g = f[f"checkpoint_{c}"]
            row = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            row.update({k: g[k][()] for k in g})
            rows.append(row)
    return (*table(args, rows), rows)


# --------------------------------------------------------------------------- main
def run_phase(args, comm, rank, store, worker, keys, desc):
    todo = mpi4pytorch.bcast(comm, [i for i, k in enumerate(keys) if k not in store.results] if rank == 0 else None)
    if rank == 0:
        print(f"{desc}: {len(todo)} of {len(keys)} items to compute"
              f"{' (the others are in ' + store.path + ')' if len(todo) < len(keys) else ''}",
              file=sys.stderr, flush=True)
    if not todo:
        return
    try:
        run_grid(comm, np.array(todo, dtype=np.int64), lambda k: worker.compute(keys[k]),
                 KeyedStore(store, keys) if rank == 0 else None, save_every=args.save_every,
                 progress=not args.no_progress, desc=desc)
    except Interrupted as e:
        if rank == 0:
            print(f"interrupted by {e}: {len(store.results)} items saved in {store.path}; rerun the same "
                  "command to resume", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    first_args = argparse.Namespace(**{**vars(args), "model_file": args.model_file[0], "model_file2": "",
                                       "model_file3": ""})
    device, data, net = load_run(first_args, comm)
    settings = settings_of(args, data)
    store = mpi4pytorch.check_all(comm, lambda: Store(args.out + ".h5", settings, args.overwrite))
    worker = Worker(args, device, data, net)
    first, second = make_items(args)
    run_phase(args, comm, rank, store, worker, first, "sharpness")
    if second:
        starts = None
        if rank == 0:
            starts = {}
            for c in range(len(args.model_file)):
                inc = np.array([store.results[f"{c}/random/{i}"]["increase"] for i in range(args.n_dirs)])
                inc = np.where(np.isfinite(inc), inc, -np.inf)
                for r in range(len(args.radii)):
                    starts[(c, r)] = int(np.argmax(inc[:, r]))
        worker.start_dirs = mpi4pytorch.bcast(comm, starts)
        run_phase(args, comm, rank, store, worker, second, "ascent")
    if rank == 0:
        text = write_outputs(args, store, summarize(args, store.results))
        print(text)
        print(f"wrote {args.out}.h5, {args.out}.html, {args.out}.txt ({time.perf_counter() - t0:.1f} s, "
              f"{mpi4pytorch.size(comm)} rank(s))", flush=True)


if __name__ == "__main__":
    run_main(main)
