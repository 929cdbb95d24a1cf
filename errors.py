"""One-line errors for the command-line scripts.

Every script raises ``UserError`` for bad input (a missing file, a wrong flag, a
checkpoint that does not fit) and wraps its ``main`` in ``run_main``, which prints
``error: <message>`` on one line and exits with status 2 -- never a traceback.

Under MPI (once ``mpi4pytorch.setup`` has registered the communicator with
``set_comm``) an error may be raised on every rank or on some ranks only (a checkpoint
or data file missing on one node) while the others wait for them in a collective call:

- ``SharedUserError``: raised on every rank at the same moment (``mpi4pytorch.check_all``
  runs a check on rank 0 and raises its error everywhere). Rank 0 prints it, every rank
  exits 2 together.
- any other ``UserError``: the failing rank waits up to ``AGREE_SECONDS`` for the other
  ranks to fail too (a non-blocking barrier on a communicator of its own, so it cannot
  be confused with the computation's messages). If they all do, rank 0 prints the
  message once (or each rank's, as ``error: (rank N) ...``, when they differ) and every
  rank exits 2. Otherwise the failing rank prints ``error: (rank N) <message>`` and
  ends the whole job with ``MPI_Abort(2)``: the job never hangs.

Without a communicator (a flag error, found before MPI is set up, even under ``mpiexec``
without ``--mpi``) a ``SharedUserError`` is printed by the launcher's rank 0 only.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

QUIET = False  # set on MPI ranks other than 0, so that a shared error prints once
_COMM = None   # a duplicate of the --mpi communicator, when it has more than one rank
AGREE_SECONDS = 3.0
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


class UserError(Exception):
    """A problem with the user's input; the message says what to do."""


class SharedUserError(UserError):
    """A UserError raised on every MPI rank at once (printed once, no abort needed)."""


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters) of an exception, for a
    one-line error that names what went wrong."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def set_comm(comm: Any) -> None:
    """Register the MPI communicator (collective: every rank calls it, at start-up)."""
    global _COMM
    _COMM = comm.Dup() if comm is not None and comm.Get_size() > 1 else None


def _all_ranks_failed(comm, seconds: float) -> bool:
    """True if every rank reaches this point within ``seconds`` (never blocks longer)."""
    req = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not req.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _mpi_error(comm, message: str) -> None:
    rank = comm.Get_rank()
    if _all_ranks_failed(comm, AGREE_SECONDS):
        messages = comm.gather(message, root=0)
        if rank == 0:
            if len(set(messages)) == 1:
                print(f"error: {message}", file=sys.stderr, flush=True)
            else:
                for r, m in enumerate(messages):
                    print(f"error: (rank {r}) {m}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"error: (rank {rank}) {message}", file=sys.stderr, flush=True)
    comm.Abort(2)


def launched_as_other_rank() -> bool:
    """True in a process that a launcher (mpiexec, srun) started as a rank other than 0."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in RANK_VARS)


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run ``main(argv)``; turn a ``UserError`` into one line on stderr and exit 2."""
    try:
        return main(argv)
    except UserError as e:
        if _COMM is not None and not isinstance(e, SharedUserError):
            _mpi_error(_COMM, str(e))
        shared_elsewhere = _COMM is None and isinstance(e, SharedUserError) and launched_as_other_rank()
        if not (QUIET or shared_elsewhere):
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
