"""The surface file: loss/accuracy (or Hessian eigenvalues) over a 1D or 2D grid.

This module is the one place that reads and writes surface files; plot_surface.py,
plot_hessian_eigen.py and every plotting script go through it.

Layout (``format_version`` 2, written by this toolkit)
------------------------------------------------------
``xcoordinates``  (nx,)    float64, the x grid
``ycoordinates``  (ny,)    float64, the y grid (2D surfaces only)
``<metric>``      (nx,) or (nx, ny) float64, ``[i, j]`` = value at (x_i, y_j);
                  NaN where the point has not been computed yet
``done``          same shape, uint8: 1 where the point was computed. A computed value
                  may be anything (0, negative, NaN, inf); only ``done`` says what is done.
attributes        ``format`` = "loss-landscape-surface", ``format_version`` = 2,
                  ``layout`` = "[i,j]=(x_i,y_j)", ``dir_file`` (path of the direction file,
                  as in the original), ``metrics`` (JSON list), ``settings`` (JSON object:
                  everything that defines the surface; a resume must match it exactly).

Files written by the original loss-landscape code (no ``format_version``) are read
too: their 2D arrays are declared (nx, ny) but filled in ``np.meshgrid(x, y)`` order,
so the real layout is ``data.ravel().reshape(ny, nx)`` with ``[j, i]`` = (x_i, y_j),
and -1 marks "not computed". ``read_surface`` returns them in our orientation.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from errors import UserError
from fileio import open_h5, parse_settings
from store import DoneMask, ResultStore

FORMAT = "loss-landscape-surface"
FORMAT_VERSION = 2
LAYOUT = "[i,j]=(x_i,y_j)"
COORD_NAMES = ("xcoordinates", "ycoordinates")
NON_METRICS = set(COORD_NAMES) | {"done"}


class Surface(DoneMask):
    """A surface read from disk, in [i, j] = (x_i, y_j) orientation whatever the source."""

    def __init__(self, path: str, x: np.ndarray, y: np.ndarray | None, values: dict[str, np.ndarray],
                 done: np.ndarray, attrs: dict[str, Any], original: bool):
        self.path = path
        self.x = x
        self.y = y
        self.values = values          # name -> array, NaN where not done
        self.done = done              # bool array, shape (nx,) or (nx, ny)
        self.attrs = attrs
        self.original = original      # True for files written by the original code

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return self.done.shape

    @property
    def settings(self) -> dict:
        return self.attrs.get("settings", {})

    def names(self) -> list[str]:
        """Stored quantities plus the ones derived from them."""
        names = list(self.values)
        for split in ("train", "test"):
            if f"{split}_acc" in self.values:
                names.append(f"{split}_err")
        if "max_eig" in self.values and "min_eig" in self.values:
            names.append("eig_ratio")
        return names

    def get(self, name: str) -> np.ndarray:
        """Values of a stored or derived quantity (train_err = 100 - train_acc, ...)."""
        if name in self.values:
            return self.values[name]
        if name.endswith("_err") and name[:-4] + "_acc" in self.values:
            return 100.0 - self.values[name[:-4] + "_acc"]
        if name == "eig_ratio" and "max_eig" in self.values and "min_eig" in self.values:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.abs(self.values["min_eig"] / self.values["max_eig"])
        raise UserError(f"unknown --surf_name '{name}' in {self.path}; "
                        f"available: {', '.join(self.names()) or '(none)'}")


def read_surface(path: str) -> Surface:
    """Read a surface file written by this toolkit or by the original code.

    A file that is not a whole surface file (missing, empty, text, truncated; malformed
    settings; no or misshapen ``done``; coordinates that are not finite numbers; datasets
    of the wrong shape) is a one-line UserError that names the problem, never a traceback.
    """
    try:
        return _read_surface(path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever else a damaged HDF5 file raises
        raise UserError(f"{path} is not a readable surface file ({type(e).__name__}: "
                        f"{(str(e).splitlines() or ['malformed'])[0][:150]}){DAMAGED}")


DAMAGED = "; the file is damaged or was not written by plot_surface.py: recompute it (--overwrite)"


def _coords(f: Any, name: str, path: str) -> np.ndarray | None:
    if name not in f:
        return None
    d = f[name]
    if not isinstance(d, h5py.Dataset) or d.dtype.kind not in "fiu" or d.ndim > 1 or d.size == 0:
        raise UserError(f"{path}: '{name}' is not a list of numbers (shape {getattr(d, 'shape', '?')}){DAMAGED}")
    v = np.asarray(d[()], dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise UserError(f"{path}: '{name}' holds NaN or infinite coordinates{DAMAGED}")
    return v


def _read_surface(path: str) -> Surface:
    with open_h5(path, "surface file") as f:
        x = _coords(f, "xcoordinates", path)
        if x is None:
            raise UserError(f"{path} is not a surface file (no 'xcoordinates' dataset)")
        y = _coords(f, "ycoordinates", path)
        shape = (len(x),) if y is None else (len(x), len(y))
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        if "dir_file" in f and isinstance(f["dir_file"], h5py.Dataset):  # the original's
            attrs.setdefault("dir_file", _attr(f["dir_file"][()]))
        if "settings" in attrs:
            attrs["settings"] = parse_settings(attrs["settings"], path)
        original = "format_version" not in f.attrs
        if not original:
            _check_ours(f, attrs, shape, path)
        raw = _metric_arrays(f, shape, original, path)
        if original:
            values, done = _original_values(raw, shape, y is not None)
        else:
            done = np.asarray(f["done"][()]).astype(bool).reshape(shape)
            values = {k: v.reshape(shape) for k, v in raw.items()}
    return Surface(path, x, y, values, done, attrs, original)


def _check_ours(f: Any, attrs: dict, shape: tuple[int, ...], path: str) -> None:
    """A file of this toolkit: a version we read and a ``done`` mask of the grid's shape."""
    version = attrs["format_version"]
    if not isinstance(version, int):
        raise UserError(f"{path}: format_version {version!r} is not a number; not a surface file "
                        f"of this toolkit{DAMAGED}")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} has format_version {version}, newer than this toolkit reads "
                        f"({FORMAT_VERSION}); update the toolkit")
    if "done" not in f or not isinstance(f["done"], h5py.Dataset):
        raise UserError(f"{path} has no 'done' mask, so it cannot tell computed points from "
                        f"missing ones{DAMAGED}")
    if tuple(f["done"].shape) != shape:
        raise UserError(f"{path}: 'done' has shape {tuple(f['done'].shape)} but the grid is {shape}{DAMAGED}")


def _metric_arrays(f: Any, shape: tuple[int, ...], original: bool, path: str) -> dict[str, np.ndarray]:
    """The numeric datasets of the grid's size (the original's files hold others too)."""
    raw = {}
    for name, d in f.items():
        if name in NON_METRICS or not isinstance(d, h5py.Dataset) or d.dtype.kind not in "fiub":
            continue
        if original and d.size != int(np.prod(shape)):
            continue  # the original's files hold other datasets (dir_file, ...)
        if not original and tuple(d.shape) != shape:
            raise UserError(f"{path}: '{name}' has shape {tuple(d.shape)} but the grid is {shape}{DAMAGED}")
        raw[name] = np.asarray(d[()], dtype=np.float64)
    return raw


def _original_values(raw: dict[str, np.ndarray], shape: tuple[int, ...],
                     two_d: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The original's meshgrid-order arrays in our orientation, -1 read as not computed."""
    values = {k: (v.ravel().reshape(shape[::-1]).T if two_d else v.reshape(shape)) for k, v in raw.items()}
    ref = next((values[k] for k in ("train_loss", "test_loss", "max_eig") if k in values),
               next(iter(values.values()), None))
    done = np.zeros(shape, bool) if ref is None else (ref != -1)
    return {k: np.where(done, v, np.nan) for k, v in values.items()}, done


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def settings_record(spec: Any, identity: Mapping[str, Any], data: Mapping[str, Any], directions_hash: str,
                    dir_attrs: Mapping[str, Any], metrics: Sequence[str], kind: str,
                    extra: Mapping[str, Any] | None = None) -> dict:
    """The ``settings`` of a surface file (the one writer of them; a resume must match
    them exactly): what ``spec`` (a RunSpec) asks, the model's ``identity`` (name, content
    hashes, checkpoint names), the ``data`` by content (dataloader.data_settings), the
    directions by content and their normalizations."""
    settings = {
        "kind": kind, "model": identity["model"],
        "model_file": identity["model_file"], "model_hash": identity["model_hash"],
        "model_file2": identity["model_file2"], "model_file3": identity["model_file3"],
        **data, "loss_name": spec.loss_name, "dir_type": spec.dir_type,
        "directions_hash": directions_hash,
        "xnorm": str(dir_attrs.get("xnorm", "")), "ynorm": str(dir_attrs.get("ynorm", "")),
        "xignore": str(dir_attrs.get("xignore", "")), "yignore": str(dir_attrs.get("yignore", "")),
        "seed": spec.seed, "idx": spec.idx,
        "x": [spec.xmin, spec.xmax, spec.xnum],
        "y": [spec.ymin, spec.ymax, spec.ynum] if spec.y is not None else None,
        "precision": spec.precision, "metrics": list(metrics), **(extra or {}),
    }
    if identity.get("random_init"):
        settings["random_init"] = True
    return settings


class SurfaceStore(ResultStore):
    """Rank 0's copy of a surface being computed: the grid-shaped view of the result
    store (items are the grid points, flat C-order indices of (nx,) or (nx, ny)).

    Opens an existing file to resume it (only if its settings equal ``settings``),
    records results as they arrive, and saves atomically, so a kill at any moment leaves
    either the old or the new file, never a broken one; holds the file exclusively
    while open (store.ResultStore).
    """

    format_version = FORMAT_VERSION

    def __init__(self, path: str | None, x: Any, y: Any, metrics: Sequence[str], settings: Mapping[str, Any],
                 attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
                 inputs: Mapping[str, str | None] | None = None):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = None if y is None else np.asarray(y, dtype=np.float64)
        self.metrics = list(metrics)
        shape = (len(self.x),) if self.y is None else (len(self.x), len(self.y))
        super().__init__(path, FORMAT, "surface file", shape, {m: ((), np.nan) for m in self.metrics}, settings,
                         overwrite=overwrite, inputs=inputs, attrs=attrs,
                         hint="rerun with --overwrite to start fresh or choose another --surf_file")

    def _load(self) -> tuple[dict | None, dict[str, np.ndarray], np.ndarray] | None:
        old = read_surface(self.path)
        if not old.original and old.n_done == 0 and old.attrs.get("format") == FORMAT:
            return None  # a file of ours holding no result yet (a run that failed at once): start afresh
        if old.original:
            raise UserError(f"{self.path} was written by the original loss-landscape code and "
                            "cannot be resumed; pass --overwrite to recompute it or --surf_file "
                            "to write elsewhere")
        return (old.settings if "settings" in old.attrs else None), old.values, old.done

    def _write(self, f: Any) -> None:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["layout"] = LAYOUT
        f.attrs["metrics"] = json.dumps(self.metrics)
        f.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
        for k, v in self.attrs.items():
            f.attrs[k] = v
        f["xcoordinates"] = self.x
        if self.y is not None:
            f["ycoordinates"] = self.y
        for m in self.metrics:
            f[m] = self.values[m]
        f["done"] = self.done.astype(np.uint8)


SurfaceWriter = SurfaceStore  # the name before the one store (kept for callers)
