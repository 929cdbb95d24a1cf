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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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


def save_torch(obj: object, path: str) -> None:
    """``torch.save`` to ``path`` atomically: serialized in memory, then written beside
    ``path`` and renamed over it, so a failed write (disk full: torch raises RuntimeError,
    not OSError, when it writes a file itself) is one UserError and leaves the previous
    file whole and no temporary file behind."""
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    with written_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


@contextlib.contextmanager
def h5_written_atomically(path: str) -> Iterator[Any]:
    """Yield a new HDF5 file (an ``h5py.File`` in memory); on success its image replaces
    ``path`` in one plain write and a rename.

    HDF5 never touches the disk here, so a disk that fills during a flush or a close
    cannot leave HDF5 half-closed (h5py's ``RuntimeError``s, a crash at exit): the one
    write that can fail is an ``OSError``, a one-line UserError from
    ``written_atomically``, with the old ``path`` intact and no temporary file left.
    """
    import h5py
    f = h5py.File(f"{os.path.abspath(path)}.{os.getpid()}.{id(path)}.image", "w",
                  driver="core", backing_store=False)
    try:
        yield f
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with written_atomically(path) as tmp, open(tmp, "wb") as out:
        out.write(image)


def os_reason(e: OSError) -> str:
    """The reason of an OSError in a few words (h5py's carry the errno inside a long text)."""
    import re
    code = e.errno or next((int(m) for m in re.findall(r"errno = (\d+)", str(e))), 0)
    return os.strerror(code) if code else (str(e).splitlines() or ["unknown error"])[0][:160]


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_not_input(path: str, what: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse an output ``path`` that is one of the run's inputs ({flag: path}; empty
    entries ignored): writing it would destroy that input."""
    for flag, other in inputs.items():
        if other and _same_file(path, other):
            raise UserError(f"{what} {path} is the {flag} of this run; writing it would destroy "
                            "that input: choose another output file")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_replaceable(path: str, what: str) -> None:
    """``--overwrite`` replaces only files of this toolkit (HDF5 files, damaged ones too,
    and empty files), never a checkpoint, a data file or a text someone put there."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError:
        return  # unreadable: the write itself will say why
    if head != HDF5_SIGNATURE:
        raise UserError(f"{what} {path} exists and is not a file of this toolkit (not HDF5); "
                        "--overwrite replaces only our own files: move it or choose another output file")


def parse_settings(raw: Any, path: str) -> dict:
    """The ``settings`` attribute of one of our files as a dict, or a one-line error."""
    raw = raw.decode() if isinstance(raw, bytes) else raw
    try:
        settings = json.loads(raw) if isinstance(raw, str) else None
    except ValueError as e:
        raise UserError(f"{path}: its 'settings' attribute is not valid JSON ({e}){DAMAGED}")
    if not isinstance(settings, dict):
        raise UserError(f"{path}: its 'settings' attribute is not a JSON object{DAMAGED}")
    return settings


DAMAGED = "; the file is damaged or was not written by this toolkit: recompute it (--overwrite)"


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


def check_reuse(path: str, stored: dict | None | Callable[[], dict | None], wanted: dict, what: str,
                overwrite: bool = False,
                hint: str = "rerun with --overwrite to start fresh or choose another output file") -> bool:
    """The one reuse policy: may the existing output ``path`` (made with settings
    ``stored``) serve this run?

    True: it exists and was made with exactly ``wanted``: reuse it. False: it does not
    exist, or ``overwrite`` says to replace it (only a file of ours: ``check_replaceable``).
    A file made with other settings (or without any) is refused with a UserError that
    lists what differs and says what to do. ``stored`` may be a function that reads the
    settings: it is called only when they are needed, so a damaged file (whose reading
    raises) can still be replaced with ``overwrite``.
    """
    if not os.path.exists(path):
        return False
    if overwrite:
        check_replaceable(path, what)
        return False
    if callable(stored):
        stored = stored()
    if stored is None:
        raise UserError(f"{what} {path} exists but does not record the settings that made it; {hint}")
    diffs = settings_diff(stored, wanted)
    if diffs:
        raise UserError(f"{what} {path} was made with different settings (" + "; ".join(diffs) + f"); {hint}")
    return True


def open_h5(path: str, what: str) -> Any:
    """Open an HDF5 file for reading; a missing or unreadable file is a UserError."""
    import h5py
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} not found: {path!r}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot read {path} as an HDF5 {what} ({e}); is it complete and not "
                        "a different kind of file?")
