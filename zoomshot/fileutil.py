"""Writing files so that a reader never sees a half-written one: write to a temporary name, then rename.

`check_writable` is the one place every command asks, before any work, whether its output path
can be written; `atomic_path` / `write_text_atomic` then write each file whole or not at all.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from zoomshot.errors import ZsError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, folder: bool = False):
    """Yield a temporary sibling path; on success rename it onto `path`, on failure remove it.
    For a file (folder=False), an existing folder at `path` is refused before any work."""
    path = Path(path)
    if not folder and path.is_dir():
        raise ZsError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZsError(f"cannot write {path}: {e.strerror or e}") from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise ZsError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def check_writable(path: str | os.PathLike, folder: bool = False, what: str = "--out") -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder where a file goes
    (or a file where a folder goes), a file on the way, or a location where nothing can be created
    (read-only, /proc, no permission). Creates nothing that stays: the probe file is removed."""
    import tempfile

    path = Path(path)
    if path.exists():
        if not folder and path.is_dir():
            raise ZsError(f"{what} {path} is a folder; give a file name")
        if folder and not path.is_dir():
            raise ZsError(f"{what} {path} is a file; give a folder")
    here = path if folder and path.is_dir() else path.parent
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise ZsError(f"{what} {path}: {here} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".zs-write-probe-", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ZsError(f"{what} {path} cannot be written ({here}: {e.strerror or e}); choose another place") from None
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def json_default(x):
    """`json.dumps(default=...)` for the numpy scalars, arrays and paths that records and run files hold."""
    import numpy as np

    if isinstance(x, (np.integer, np.floating, np.ndarray)):
        return x.tolist()  # a numpy scalar's tolist() is its Python int or float
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def resolved_path(p: str) -> str:
    """A path's real path when it exists (one name for a file reached by several), else as given."""
    return os.path.realpath(p) if os.path.exists(p) else str(p)


def fsync_path(path) -> None:
    """Flush a file's (or a folder's, for a rename in it) contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
