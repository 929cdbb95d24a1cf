"""Hands grid points out to the ranks and gathers the results on rank 0.

Work is handed out dynamically from a shared counter (an MPI one-sided fetch-and-add
on rank 0), one point -- or ``chunk`` consecutive points -- at a time, so a slow rank
or GPU never holds the others. Every rank computes, rank 0 included. Results travel to
rank 0 as small (indices, values) messages; a collector thread on rank 0 records them
in the SurfaceWriter and saves the file (atomically) at least every ``save_every``
seconds and at the end -- also while rank 0 is busy with a long point. Only rank 0 ever
opens the surface file.

Stopping, and why it never hangs
--------------------------------
SIGTERM or SIGINT to any rank -- to ``mpiexec`` (all ranks) or to one rank alone --
stops the whole run: the signalled rank stops its current point, empties the shared
counter and tells rank 0, which stops the other ranks (a STOP message that a watcher
thread on each rank turns into the same interruption), waits up to ``drain_timeout``
seconds for their last results, saves what is done and raises ``Interrupted`` on every
rank; ``plot_surface.py`` then exits with 128 + the signal number. Rerunning the same
command computes only the missing points. A rank that is still busy after
``drain_timeout`` is stopped by ``MPI_Abort`` (after the save).

No collective call sits in a path that a stopped or failed rank may skip: the only
collective after the start is freeing the counter's window, which each worker does only
after rank 0 has told it that every worker is back (a worker still busy is ended by
``MPI_Abort`` instead, and the window is then simply left to the exit); the other
messages are point-to-point ones that rank 0 waits for with a time limit once anything
went wrong.
An exception on one rank reaches ``errors.run_main`` or the uncaught-exception hook of
``mpi4pytorch.setup``, both of which end the whole job with ``MPI_Abort``.

A failed save (disk full, folder gone) stops the run at once -- also in the middle of a
point -- and raises a ``UserError``; the file as last saved is left intact.

Progress: a tqdm bar when stderr is a terminal; otherwise (a log, a pipe, any rank under
``mpiexec``) a whole line every ``PROGRESS_LINE_EVERY`` seconds and a last one at the
end, so that output merged with ``2>&1`` stays readable line by line.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from errors import UserError

RESULT, DONE, STOP, FINAL = 11, 12, 13, 14
PROGRESS_LINE_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal
_KEEP: list = []  # counter windows (never freed: MPI_Win_free is collective) and STOP requests


class Interrupted(Exception):
    """SIGTERM/SIGINT stopped the run (on this rank or another); what was done is saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Stop(BaseException):
    """Raised inside ``compute`` to abandon the current point (not caught by ``except Exception``)."""


class _State:
    """Why this rank stops (a signal number or a save error), shared with the threads."""

    def __init__(self, interruptible: bool):
        self.signum: int | None = None
        self.error: BaseException | None = None
        self.computing = False
        self.closed = False
        self.lock = threading.Lock()
        self.main = threading.get_ident()
        self.interruptible = interruptible

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.error is not None

    def stop(self, signum: int | None = None, error: BaseException | None = None) -> None:
        """From another thread: record why, and interrupt the main thread's ``compute``."""
        with self.lock:
            if self.closed:
                return
            if error is not None and self.error is None:
                self.error = error
            if signum is not None and self.signum is None:
                self.signum = signum
            if self.interruptible and self.computing:
                # our on_signal handler runs in the main thread and raises _Stop inside
                # compute(); outside it the loop sees the flags (it checks them after
                # setting ``computing``, so one of the two always notices)
                signal.pthread_kill(self.main, signal.SIGTERM)

    def close(self) -> None:
        with self.lock:
            self.closed = True


class _Counter:
    """The index of the next point to hand out, shared by all ranks."""

    def __init__(self, comm: Any):
        self.comm, self.value = comm, 0
        if comm is None:
            return
        from mpi4py import MPI
        self.MPI = MPI
        self.win = MPI.Win.Allocate(8 if comm.Get_rank() == 0 else 0, 8, comm=comm)
        _KEEP.append(self.win)  # never freed: see the module docstring
        if comm.Get_rank() == 0:
            self.win.Lock(0)
            self.win.Put(np.zeros(1, np.int64), 0)
            self.win.Unlock(0)
        comm.Barrier()  # every rank is here at the start; nobody has failed yet

    def next(self, n: int = 1) -> int:
        """Take ``n`` positions; returns the first one."""
        if self.comm is None:
            self.value += n
            return self.value - n
        add, out = np.array([n], np.int64), np.zeros(1, np.int64)
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Fetch_and_op(add, out, 0, 0, self.MPI.SUM)
        self.win.Unlock(0)
        return int(out[0])

    def free(self) -> None:
        """Collective: only called when rank 0 has told every worker to call it too."""
        if self.comm is not None:
            self.win.Free()
            _KEEP.remove(self.win)

    def exhaust(self, total: int) -> None:
        """Make every rank's next request come back empty (used when stopping)."""
        if self.comm is None:
            self.value = total
            return
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Accumulate(np.array([total], np.int64), 0, op=self.MPI.REPLACE)
        self.win.Unlock(0)


class _Progress:
    """A tqdm bar on a terminal; elsewhere (a log, a pipe, under mpiexec) whole lines."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if _isatty(sys.stderr):
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="pt", file=sys.stderr,
                            dynamic_ncols=True, mininterval=1.0)

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= PROGRESS_LINE_EVERY and self.n < self.total:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        dt = self.last - self.t0
        rate = self.n / dt if dt > 0 else 0.0
        left = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.n < self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} points, {rate:.2f} pt/s{left}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # ends its line with a newline
            sys.stderr.flush()
        elif self.n:
            self._line()


def _isatty(f: Any) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def _save_error(writer: Any, e: BaseException) -> UserError:
    """The one-line error of a failed save (fileio's UserError already says it all)."""
    if isinstance(e, UserError):
        return UserError(f"{e}; stopped computing (rerun to resume)")
    try:
        from fileio import os_reason
        reason = os_reason(e)
    except (ImportError, AttributeError, TypeError):
        reason = getattr(e, "strerror", None) or str(e)
    path = getattr(writer, "path", "the surface file")
    return UserError(f"cannot write {path}: {reason}; stopped computing (the file as last saved, "
                     "if any, is unchanged; rerun to resume)")


class _Collector:
    """Rank 0: receives results, records them, saves the file periodically."""

    def __init__(self, comm: Any, writer: Any, save_every: float, total: int, progress: bool, desc: str,
                 state: _State):
        self.comm, self.writer, self.save_every, self.state = comm, writer, save_every, state
        self.workers = 0 if comm is None else comm.Get_size() - 1
        self.done: set[int] = set()  # worker ranks that sent DONE
        self.stop_sent = False
        self.lock = threading.Lock()
        self.finishing = threading.Event()
        self.last_save = time.monotonic()
        self.progress = _Progress(total, desc) if progress and total else None
        self.thread = None
        if comm is None or _thread_multiple():
            self.thread = threading.Thread(target=self._loop, name="collector", daemon=True)
            self.thread.start()

    @property
    def all_back(self) -> bool:
        return len(self.done) >= self.workers

    def record(self, indices: Sequence[int], values: Mapping[str, Any]) -> None:
        with self.lock:
            self.writer.record(indices, values)
            if self.progress:
                self.progress.update(len(indices))

    def step(self) -> bool:
        """Receive what has arrived; save if due. True if anything arrived."""
        got = False
        if self.comm is not None:
            from mpi4py import MPI
            st = MPI.Status()
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                src, tag = st.Get_source(), st.Get_tag()
                msg = self.comm.recv(source=src, tag=tag)
                if tag == RESULT:
                    self.record(*msg)
                elif tag == DONE:
                    self.done.add(src)
                    if msg is not None:  # that rank was interrupted: stop everyone
                        self.state.stop(signum=msg)
                got = True
        if self.state.error is None and time.monotonic() - self.last_save >= self.save_every:
            self.save()
        return got

    def save(self) -> None:
        with self.lock:
            self.writer.save()
        self.last_save = time.monotonic()

    def _loop(self) -> None:
        try:
            while (not (self.finishing.is_set() and self.all_back) and self.state.error is None
                   and not self.state.closed):
                if not self.step():
                    if self.finishing.is_set():
                        time.sleep(0.02)
                    else:  # returns at once when finish() begins
                        self.finishing.wait(0.02 if self.comm is not None else 0.1)
        except Exception as e:  # a failed save (or a bug): stop the run at once, on the main thread
            self.state.stop(error=_save_error(self.writer, e) if isinstance(e, (OSError, UserError)) else e)

    def stop_workers(self) -> None:
        """Ask every worker still busy to stop its current point (once)."""
        if self.comm is None or self.stop_sent:
            return
        self.stop_sent = True
        signum = self.state.signum or signal.SIGTERM
        for r in range(1, self.workers + 1):
            if r not in self.done:
                _KEEP.append(self.comm.isend(signum, dest=r, tag=STOP))  # never waited on

    def finish(self, drain_timeout: float) -> bool:
        """Wait for every worker's last results, bounded by ``drain_timeout`` once stopping."""
        self.finishing.set()
        deadline = None
        while not self.all_back and self.state.error is None:
            if self.state.stopping:
                self.stop_workers()
                if deadline is None:
                    deadline = time.monotonic() + drain_timeout
                elif time.monotonic() >= deadline:
                    break
            if self.thread is None:
                try:
                    if self.step():
                        continue
                except (OSError, UserError) as e:
                    self.state.error = _save_error(self.writer, e)
                    break
            time.sleep(0.02)
        if self.thread is not None:
            self.thread.join(0.5 if self.all_back else 0.0)
        return self.all_back

    def close_progress(self) -> None:
        if self.progress:
            self.progress.close()


def _thread_multiple() -> bool:
    from mpi4py import MPI
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


class _Watcher:
    """Workers: a thread that turns rank 0's STOP message into an interruption of compute()."""

    def __init__(self, comm: Any, state: _State):
        self.comm, self.state = comm, state
        self.end = threading.Event()
        self.thread = None
        if state.interruptible and _thread_multiple():
            self.thread = threading.Thread(target=self._loop, name="stop-watcher", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while not self.end.wait(0.05):
            if self.comm.iprobe(source=0, tag=STOP):
                signum = self.comm.recv(source=0, tag=STOP)
                self.state.stop(signum=signum)
                return

    def close(self) -> None:
        self.end.set()
        if self.thread is not None:
            self.thread.join(1.0)


def _final_word(comm: Any) -> tuple[bool, int | None]:
    """Workers, after DONE: wait (politely, not spinning) for rank 0's last word: free
    the window together or not, and the signal that interrupted the run, if any. Rank 0
    either sends it or ends the job (MPI_Abort), so this returns."""
    while not comm.iprobe(source=0, tag=FINAL):
        time.sleep(0.01)
    free, signum = comm.recv(source=0, tag=FINAL)
    while comm.iprobe(source=0, tag=STOP):  # sent before FINAL, crossed our DONE: not for
        comm.recv(source=0, tag=STOP)       # a later run_grid in this process
    return bool(free), signum


def run_grid(comm: Any, todo: Sequence[int], compute: Callable[[Any], Mapping[str, Any]],
             writer: Any = None, save_every: float = 10.0, progress: bool = True,
             desc: str = "surface", drain_timeout: float = 10.0, chunk: int = 1) -> None:
    """Evaluate ``compute`` at every flat index in ``todo``; rank 0 records and saves.

    With ``chunk == 1``, ``compute(k)`` gets one int and returns ``{metric: value}``.
    With ``chunk > 1``, ranks take up to ``chunk`` consecutive entries of ``todo`` at a
    time and ``compute(ks)`` gets a list of ints and returns ``{metric: sequence}`` with
    the values in the same order.

    ``todo`` must be the same on every rank; ``writer`` (rank 0 only: any object with
    ``record(indices, values)`` and ``save()``; its ``path`` and ``n_done`` are used in
    messages when it has them) records the results and is saved periodically and at
    the end. Raises ``Interrupted`` on every
    rank after SIGTERM/SIGINT to any rank (rank 0 has saved what is done first), and
    ``UserError`` on rank 0 when the file cannot be saved.

    Three roles: the work hand-out (``_hand_out``, every rank), the collector (rank 0,
    ``_Collector``) and the stop watcher (the other ranks, ``_Watcher``).
    """
    rank = 0 if comm is None else comm.Get_rank()
    todo = np.asarray(todo, dtype=np.int64).reshape(-1)
    interruptible = (threading.current_thread() is threading.main_thread()
                     and hasattr(signal, "pthread_kill"))
    state = _State(interruptible)
    old = _install_handlers(state) if interruptible else {}
    collector = watcher = None
    ok = False
    try:
        counter = _Counter(comm)
        if rank == 0:
            collector = _Collector(comm, writer, save_every, len(todo), progress, desc, state)
        else:
            watcher = _Watcher(comm, state)
        _hand_out(comm, counter, todo, max(1, int(chunk)), compute, state, collector, writer)
        if state.stopping and comm is not None:
            counter.exhaust(len(todo))
        if rank != 0:
            _finish_worker(comm, counter, watcher, state)
        else:
            _finish_root(comm, counter, collector, state, writer, drain_timeout)
        ok = True
    finally:
        _clean_up(comm, state, watcher, collector, ok, old)
    if state.signum is not None:
        raise Interrupted(state.signum)


def _install_handlers(state: _State) -> dict:
    """SIGTERM/SIGINT stop the run; returns the previous handlers."""
    def on_signal(signum: int, frame: Any) -> None:
        # Raise only inside compute(), the long part: raising inside an MPI call (say
        # between the counter's Lock and Unlock) would leave MPI in a broken state.
        # Elsewhere the loop sees the flag after the call.
        if state.signum is None and state.error is None:
            state.signum = signum
        if state.computing:
            state.computing = False
            raise _Stop()
    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _hand_out(comm: Any, counter: _Counter, todo: np.ndarray, chunk: int, compute: Callable,
              state: _State, collector: _Collector | None, writer: Any) -> None:
    """The work hand-out: take points from the shared counter and compute them until
    they are all taken or the run stops; results go to the collector (rank 0's own, or
    by message)."""
    total = len(todo)
    try:
        while not state.stopping:
            c = counter.next(chunk)
            if state.stopping or c >= total:
                break
            ks = [int(k) for k in todo[c:c + chunk]]
            state.computing = True
            try:
                if state.stopping:
                    raise _Stop()
                values = compute(ks[0] if chunk == 1 else ks)
            finally:
                state.computing = False
            if collector is None:
                comm.send((ks, values), dest=0, tag=RESULT)
                continue
            collector.record(ks, values)
            if collector.thread is None:
                try:
                    collector.step()
                except (OSError, UserError) as e:  # a failed save
                    state.error = _save_error(writer, e)
    except _Stop:
        pass  # the point in progress is abandoned; it stays to do


def _finish_worker(comm: Any, counter: _Counter, watcher: _Watcher, state: _State) -> None:
    """A worker's end: report back, wait for rank 0's last word, free the counter together."""
    watcher.close()
    comm.send(state.signum, dest=0, tag=DONE)
    free, signum = _final_word(comm)
    if signum is not None and state.signum is None:
        state.signum = signum  # stopped by the empty counter: interrupted all the same
    if free:
        counter.free()


def _finish_root(comm: Any, counter: _Counter, collector: _Collector, state: _State, writer: Any,
                 drain_timeout: float) -> None:
    """Rank 0's end: the workers' last results, the last save, the last word to every worker."""
    collector.finish(drain_timeout)
    if state.error is None:
        try:
            collector.save()
        except (OSError, UserError) as e:
            state.error = _save_error(writer, e)
    collector.close_progress()
    if comm is not None:
        # Free the window together only if every worker is back and waiting for
        # this word; a worker still busy will be stopped by MPI_Abort below.
        for r in sorted(collector.done):
            comm.send((collector.all_back, state.signum), dest=r, tag=FINAL)
        if collector.all_back:
            counter.free()
    if state.error is not None:
        raise state.error
    if state.signum is not None and not collector.all_back:
        n, path = getattr(writer, "n_done", "the finished"), getattr(writer, "path", "the file")
        print(f"interrupted by {signal.Signals(state.signum).name}: {n} points saved in {path}; "
              f"ranks still busy after {drain_timeout:g} s are stopped; rerun the same "
              "command to resume", file=sys.stderr, flush=True)
        comm.Abort(128 + state.signum)


def _clean_up(comm: Any, state: _State, watcher: _Watcher | None, collector: _Collector | None, ok: bool,
              old: dict) -> None:
    state.close()
    if watcher is not None:
        watcher.end.set()
    if collector is not None and not ok:
        collector.finishing.set()
        if state.error is None:
            try:  # another exception: keep what is done (best effort)
                collector.save()
            except Exception:
                pass
    for s, h in old.items():
        # An interrupted MPI rank is about to exit with 128 + signal: a second
        # signal (say mpiexec forwarding one that another rank also got) must
        # not kill it with a different status.
        signal.signal(s, signal.SIG_IGN if comm is not None and state.signum else h)
