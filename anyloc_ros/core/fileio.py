"""Crash-safe, symlink-safe file writing: write aside, fsync, rename, fsync the directory.

A reader sees either the old file or the complete new one, never a half-written file, even
if the process is killed or the power fails in the middle of a save. The file written aside
is created exclusively (O_EXCL, a random name, mode 0600) so a symlink or file planted at a
temporary name is never followed or overwritten; `os.replace` swaps the directory entry, so
a symlink at the final name is replaced, not written through.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<random>" beside their target
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _written_aside(path: Path) -> Iterator[tuple[int, Path]]:
    """A file created exclusively beside `path` (its descriptor and name); on success it is
    fsynced and renamed over `path`, and the directory fsynced. Removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; saved files get the usual permissions
        yield fd, tmp
        os.fsync(fd)  # the inode: also what others wrote to it by name
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield an open file written aside `path`; on success it is fsynced and renamed over `path`."""
    with _written_aside(Path(path)) as (fd, _), os.fdopen(os.dup(fd), mode) as f:
        yield f
        f.flush()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Like `atomic_file`, for writers that open the file by name (SQLite): the yielded path is a
    file this process created exclusively, never a planted symlink."""
    with _written_aside(Path(path)) as (_, tmp):
        yield tmp


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete temporary files left by saves that were killed (`.<name>.tmp-*`); returns their names.
    Only a process that owns the directory (the map writer, holding its lock) may call this."""
    removed = []
    for entry in os.scandir(directory):
        if entry.name.startswith(".") and TMP_MARK in entry.name and not entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)  # a symlink is removed itself, never its target
                removed.append(entry.name)
    return removed


def is_regular_file(path: Path) -> bool:
    """True for a regular file (through symlinks); False for FIFOs, devices, directories, missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def describe_os_error(exc: OSError) -> str:
    """A short reason for a failed write that tells the user what to do."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return "the disk is full (free some space)"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def save_npz(path: str | Path, metadata: dict[str, Any], **arrays: np.ndarray) -> Path:
    """Atomically save arrays plus a JSON metadata record to an .npz file (no pickle)."""
    path = Path(path)
    with atomic_file(path) as f:
        np.savez(f, __metadata__=np.array(json.dumps(metadata, sort_keys=True)), **arrays)
    return path


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load an .npz written by `save_npz`; raises ValueError/OSError on damaged files (also when
    the metadata record is not a JSON object)."""
    path = Path(path)
    if not is_regular_file(path):
        raise ValueError(f"{path} is not a regular file")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta: Any = {}
    if "__metadata__" in arrays:
        record = arrays.pop("__metadata__")
        if record.dtype.kind != "U" or record.shape != ():
            raise ValueError("its metadata record is not a JSON string")
        meta = json.loads(str(record))
    if not isinstance(meta, dict):
        raise ValueError(f"its metadata record is a JSON {type(meta).__name__}, not an object")
    return meta, arrays
