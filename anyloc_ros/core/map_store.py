"""MapStore: the SQLite file of a map (`map.sqlite`), the source of truth of a PlaceDatabase.

It holds keyframes (id, session, stamp, camera frame, pose, descriptor, compact patches,
thumbnail), their local features for geometric verification (keypoints, float16 descriptors,
image size, intrinsics: a table of its own, absent in maps made before it), sessions, removed ids and the map's metadata (format, encoder signature, map id,
active session, highest id ever used).

Safety rules, each a fault a robot or an attacker can cause:

* identify before touching: a file is a map only if it is an SQLite file whose header carries
  the map's `application_id` (or none, for maps of earlier versions) and a `meta` table with
  the map format. Anything else (another application's database, a FIFO, a text file, an
  empty file) is refused with a `MapError` naming it, and is never written;
* followers (recognition, localisation) open read-only, and still work on a read-only file
  system; a writer on a read-only directory is told so;
* one writer per map: the writer holds an exclusive lock (`map.lock`); a second is refused;
* a new map appears atomically (built aside, renamed into place), so a reader never sees a
  half-created map;
* keyframe ids are never reused (a high-water mark in `meta`), removals are recorded so
  followers drop them too;
* SQLite errors never escape raw: disk full, read-only and damage become `MapError`s that
  say what happened and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MapError
from .fileio import atomic_path, describe_os_error, remove_stale_temporaries
from .geometry import Pose
from .map_file import APPLICATION_ID, check_map_header, classify_sqlite_error, take_writer_lock
from .types import Keyframe

log = logging.getLogger(__name__)

FORMAT = "anyloc_ros.map/1"
MAX_SESSION_ID = 128
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")

_SCHEMA = """
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
    thumbnail BLOB
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
    depths BLOB
);
"""
# Columns added to a table after maps were made with it: (table, column, type). The writer adds
# them on open; followers of an older map read without them.
_LATER_COLUMNS = (("local_features", "depths", "BLOB"),)
KEYFRAME_COLUMNS = "id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw"


def validate_session_id(sid: str) -> str:
    if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SESSION_ID or not SESSION_ID_RE.match(sid):
        shown = repr(sid[:40]) + ("..." if isinstance(sid, str) and len(sid) > 40 else "")
        raise MapError(f"invalid session id {shown}: use 1-{MAX_SESSION_ID} characters of letters, digits, "
                       "'_', '-', '.', ':' (starting with a letter or digit)")
    return sid


class MapStore:
    """One map's SQLite file, opened as the writer (locked, read-write) or as a follower (read-only)."""

    FILE = "map.sqlite"
    LOCK = "map.lock"

    def __init__(self, directory: Path, *, writer: bool, create_meta: dict[str, Any] | None = None,
                 durable: bool = True) -> None:
        self.directory = directory
        self.file = directory / self.FILE
        self.writer = writer
        self._lock_file: Any = None
        self._conn: sqlite3.Connection | None = None
        try:
            if writer:
                self._lock_file = take_writer_lock(directory, self.LOCK)
                stale = remove_stale_temporaries(directory)
                if stale:
                    log.info("map %s: removed %d temporary file(s) left by an interrupted save", directory, len(stale))
                if not self.file.exists() and not self.file.is_symlink():
                    if create_meta is None:
                        raise MapError(f"no map at {directory} (missing {self.file})")
                    self._create(create_meta)
            self._conn = self._identify_and_connect(durable)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _create(self, meta: dict[str, Any]) -> None:
        """Build the new map aside and rename it into place: readers never see a half-made map."""
        try:
            with atomic_path(self.file) as tmp:
                conn = sqlite3.connect(tmp, isolation_level=None)
                try:
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    conn.executescript(_SCHEMA)
                    conn.execute("BEGIN")
                    for k, v in dict(meta, format=FORMAT, map_id=uuid.uuid4().hex, created=time.time()).items():
                        self.set_meta(conn, k, v)
                    conn.execute("COMMIT")
                finally:
                    conn.close()
        except sqlite3.Error as exc:
            raise MapError(f"cannot create map {self.file}: {exc}") from exc
        except OSError as exc:
            raise MapError(f"cannot create map {self.file}: {describe_os_error(exc)}") from exc

    def _connect_ro(self, immutable: bool) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(self.file.absolute())) + ("?immutable=1" if immutable else "?mode=ro")
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")  # damaged text must not raise later
        return conn

    def _identify_and_connect(self, durable: bool) -> sqlite3.Connection:
        app_id = check_map_header(self.file, self.directory)
        try:
            try:
                ro = self._connect_ro(immutable=False)
                check = ro.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.OperationalError as exc:
                # On a read-only file system SQLite cannot create the WAL index ("unable to open");
                # nothing can change the file there, so a follower reads it as immutable.
                read_only_fs = "unable to open" in str(exc) or classify_sqlite_error(exc) != "damaged"
                if self.writer or not read_only_fs:
                    raise
                ro = self._connect_ro(immutable=True)
                check = ro.execute("PRAGMA quick_check").fetchone()[0]
                log.info("map %s is on a read-only file system: opened as immutable", self.directory)
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            fmt = None
            if "meta" in tables:
                row = ro.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                fmt = _json(row[0]) if row else None
            if fmt is not None:  # every column the map reads must be there (a damaged schema fails here)
                ro.execute(f"SELECT {KEYFRAME_COLUMNS}, descriptor, patches, patches_shape, thumbnail "
                           "FROM keyframes LIMIT 1").fetchall()
                ro.execute("SELECT id, created FROM sessions LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise MapError(f"map database {self.file} is damaged ({exc}); restore the map directory from a "
                           "backup") from exc
        except UnicodeDecodeError as exc:  # SQLite's own report quotes the damaged bytes
            raise MapError(f"map database {self.file} is damaged (its schema or integrity report holds bytes that "
                           "are not text); restore the map directory from a backup") from exc
        if fmt is None or not {"keyframes", "sessions"} <= tables:
            ro.close()
            if app_id == 0:
                raise MapError(f"{self.file} is an SQLite database of another application (no anyloc_ros map "
                               "record); it is not a map and was left untouched")
            raise MapError(f"map database {self.file} has no map record (damaged); restore it from a backup")
        if fmt != FORMAT:
            ro.close()
            raise MapError(f"{self.file} has map format {fmt!r}; this version reads {FORMAT!r}")
        if not self.writer:
            self._has_removed = "removed" in tables
            return ro
        ro.close()
        try:
            conn = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
            conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.executescript(_SCHEMA)  # tables added since the map was made (e.g. `removed`)
            for table, column, kind in _LATER_COLUMNS:
                if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if app_id == 0:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")  # a map of an earlier version
        except sqlite3.Error as exc:
            raise self.error("open", exc) from exc
        self._has_removed = True
        return conn

    def writer_active(self) -> bool:
        """True while another process (or object) holds the map's writer lock."""
        if self.writer:
            return True
        try:
            fd = os.open(self.directory / self.LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ errors
    def error(self, action: str, exc: BaseException) -> MapError:
        kind = classify_sqlite_error(exc)
        if kind == "full":
            why = "the disk is full (database or disk is full): free some space; mapping resumes when there is room"
        elif kind == "readonly":
            why = "the map directory or file is read-only: mapping needs it writable"
        elif kind == "busy":
            why = f"the map is locked by another process ({exc})"
        else:
            why = f"the map database is damaged or unreadable ({exc}); restore it from a backup"
        return MapError(f"cannot {action} map {self.file}: {why}")

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors become MapError."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self.error(action, exc) from exc
            raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.error("read", exc) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MapError(f"map {self.directory} is closed")
        return self._conn

    # ------------------------------------------------------------------ meta
    def meta(self, key: str) -> Any:
        rows = self.read("SELECT value FROM meta WHERE key=?", (key,))
        return _json(rows[0][0]) if rows else None

    def set_meta(self, conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def ensure_meta(self, key: str, make: Any) -> Any:
        """Writer: the value of `key`, written first if absent (maps of earlier versions)."""
        value = self.meta(key)
        if value is None and self.writer:
            value = make()
            with self.transaction("update") as conn:
                self.set_meta(conn, key, value)
        return value

    # ------------------------------------------------------------------ keyframes
    def count(self) -> int:
        return int(self.read("SELECT count(*) FROM keyframes")[0][0])

    def all_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.read("SELECT id FROM keyframes ORDER BY id")], dtype=np.int64)

    def ids(self, session: str) -> np.ndarray:
        rows = self.read("SELECT id FROM keyframes WHERE session=? ORDER BY id", (session,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def max_id(self) -> int:
        row = self.read("SELECT max(id) FROM keyframes")[0][0]
        return int(row) if isinstance(row, int) else 0

    def keyframes(self, where: str = "", params: Sequence[Any] = ()) -> list[Keyframe]:
        rows = self.read(f"SELECT {KEYFRAME_COLUMNS} FROM keyframes {where}", params)
        return [k for k in (keyframe_from_row(r) for r in rows) if k is not None]

    def sessions_of(self, ids: Sequence[int]) -> dict[int, str]:
        """Session of each existing keyframe id among `ids`."""
        out: dict[int, str] = {}
        for part in _chunks([int(i) for i in ids]):
            for kid, session in self.read(f"SELECT id, session FROM keyframes WHERE id IN ({','.join('?' * len(part))})",
                                          part):
                out[int(kid)] = str(session)
        return out

    def keyframes_by_id(self, ids: Sequence[int]) -> dict[int, Keyframe]:
        out: dict[int, Keyframe] = {}
        for part in _chunks([int(i) for i in ids]):
            for kf in self.keyframes(f"WHERE id IN ({','.join('?' * len(part))})", part):
                out[kf.id] = kf
        return out

    def descriptors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Descriptors of `ids` in that order; a damaged row (wrong size) comes back as NaN."""
        ids = [int(i) for i in ids]
        out = np.full((len(ids), dim), np.nan, np.float32)
        pos = {kid: j for j, kid in enumerate(ids)}
        for part in _chunks(ids):
            for kid, blob in self.read(f"SELECT id, descriptor FROM keyframes WHERE id IN "
                                       f"({','.join('?' * len(part))})", part):
                if kid in pos:
                    _decode_descriptor(blob, out[pos[kid]])
        return out

    def iter_descriptors(self, dim: int, chunk: int = 4096) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            rows = self.read("SELECT id, descriptor FROM keyframes WHERE id > ? ORDER BY id LIMIT ?", (last, chunk))
            if not rows:
                return
            ids = np.array([r[0] for r in rows], np.int64)
            descs = np.full((len(rows), dim), np.nan, np.float32)
            for j, (_, blob) in enumerate(rows):
                _decode_descriptor(blob, descs[j])
            last = int(ids[-1])
            yield ids, descs

    def newest_keyframes(self, session: str, n: int) -> list[Keyframe]:
        """The session's `n` newest keyframes, oldest first."""
        rows = self.keyframes("WHERE session=? ORDER BY id DESC LIMIT ?", (session, int(n)))
        return rows[::-1]

    def checkpoint(self) -> None:
        """Copy the WAL into the main file (durability with durable=False)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(FULL)")
        except sqlite3.Error as exc:
            raise self.error("save", exc) from exc

    def has_column(self, table: str, column: str) -> bool:
        """A follower of a map made before `column` was added reads without it."""
        try:
            return column in {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
        except sqlite3.Error as exc:
            raise self.error("read", exc) from exc

    def blob(self, column: str, keyframe_id: int, table: str = "keyframes") -> Any:
        try:
            rows = self.conn.execute(f"SELECT {column} FROM {table} WHERE id=?", (int(keyframe_id),)).fetchall()
        except sqlite3.OperationalError as exc:
            if table != "keyframes" and "no such table" in str(exc):
                return None  # a map made before the table, read by a follower
            raise self.error("read", exc) from exc
        except sqlite3.Error as exc:
            raise self.error("read", exc) from exc
        return rows[0] if rows else None

    # ------------------------------------------------------------------ sessions and removals
    def sessions(self) -> list[str]:
        return [str(r[0]) for r in self.read("SELECT id FROM sessions ORDER BY created, rowid")]

    def removed_since(self, seq: int) -> tuple[int, list[int]]:
        """Ids removed by the writer after removal number `seq`, and the newest removal number."""
        if not self._has_removed:
            return seq, []
        rows = self.read("SELECT seq, id FROM removed WHERE seq > ? ORDER BY seq", (seq,))
        return (int(rows[-1][0]) if rows else seq), [int(r[1]) for r in rows]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None


def keyframe_from_row(row: Sequence[Any]) -> Keyframe | None:
    """A Keyframe from a row, or None when the row is damaged (values of the wrong type)."""
    try:
        pose = None
        if row[4] is not None:
            pose = Pose(*(float(v) for v in row[4:11]))
            if not pose.is_valid():
                pose = None
        return Keyframe(int(row[0]), str(row[1]), int(row[2]), str(row[3] or ""), pose)
    except (TypeError, ValueError):
        log.error("map keyframe row %r is damaged; ignored", row[0])
        return None


def _decode_descriptor(blob: Any, out: np.ndarray) -> None:
    """Fill `out` from a descriptor BLOB; a damaged one (wrong type or size) leaves it NaN."""
    if isinstance(blob, bytes) and len(blob) == 4 * len(out):
        out[:] = np.frombuffer(blob, np.float32)


def _json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _chunks(ids: list[int], n: int = 900) -> Iterable[list[int]]:  # SQLite's bound-parameter limit
    for s in range(0, len(ids), n):
        yield ids[s : s + n]
