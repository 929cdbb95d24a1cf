"""Loss and accuracy of a network moved along one direction (1D) or two (2D grid).

    python plot_surface.py --model digits_cnn --model_file M.t7 --x=-1:1:51 --y=-1:1:51
    mpirun -n 4 python plot_surface.py --mpi --cuda --model resnet56 --x=-1:1:51 \\
        --model_file .../model_300.t7 --dir_type weights --xnorm filter --xignore biasbn --plot

The story: parse and check the flags (before torch is imported, so --help and flag
errors are instant); load the data and the model, make or read the directions and open
the surface file, all checked before anything is written (grid.prepare); then every
rank takes grid points from the shared counter, moves the weights there in place and
evaluates loss and accuracy, while rank 0 gathers and saves the results (grid.compute_grid);
finally, with --plot, draw the curves or contours.
"""
from errors import run_main
from flags import build_parser, parse_args, spec_of


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(__doc__.splitlines()[0]), argv)
    spec = spec_of(args)

    import grid
    from evaluation import get_loss_fn
    run = grid.prepare(spec, grid.metrics_for(spec.splits))  # checks every input, then opens the files
    compute = grid.loss_compute(run, get_loss_fn(spec.loss_name), spec.splits, spec.batch_size, spec.precision,
                                spec.engine, spec.points_per_pass)
    grid.compute_grid(spec, run, compute)
    if run.rank == 0:
        print(f"done: {run.surf_file}", flush=True)
        if args.plot:
            grid.plot(args, run)


if __name__ == "__main__":
    run_main(main)
