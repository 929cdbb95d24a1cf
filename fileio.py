"""Writing output files so that an interruption never leaves a broken one, deciding
whether an existing output file may be reused, and opening HDF5 inputs with a clear error.

Every file the toolkit writes (surface, direction, projection, spectrum and .vtp files)
goes through ``written_atomically``: the content is written to a temporary file beside
the target, which then replaces the target in one rename. A kill at any moment leaves
either the old file or the new one; a failed write (disk full, folder gone) leaves the
old file as it was and is reported in one line.

Every output that a rerun may reuse stores the settings that made it; ``check_reuse`` is
the one place that compares them with the settings of the run at hand.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from errors import UserError


def check_output_path(path: str, what: str) -> None:
    """Refuse an output path that can never be written: a folder, or a file inside a file."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if folder and not os.path.isdir(folder):
        raise UserError(f"cannot write {what} {path}: {folder} is a file, not a folder")


@contextlib.contextmanager
def written_atomically(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    An OSError (no space, folder removed, permission) becomes a one-line UserError and
    leaves any existing ``path`` untouched.
    """
    check_output_path(path, "output file")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_reason(e)}; check that its folder exists, is "
                        "writable and has free space (the previous file, if any, is unchanged)")
    finally:
        with contextlib.suppress(OSError):
            if os.path.exists(tmp):
                os.remove(tmp)


def os_reason(e: OSError) -> str:
    """The reason of an OSError in a few words (h5py's carry the errno inside a long text)."""
    import re
    code = e.errno or next((int(m) for m in re.findall(r"errno = (\d+)", str(e))), 0)
    return os.strerror(code) if code else (str(e).splitlines() or ["unknown error"])[0][:160]


def settings_diff(stored: dict, wanted: dict) -> list[str]:
    """Human-readable list of the settings that differ between two settings dicts."""
    diffs = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k, "(absent)"), wanted.get(k, "(absent)")
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{k}: file has {_short(a)}, this run has {_short(b)}")
    return diffs


def _short(v):
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def check_reuse(path: str, stored: dict | None, wanted: dict, what: str, overwrite: bool = False,
                hint: str = "rerun with --overwrite to start fresh or choose another output file") -> bool:
    """May the existing output ``path`` (made with settings ``stored``) serve this run?

    True: it exists and was made with exactly ``wanted``: reuse it. False: it does not
    exist, or ``overwrite`` says to replace it. A file made with other settings (or
    without any) is refused with a UserError that lists what differs and says what to do.
    """
    if not os.path.exists(path) or overwrite:
        return False
    if stored is None:
        raise UserError(f"{what} {path} exists but does not record the settings that made it; {hint}")
    diffs = settings_diff(stored, wanted)
    if diffs:
        raise UserError(f"{what} {path} was made with different settings (" + "; ".join(diffs) + f"); {hint}")
    return True


def open_h5(path: str, what: str):
    """Open an HDF5 file for reading; a missing or unreadable file is a UserError."""
    import h5py
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} not found: {path!r}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot read {path} as an HDF5 {what} ({e}); is it complete and not "
                        "a different kind of file?")
