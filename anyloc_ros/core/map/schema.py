"""The map file's schema, and opening it: identified before touched, created atomically, the
tables and columns added since a map was made brought in by the writer (store.py uses it)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from ..errors import MapError
from ..fileio import atomic_path, describe_os_error
from .file import APPLICATION_ID, check_map_header, classify_sqlite_error
from .rows import BLOB_COLUMNS, CORE_COLUMNS, KEYFRAME_COLUMNS, LOCAL_COLUMNS, ORIGIN_COLUMNS, from_json, row_checksum

log = logging.getLogger("anyloc_ros.core.map.store")

FORMAT = "anyloc_ros.map/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keyframes (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL REFERENCES sessions(id),
    stamp_ns INTEGER NOT NULL,
    frame_id TEXT NOT NULL DEFAULT '',
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    descriptor BLOB NOT NULL,
    patches BLOB,
    patches_shape TEXT,
    thumbnail BLOB,
    checksum INTEGER,
    blobs_checksum INTEGER
);
CREATE INDEX IF NOT EXISTS keyframes_session ON keyframes(session, id);
CREATE TABLE IF NOT EXISTS removed (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS local_features (
    id INTEGER PRIMARY KEY,
    keypoints BLOB NOT NULL,
    descriptors BLOB NOT NULL,
    dim INTEGER NOT NULL,
    image_h INTEGER NOT NULL,
    image_w INTEGER NOT NULL,
    camera_matrix TEXT,
    camera_mount TEXT,
    depths BLOB,
    checksum INTEGER
);
CREATE TABLE IF NOT EXISTS origins (
    id INTEGER PRIMARY KEY,
    robot_id TEXT NOT NULL,
    map_id TEXT NOT NULL,
    remote_id INTEGER NOT NULL,
    checksum INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS origins_remote ON origins(robot_id, map_id, remote_id);
"""
# Columns added to a table after maps were made with it: (table, column, type). The writer adds
# them on open; followers of an older map read without them.
LATER_COLUMNS = (("local_features", "depths", "BLOB"), ("keyframes", "checksum", "INTEGER"),
                 ("keyframes", "blobs_checksum", "INTEGER"), ("local_features", "checksum", "INTEGER"))


def create_map_file(file: Path, meta: dict[str, Any]) -> None:
    """Build the new map aside and rename it into place: readers never see a half-made map."""
    try:
        with atomic_path(file) as tmp:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.executescript(SCHEMA)
                conn.execute("BEGIN")
                for k, v in dict(meta, format=FORMAT, map_id=uuid.uuid4().hex, created=time.time(),
                                 checksums=True).items():
                    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v)))
                conn.execute("COMMIT")
            finally:
                conn.close()
    except sqlite3.Error as exc:
        raise MapError(f"cannot create map {file}: {exc}") from exc
    except OSError as exc:
        raise MapError(f"cannot create map {file}: {describe_os_error(exc)}") from exc

def _connect_ro(file: Path, immutable: bool) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(file.absolute())) + ("?immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")  # damaged text must not raise later
    return conn

def connect(file: Path, directory: Path, writer: bool, durable: bool) -> tuple[sqlite3.Connection, bool]:
    """A connection to a file identified as a map (read-only for a follower, also on a read-only
    file system; read-write for the writer, with the tables and columns added since the map was
    made), and whether it has the `removed` table."""
    app_id = check_map_header(file, directory)
    try:
        try:
            ro = _connect_ro(file, immutable=False)
            check = ro.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as exc:
            # On a read-only file system SQLite cannot create the WAL index ("unable to open");
            # nothing can change the file there, so a follower reads it as immutable.
            read_only_fs = "unable to open" in str(exc) or classify_sqlite_error(exc) != "damaged"
            if writer or not read_only_fs:
                raise
            ro = _connect_ro(file, immutable=True)
            check = ro.execute("PRAGMA quick_check").fetchone()[0]
            log.info("map %s is on a read-only file system: opened as immutable", directory)
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        fmt = None
        if "meta" in tables:
            row = ro.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            fmt = from_json(row[0]) if row else None
        if fmt is not None:  # every column the map reads must be there (a damaged schema fails here)
            ro.execute(f"SELECT {KEYFRAME_COLUMNS}, descriptor, patches, patches_shape, thumbnail "
                       "FROM keyframes LIMIT 1").fetchall()
            ro.execute("SELECT id, created FROM sessions LIMIT 1").fetchall()
            if "origins" in tables:
                ro.execute(f"SELECT {ORIGIN_COLUMNS}, checksum FROM origins LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise MapError(f"map database {file} is damaged ({exc}); restore the map directory from a "
                       "backup") from exc
    except UnicodeDecodeError as exc:  # SQLite's own report quotes the damaged bytes
        raise MapError(f"map database {file} is damaged (its schema or integrity report holds bytes that "
                       "are not text); restore the map directory from a backup") from exc
    if fmt is None or not {"keyframes", "sessions"} <= tables:
        ro.close()
        if app_id == 0:
            raise MapError(f"{file} is an SQLite database of another application (no anyloc_ros map "
                           "record); it is not a map and was left untouched")
        raise MapError(f"map database {file} has no map record (damaged); restore it from a backup")
    if fmt != FORMAT:
        ro.close()
        raise MapError(f"{file} has map format {fmt!r}; this version reads {FORMAT!r}")
    if not writer:
        return ro, "removed" in tables
    ro.close()
    try:
        conn = sqlite3.connect(file, check_same_thread=False, isolation_level=None, timeout=30)
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.executescript(SCHEMA)  # tables added since the map was made (e.g. `removed`)
        for table, column, kind in LATER_COLUMNS:
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        if app_id == 0:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")  # a map of an earlier version
        row = conn.execute("SELECT value FROM meta WHERE key='checksums'").fetchone()
        if row is None or from_json(row[0]) is not True:
            n = add_row_checksums(conn)
            log.info("map %s was written before row checksums: %d keyframes checksummed now (damage from before "
                     "today cannot be told apart; from now on any change to a row is detected)", directory, n)
    except sqlite3.Error as exc:
        raise map_error("open", file, exc) from exc
    return conn, True


def add_row_checksums(conn: sqlite3.Connection, chunk: int = 512) -> int:
    """Writer, once per map made before row checksums: checksum every row as it is now (in
    chunks, each its own transaction; the map records it is done last, so an interrupted run
    starts again)."""
    n = 0
    for table, columns, update in (
            ("keyframes", f"{CORE_COLUMNS}, {BLOB_COLUMNS}", "checksum=?, blobs_checksum=?"),
            ("local_features", LOCAL_COLUMNS, "checksum=?")):
        last = -1
        while True:
            rows = conn.execute(f"SELECT {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                                (last, chunk)).fetchall()
            if not rows:
                break
            if table == "keyframes":
                sums = [(row_checksum(r[:12]), row_checksum((r[0], *r[12:])), r[0]) for r in rows]
                n += len(rows)
            else:
                sums = [(row_checksum(r), r[0]) for r in rows]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"UPDATE {table} SET {update} WHERE id=?", sums)
            conn.execute("COMMIT")
            last = rows[-1][0]
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('checksums', 'true')")
    return n


def map_error(action: str, file: Path, exc: BaseException) -> MapError:
    """An SQLite failure while `action`-ing the map, said as what happened and what to do."""
    kind = classify_sqlite_error(exc)
    if kind == "full":
        why = "the disk is full (database or disk is full): free some space; mapping resumes when there is room"
    elif kind == "readonly":
        why = "the map directory or file is read-only: mapping needs it writable"
    elif kind == "busy":
        why = f"the map is locked by another process ({exc})"
    else:
        why = f"the map database is damaged or unreadable ({exc}); restore it from a backup"
    return MapError(f"cannot {action} map {file}: {why}")
