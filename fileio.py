"""Writing output files so that an interruption never leaves a broken one, and opening
HDF5 inputs with a clear error.

Every file the toolkit writes (surface, direction, projection, spectrum and .vtp files)
goes through ``written_atomically``: the content is written to a temporary file beside
the target, which then replaces the target in one rename. A kill at any moment leaves
either the old file or the new one.
"""
import contextlib
import os

from errors import UserError


@contextlib.contextmanager
def written_atomically(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def open_h5(path, what):
    """Open an HDF5 file for reading; a missing or unreadable file is a UserError."""
    import h5py
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} not found: {path!r}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot read {path} as an HDF5 {what} ({e}); is it complete and not "
                        "a different kind of file?")
