"""Hands grid points out to the ranks and gathers the results on rank 0.

Work is handed out dynamically, one point at a time, from a shared counter (an MPI
one-sided fetch-and-add on rank 0), so a slow rank or GPU never holds the others.
Every rank computes, rank 0 included. Results travel to rank 0 as small
(indices, values) messages; a collector thread on rank 0 records them in the
SurfaceWriter and saves the file (atomically) at least every ``save_every`` seconds
and at the end -- also while rank 0 is busy with a long point. Only rank 0 ever opens
the surface file.

SIGTERM and SIGINT stop the run cleanly: every rank stops after (or during) its
current point, rank 0 saves what is done and ``run_grid`` raises ``Interrupted``.
Rerunning the same command then computes only the missing points.
"""
import signal
import sys
import threading
import time

import numpy as np

RESULT, DONE = 11, 12


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Counter:
    """The index of the next point to hand out, shared by all ranks."""

    def __init__(self, comm):
        self.comm, self.value = comm, 0
        if comm is None:
            return
        from mpi4py import MPI
        self.MPI = MPI
        self.win = MPI.Win.Allocate(8 if comm.Get_rank() == 0 else 0, 8, comm=comm)
        if comm.Get_rank() == 0:
            self.win.Lock(0)
            self.win.Put(np.zeros(1, np.int64), 0)
            self.win.Unlock(0)
        comm.Barrier()

    def next(self):
        if self.comm is None:
            self.value += 1
            return self.value - 1
        one, out = np.ones(1, np.int64), np.zeros(1, np.int64)
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Fetch_and_op(one, out, 0, 0, self.MPI.SUM)
        self.win.Unlock(0)
        return int(out[0])

    def exhaust(self, total):
        """Make every rank's next request come back empty (used on interruption)."""
        if self.comm is None:
            self.value = total
            return
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Accumulate(np.array([total], np.int64), 0, op=self.MPI.REPLACE)
        self.win.Unlock(0)

    def free(self):
        if self.comm is not None:
            self.win.Free()


class _Collector:
    """Rank 0: receives results, records them, saves the file periodically."""

    def __init__(self, comm, writer, save_every, total, progress, desc):
        self.comm, self.writer, self.save_every = comm, writer, save_every
        self.workers = 0 if comm is None else comm.Get_size() - 1
        self.done_ranks = 0
        self.lock = threading.Lock()
        self.finishing = threading.Event()
        self.last_save = time.monotonic()
        self.bar = None
        if progress and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="pt", file=sys.stderr,
                            dynamic_ncols=True, mininterval=1.0)
        self.thread = None
        if comm is None or _thread_multiple():
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def record(self, indices, values):
        with self.lock:
            self.writer.record(indices, values)
            if self.bar:
                self.bar.update(len(indices))

    def step(self):
        """Receive what has arrived; save if due. True if anything arrived."""
        got = False
        if self.comm is not None:
            from mpi4py import MPI
            st = MPI.Status()
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                msg = self.comm.recv(source=st.Get_source(), tag=st.Get_tag())
                if st.Get_tag() == RESULT:
                    self.record(*msg)
                else:
                    self.done_ranks += 1
                got = True
        if time.monotonic() - self.last_save >= self.save_every:
            self.save()
        return got

    def save(self):
        with self.lock:
            self.writer.save()
        self.last_save = time.monotonic()

    def _loop(self):
        while not (self.finishing.is_set() and self.done_ranks >= self.workers):
            if not self.step():
                time.sleep(0.02 if self.comm is not None else 0.1)

    def finish(self, timeout=None):
        """Wait for every worker's last results (up to ``timeout`` s), then save."""
        self.finishing.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.thread is not None:
            self.thread.join(timeout)
        else:
            while self.done_ranks < self.workers and (deadline is None or time.monotonic() < deadline):
                if not self.step():
                    time.sleep(0.02)
        self.save()
        if self.bar:
            self.bar.close()
        return self.done_ranks >= self.workers


def _thread_multiple():
    from mpi4py import MPI
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def run_grid(comm, todo, compute, writer=None, save_every=10.0, progress=True,
             desc="surface", drain_timeout=30.0):
    """Evaluate ``compute(k) -> {metric: value}`` for every flat index ``k`` in ``todo``.

    ``todo`` must be the same on every rank; ``writer`` (rank 0 only) records the
    results and is saved periodically and at the end. Raises ``Interrupted`` on
    SIGTERM/SIGINT after rank 0 has saved what is done.
    """
    rank = 0 if comm is None else comm.Get_rank()
    counter = _Counter(comm)
    collector = _Collector(comm, writer, save_every, len(todo), progress, desc) if rank == 0 else None
    state = {"signum": None, "computing": False}

    def on_signal(signum, frame):
        # Raise only inside compute(), the long part: raising inside an MPI call (say
        # between the counter's Lock and Unlock) would leave MPI in a broken state.
        # Elsewhere the loop sees the flag after the call.
        if state["signum"] is None:
            state["signum"] = signum
            if state["computing"]:
                raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            while True:
                c = counter.next()
                if state["signum"]:
                    raise Interrupted(state["signum"])
                if c >= len(todo):
                    break
                k = int(todo[c])
                state["computing"] = True
                try:
                    values = compute(k)
                finally:
                    state["computing"] = False
                if rank == 0:
                    collector.record([k], values)
                    if collector.thread is None:
                        collector.step()
                else:
                    comm.send(([k], values), dest=0, tag=RESULT)
                if state["signum"]:
                    raise Interrupted(state["signum"])
        except Interrupted:
            if comm is not None:
                counter.exhaust(len(todo))
        if rank != 0:
            comm.send(None, dest=0, tag=DONE)
        else:
            all_back = collector.finish(drain_timeout if state["signum"] else None)
            if state["signum"] and not all_back:
                print(f"saved {writer.n_done} points; ranks still busy are stopped",
                      file=sys.stderr, flush=True)
                comm.Abort(128 + state["signum"])
    except Interrupted:
        pass  # a second signal while shutting down: the first one is being handled
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if rank == 0 and writer is not None:
            writer.save()
    if state["signum"]:
        raise Interrupted(state["signum"])
    counter.free()
