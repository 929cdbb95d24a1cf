"""The parameters of a direction (net_plotter.py) that can be checked without torch.

net_plotter.py owns these choices; they live in this light module so that the command
line (flags.py) checks them before torch is imported. Errors name the parameter
(``xnorm``); the command line passes ``--xnorm``.
"""
from errors import UserError

NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "")
IGNORES = ("biasbn", "")
DIR_TYPES = ("weights", "states")


def check_norm(norm: object, name: str = "norm") -> None:
    """A UserError unless ``norm`` is one of ``NORMS`` ('' : none)."""
    if norm not in NORMS:
        raise UserError(f"unknown {name} '{norm}'; use filter, layer, weight, dfilter, dlayer or '' (none)")


def check_ignore(ignore: object, name: str = "ignore") -> None:
    """A UserError unless ``ignore`` is 'biasbn' or ''."""
    if ignore not in IGNORES:
        raise UserError(f"unknown {name} '{ignore}'; use biasbn, or '' to move biases and BN parameters too")


def check_dir_type(dir_type: object, name: str = "dir_type") -> None:
    """A UserError unless ``dir_type`` is 'weights' or 'states'."""
    if dir_type not in DIR_TYPES:
        raise UserError(f"unknown {name} '{dir_type}'; use weights or states")
