"""The map file before SQLite touches it: header identification, the writer lock, and what an
SQLite error means. A file is identified from its first 100 bytes (regular file, SQLite magic,
anyloc_ros application_id) so that a foreign or damaged file is refused untouched."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import MapError
from ..fileio import is_regular_file

APPLICATION_ID = 0x414C4D50  # "ALMP" in the SQLite header: this file is an anyloc_ros map
SQLITE_MAGIC = b"SQLite format 3\x00"


def classify_sqlite_error(exc: BaseException) -> str:
    """full | readonly | busy | damaged: what an SQLite error means for the map."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return "full"
    if code == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return "readonly"
    if code == sqlite3.SQLITE_BUSY or "locked" in text:
        return "busy"
    return "damaged"


def take_writer_lock(directory: Path, name: str) -> Any:
    """Hold the map's writer lock (flock on `name`, pid written in it): one writer per map.
    Returns the open lock file; closing it releases the lock."""
    path = directory / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise MapError(f"map directory {directory} is read-only ({exc.strerror}): mapping needs a "
                           "writable directory; open the map for localisation only (a follower) or make it "
                           "writable") from exc
        raise MapError(f"cannot lock map {directory}: {name} {exc.strerror}"
                       + (" (a symlink: refusing to follow it)" if exc.errno == errno.ELOOP else "")) from exc
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = f.read(32).strip()
        f.close()
        raise MapError(f"map {directory} is already open for writing by another process"
                       f"{' (pid ' + holder + ')' if holder.isdigit() else ''}; one map has one writer "
                       "(open it as a follower to read it)") from exc
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def check_map_header(f: Path, directory: Path) -> int:
    """The SQLite application_id of the file, after checking (without SQLite, without
    writing) that it is a regular, non-empty SQLite file."""
    if not f.exists():
        raise MapError(f"no map at {directory} (missing {f})")
    if not is_regular_file(f):
        raise MapError(f"{f} is not a regular file (a device, FIFO or directory): not a map")
    try:
        with open(f, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        raise MapError(f"cannot read map {f}: {exc.strerror}") from exc
    if not head:
        raise MapError(f"map database {f} is empty (zero length: its creation or a copy was cut off); "
                       "restore the map directory from a backup")
    if len(head) < 100 or head[:16] != SQLITE_MAGIC:
        raise MapError(f"{f} is not an anyloc_ros map (not an SQLite database, or its header is damaged)")
    app_id = int.from_bytes(head[68:72], "big")
    if app_id not in (0, APPLICATION_ID):
        raise MapError(f"{f} belongs to another application (SQLite application_id {app_id:#010x}); "
                       "it is not an anyloc_ros map and was left untouched")
    return app_id
