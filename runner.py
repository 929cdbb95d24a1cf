"""The one runner: from an opened result store to a finished one, on one rank or many.

Every computing script ends its set-up with a ``store.ResultStore`` on rank 0 (None on
the other ranks) and a ``compute(k) -> {field: value}``; ``run`` then

1. broadcasts the work list (the items still to do, rank 0's view of the store);
2. prints the set-up line on rank 0 (``PATH: N <what>, D already done; set-up S s``);
3. runs ``scheduler.run_grid`` (dynamic hand-out, rank 0 collects and saves);
4. on SIGTERM/SIGINT prints ``interrupted by SIG...: D of N <what> saved in PATH; rerun
   the same command to resume`` and exits with 128 + the signal (or re-raises
   ``scheduler.Interrupted`` for the Python API);
5. prints the timing line and checks that every item is done (else a one-line error).

How a script uses it::

    t0 = time.perf_counter()
    comm = mpi4pytorch.setup(args.mpi)
    ...  # load and check every input first: nothing is written before
    store = mpi4pytorch.check_all(comm, lambda: ResultStore(out, KIND, WHAT, n, fields, settings,
                                                            overwrite=args.overwrite,
                                                            inputs=runner.inputs_of(args)))
    runner.run(comm, store if rank == 0 else None, compute, what="blocks", desc="layers",
               save_every=args.save_every, progress=not args.no_progress,
               setup_seconds=time.perf_counter() - t0)

``inputs_of(args)`` lists the input files of a run (checkpoints, direction file, data
loaders) for the store's check that no output is an input; ``fileio.check_reuse`` is the
one policy for "may this existing file serve this run?" (the store uses it too).

A phase that only rank 0 computes (mode_connectivity.py's training) runs under
``Signals`` and ``on_rank0``: a signal to any rank ends the phase at rank 0's next
check and every rank with 128 + the signal; ``stop_if_signalled`` is the same at a
phase boundary.

Importable without MPI or torch (mpi4py is imported by the communicator's owner).
"""
from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import mpi4pytorch
from errors import SharedUserError, UserError
from scheduler import Interrupted, run_grid

INPUT_FLAGS = ("model_file", "model_file2", "model_file3", "dir_file", "trainloader", "testloader", "proj_file")


def inputs_of(args: Any, *extra: tuple[str, str | None]) -> dict[str, str | None]:
    """{--flag: path} of the input files named in ``args`` (a namespace or a RunSpec),
    plus ``extra`` (flag, path) pairs. A script whose --dir_file is its output leaves it
    out with ``without(inputs_of(args), "--dir_file")``."""
    found: dict[str, str | None] = {}
    for flag in INPUT_FLAGS:
        value = getattr(args, flag, None)
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                found[f"--{flag}[{i}]"] = v
        elif isinstance(value, str) and value:
            found[f"--{flag}"] = value
    found.update(dict(extra))
    return found


def without(inputs: Mapping[str, str | None], *flags: str) -> dict[str, str | None]:
    """``inputs`` less the given flags (a script's own output, e.g. its --dir_file)."""
    return {k: v for k, v in inputs.items() if k not in flags}


def run(comm: Any, store: Any, compute: Callable[[Any], Mapping[str, Any]], *, what: str = "points",
        desc: str = "surface", save_every: float = 10.0, progress: bool = True, chunk: int = 1,
        n: int | None = None, plan: str | None = None, setup_seconds: float = 0.0,
        notes: Sequence[str] = (), exit_on_signal: bool = True) -> float:
    """Compute every item of ``store`` still to do (see the module docstring); returns the
    seconds spent computing. ``store`` is rank 0's (None elsewhere); ``n``: only the first
    ``n`` items count (a store that keeps more); ``plan``: the set-up line's description of
    the work (default ``"<N> <what>"``); ``notes``: extra words for the timing line."""
    rank = mpi4pytorch.rank(comm)
    try:
        return _run(comm, rank, store, compute, what, desc, save_every, progress, chunk, n, plan, setup_seconds,
                    notes, exit_on_signal)
    except BaseException:
        if store is not None:
            store.close()  # an error, an interruption: give the output up at once
        raise


def _run(comm: Any, rank: int, store: Any, compute: Callable[[Any], Mapping[str, Any]], what: str, desc: str,
         save_every: float, progress: bool, chunk: int, n: int | None, plan: str | None, setup_seconds: float,
         notes: Sequence[str], exit_on_signal: bool) -> float:
    todo = mpi4pytorch.bcast(comm, store.todo(n) if rank == 0 else None)
    total = (n if n is not None else store.n_total) if rank == 0 else 0
    path = (store.path or "(in memory)") if rank == 0 else ""
    if rank == 0:
        done = total - len(todo)
        print(f"{path}: {plan or f'{total} {what}'}, {done} already done"
              f"{' (resumed)' if store.resumed and done else ''}; set-up {setup_seconds:.1f} s",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        run_grid(comm, todo, compute, store, save_every=save_every, progress=progress, desc=desc, chunk=chunk)
    except Interrupted as e:
        if rank == 0:
            print(f"interrupted by {e}: {_n_done(store, n)} of {total} {what} saved in {path}; rerun the "
                  "same command to resume", file=sys.stderr, flush=True)
        if exit_on_signal:
            sys.exit(128 + e.signum)
        raise
    seconds = time.perf_counter() - t0
    if rank == 0 and len(todo):
        _timing(comm, len(todo), what, seconds, setup_seconds, notes)
    if rank == 0 and _n_done(store, n) < total:
        raise UserError(f"incomplete: {_n_done(store, n)} of {total} {what} in {path}; rerun the same "
                        "command to finish")
    return seconds


def _n_done(store: Any, n: int | None) -> int:
    return int(np.asarray(store.done).reshape(-1)[:n].sum())


def _timing(comm: Any, count: int, what: str, seconds: float, setup_seconds: float, notes: Sequence[str]) -> None:
    import torch  # loaded by every computing script by now
    extra = "".join(f"; {n}" for n in notes)
    print(f"timing: {count} {what} in {seconds:.2f} s, {seconds / count:.3f} s per "
          f"{what[:-1] if what.endswith('s') else what}, {mpi4pytorch.size(comm)} rank(s) x "
          f"{torch.get_num_threads()} thread(s); set-up {setup_seconds:.2f} s{extra}", file=sys.stderr, flush=True)


# --------------------------------------------------------- a phase on rank 0 (training)
STOP_TAG, OUTCOME_TAG = 31, 32  # messages of a rank-0 phase (on_rank0)


class Signals:
    """SIGTERM/SIGINT caught on this rank (the first one), for the duration of a phase."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.old = {s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _on(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def on_rank0(comm: Any, fn: Callable[[Callable[[], bool]], Any], interrupted: str, sig: Signals) -> Any:
    """Run ``fn(stop)`` on rank 0 while the other ranks wait without spinning.

    SIGTERM/SIGINT to any rank (caught by ``sig``, before or during the phase) makes
    ``stop()`` true on rank 0 (another rank's signal comes as a message), so ``fn`` ends
    at its next check; then every rank exits with 128 + the signal. A UserError on rank 0
    is raised on every rank. Never hangs: the other ranks wait only for rank 0's one
    message, which rank 0 sends whatever happened.
    """
    if mpi4pytorch.rank(comm) == 0:
        signum, err, result = _run_on_rank0(comm, fn, sig)
    else:
        signum, err, result = _wait_for_rank0(comm, sig)
    if err is not None:
        raise (SharedUserError(err) if comm is not None else UserError(err))
    if signum is not None:
        _exit_interrupted(comm, signum, sig, interrupted)
    return result


def _exit_interrupted(comm, signum, sig, interrupted):
    if mpi4pytorch.rank(comm) == 0:
        print(f"interrupted by {signal.Signals(signum).name}: {interrupted}; rerun the same command to "
              "resume", file=sys.stderr, flush=True)
    sys.exit(128 + (sig.signum or signum))


def stop_if_signalled(comm: Any, sig: Signals, interrupted: str) -> None:
    """Collective, at a phase boundary: a signal caught on any rank ends every rank."""
    signums = [sig.signum] if comm is None else comm.allgather(sig.signum)
    signum = next((s for s in signums if s is not None), None)
    if signum is not None:
        _exit_interrupted(comm, signum, sig, interrupted)


def _run_on_rank0(comm, fn, sig):
    def stop():
        if sig.signum is None and comm is not None and comm.iprobe(tag=STOP_TAG):
            sig.signum = comm.recv(tag=STOP_TAG)
        return sig.signum is not None

    result, err = None, None
    try:
        result = fn(stop)
    except UserError as e:
        err = str(e)
    finally:  # whatever happened, the other ranks get their one message
        stop()
        for r in range(1, mpi4pytorch.size(comm)):
            comm.send((sig.signum, err), dest=r, tag=OUTCOME_TAG)
    return sig.signum, err, result


def _wait_for_rank0(comm, sig):
    told = False
    while not comm.iprobe(source=0, tag=OUTCOME_TAG):
        if sig.signum is not None and not told:
            comm.isend(sig.signum, dest=0, tag=STOP_TAG)
            told = True
        time.sleep(0.05)
    signum, err = comm.recv(source=0, tag=OUTCOME_TAG)
    return signum, err, None
