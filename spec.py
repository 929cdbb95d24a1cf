"""The one typed run specification of a loss-landscape grid run.

A ``RunSpec`` says everything that defines a run: the model and its checkpoints, the
recipe of the directions, the grid, the evaluation and the output. The command line
builds it from its flags (``flags.spec_of``, after ``flags.parse_args`` has checked
them); the Python API (``landscape.surface``) builds it from keyword arguments with
``RunSpec.make``, which runs the same checks and names the parameter in its one-line
``UserError``. The runtime (grid.py) takes a spec, never the argparse namespace, so the
command line and the API make the same direction and surface files.

The field names are those of the flags (``model_file``, ``xnorm``, ``seed``, ...), so a
function of the runtime reads a spec or, for the data options, the namespace alike.
Importable without torch.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from errors import UserError

Range = tuple[float, float, int]


@dataclass(frozen=True)
class RunSpec:
    """One grid run (frozen: the runtime never changes it on the way)."""
    # the model and its checkpoints
    model: str = "digits_cnn"
    model_file: str = ""
    model_file2: str = ""
    model_file3: str = ""
    unsafe_load: bool = False
    loss_name: str = "crossentropy"
    # the directions recipe
    dir_file: str = ""
    dir_type: str = "weights"
    xnorm: str = "filter"
    ynorm: str = "filter"
    xignore: str = "biasbn"
    yignore: str = "biasbn"
    same_dir: bool = False
    seed: int = 0
    idx: int = 0
    # the grid
    x: Range = (-1.0, 1.0, 51)
    y: Range | None = None
    # the evaluation
    test: bool = False
    batch_size: int = 128
    precision: str = "fp32"
    engine: str = "auto"
    points_per_pass: int | str = 1
    threads: int = 0
    cuda: bool = False
    ngpu: int = 1
    mpi: bool = False
    # the output
    surf_file: str = ""
    overwrite: bool = False
    save_every: float = 10.0
    progress: bool = True
    # the data options as the command line parsed them (dataloader.load_data reads them);
    # None for data given in memory
    data_args: Any = field(default=None, compare=False, repr=False)

    # the namespace's names of the grid, for the file-name and settings functions
    @property
    def xmin(self) -> float:
        return self.x[0]

    @property
    def xmax(self) -> float:
        return self.x[1]

    @property
    def xnum(self) -> int:
        return self.x[2]

    @property
    def ymin(self) -> float | None:
        return None if self.y is None else self.y[0]

    @property
    def ymax(self) -> float | None:
        return None if self.y is None else self.y[1]

    @property
    def ynum(self) -> int | None:
        return None if self.y is None else self.y[2]

    @property
    def splits(self) -> list[str]:
        return ["train"] + (["test"] if self.test else [])

    @classmethod
    def make(cls, **kw: Any) -> RunSpec:
        """A checked spec from keyword arguments (the API): every problem is one UserError
        naming the parameter."""
        kw["x"] = check_range(kw.get("x", cls.x), "x")
        if kw.get("y") is not None:
            kw["y"] = check_range(kw["y"], "y")
        spec = cls(**kw)
        spec.check()
        return spec

    def check(self) -> None:
        """The checks of the command line's flags, on the spec's fields."""
        from direction_options import DIR_TYPES, IGNORES, NORMS
        from evaluation_options import PRECISIONS
        from flags import MAX_POINTS
        points = self.x[2] * (self.y[2] if self.y else 1)
        if points > MAX_POINTS:
            raise UserError(f"the grid has {points:,} points, more than {MAX_POINTS:,} (its arrays alone "
                            f"would need {points * 8 / 2**30:.1f} GiB per quantity); use fewer points")
        for name, choices in (("dir_type", DIR_TYPES), ("xnorm", NORMS), ("ynorm", NORMS),
                              ("xignore", IGNORES), ("yignore", IGNORES)):
            if getattr(self, name) not in choices:
                raise UserError(f"unknown {name} {getattr(self, name)!r}: {name} one of {choices}")
        for name in ("seed", "idx", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (1 if name == "batch_size" else 0):
                raise UserError(f"{name} must be an integer >= {1 if name == 'batch_size' else 0}, got {v!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; use one of {PRECISIONS}")
        if not (isinstance(self.save_every, numbers.Real) and math.isfinite(self.save_every)
                and self.save_every > 0):
            raise UserError(f"save_every must be a positive number of seconds, got {self.save_every!r}")


def check_range(r: Any, name: str) -> Range:
    """(min, max, num) with finite bounds and an integer num >= 2, else a UserError."""
    try:
        lo, hi, n = r
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be (min, max, num), e.g. {name}=(-1, 1, 21); got {r!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or isinstance(n, bool) or not isinstance(n, numbers.Real) \
            or not math.isfinite(n) or int(n) != n or n < 2:
        raise UserError(f"{name}: finite bounds and an integer number of points >= 2, got {r!r}")
    return lo, hi, int(n)
