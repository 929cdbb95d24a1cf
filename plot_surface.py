"""Loss and accuracy of a network moved along one direction (1D) or two (2D grid).

    python plot_surface.py --model digits_cnn --model_file M.t7 --x=-1:1:51 --y=-1:1:51
    mpirun -n 4 python plot_surface.py --mpi --cuda --model resnet56 --x=-1:1:51 \\
        --model_file .../model_300.t7 --dir_type weights --xnorm filter --xignore biasbn --plot

The story: parse and check the flags; set up MPI and the device; load the data (once,
into memory) and the model; make or read the directions (rank 0 writes the direction
file); open the surface file on rank 0 (resuming it only if it was computed with the
same settings); then every rank takes grid points from the shared counter, moves the
weights there in place and evaluates, and rank 0 gathers and saves the results.

plot_hessian_eigen.py reuses ``build_parser``, ``parse_args``, ``prepare`` and
``compute_grid`` with its own per-point computation.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import dataloader
import mpi4pytorch
import model_loader
import net_plotter
from errors import UserError, run_main
from evaluation import PRECISIONS, Evaluator, get_loss_fn, keep_freed_memory
from scheduler import Interrupted, run_grid
from surface import SurfaceWriter


# ----------------------------------------------------------------------------- flags
def build_parser(description=None):
    p = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    p.add_argument("--mpi", "-m", action="store_true", help="use MPI (one rank per GPU or core group)")
    p.add_argument("--cuda", "-c", action="store_true", help="evaluate on the GPU (rank r: local GPU r mod count)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per rank (default: cores / ranks per node)")
    p.add_argument("--ngpu", type=int, default=1, help="GPUs per rank (DataParallel) without --mpi")
    p.add_argument("--batch_size", type=int, default=128, help="evaluation batch size")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32 (exact), tf32 or bf16")
    dataloader.add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="digits_cnn", help="zoo name or package.module:factory")
    g.add_argument("--model_folder", default="", help="folder of the checkpoint files (prefix for --model_file*)")
    g.add_argument("--model_file", default="", help="checkpoint of the model at (0, 0)")
    g.add_argument("--model_file2", default="", help="second checkpoint: x direction = θ2 − θ1")
    g.add_argument("--model_file3", default="", help="third checkpoint: y direction = θ3 − θ1")
    g.add_argument("--unsafe_load", action="store_true", help="allow full unpickling of trusted checkpoint files")
    g.add_argument("--loss_name", "-l", default="crossentropy", help="crossentropy, mse or package.module:function")
    g = p.add_argument_group("directions")
    g.add_argument("--dir_file", default="", help="direction file to use (made if absent)")
    g.add_argument("--dir_type", default="weights", help="weights (parameters) or states (state_dict incl. BN statistics)")
    g.add_argument("--x", default="-1:1:51", help="xmin:xmax:xnum")
    g.add_argument("--y", default=None, help="ymin:ymax:ynum (2D)")
    g.add_argument("--xnorm", default="filter", help="filter | layer | weight | dfilter | dlayer")
    g.add_argument("--ynorm", default="filter", help="filter | layer | weight | dfilter | dlayer")
    g.add_argument("--xignore", default="biasbn", help="'biasbn' zeroes the direction of bias and BN entries")
    g.add_argument("--yignore", default="biasbn", help="'biasbn' zeroes the direction of bias and BN entries")
    g.add_argument("--same_dir", action="store_true", help="use the x direction for y too")
    g.add_argument("--idx", type=int, default=0, help="index of the random directions (changes them)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the directions")
    g = p.add_argument_group("output")
    g.add_argument("--surf_file", default="", help="surface file (default: named after the direction file)")
    g.add_argument("--overwrite", action="store_true", help="recompute an existing surface file from scratch")
    g.add_argument("--test", action="store_true", help="also compute test_loss and test_acc")
    g.add_argument("--save_every", type=float, default=10.0, help="seconds between saves of the surface file")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("plotting (with --plot)")
    g.add_argument("--proj_file", default="", help="projected trajectory to draw on the contours")
    g.add_argument("--loss_max", type=float, default=5, help="maximum loss shown in 1D plots")
    g.add_argument("--vmin", type=float, default=0.1, help="minimum contour level")
    g.add_argument("--vmax", type=float, default=10, help="maximum contour level")
    g.add_argument("--vlevel", type=float, default=0.5, help="contour spacing")
    g.add_argument("--show", action="store_true", help="show the plots")
    g.add_argument("--log", action="store_true", help="logarithmic loss axis")
    g.add_argument("--plot", action="store_true", help="plot the surface when done")
    return p


def parse_range(text, flag):
    """'min:max:num' -> (min, max, num), with num an integer >= 2."""
    parts = str(text).split(":")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        num = parts[2]
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"{flag} must be min:max:num, e.g. {flag}=-1:1:51 (got '{text}')")
    try:
        n = float(num)
    except ValueError:
        n = None
    if n is None or n != int(n) or n < 2:
        raise UserError(f"{flag}: the number of points must be an integer >= 2 (got '{num}')")
    return lo, hi, int(n)


def _join_negative_ranges(argv):
    """Let '--x -1:1:51' mean '--x=-1:1:51' (argparse takes '-1:1:51' for a flag)."""
    out, it = [], iter(argv)
    for a in it:
        if a in ("--x", "--y"):
            nxt = next(it, None)
            out.append(a if nxt is None else f"{a}={nxt}")
        else:
            out.append(a)
    return out


def parse_args(parser, argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_ranges(argv))
    args.xmin, args.xmax, args.xnum = parse_range(args.x, "--x")
    if args.y is not None:
        args.ymin, args.ymax, args.ynum = parse_range(args.y, "--y")
    for f in ("model_file", "model_file2", "model_file3"):
        v = getattr(args, f)
        if v and args.model_folder and not os.path.isabs(v):
            setattr(args, f, os.path.join(args.model_folder, v))
    if args.model_file3 and args.y is None:
        raise UserError("--model_file3 sets the y direction: give --y too")
    if args.dir_type not in ("weights", "states"):
        raise UserError(f"unknown --dir_type '{args.dir_type}'; use weights or states")
    for norm in (args.xnorm, args.ynorm):
        if norm not in net_plotter.NORMS:
            raise UserError(f"unknown normalization '{norm}'; use filter, layer, weight, dfilter or dlayer")
    if args.batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    return args


# ----------------------------------------------------------------------- file names
def name_direction_file(args):
    """The original's naming (next to the model file), with the --model_file3 defect fixed."""
    if args.dir_file:
        return args.dir_file
    f1, f2, f3 = args.model_file, args.model_file2, args.model_file3
    name = model_stem(args)
    if f2:
        if os.path.dirname(f1) == os.path.dirname(f2):
            name = f1 + "_" + os.path.basename(f2)
        else:
            prefix = os.path.dirname(os.path.commonprefix([f1, f2]) + "x")
            rel2 = os.path.relpath(os.path.dirname(f2), prefix) if prefix else os.path.dirname(f2)
            name = os.path.dirname(f1) + "_" + os.path.basename(f1) + "_" + \
                rel2.replace(os.sep, "_") + "_" + os.path.basename(f2)
    name += "_" + args.dir_type
    if not f2:
        if args.xignore:
            name += "_xignore=" + args.xignore
        if args.xnorm:
            name += "_xnorm=" + args.xnorm
    if args.y is not None:
        if f3:
            prefix = os.path.dirname(os.path.commonprefix([f1, f3]) + "x")
            name += "_" + os.path.relpath(f3, prefix or ".").replace(os.sep, "_")
        else:
            if args.yignore:
                name += "_yignore=" + args.yignore
            if args.ynorm:
                name += "_ynorm=" + args.ynorm
            if args.same_dir:
                name += "_same_dir"
    if args.idx > 0:
        name += "_idx=" + str(args.idx)
    if args.seed:
        name += "_seed=" + str(args.seed)
    return name + ".h5"


def name_surface_file(args, dir_file):
    if args.surf_file:
        return args.surf_file
    name = dir_file + "_[%s,%s,%d]" % (args.xmin, args.xmax, args.xnum)
    if args.y is not None:
        name += "x[%s,%s,%d]" % (args.ymin, args.ymax, args.ynum)
    return name + ".h5"


# ----------------------------------------------------------------------- directions
def direction_recipe(args):
    """What makes the directions; stored in the direction file, checked on reuse."""
    r = {"dir_type": args.dir_type, "model": args.model,
         "model_hash": _hash_or_init(args, args.model_file)}
    if args.model_file2:
        r["model_hash2"] = model_loader.file_hash(args.model_file2)
    else:
        r.update(xnorm=args.xnorm, xignore=args.xignore, seed=args.seed, idx=args.idx)
    if args.y is not None:
        if args.model_file3:
            r["model_hash3"] = model_loader.file_hash(args.model_file3)
        else:
            r.update(ynorm=args.ynorm, yignore=args.yignore, same_dir=args.same_dir,
                     seed=args.seed, idx=args.idx)
    return r


def _hash_or_init(args, path):
    return model_loader.file_hash(path) if path else f"init(seed={args.seed})"


def make_directions(args, net, dir_file):
    """Rank 0: write the direction file unless a usable one is there."""
    import json
    recipe = direction_recipe(args)
    if os.path.exists(dir_file):
        if args.dir_file:
            return  # the user's own file: used as it is, never modified
        made = net_plotter.read_direction_attrs(dir_file).get("recipe")
        if made is not None and json.loads(made) == recipe:
            return
        if not args.overwrite:
            raise UserError(f"direction file {dir_file} exists but was made with other settings "
                            "or another checkpoint; delete it, pass --overwrite, or choose "
                            "another --idx/--seed/--dir_file")
    entries = net_plotter.get_entries(net, args.dir_type)
    gen = net_plotter.make_generator(args.seed, args.idx)
    if args.model_file2:
        xdir = net_plotter.difference_direction(net, _load(args, args.model_file2), args.dir_type)
    else:
        xdir = net_plotter.random_direction(net, args.dir_type, args.xnorm, args.xignore, gen)
    ydir = None
    if args.y is not None:
        if args.model_file3:
            ydir = net_plotter.difference_direction(net, _load(args, args.model_file3), args.dir_type)
        elif args.same_dir:
            ydir = xdir
        else:
            ydir = net_plotter.random_direction(net, args.dir_type, args.ynorm, args.yignore, gen)
    net_plotter.write_directions(dir_file, [n for n, _ in entries], xdir, ydir,
                                 attrs={"dir_type": args.dir_type, "recipe": json.dumps(recipe),
                                        "xnorm": "" if args.model_file2 else args.xnorm,
                                        "ynorm": "" if args.model_file3 else args.ynorm,
                                        "xignore": args.xignore, "yignore": args.yignore})


def _short(path):
    """A checkpoint's folder and file name: enough to tell runs apart in plot labels."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) if path else ""


def _load(args, path):
    return model_loader.load(args.model, path, args.unsafe_load)


# ------------------------------------------------------------------------ set-up
def load_run(args, comm):
    """What every run starts from: threads, device, the data and the model at (0, 0)."""
    keep_freed_memory()
    torch.set_num_threads(args.threads or mpi4pytorch.default_threads(comm))
    device = mpi4pytorch.device_for(comm, args.cuda)
    data = dataloader.load_data(args)
    if not args.model_file:
        torch.manual_seed(args.seed)  # a freshly initialized model, the same on every rank
    net = _load(args, args.model_file)
    model_loader.check_fits(net, data, args.model)
    return device, data, net


def model_stem(args):
    """The model file, or out/<model> for a freshly initialized one: output names start here."""
    return args.model_file or os.path.join("out", args.model.replace(":", "_"))


def prepare(args, metrics, kind="loss", extra_settings=None):
    """Everything a grid run needs; returns a namespace (see the fields below)."""
    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    rank = mpi4pytorch.rank(comm)
    if args.model_file2 and args.dir_type == "weights" and rank == 0:
        print("warning: --dir_type weights moves only the parameters; BatchNorm statistics stay "
              "those of --model_file (use --dir_type states to interpolate them too)",
              file=sys.stderr)
    device, data, net = load_run(args, comm)
    dir_file = name_direction_file(args)
    mpi4pytorch.check_all(comm, lambda: make_directions(args, net, dir_file))
    mpi4pytorch.barrier(comm)
    xdir, ydir = net_plotter.read_directions(dir_file, net, args.dir_type, args.y is not None)
    dir_attrs = net_plotter.read_direction_attrs(dir_file)
    xcoords = np.linspace(args.xmin, args.xmax, args.xnum)
    ycoords = np.linspace(args.ymin, args.ymax, args.ynum) if args.y is not None else None
    surf_file = name_surface_file(args, dir_file)
    settings = {
        "kind": kind, "model": args.model,
        "model_file": _short(args.model_file), "model_hash": _hash_or_init(args, args.model_file),
        "model_file2": _short(args.model_file2), "model_file3": _short(args.model_file3),
        **dataloader.data_settings(args, data),
        "loss_name": args.loss_name, "dir_type": args.dir_type,
        "directions_hash": net_plotter.directions_hash(xdir, ydir),
        "xnorm": str(dir_attrs.get("xnorm", "")), "ynorm": str(dir_attrs.get("ynorm", "")),
        "xignore": str(dir_attrs.get("xignore", "")), "yignore": str(dir_attrs.get("yignore", "")),
        "x": [args.xmin, args.xmax, args.xnum],
        "y": [args.ymin, args.ymax, args.ynum] if args.y is not None else None,
        "precision": args.precision, "metrics": list(metrics), **(extra_settings or {}),
    }

    def open_writer():
        w = SurfaceWriter(surf_file, xcoords, ycoords, metrics, settings,
                          attrs={"dir_file": dir_file}, overwrite=args.overwrite)
        w.save()
        return w

    writer = mpi4pytorch.check_all(comm, open_writer)
    todo = mpi4pytorch.bcast(comm, writer.todo() if rank == 0 else None)
    if args.ngpu > 1 and args.cuda and comm is None:
        net = torch.nn.DataParallel(net, device_ids=list(range(args.ngpu)))
    net = net.to(device).eval()
    perturb = net_plotter.Perturbation(net.module if hasattr(net, "module") else net,
                                       args.dir_type, xdir, ydir)
    return argparse.Namespace(comm=comm, rank=rank, device=device, data=data, net=net,
                              dir_file=dir_file, xdir=xdir, ydir=ydir, xcoords=xcoords,
                              ycoords=ycoords, surf_file=surf_file, writer=writer, todo=todo,
                              perturb=perturb, settings=settings,
                              setup_seconds=time.perf_counter() - t0)


def move_to(ctx, k):
    """Write the weights of flat grid index k into the model; returns (x, y)."""
    if ctx.ycoords is None:
        x, y = ctx.xcoords[k], None
    else:
        i, j = divmod(k, len(ctx.ycoords))
        x, y = ctx.xcoords[i], ctx.ycoords[j]
    ctx.perturb.set(x, y or 0.0)
    return x, y


def compute_grid(args, ctx, compute, desc="surface"):
    """Run ``compute(k)`` over the missing points; exit cleanly on SIGTERM/SIGINT."""
    if ctx.rank == 0:
        done = ctx.writer.n_done
        total = len(ctx.todo) + done
        print(f"{ctx.surf_file}: {total} points, {done} already done"
              f"{' (resumed)' if ctx.writer.resumed and done else ''}; set-up {ctx.setup_seconds:.1f} s",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        run_grid(ctx.comm, ctx.todo, compute, ctx.writer, save_every=args.save_every,
                 progress=not args.no_progress, desc=desc)
    except Interrupted as e:
        if ctx.rank == 0:
            print(f"interrupted by {e}: {ctx.writer.n_done} of {ctx.writer.done.size} points saved "
                  f"in {ctx.surf_file}; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    seconds = time.perf_counter() - t0
    if ctx.rank == 0 and len(ctx.todo):
        print(f"timing: {len(ctx.todo)} points in {seconds:.2f} s, {seconds / len(ctx.todo):.3f} s per "
              f"point, {mpi4pytorch.size(ctx.comm)} rank(s) x {torch.get_num_threads()} thread(s); "
              f"set-up {ctx.setup_seconds:.2f} s", file=sys.stderr, flush=True)
    if ctx.rank == 0 and ctx.writer.n_done < ctx.writer.done.size:
        print(f"incomplete: {ctx.writer.n_done} of {ctx.writer.done.size} points in {ctx.surf_file}; "
              "rerun the same command to finish", file=sys.stderr, flush=True)
        sys.exit(1)


def plot(args, ctx):
    """The original's --plot: contours for 2D, loss/accuracy curves for 1D."""
    if ctx.ycoords is not None:
        import plot_2D
        argv = ["--surf_file", ctx.surf_file, "--surf_name", "train_loss", "--vmin", str(args.vmin),
                "--vmax", str(args.vmax), "--vlevel", str(args.vlevel)]
        if args.proj_file:
            argv += ["--proj_file", args.proj_file, "--dir_file", ctx.dir_file]
        plot_2D.main(argv + (["--show"] if args.show else []) + (["--log"] if args.log else []))
    else:
        import plot_1D
        argv = ["--surf_file", ctx.surf_file, "--xmin", str(args.xmin), "--xmax", str(args.xmax),
                "--loss_max", str(args.loss_max)]
        plot_1D.main(argv + (["--show"] if args.show else []) + (["--log"] if args.log else []))


# --------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(build_parser(), argv)
    splits = ["train"] + (["test"] if args.test else [])
    metrics = [f"{s}_{m}" for s in splits for m in ("loss", "acc")]
    loss_fn = get_loss_fn(args.loss_name)  # a bad --loss_name fails before any file is written
    ctx = prepare(args, metrics)
    evaluators = {s: Evaluator(ctx.net, *ctx.data.split(s), loss_fn, args.batch_size,
                               ctx.device, args.precision) for s in splits}

    def compute(k):
        move_to(ctx, k)
        out = {}
        for s, evaluate in evaluators.items():
            out[f"{s}_loss"], out[f"{s}_acc"] = evaluate()
        return out

    compute_grid(args, ctx, compute)
    if ctx.rank == 0:
        print(f"done: {ctx.surf_file}", flush=True)
        if args.plot:
            plot(args, ctx)


if __name__ == "__main__":
    run_main(main)
