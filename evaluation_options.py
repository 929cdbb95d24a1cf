"""The parameters of an evaluation (evaluation.py) that can be checked without torch.

evaluation.py owns these choices; they live in this light module so that the command
line (flags.py) checks them before torch is imported. Errors name the parameter
(``precision``); the command line passes ``--precision``.
"""
from errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16")
ENGINES = ("auto", "eager", "fused", "compiled")


def _one_of(value: object, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise UserError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]} (got {value!r})")


def check_precision(precision: object, name: str = "precision") -> None:
    """A UserError unless ``precision`` is one of ``PRECISIONS``."""
    _one_of(precision, PRECISIONS, name)


def check_engine(engine: object, name: str = "engine") -> None:
    """A UserError unless ``engine`` is one of ``ENGINES``."""
    _one_of(engine, ENGINES, name)
