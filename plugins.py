"""The user's own objects, named on the command line as ``package.module:function``.

``--model``, ``--dataset`` and ``--loss_name`` accept such a name besides the built-in
choices (``mymodels:net`` is the function ``net`` of ``mymodels.py`` in the working
directory). ``import_object`` imports it, ``call_user`` calls it; every failure -- a
malformed name, a missing module, a syntax error, an exception at import or in the call,
a missing attribute -- is one ``UserError`` line naming the flag and the name.

The working directory is appended to ``sys.path`` (never put first), so a file there
named like a toolkit module or an installed package (``torch.py``, ``plot_1D.py``)
cannot replace it.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from errors import UserError, first_line

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _user_module_path() -> None:
    """Let modules in the working directory be found, after the toolkit's own modules
    and the installed packages (never in front: a torch.py or plot_1D.py there must not
    replace them)."""
    cwd = os.getcwd()
    here = {os.path.abspath(p or os.curdir) for p in sys.path}
    if cwd not in here:
        sys.path.append(cwd)


def import_object(spec: str, what: str) -> Any:
    """Import ``package.module:name`` (the module may sit in the working directory).

    The working directory is searched after the toolkit and the installed packages, so
    it cannot shadow them. Every failure -- a malformed spec, a missing module, a syntax
    error, an exception at import, a missing name -- is one UserError line.
    """
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise UserError(f"{what} '{spec}' is not package.module:name (e.g. mymodels:net for "
                        "a function net in mymodels.py in the working directory)")
    mod_name, _, attr = spec.partition(":")
    _user_module_path()
    mod = _import_module(mod_name, spec, what)
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"{what} {spec}: {mod_name} ({getattr(mod, '__file__', '?')}) has "
                            f"no '{attr}'")
        except Exception as e:
            raise UserError(f"{what} {spec}: reading {attr} raised {first_line(e)}")
    return obj


def _import_module(mod_name: str, spec: str, what: str) -> Any:
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise UserError(f"{what} {spec}: no module named '{e.name}' in the working directory "
                            f"({os.getcwd()}) or on the Python path")
        raise UserError(f"{what} {spec}: importing {mod_name} failed ({first_line(e)})")
    except SyntaxError as e:
        where = f"{e.filename}:{e.lineno}" if e.filename else mod_name
        raise UserError(f"{what} {spec}: syntax error in {where} ({e.msg})")
    except (Exception, SystemExit) as e:
        raise UserError(f"{what} {spec}: importing {mod_name} raised {first_line(e)}")


def call_user(fn: Callable[..., Any], spec: str, what: str, *args: Any) -> Any:
    """Call the user's ``fn``; anything it raises is one UserError line naming it."""
    if not callable(fn):
        raise UserError(f"{what} {spec} is a {type(fn).__name__}, not a function")
    try:
        return fn(*args)
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"{what} {spec} raised {first_line(e)}")
