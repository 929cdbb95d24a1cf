"""The end-to-end demo: the paper's small-batch vs large-batch experiment on the
embedded digits data, in a few minutes on a laptop CPU.

    python demo.py [--out demo_out] [--quick] [--np 2] [--doc_images doc/images]

Every step runs the toolkit's own scripts, and prints the command it runs, so each
step can be rerun or changed by hand:

1. train two digits_cnn networks (BatchNorm, weight decay 0) with cifar10/main.py, one
   with a small batch (16) and one with a large batch (1,024), both to ~100% training
   accuracy; a network whose checkpoint exists is reused;
2. plot_surface.py: the line between the two (--dir_type states, BN statistics
   included), train and test loss/accuracy, plotted with plot_1D.py;
3. plot_surface.py: 1D curves along several filter-normalized random directions for
   each network (--idx 0, 1, ...), overlaid with plot_1D.py, and a 2D surface for each,
   plotted with plot_2D.py (contours, heat map, 3D surface);
4. h52vtp.py: a ParaView .vtp of each 2D surface (plot_2D.py --html in step 3 made an
   interactive page of each);
5. a flatness table: the mean train-loss increase at alpha = +-0.25 and +-0.5 along the
   random directions, with its spread over the directions (flatness.md, flatness.json),
   and sharpness.py's table of both networks: λmax, the Hessian trace and the loss increase
   at filter-normalized radius 0.25, random and worst case (sharpness.html, sharpness.h5);
6. index.html: every figure on one page (relative links, works offline).

plot_surface.py runs under ``mpiexec -n <--np>`` when an MPI launcher is on the PATH and
works, as one process otherwise. All files go into --out: the checkpoints and surface
files under models/ (named by the toolkit, next to the checkpoints), the figures under
figures/. Rerunning reuses what is there (surface files resume). --quick runs the same
steps at a reduced size (for the test suite). See doc/demo.md for how to read the figures.
"""
import html
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import flags  # noqa: E402
from errors import UserError, run_main  # noqa: E402
from surface import read_surface  # noqa: E402
from tables import html_table, markdown_table, read_sharpness_table  # noqa: E402

# The two networks: (key, label, batch size, learning rate, epochs full, epochs --quick)
NETWORKS = [("small_batch", "small batch (bs=16)", 16, 0.05, 10, 2),
            ("large_batch", "large batch (bs=1024)", 1024, 0.1, 60, 12)]
# Grid sizes: interpolation points, 1D points on [-1, 1], random directions, 2D points per axis.
# The 1D grid must hold +-0.25 and +-0.5 (line - 1 a multiple of 8), the interpolation
# grid on [-0.5, 1.5] must hold 0 and 1 (interp - 1 a multiple of 4).
SIZES = {"full": dict(interp=101, line=41, dirs=5, grid=25),
         "quick": dict(interp=9, line=9, dirs=2, grid=5)}
RADII = (0.25, 0.5)
# The model is tiny: one thread per process is fastest, and several are 3-4x slower when
# the cores are busy (OpenMP threads wait for each other).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
FLATTER = "The small-batch minimizer is flatter"
LOSS_RANGE = (1e-3, 10.0)     # shared colour scale of the 2D plots (log), and the 3D/vtp clip


def build_parser():
    p = flags.command_parser(__file__, __doc__)
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="the same steps at a reduced size (fewer epochs, points, directions)")
    p.add_argument("--np", type=int, default=2,
                   help="MPI processes for plot_surface.py (default 2; 1: no MPI)")
    p.add_argument("--doc_images", default="",
                   help="also write small copies of the main figures into this folder")
    return p


def main(argv=None):
    args = flags.parse_args(build_parser(), argv)
    if args.np < 1:
        raise UserError(f"--np must be >= 1, got {args.np}")
    for flag, folder in (("--out", args.out), ("--doc_images", args.doc_images)):
        p = os.path.abspath(folder) if folder else ""
        while p and not os.path.exists(p) and os.path.dirname(p) != p:
            p = os.path.dirname(p)
        if p and not os.path.isdir(p):  # checked now, not after minutes of work
            raise UserError(f"{flag} {folder}: {p} is a file, not a folder; choose another {flag}")
    size = SIZES["quick" if args.quick else "full"]
    out = os.path.abspath(args.out)
    index = os.path.join(out, "index.html")
    if os.path.exists(index) and INDEX_MARK not in open(index, errors="replace").read(300):
        raise UserError(f"{index} exists and was not written by the demo; choose another --out")
    os.makedirs(out, exist_ok=True)
    demo = Demo(out, launcher(args.np))

    demo.step("Training the two networks with cifar10/main.py")
    models = {key: demo.train(key, bs, lr, e_quick if args.quick else e_full)
              for key, _, bs, lr, e_full, e_quick in NETWORKS}

    demo.step("1D linear interpolation between the two minimizers (BN statistics included)")
    interp = demo.surface(["--model_file", models["small_batch"],
                           "--model_file2", models["large_batch"], "--dir_type", "states",
                           f"--x=-0.5:1.5:{size['interp']}", "--test"])
    demo.plot("plot_1D", ["--surf_file", interp, "--log"], "interpolation")

    demo.step("Filter-normalized random directions: 1D curves and 2D surfaces")
    labels = {key: label for key, label, *_ in NETWORKS}
    lines, grids = random_directions(demo, models, labels, size)

    demo.step("ParaView .vtp files of the 2D surfaces (the interactive pages came with --html)")
    for key in models:
        demo.plot("h52vtp", ["--surf_file", grids[key], "--surf_name", "train_loss",
                             "--zmax", str(LOSS_RANGE[1]), "--log"], key)

    demo.step(f"Flatness: train-loss increase at α = ±{' and ±'.join(map(str, RADII))}")
    table = flatness_table(lines, labels, interp)
    print(table["markdown"], flush=True)
    with open(os.path.join(out, "flatness.json"), "w") as f:
        json.dump({k: table[k] for k in ("radii", "rows", "verdict", "small_batch_flatter")},
                  f, indent=1)
    with open(os.path.join(out, "flatness.md"), "w") as f:
        f.write(table["markdown"] + "\n")
    sharp = sharpness_section(demo, models, labels, args.quick)

    demo.step("index.html: every figure on one page")
    seconds = time.perf_counter() - demo.t0
    write_index(out, demo, table, seconds, args.quick, sharp=sharp)
    if args.doc_images:
        copy_doc_images(demo.figures, args.doc_images)
    print(f"demo done in {seconds:.0f} s; open {os.path.join(out, 'index.html')}", flush=True)


def random_directions(demo, models, labels, size):
    """Step 3: 1D curves along several filter-normalized random directions for each
    network, overlaid, and a 2D surface for each; returns their surface files."""
    lines = {key: [demo.surface(["--model_file", models[key], "--dir_type", "weights",
                                 "--xnorm", "filter", "--xignore", "biasbn",
                                 f"--x=-1:1:{size['line']}", "--idx", str(i)])
                   for i in range(size["dirs"])] for key in models}
    demo.plot("plot_1D", ["--surf_file"] + [lines[k][0] for k in models]
              + ["--labels"] + [labels[k] for k in models] + ["--log"], "random_1d")
    demo.plot("plot_1D", ["--surf_file"] + [f for k in models for f in lines[k]] + ["--labels"]
              + [f"{labels[k].split(' (')[0]} dir {i}" for k in models
                 for i in range(size["dirs"])] + ["--log"], "random_1d_all")
    grids = {}
    for key in models:
        g = size["grid"]
        grids[key] = demo.surface(["--model_file", models[key], "--dir_type", "weights",
                                   "--xnorm", "filter", "--xignore", "biasbn", "--ynorm", "filter",
                                   "--yignore", "biasbn", f"--x=-1:1:{g}", f"--y=-1:1:{g}"])
        demo.plot("plot_2D", ["--surf_file", grids[key], "--surf_name", "train_loss", "--log",
                              "--vmin", str(LOSS_RANGE[0]), "--vmax", str(LOSS_RANGE[1]),
                              "--vlevel", "0.25", "--zlim", str(LOSS_RANGE[1]), "--html"], key)
    return lines, grids


# ---------------------------------------------------------------------- running tools
def launcher(n):
    """['mpiexec', '-n', n] if MPI works here, else [] (one process); says which."""
    if n == 1:
        return []
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    why = "no mpiexec or mpirun on the PATH"
    if mpiexec:
        try:
            p = subprocess.run([mpiexec, "-n", str(n), sys.executable, "-c",
                                "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"],
                               capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                print(f"plot_surface.py runs on {n} MPI processes ({mpiexec})", flush=True)
                return [mpiexec, "-n", str(n)]
            why = f"'{mpiexec} -n {n} python -c \"from mpi4py import MPI\"' failed: " + \
                (p.stderr.strip().splitlines() or ["no message"])[-1][:200]
        except subprocess.TimeoutExpired:
            why = f"'{mpiexec} -n {n}' did not finish within 60 s"
    print(f"plot_surface.py runs as one process ({why})", flush=True)
    return []


def training(out, batch_size, lr, epochs):
    """The cifar10/main.py arguments for one network, and the checkpoint they make."""
    from cifar10.main import build_parser, name_save_folder
    argv = ["--dataset", "digits", "--model", "digits_cnn", "--batch_size", str(batch_size),
            "--lr", str(lr), "--weight_decay", "0", "--epochs", str(epochs),
            "--save_epoch", str(epochs), "--rand_seed", "0", "--save", os.path.join(out, "models")]
    folder = os.path.join(out, "models", name_save_folder(build_parser().parse_args(argv)))
    return argv, os.path.join(folder, f"model_{epochs}.t7")


class Demo:
    """Runs the steps: prints a line per step, the command of each tool it runs, and
    collects the files the plotting tools write (by figure group)."""

    def __init__(self, out, mpi):
        self.out, self.mpi = out, mpi
        self.n_step, self.t0 = 0, time.perf_counter()
        self.figures = {}            # group -> [files], in the order written

    def step(self, text):
        self.n_step += 1
        print(f"\n[{self.n_step}/6 {time.perf_counter() - self.t0:5.0f} s] {text}", flush=True)

    def run(self, argv, env=None):
        shown = [f"{k}={v}" for k, v in (env or {}).items()] + \
            ["python" if a == sys.executable else a for a in argv]
        print("$ " + shlex.join(shown), flush=True)
        p = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})})
        if p.returncode != 0:
            raise UserError(f"'{shlex.join(shown)}' failed with status {p.returncode} (its "
                            "output is above); fix that and rerun the demo (finished steps "
                            "are reused)")

    def train(self, key, batch_size, lr, epochs):
        """A checkpoint trained by cifar10/main.py (reused if it exists)."""
        argv, checkpoint = training(self.out, batch_size, lr, epochs)
        if os.path.exists(checkpoint):
            print(f"{key}: reusing {os.path.relpath(checkpoint, self.out)}", flush=True)
        else:
            self.run([sys.executable, "cifar10/main.py"] + argv, env=ONE_THREAD)
        return checkpoint

    def surface(self, argv):
        """Run plot_surface.py (resuming or reusing its file); returns the surface file."""
        import grid
        argv = ["--model", "digits_cnn", "--threads", "1"] + argv
        ps_args = flags.parse_args(flags.build_parser(), argv)
        path = grid.name_surface_file(ps_args, grid.name_direction_file(ps_args))
        self.run(self.mpi + [sys.executable, "plot_surface.py"] + (["--mpi"] if self.mpi else [])
                 + argv)
        return path

    def plot(self, tool, argv, group):
        """Run a plotting tool's main() in this process, its outputs into figures/<group>."""
        import importlib
        folder = os.path.join(self.out, "figures", group)
        os.makedirs(folder, exist_ok=True)
        if tool != "h52vtp" and "--format" not in argv:
            argv = argv + ["--format", "png"]
        argv = argv + ["--out_dir", folder]
        print("$ " + shlex.join(["python", f"{tool}.py"] + argv), flush=True)
        before = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
        importlib.import_module(tool).main(argv)
        written = sorted(f for f in os.listdir(folder)
                         if before.get(f) != os.path.getmtime(os.path.join(folder, f)))
        files = self.figures.setdefault(group, [])
        files += [os.path.join(folder, f) for f in written if os.path.join(folder, f) not in files]


# ---------------------------------------------------------------------- flatness
def flatness_table(lines, labels, interp_file):
    """Per minimizer: train loss at the minimizer and the mean (and std over the
    directions) of the train-loss increase (L(+a) + L(-a)) / 2 - L(0) at each radius a."""
    interp = read_surface(interp_file)
    rows = []
    for k, (key, files) in enumerate(lines.items()):
        surfs = [read_surface(f) for f in files]
        loss0 = float(np.mean([s.values["train_loss"][_index(s.x, 0.0, f)]
                               for s, f in zip(surfs, files)]))
        row = {"minimizer": key, "label": labels[key], "directions": len(files),
               "checkpoint": surfs[0].settings["model_file"], "train_loss": loss0, "increase": {}}
        at = _index(interp.x, float(k), interp_file)  # the small batch at α = 0, the large at 1
        for name in ("train_acc", "test_loss", "test_acc"):
            row[name] = float(interp.values[name][at])
        for r in RADII:
            inc = [(s.values["train_loss"][_index(s.x, r, f)] +
                    s.values["train_loss"][_index(s.x, -r, f)]) / 2 - loss0
                   for s, f in zip(surfs, files)]
            row["increase"][str(r)] = {"mean": float(np.mean(inc)),
                                       "std": float(np.std(inc, ddof=1)) if len(inc) > 1 else 0.0,
                                       "per_direction": [float(v) for v in inc]}
        rows.append(row)
    verdict = flatness_verdict(*rows)
    spread = lambda row, r: "{mean:.4f} ± {std:.4f}".format(**row["increase"][str(r)])
    header = ["minimizer", "train loss", "train acc (%)", "test acc (%)"] + \
        [f"loss increase at α = ±{r} (mean ± std)" for r in RADII]
    cells = [[row["label"], f"{row['train_loss']:.4f}", f"{row['train_acc']:.2f}",
              f"{row['test_acc']:.2f}"] + [spread(row, r) for r in RADII] for row in rows]
    note = ("Loss increase = (L(+α) + L(−α))/2 − L(0) of the training loss along each of "
            f"{len(files)} filter-normalized random directions; mean and standard deviation "
            "over the directions.")
    return {"radii": list(RADII), "rows": rows, "verdict": verdict,
            "small_batch_flatter": verdict.startswith(FLATTER), "header": header,
            "cells": cells, "note": note,
            "markdown": markdown_table(header, cells, note) + f"\n\n**{verdict}**"}


def flatness_verdict(small, large):
    """A sentence that says only what the numbers show. 'Flatter' needs the mean increase
    lower at every radius AND the mean +- std bands apart."""
    inc = lambda row, r: row["increase"][str(r)]
    lo, hi = (lambda row, r: inc(row, r)["mean"] - inc(row, r)["std"],
              lambda row, r: inc(row, r)["mean"] + inc(row, r)["std"])
    ratios = ", ".join(f"{inc(large, r)['mean'] / max(inc(small, r)['mean'], 1e-12):.1f}x at "
                       f"α = ±{r}" for r in RADII)
    if all(hi(small, r) < lo(large, r) for r in RADII):
        return (f"{FLATTER}: its training loss rises less at every radius (large/small mean "
                f"increase: {ratios}), and the spreads over the directions do not overlap, as "
                "in the paper.")
    if all(inc(small, r)["mean"] < inc(large, r)["mean"] for r in RADII):
        return (f"On average the small-batch minimizer's loss rises less ({ratios} for the large "
                "batch), but the spreads over the directions overlap: not a clear difference; "
                "use more directions or points.")
    if all(inc(large, r)["mean"] < inc(small, r)["mean"] for r in RADII):
        return ("The large-batch minimizer's loss rises less here (large/small mean increase: "
                f"{ratios}): the paper's finding is not reproduced by these runs.")
    return f"Mixed: neither minimizer is flatter at every radius (large/small: {ratios})."


def _index(x, value, path):
    i = int(np.argmin(np.abs(x - value)))
    if abs(x[i] - value) > 1e-9:
        raise UserError(f"{path} has no grid point at {value}; its grid must include it")
    return i


# ---------------------------------------------------------------------- sharpness
# sharpness.py settings: (random directions, ascent steps, Rademacher vectors for the trace)
SHARPNESS = {"full": dict(n_dirs=10, ascent_steps=5, trace_samples=30),
             "quick": dict(n_dirs=2, ascent_steps=2, trace_samples=4)}
SHARPNESS_RHO = 0.25


def sharpness_section(demo, models, labels, quick):
    """sharpness.py on both networks (one table): λmax, trace, random and worst-case loss
    increase at filter-normalized radius 0.25; returns its table and a comparison line."""
    size = SHARPNESS["quick" if quick else "full"]
    prefix = os.path.join(demo.out, "sharpness")
    argv = ["--model", "digits_cnn", "--threads", "1", "--model_file"] + [models[k] for k in models] + \
        ["--labels"] + [labels[k] for k in models] + ["--rho", str(SHARPNESS_RHO), "--out", prefix] + \
        [f"--{k}={v}" for k, v in size.items()]
    demo.run(demo.mpi + [sys.executable, "sharpness.py"] + (["--mpi"] if demo.mpi else []) + argv)
    header, cells, note, rows = read_sharpness_table(prefix + ".h5")
    small, large = rows
    ratio = lambda k: float(np.ravel(large[k])[0]) / max(float(np.ravel(small[k])[0]), 1e-12)
    compare = (f"Large batch / small batch: λmax {ratio('lambda_max'):.1f}x, trace {ratio('trace'):.1f}x, "
               f"mean random loss increase at ρ = {SHARPNESS_RHO} {ratio('random_mean'):.1f}x, "
               f"worst case {ratio('worst'):.1f}x.")
    print(compare, flush=True)
    return {"header": header, "cells": cells, "note": note, "compare": compare,
            "files": [prefix + ext for ext in (".html", ".h5", ".txt")]}


def sharpness_html(out, sharp):
    rel = lambda p: html.escape(os.path.relpath(p, out).replace(os.sep, "/"))
    return ("<h2>Sharpness (sharpness.py)</h2>" + html_table(sharp["header"], sharp["cells"], sharp["note"])
            + f"<p><b>{html.escape(sharp['compare'])}</b> ("
            + ", ".join(f"<a href='{rel(f)}'>{html.escape(os.path.basename(f))}</a>" for f in sharp["files"])
            + ")</p>")


# ---------------------------------------------------------------------- index.html
SECTIONS = [
    ("interpolation", "1D linear interpolation between the two minimizers",
     "Weights (and BatchNorm statistics) = small-batch + α (large-batch − small-batch): α = 0 "
     "is the small-batch minimizer, α = 1 the large-batch one. Solid: training, dashed: test. "
     "The loss between them shows how high the wall between the two minimizers is; the widths "
     "of the dips at the two ends cannot be compared (the networks' weights differ in scale): "
     "that is what the filter-normalized plots below are for. Outside [0, 1] the BatchNorm "
     "statistics are extrapolated too; where a running variance reaches zero the loss jumps."),
    ("random_1d", "1D filter-normalized random direction, both minimizers",
     "Training loss (log scale) along one random direction scaled filter by filter to the "
     "network's own weights, so that the two curves are comparable: the flatter minimizer has "
     "the wider, lower curve."),
    ("random_1d_all", "All random directions",
     "Every direction used for the flatness table; the spread between curves of one network "
     "is the spread in the table."),
    ("small_batch", "2D surface around the small-batch minimizer",
     "Contours, filled contours and heat map of log10(training loss) over two filter-normalized "
     "random directions, and the 3D surface (clipped at 10). Same colour scale for both networks: "
     "a wider dark basin means a flatter minimizer."),
    ("large_batch", "2D surface around the large-batch minimizer",
     "The same plots for the large-batch network."),
]


INDEX_MARK = "<!-- written by the loss-landscape demo.py -->"


def write_index(out, demo, table, seconds, quick, sharp=None):
    rel = lambda p: html.escape(os.path.relpath(p, out).replace(os.sep, "/"))
    kind = lambda f: "interactive 3D page" if f.endswith(".html") else "ParaView .vtp"
    parts = ["<!DOCTYPE html>", INDEX_MARK, "<html><head><meta charset='utf-8'>",
             "<title>loss-landscape demo</title><style>",
             "body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}",
             "img{width:48%;margin:0.5%;border:1px solid #ddd}",
             "table{border-collapse:collapse}td,th{border:1px solid #aaa;padding:4px 8px}",
             "</style></head><body>",
             "<h1>Loss landscapes of a small-batch and a large-batch minimizer</h1>",
             f"<p>digits_cnn on the embedded digits data{' (--quick: reduced size)' * quick}; "
             f"made by <code>python demo.py</code> in {seconds:.0f} s. "
             "How to read the figures: doc/demo.md.</p>",
             "<h2>Flatness</h2>", table_html(table)]
    if sharp:
        parts.append(sharpness_html(out, sharp))
    for group, title, text in SECTIONS:
        files = demo.figures.get(group, [])
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>"]
        parts += [f"<a href='{rel(f)}'><img src='{rel(f)}' alt='{rel(f)}'></a>"
                  for f in files if f.endswith(".png")]
        others = [f for f in files if not f.endswith(".png")]
        if others:
            parts.append("<p>" + " · ".join(f"<a href='{rel(f)}'>{kind(f)} "
                                            f"({html.escape(os.path.basename(f))})</a>"
                                            for f in others) + "</p>")
    parts.append("</body></html>")
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write("\n".join(parts) + "\n")


def table_html(table):
    return (html_table(table["header"], table["cells"], table["note"])
            + f"<p><b>{html.escape(table['verdict'])}"
            "</b> (<a href='flatness.md'>flatness.md</a>, <a href='flatness.json'>flatness.json"
            "</a>)</p>")


# ---------------------------------------------------------------------- doc images
DOC_IMAGES = {"interpolation": ("interpolation", "1d_loss_acc_log.png"),
              "random_1d": ("random_1d", "1d_loss_log.png"),
              "contour_small_batch": ("small_batch", "2dcontour.png"),
              "contour_large_batch": ("large_batch", "2dcontour.png"),
              "surface3d_small_batch": ("small_batch", "3dsurface.png"),
              "surface3d_large_batch": ("large_batch", "3dsurface.png")}


def copy_doc_images(figures, folder, width=640):
    """Small copies (``width`` pixels wide) of the main figures, with short names."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for name, (group, ending) in DOC_IMAGES.items():
        src = next(f for f in figures[group] if f.endswith(ending))
        img = Image.open(src)
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img = img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        img.save(os.path.join(folder, f"{name}.png"), optimize=True)
        print(f"wrote {os.path.join(folder, name + '.png')}", flush=True)


if __name__ == "__main__":
    run_main(main)
