"""One-line errors for the command-line scripts.

Every script raises ``UserError`` for bad input (a missing file, a wrong flag, a
checkpoint that does not fit) and wraps its ``main`` in ``run_main``, which prints
``error: <message>`` on one line and exits with status 2 -- never a traceback.

Under MPI (once ``mpi4pytorch.setup`` has registered the communicator with
``set_comm``) there are two kinds of errors:

- ``SharedUserError``: raised on every rank at the same moment (``mpi4pytorch.check_all``
  runs a check on rank 0 and raises its error everywhere). Rank 0 prints it, every rank
  exits 2 together.
- any other ``UserError``: it may be raised on one rank only (a checkpoint or data file
  missing on one node), while the others wait for it in a collective call. That rank
  prints ``error: (rank N) <message>`` and ends the whole job with ``MPI_Abort(2)``, so
  the job never hangs.
"""
import sys

QUIET = False  # set on MPI ranks other than 0, so that a shared error prints once
_COMM = None   # the MPI communicator of an --mpi run with more than one rank (set_comm)


class UserError(Exception):
    """A problem with the user's input; the message says what to do."""


class SharedUserError(UserError):
    """A UserError raised on every MPI rank at once (printed once, no abort needed)."""


def set_comm(comm) -> None:
    """Register the MPI communicator: a UserError on one rank then aborts the whole job."""
    global _COMM
    _COMM = comm if comm is not None and comm.Get_size() > 1 else None


def run_main(main, argv=None):
    """Run ``main(argv)``; turn a ``UserError`` into one line on stderr and exit 2."""
    try:
        return main(argv)
    except UserError as e:
        if _COMM is not None and not isinstance(e, SharedUserError):
            print(f"error: (rank {_COMM.Get_rank()}) {e}", file=sys.stderr, flush=True)
            _COMM.Abort(2)
        if not QUIET:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
