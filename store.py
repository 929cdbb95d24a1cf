"""The one resumable result store: a file of items with a ``done`` mask and settings.

Every computing script keeps its results in a ``ResultStore`` (rank 0 only): a surface
(``surface.SurfaceStore``, the grid-shaped view: items are the grid points in C order),
a Hessian spectrum (random starts), a per-layer table (blocks), ... The store

- holds its output **exclusively** while it is open: an ``fcntl.flock`` on a hidden
  ``.NAME.lock`` beside the file, so a second run on the same output is refused in one
  line; the kernel releases the lock of a killed process, so a stale lock never blocks,
  and ``close`` (or the end of the process) removes the lock file;
- **resumes or refuses**: an existing file is resumed only when it was made with the
  same settings (``fileio.check_reuse``, the one reuse policy); a file of ours that holds
  no finished item is no settings record (a failed first run never blocks the corrected
  one); a damaged file of ours (settings that do not parse, a ``done`` mask of the wrong
  shape, a finished item without its value) is one line that says to pass ``--overwrite``;
- never replaces an **input** (``inputs``: the checkpoints, a direction file, data files)
  and, with ``--overwrite``, replaces only a file of this toolkit (HDF5, or empty);
- **saves atomically** (``fileio.h5_written_atomically``): the HDF5 image is built in
  memory and written with one plain write and a rename, so a disk that fills at any
  moment is one ``UserError`` line, the last good file intact, no temporary file left.

How a script uses it (with ``runner.run``)::

    store = mpi4pytorch.check_all(comm, lambda: ResultStore(
        out, KIND, "spectrum file", n_items, {"value": ((), np.nan)}, settings,
        overwrite=args.overwrite, inputs=runner.inputs_of(args)))   # rank 0 only
    runner.run(comm, store if rank == 0 else None, compute, what="random starts", ...)
    # rank 0 afterwards: store.values["value"], store.extra[...] = ...; store.save(); store.close()

``compute(k)`` returns ``{field: value}`` for item ``k`` (a flat index into ``shape``);
``record`` stores it and ``save`` writes the file when anything changed. Items may be
addressed by name too: ``keys`` (one string per item) is stored in the file and
``index(key)`` finds an item. Items whose values differ in kind from one item to the
next (sharpness's checkpoint x measure items) go into a ``KeyedStore``: one group
``items/<key>`` per finished item.

Layout (written by ``_write``; subclasses with a file format of their own -- the surface
file -- override ``_write`` and ``_load``): root attributes ``format`` (= ``kind``),
``settings`` (JSON) and ``attrs``; a dataset per field of shape ``shape + field shape``;
``done`` (uint8, ``shape``); ``keys`` (when given) and the ``extra`` datasets as they are.
"""
from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from errors import UserError
from fileio import (check_not_input, check_output_path, check_replaceable, check_reuse,
                    h5_written_atomically, open_h5, parse_settings)

Shape = tuple[int, ...]
Field = tuple[Shape, float]   # one item's shape and the fill value of an item not done


def damaged(path: str, problem: str) -> UserError:
    """The one line for a damaged file of ours: what is wrong and that --overwrite replaces it."""
    return UserError(f"{path}: {problem}; the file is damaged: pass --overwrite to recompute it "
                     "or choose another output file")


class Lock:
    """Exclusive use of ``path`` by this process: ``flock`` on ``.NAME.lock`` beside it."""

    def __init__(self, path: str, what: str):
        import fcntl
        folder, name = os.path.split(os.path.abspath(path))
        self.path = os.path.join(folder, f".{name}.lock")
        while True:
            try:
                os.makedirs(folder, exist_ok=True)  # as the first save would
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                from fileio import os_reason
                raise UserError(f"cannot write {what} {path}: {os_reason(e)}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UserError(f"{what} {path} is in use by another run (it holds {self.path}); "
                                "wait for it to finish or choose another output file")
            try:  # the file we locked may have been removed by the run that just ended
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        self._finalizer = weakref.finalize(self, Lock._release, fd, self.path)

    @staticmethod
    def _release(fd: int, path: str) -> None:
        with contextlib.suppress(OSError):
            os.remove(path)   # while still locked: no other run can hold this inode
        with contextlib.suppress(OSError):
            os.close(fd)

    def release(self) -> None:
        self._finalizer()


class DoneMask:
    """Counts of an object with a ``done`` mask (a store, a surface read from disk)."""

    done: np.ndarray

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def n_total(self) -> int:
        return int(self.done.size)

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_total


class ResultStore(DoneMask):
    """Rank 0's copy of a resumable result file (see the module docstring).

    ``shape``: the items (an int, or a grid shape); ``fields``: {name: (shape of one
    item, fill value)}; ``settings``: everything that defines the results (a resume must
    match it exactly); ``grow``: a 1D store may resume a file with more or fewer items
    (more random starts); ``keys``: optional names of the items; ``inputs``: {flag: path}
    of the run's inputs, which the output may never be; ``hint``: what to do when the
    file is refused. ``path`` None keeps the results in memory only (no file, no lock).
    """

    format_version: int | None = None

    def __init__(self, path: str | None, kind: str, what: str, shape: int | Sequence[int],
                 fields: Mapping[str, Field], settings: Mapping[str, Any], *, overwrite: bool = False,
                 grow: bool = False, keys: Sequence[str] | None = None,
                 inputs: Mapping[str, str | None] | None = None, hint: str | None = None,
                 attrs: Mapping[str, Any] | None = None):
        self.path, self.kind, self.what = path, kind, what
        self.shape: Shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        self.fields = {k: (tuple(s), float(fill)) for k, (s, fill) in fields.items()}
        self.settings = json.loads(json.dumps(settings))
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.extra: dict[str, Any] = {}
        self.keys = None if keys is None else [str(k) for k in keys]
        self.hint = hint or "pass --overwrite to start afresh or choose another output file"
        self.resumed = False
        self.values = {k: self._blank(self.shape, k) for k in self.fields}
        self.done = np.zeros(self.shape, dtype=bool)
        self.dirty = True
        self.lock: Lock | None = None
        if path is not None:
            self._open(overwrite, grow, inputs or {})

    # ------------------------------------------------------------------ opening
    def _open(self, overwrite: bool, grow: bool, inputs: Mapping[str, str | None]) -> None:
        check_output_path(self.path, self.what)
        check_not_input(self.path, self.what, inputs)
        if overwrite:
            check_replaceable(self.path, self.what)
        self.lock = Lock(self.path, self.what)
        try:
            if os.path.exists(self.path) and not overwrite:
                self._resume(grow)
        except BaseException:
            self.close()
            raise

    def _resume(self, grow: bool) -> None:
        stored = self._load()
        if stored is None:
            return
        settings, values, done = stored
        if not done.any():
            return  # a file of ours holding no result (a run that failed at once): start afresh
        check_reuse(self.path, settings, self.settings, self.what, hint=self.hint)
        if grow and len(self.shape) == 1 and done.ndim == 1:
            shape: Shape = (max(self.shape[0], len(done)),)
        else:
            shape = self.shape
        if done.shape != shape and not (grow and len(shape) == 1 and done.ndim == 1):
            raise UserError(f"{self.path} does not hold the items of this run ({done.shape} stored, "
                            f"{self.shape} wanted); {self.hint}")
        missing = [k for k in self.fields if k not in values]
        if missing:
            raise damaged(self.path, f"finished items have no '{missing[0]}'")
        self.values = {k: self._blank(shape, k) for k in self.fields}
        for k in self.fields:
            if values[k].shape != (*done.shape, *self.fields[k][0]):
                raise damaged(self.path, f"'{k}' has shape {values[k].shape}, not that of its "
                                         f"{done.shape} items")
            self.values[k][tuple(slice(0, n) for n in done.shape)] = values[k]
        self.done = np.zeros(shape, dtype=bool)
        self.done[tuple(slice(0, n) for n in done.shape)] = done
        self.resumed = True

    def _load(self) -> tuple[dict | None, dict[str, np.ndarray], np.ndarray] | None:
        """(settings, values, done) of the file at ``path``; None: start afresh. A file
        that is not ours is refused; a damaged one of ours is ``damaged``."""
        with open_h5(self.path, self.what) as f:
            if f.attrs.get("format") != self.kind:
                raise UserError(f"{self.path} exists but is not a {self.what} ({self.kind}); pass "
                                "--overwrite to replace it or choose another output file")
            if "done" not in f or not hasattr(f["done"], "shape"):
                raise damaged(self.path, "it has no 'done' mask")
            done = np.asarray(f["done"][()]).astype(bool)
            values = {k: np.asarray(f[k][()], dtype=np.float64) for k in self.fields
                      if k in f and hasattr(f[k], "shape")}
            if "settings" not in f.attrs:
                return None, values, done
            return parse_settings(f.attrs["settings"], self.path), values, done

    def _blank(self, shape: Shape, k: str) -> np.ndarray:
        item, fill = self.fields[k]
        return np.full((*shape, *item), fill, dtype=np.float64)

    # ------------------------------------------------------------------ the items
    def todo(self, n: int | None = None) -> np.ndarray:
        """Flat (C-order) indices of the items (of the first ``n``) still to compute."""
        flat = ~self.done.reshape(-1)
        return np.flatnonzero(flat if n is None else flat[:n])

    def index(self, key: str) -> int:
        """The flat index of the item named ``key`` (``keys`` given)."""
        if self.keys is None:
            raise KeyError(key)
        return self.keys.index(key)

    def record(self, indices: Sequence[int], values: Mapping[str, Any]) -> None:
        """Store results: ``values[field]`` holds one value per index (a list, or an array
        with one row per index), or one value for all of them (an array of the field's shape)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        for k, (item, _) in self.fields.items():
            self.values[k].reshape(-1, *item)[indices] = np.asarray(values[k], dtype=np.float64)
        self.done.reshape(-1)[indices] = True
        self.dirty = True

    # ------------------------------------------------------------------ saving
    def save(self) -> None:
        """Write the file (atomically) if anything changed; without a path, keep the
        results in memory only."""
        if not self.dirty or self.path is None:
            return
        with h5_written_atomically(self.path) as f:
            self._write(f)
        self.dirty = False

    def _write_head(self, f: Any) -> None:
        """The root attributes: format, format_version (when set), settings, attrs."""
        f.attrs["format"] = self.kind
        if self.format_version is not None:
            f.attrs["format_version"] = self.format_version
        f.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
        for k, v in self.attrs.items():
            f.attrs[k] = v

    def _write(self, f: Any) -> None:
        self._write_head(f)
        for k, v in self.values.items():
            f[k] = v
        f["done"] = self.done.astype(np.uint8)
        if self.keys is not None:
            import h5py
            f.create_dataset("keys", data=self.keys, dtype=h5py.string_dtype())
        for k, v in self.extra.items():
            f[k] = v

    def close(self) -> None:
        """Give the output up (remove the lock); the results stay readable in memory."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeyedStore(ResultStore):
    """A store whose items each have a name (``keys``) and values of their own kind (a dict
    of arrays per item, not the same fields for all: sharpness's checkpoint x measure items).

    Layout: root attributes ``format``, ``format_version`` (when given), ``settings`` and
    ``attrs``; one group ``items/<key>`` per finished item, with attribute ``done`` = 1 and
    a dataset per value. ``write_more(f)`` (optional) adds the derived results at each
    save. Items of the file that this run does not ask for are kept. ``items[key]`` holds
    the values of a finished item.
    """

    def __init__(self, path: str | None, kind: str, what: str, keys: Sequence[str], settings: Mapping[str, Any],
                 *, format_version: int | None = None, overwrite: bool = False,
                 inputs: Mapping[str, str | None] | None = None, hint: str | None = None,
                 attrs: Mapping[str, Any] | None = None):
        self.items: dict[str, dict[str, np.ndarray]] = {}
        self.write_more: Any = None
        self.format_version = format_version
        super().__init__(path, kind, what, len(keys), {}, settings, overwrite=overwrite, keys=keys, inputs=inputs,
                         hint=hint, attrs=attrs)

    def _load(self) -> tuple[dict | None, dict[str, np.ndarray], np.ndarray] | None:
        import h5py
        with open_h5(self.path, self.what) as f:
            if f.attrs.get("format") != self.kind:
                raise UserError(f"{self.path} exists but is not a {self.what} ({self.kind}); pass "
                                "--overwrite to replace it or choose another output file")
            settings = parse_settings(f.attrs["settings"], self.path) if "settings" in f.attrs else None
            found: dict[str, dict[str, np.ndarray]] = {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Group) and "done" in obj.attrs:
                    found[name] = {k: obj[k][()] for k in obj}
            if "items" in f:
                f["items"].visititems(visit)
        if not found:
            return None  # no finished item: no settings record, start afresh
        check_reuse(self.path, settings, self.settings, self.what, hint=self.hint)
        self.items = found  # the same settings: every finished item is kept, asked for or not
        return settings, {}, np.array([k in found for k in self.keys or []], dtype=bool)

    def record(self, indices: Sequence[int], values: Mapping[str, Any]) -> None:
        """Store the values of the items at ``indices`` (one dict for all of them)."""
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            self.items[self.keys[int(i)]] = {k: np.asarray(v) for k, v in values.items()}
            self.done[int(i)] = True
        self.dirty = True

    def _write(self, f: Any) -> None:
        self._write_head(f)
        for key, values in self.items.items():
            g = f.create_group(f"items/{key}")
            g.attrs["done"] = 1
            for k, v in values.items():
                g[k] = np.asarray(v)
        if self.write_more is not None:
            self.write_more(f)
