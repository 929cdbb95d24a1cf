"""One-line errors for the command-line scripts.

Every script raises ``UserError`` for bad input (a missing file, a wrong flag, a
checkpoint that does not fit) and wraps its ``main`` in ``run_main``, which prints
``error: <message>`` on one line and exits with status 2 -- never a traceback.
"""
import sys


QUIET = False  # set on MPI ranks other than 0, so that a shared error prints once


class UserError(Exception):
    """A problem with the user's input; the message says what to do."""


def run_main(main, argv=None):
    """Run ``main(argv)``; turn a ``UserError`` into one line on stderr and exit 2."""
    try:
        return main(argv)
    except UserError as e:
        if not QUIET:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
