"""MPI set-up and rank placement.

``setup(use_mpi)`` returns the MPI communicator, or None for a single process. It
refuses to run under ``mpiexec``/``srun`` without ``--mpi`` (every process would
compute the whole surface and race on one file) and gives a clear error when
``--mpi`` is asked for but mpi4py or an MPI library is missing. Any uncaught
exception in a rank aborts the whole job, so a failing rank never leaves the others
hanging.

A ``UserError`` raised on one rank only ends the whole job too (``errors.run_main``
prints it as ``error: (rank N) ...`` and calls ``MPI_Abort``); one raised by
``check_all`` on every rank at once prints once and exits 2.

``local_rank`` is the rank among the processes of the same node: from SLURM, MPICH,
Open MPI or, failing those, a shared-memory split of the communicator; ``--cuda``
uses GPU ``local_rank % device_count`` so that several ranks per node spread over the
node's GPUs.
"""
import os
import sys
import threading
import time
import traceback

from collections.abc import Callable
from typing import Any, TypeVar

import errors
from errors import SharedUserError, UserError

T = TypeVar("T")
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
             "SLURM_STEP_NUM_TASKS")
LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                   "PMI_LOCAL_RANK", "SLURM_LOCALID")


def launched_size() -> int:
    """How many processes the launcher started (1 when not under a launcher)."""
    for v in SIZE_VARS:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 1


def setup(use_mpi: bool) -> Any:
    """The world communicator for ``--mpi`` runs, else None (after checking the launch)."""
    if not use_mpi:
        n = launched_size()
        if n > 1:
            errors.QUIET = errors.launched_as_other_rank()
            raise UserError(f"started as one of {n} MPI processes but without --mpi: each would "
                            "compute the whole surface; add --mpi (or run a single process)")
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise UserError(f"--mpi needs mpi4py and an MPI library ({e}); install them with "
                        "'pip install mpi4py mpich' or build mpi4py against your cluster's MPI")
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1 and launched_size() > 1:
        raise UserError(f"--mpi: the launcher started {launched_size()} processes but MPI sees each "
                        "as a world of one (launcher and MPI library do not match, e.g. "
                        "'srun --mpi=none'); use your MPI's mpiexec or srun --mpi=pmi2/pmix")
    if comm.Get_rank() != 0:
        errors.QUIET = True
    errors.set_comm(comm)
    _abort_on_uncaught(comm)
    _whole_lines()
    return comm


def _whole_lines() -> None:
    """Make every printed line reach the launcher in one write.

    mpiexec forwards each rank's stdout and stderr separately; with unbuffered streams
    (``python -u``, PYTHONUNBUFFERED) ``print`` writes the text and its newline in two
    calls, so a line of the other stream can land between them ("...set-up 0.2 sdone:").
    Line buffering in the text layer joins them.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            stream.reconfigure(line_buffering=True, write_through=False)
        except (AttributeError, ValueError, OSError):
            pass  # not a standard text stream (a notebook, a test's capture): leave it


def _abort_on_uncaught(comm: Any) -> None:
    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        # the whole traceback in one write straight to the descriptor, and a moment for the
        # launcher to forward it, before the abort tears the job down (else its last lines,
        # the ones that say what happened, can be lost)
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            sys.stderr.flush()
            os.write(2, text.encode(errors="replace"))
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
        comm.Abort(1)

    sys.excepthook = hook
    threading.excepthook = lambda a: hook(a.exc_type, a.exc_value, a.exc_traceback)


def rank(comm: Any) -> int:
    """This process's rank (0 without MPI)."""
    return 0 if comm is None else comm.Get_rank()


def size(comm: Any) -> int:
    """The number of ranks (1 without MPI)."""
    return 1 if comm is None else comm.Get_size()


def local_rank_and_size(comm: Any) -> tuple[int, int]:
    """(rank, size) among the processes of this node."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    r, n = node.Get_rank(), node.Get_size()
    node.Free()
    for v in LOCAL_RANK_VARS:
        if os.environ.get(v, "").isdigit():
            r = int(os.environ[v])
            break
    return r, n


def device_for(comm: Any, cuda: bool) -> Any:
    """torch device of this rank: GPU local_rank % count with --cuda, else the CPU."""
    import torch
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--cuda was given but PyTorch sees no CUDA GPU; drop --cuda to run on the CPU")
    # fp32 means fp32: PyTorch lets cuDNN convolutions round to TF32 by default, which would
    # make the Hessian, training and sharpness on a GPU differ from the CPU by ~1e-3;
    # --precision tf32 turns it on where it is asked for (evaluation.precision_mode)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    lr, _ = local_rank_and_size(comm)
    return torch.device("cuda", lr % torch.cuda.device_count())


def default_threads(comm: Any) -> int:
    """CPU threads per rank when ``--threads`` is not given.

    ``OMP_NUM_THREADS`` when it is set to a positive integer (the environment -- a batch
    system, a loaded shared machine -- knows best); otherwise the cores that this node's
    ranks may run on (the union of their CPU affinities) divided among those ranks, at
    least 1: ranks bound to their own cores get their own count, ranks that share the
    node's cores share them. Collective under MPI (every rank calls it at the same point).
    """
    mine = _affinity()
    cores, n = len(mine), 1
    if comm is not None:
        from mpi4py import MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        masks = node.allgather(mine)
        n = node.Get_size()
        node.Free()
        cores = len(set().union(*masks))
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cores // n)


def _affinity() -> set:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def barrier(comm: Any) -> None:
    """Wait for every rank (nothing without MPI)."""
    if comm is not None:
        comm.Barrier()


def bcast(comm: Any, obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    return obj if comm is None else comm.bcast(obj, root=0)


def check_all(comm: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; a UserError there is raised on every rank.

    Under MPI it is raised as ``errors.SharedUserError``: printed once, every rank
    exits 2 together. Any other exception in ``fn`` aborts the job (see ``setup``).
    """
    result: Any = None
    err = None
    if rank(comm) == 0:
        try:
            result = fn()
        except UserError as e:
            if comm is None:
                raise
            err = str(e)
    err = bcast(comm, err)
    if err is not None:
        raise SharedUserError(err)
    return result
