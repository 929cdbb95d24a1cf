"""Loss and accuracy of a network moved along one direction (1D) or two (2D grid).

    python plot_surface.py --model digits_cnn --model_file M.t7 --x=-1:1:51 --y=-1:1:51
    mpirun -n 4 python plot_surface.py --mpi --cuda --model resnet56 --x=-1:1:51 \\
        --model_file .../model_300.t7 --dir_type weights --xnorm filter --xignore biasbn --plot

The story: parse and check the flags (before torch is imported, so --help and flag
errors are instant); load the data and the model, make or read the directions and open
the surface file, all checked before anything is written (grid.prepare); then every
rank takes grid points from the shared counter, moves the weights there in place and
evaluates loss and accuracy (with --bn_update N, after re-estimating the BatchNorm
statistics there on N training batches: for lines between aligned networks, see
align.py), while rank 0 gathers and saves the results (grid.compute_grid);
finally, with --plot, draw the curves or contours.
"""
from errors import UserError, run_main
from flags import build_parser, parse_args, spec_of


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--bn_update", type=int, default=0,
                        help="re-estimate the BatchNorm statistics at each point on N training batches "
                             "before evaluating (0: off)")
    args = parse_args(parser, argv)
    if args.bn_update < 0:
        raise UserError(f"--bn_update must be >= 0 (got {args.bn_update})")
    if args.bn_update and args.points_per_pass not in (1, "auto"):
        raise UserError("--bn_update evaluates one point at a time: drop --points_per_pass")
    spec = spec_of(args)

    import grid
    from evaluation import get_loss_fn
    extra = {"bn_update": args.bn_update} if args.bn_update else None  # part of the surface's settings
    run = grid.prepare(spec, grid.metrics_for(spec.splits), extra_settings=extra)  # checks every input first
    compute = grid.loss_compute(run, get_loss_fn(spec.loss_name), spec.splits, spec.batch_size, spec.precision,
                                spec.engine, spec.points_per_pass, bn_update=args.bn_update)
    grid.compute_grid(spec, run, compute)
    if run.rank == 0:
        print(f"done: {run.surf_file}", flush=True)
        if args.plot:
            grid.plot(args, run)


if __name__ == "__main__":
    run_main(main)
