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
* every row carries checksums of its content (rows.py), written in the same transaction and
  checked on every read that returns it: a row that fails is never returned, only recorded in
  `damaged` (logged once) for the map to quarantine;
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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MapError
from ..fileio import remove_stale_temporaries
from ..types import Keyframe
from .file import take_writer_lock
from .rows import (
    BLOB_COLUMNS,
    CORE_COLUMNS,
    LOCAL_COLUMNS,
    ORIGIN_COLUMNS,
    chunks,
    decode_descriptor,
    from_json,
    keyframe_from_row,
    row_checksum,
)
from .schema import connect, create_map_file, map_error

log = logging.getLogger(__name__)

MAX_SESSION_ID = 128
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")


def validate_session_id(sid: str) -> str:
    if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SESSION_ID or not SESSION_ID_RE.match(sid):
        shown = repr(sid[:40]) + ("..." if isinstance(sid, str) and len(sid) > 40 else "")
        raise MapError(f"invalid session id {shown}: use 1-{MAX_SESSION_ID} characters of letters, digits, "
                       "'_', '-', '.', ':' (starting with a letter or digit)")
    return sid


def peer_session_id(robot_id: str, session: str) -> str:
    """The local name of another robot's session: its robot id and its own session id (two robots
    may both call a traversal `corridor`)."""
    return f"{robot_id}:{session}"[:MAX_SESSION_ID]


def owner_session_id(robot_id: str, session: str) -> str:
    """Another robot's session as its owner names it (peer_session_id undone)."""
    return session.removeprefix(f"{robot_id}:")


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
                    create_map_file(self.file, create_meta)
            self._conn, self._has_removed = connect(self.file, self.directory, writer, durable)
            self._columns = {t: {r[1] for r in self.read(f"PRAGMA table_info({t})")}
                             for t in ("keyframes", "local_features", "origins")}
            # a follower of a map no writer has opened since row checksums came reads it unchecked
            self.checksummed = self.meta("checksums") is True
        except BaseException:
            self.close()
            raise
        self.damaged: dict[int, str] = {}  # keyframe id -> the part that failed its checksum

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
        return map_error(action, self.file, exc)

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
        return from_json(rows[0][0]) if rows else None

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
        rows = self.read(f"SELECT {CORE_COLUMNS}, {self._col('keyframes', 'checksum')} FROM keyframes {where}", params)
        return [k for r in rows if self._intact(r[0], r[:12], r[12], "pose and descriptor")
                and (k := keyframe_from_row(r)) is not None]

    def keyframes_by_id(self, ids: Sequence[int]) -> dict[int, Keyframe]:
        out: dict[int, Keyframe] = {}
        for part in chunks([int(i) for i in ids]):
            for kf in self.keyframes(f"WHERE id IN ({','.join('?' * len(part))})", part):
                out[kf.id] = kf
        return out

    def descriptors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Descriptors of `ids` in that order; a missing or damaged row comes back as NaN."""
        ids = [int(i) for i in ids]
        out = np.full((len(ids), dim), np.nan, np.float32)
        pos = {kid: j for j, kid in enumerate(ids)}
        for part in chunks(ids):
            for r in self.read(f"SELECT {CORE_COLUMNS}, {self._col('keyframes', 'checksum')} FROM keyframes "
                               f"WHERE id IN ({','.join('?' * len(part))})", part):
                if r[0] in pos and self._intact(r[0], r[:12], r[12], "pose and descriptor"):
                    decode_descriptor(r[11], out[pos[r[0]]])
        return out

    def iter_descriptors(self, dim: int, chunk: int = 4096) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            rows = self.read(f"SELECT {CORE_COLUMNS}, {self._col('keyframes', 'checksum')} FROM keyframes "
                             "WHERE id > ? ORDER BY id LIMIT ?", (last, chunk))
            if not rows:
                return
            ids = np.array([r[0] for r in rows], np.int64)
            descs = np.full((len(rows), dim), np.nan, np.float32)
            for j, r in enumerate(rows):
                if self._intact(r[0], r[:12], r[12], "pose and descriptor"):
                    decode_descriptor(r[11], descs[j])
            last = int(ids[-1])
            yield ids, descs

    def blobs(self, keyframe_id: int) -> tuple[Any, Any, Any] | None:
        """(patches, patches_shape, thumbnail) of a keyframe; None when it is missing or damaged."""
        rows = self.read(f"SELECT id, {BLOB_COLUMNS}, {self._col('keyframes', 'blobs_checksum')} FROM keyframes "
                         "WHERE id=?", (int(keyframe_id),))
        if not rows or not self._intact(rows[0][0], rows[0][:4], rows[0][4], "patches or thumbnail"):
            return None
        return rows[0][1:4]

    def local_row(self, keyframe_id: int) -> tuple[Any, ...] | None:
        """The keyframe's local_features row (LOCAL_COLUMNS); None when it has none or it is damaged."""
        if "id" not in self._columns["local_features"]:
            return None  # a map made before the table, read by a follower
        cols = ", ".join(self._col("local_features", c.strip()) for c in LOCAL_COLUMNS.split(","))
        rows = self.read(f"SELECT {cols}, {self._col('local_features', 'checksum')} FROM local_features WHERE id=?",
                         (int(keyframe_id),))
        if not rows or not self._intact(rows[0][0], rows[0][:9], rows[0][9], "local features"):
            return None
        return rows[0][:9]

    @property
    def _has_origins(self) -> bool:
        return "id" in self._columns["origins"]  # False: a map made before the fleet, read by a follower

    def origins(self, ids: Sequence[int]) -> dict[int, tuple[str, str, int]]:
        """(robot_id, map_id, id there) of the keyframes among `ids` that came from another robot;
        a damaged origin row marks its keyframe damaged (it would name the wrong robot's place)."""
        out: dict[int, tuple[str, str, int]] = {}
        if not self._has_origins:
            return out
        for part in chunks([int(i) for i in ids]):
            for r in self.read(f"SELECT {ORIGIN_COLUMNS}, checksum FROM origins WHERE id IN "
                               f"({','.join('?' * len(part))})", part):
                if self._intact(r[0], r[:4], r[4], "origin (robot and id)") and isinstance(r[3], int):
                    out[int(r[0])] = (str(r[1]), str(r[2]), int(r[3]))
        return out

    def has_origin(self, keyframe_id: int) -> bool:
        """The keyframe came from another robot (its origin row, intact or not)."""
        return self._has_origins and bool(self.read("SELECT 1 FROM origins WHERE id=?", (int(keyframe_id),)))

    def peer_count(self) -> int:
        return int(self.read("SELECT count(*) FROM origins")[0][0]) if self._has_origins else 0

    def local_id(self, robot_id: str, map_id: str, remote_id: int) -> int | None:
        """This map's id of another robot's keyframe, when held."""
        if not self._has_origins:
            return None
        rows = self.read("SELECT id FROM origins WHERE robot_id=? AND map_id=? AND remote_id=?",
                         (robot_id, map_id, int(remote_id)))
        return int(rows[0][0]) if rows else None

    def peer_max_ids(self) -> dict[tuple[str, str], int]:
        if not self._has_origins:
            return {}
        rows = self.read("SELECT robot_id, map_id, max(remote_id) FROM origins GROUP BY robot_id, map_id")
        return {(str(r), str(m)): int(i) for r, m, i in rows}

    def robots(self) -> list[str]:
        if not self._has_origins:
            return []
        return [str(r[0]) for r in self.read("SELECT DISTINCT robot_id FROM origins ORDER BY robot_id")]

    def traversal_rows(self, after: int = -1) -> list[tuple[int, str, str, int | None]]:
        """(id, session, camera, owner's id or None) of the keyframes above `after` (traversals.py)."""
        if self._has_origins:
            sql = ("SELECT k.id, k.session, k.frame_id, o.remote_id FROM keyframes k LEFT JOIN origins o "
                   "ON o.id = k.id WHERE k.id > ?")
        else:
            sql = "SELECT id, session, frame_id, NULL FROM keyframes WHERE id > ?"
        return [(int(i), str(s), str(c), r if isinstance(r, int) else None) for i, s, c, r in self.read(sql, (after,))]

    def own_ids(self, after: int = -1) -> list[int]:
        """Ids of the map's own keyframes (not another robot's) above `after`, ascending."""
        others = " AND id NOT IN (SELECT id FROM origins)" if self._has_origins else ""
        return [int(r[0]) for r in self.read(f"SELECT id FROM keyframes WHERE id > ?{others} ORDER BY id", (after,))]

    def _col(self, table: str, column: str) -> str:
        """The column, or NULL in a map made before it (read by a follower: the writer adds it)."""
        return column if column in self._columns[table] else "NULL"

    def _intact(self, keyframe_id: int, values: Sequence[Any], checksum: Any, part: str) -> bool:
        if checksum is None and not self.checksummed:
            return True  # a row of a map from before checksums, not yet upgraded by a writer
        try:
            if checksum == row_checksum(values):
                return True
        except TypeError:
            pass
        if not isinstance(keyframe_id, int):  # a damaged schema can make even the id unreadable
            keyframe_id = -1
        if keyframe_id not in self.damaged:
            self.damaged[keyframe_id] = part
            log.error("map %s: keyframe %s: its %s fail their checksum (damaged on disk); quarantined: never "
                      "returned, kept in the file for inspection", self.directory, keyframe_id, part)
        return False

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
