"""PlaceDatabase: the robot's map of keyframes and their place descriptors.

A map is a directory:

    map.sqlite    source of truth (map_store.MapStore): keyframes, sessions, the encoder signature
    index.faiss   search index derived from map.sqlite (map_index.MapIndex: flat / IVF / HNSW)
    index.json    what index.faiss holds, its checksum and the map it belongs to
    map.lock      held by the one writer

Durability: SQLite runs in WAL mode with synchronous=FULL, and each `add` is its own
transaction, so a keyframe is on disk once `add` returns (`durable=False` trades that for
speed: then it is on disk after `flush()`). The index is written atomically on `save()`,
`close()` and every `IndexConfig.save_every` additions; when it is missing, damaged, from
another map or behind the database on open, it is caught up or rebuilt from SQLite.

One writer (the mapping node, holding `map.lock`) and any number of followers
(`follower=True`, e.g. the recognition node: read-only, also on a read-only file system)
may open one map; followers pick up the writer's additions and removals with `refresh()`.

A map records the signature of the encoder that made its descriptors and refuses
descriptors from any other encoder (`MapError` naming the fields that differ). Every
failure to open, read or write a map is a `MapError` naming the file and what to do.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config.map import IndexConfig
from ..errors import MapError
from ..geometry import Pose
from ..types import EncoderSignature, Keyframe, LocalFeatures, MapStats, Match, PeerKeyframe, unit_descriptor
from .factory import build_index, index_config_from_dict
from .index import MapIndex
from .reading import MapReading
from .rows import BLOB_COLUMNS, CORE_COLUMNS, LOCAL_COLUMNS, ORIGIN_COLUMNS, keyframe_row, local_row, row_checksum
from .store import MapStore, peer_session_id, validate_session_id

log = logging.getLogger(__name__)

class PlaceDatabase(MapReading):
    DB_FILE = MapStore.FILE
    INDEX_FILE = MapIndex.FILE
    INDEX_META = MapIndex.META

    def __init__(
        self,
        path: str | Path,
        encoder_signature: dict[str, Any] | None = None,
        index: IndexConfig | None = None,
        create: bool = True,
        durable: bool = True,
        session: str | None = None,
        follower: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.follower = follower
        self.index_config = index or IndexConfig()
        self.index_config.validate()
        self.durable = durable
        self._lock = threading.RLock()
        self._store: MapStore | None = None
        self._quarantined: set[int] = set()  # damaged keyframes taken out of search (reading.py)
        self._traversals = None  # keyframes' places along their streams, built on first use (reading.py)
        try:
            self._open(encoder_signature, create, session)
        except MapError:
            self._close_store()
            raise
        except Exception as exc:  # anything a damaged or foreign file can make the libraries raise
            self._close_store()
            raise MapError(f"map {self.path} cannot be opened: {type(exc).__name__}: {exc}") from exc

    def _open(self, signature: dict[str, Any] | None, create: bool, session: str | None) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise MapError(f"map path {self.path} exists and is not a directory")
        db_file = self.path / self.DB_FILE
        creating = not db_file.exists() and not db_file.is_symlink()
        if creating:
            if not create or self.follower:
                raise MapError(f"no map at {self.path} (missing {db_file})")
            if signature is None:
                raise MapError(f"creating a map at {self.path} needs the encoder signature")
            signature = EncoderSignature.checked(signature, "the encoder signature")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MapError(f"cannot create the map directory {self.path}: {exc.strerror}") from exc
        # recorded as given: its id must stay the id the encoder publishes with its descriptors
        record = dict(signature) if creating and signature else None
        self._store = store = MapStore(self.path, writer=not self.follower, durable=self.durable,
                                       create_meta={"encoder": record} if creating else None)
        stored = store.meta("encoder")
        stored = EncoderSignature.checked(
            stored, f"the encoder record of {db_file}",
            "; the map is damaged or was written by another program: restore it from a backup")
        if signature is not None:
            diffs = stored.diff(signature)
            if diffs:
                raise MapError(f"map {self.path} was built with another encoder (" + "; ".join(diffs) + "); "
                               "use the map's encoder config or start a new map")
        self.encoder_signature = stored
        self.dim = int(stored["dim"])
        self.map_id = store.ensure_meta("map_id", lambda: uuid.uuid4().hex)
        self._next_id = max(_int(store.meta("last_id")), store.max_id()) + 1  # ids are never reused
        self._last_id = store.max_id()
        self._removed_seq = store.removed_since(0)[0] if self.follower else 0
        self._index = MapIndex(self.path, self.dim, self.index_config, self.map_id, writable=not self.follower)
        self._index.open(self.store)
        self.session = self._active_session()
        if session and not self.follower:
            self.new_session(session)

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path).expanduser() / cls.DB_FILE).is_file()

    @property
    def store(self) -> MapStore:
        if self._store is None:
            raise MapError(f"map {self.path} is closed")
        return self._store

    # ---------------------------------------------------------------- sessions
    def new_session(self, session_id: str | None = None) -> str:
        """Start (or resume, given an existing id) a traversal; later `add` calls tag keyframes with it."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only)")
        sid = validate_session_id(session_id) if session_id else time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._lock, self.store.transaction("start a session in") as conn:
            conn.execute("INSERT OR IGNORE INTO sessions(id, created) VALUES (?, ?)", (sid, time.time()))
            self.store.set_meta(conn, "active_session", sid)
        self.session = sid
        return sid

    # ---------------------------------------------------------------- adding
    def validate_descriptor(self, d: np.ndarray) -> np.ndarray:
        """The descriptor as a unit float32 vector, or FeatureDimensionError (wrong dimension, NaN/inf, zero)."""
        return unit_descriptor(d, self.dim)

    def add(
        self,
        descriptor: np.ndarray,
        stamp_ns: int,
        frame_id: str = "",
        pose: Pose | None = None,
        session: str | None = None,
        patches: np.ndarray | None = None,
        thumbnail: bytes | None = None,
        local: LocalFeatures | None = None,
    ) -> int:
        """Add one keyframe; returns its id. Durable when this returns (unless durable=False)."""
        return self.add_many([descriptor], [stamp_ns], [frame_id], [pose], session, [patches], [thumbnail],
                             [local])[0]

    def add_many(
        self,
        descriptors: Sequence[np.ndarray] | np.ndarray,
        stamps_ns: Sequence[int],
        frame_ids: Sequence[str] | None = None,
        poses: Sequence[Pose | None] | None = None,
        session: str | None = None,
        patches: Sequence[np.ndarray | None] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
        local: Sequence[LocalFeatures | None] | None = None,
    ) -> list[int]:
        """Add keyframes in one transaction; returns their ids. A failed write (disk full,
        read-only) is a MapError and adds nothing; the map stays usable."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only); only the writer adds keyframes")
        n = len(stamps_ns)
        descs = np.stack([self.validate_descriptor(d) for d in descriptors]) if n else np.zeros((0, self.dim), np.float32)
        frame_ids = frame_ids or [""] * n
        poses = poses or [None] * n
        patches = patches or [None] * n
        thumbnails = thumbnails or [None] * n
        local = local or [None] * n
        with self._lock:
            sid = validate_session_id(session) if session else (self.session or self.new_session())
            ids = list(range(self._next_id, self._next_id + n))
            rows = [keyframe_row(ids[i], sid, stamps_ns[i], frame_ids[i], poses[i], descs[i], patches[i],
                                 thumbnails[i]) for i in range(n)]
            self._write(rows, descs, [local_row(i, lf) for i, lf in zip(ids, local, strict=True) if lf is not None],
                        [], {sid}, "add keyframes to")
        return ids

    def add_peer_keyframes(
        self,
        keyframes: Sequence[PeerKeyframe],
        patches: Sequence[np.ndarray | None] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
        local: Sequence[LocalFeatures | None] | None = None,
    ) -> list[int | None]:
        """Store other robots' keyframes (fleet link, map merging) in one transaction, each in the
        session `<robot_id>:<session>` with its origin (robot, map, id there); one already held is
        not stored again (None in its place). The map's own active session is unchanged."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only); only the writer adds keyframes")
        n = len(keyframes)
        patches = patches or [None] * n
        thumbnails = thumbnails or [None] * n
        local = local or [None] * n
        descs = [self.validate_descriptor(kf.descriptor) for kf in keyframes]
        with self._lock:
            out: list[int | None] = []
            rows, lrows, orows, sessions, fresh = [], [], [], set(), set()
            for i, kf in enumerate(keyframes):
                if kf.key in fresh or self.store.local_id(*kf.key) is not None:
                    out.append(None)
                    continue
                fresh.add(kf.key)
                kid = self._next_id + len(rows)
                sid = validate_session_id(peer_session_id(kf.robot_id, kf.session))
                sessions.add(sid)
                rows.append(keyframe_row(kid, sid, kf.stamp_ns, kf.camera, kf.pose, descs[i], patches[i], thumbnails[i]))
                if local[i] is not None:
                    lrows.append(local_row(kid, local[i]))
                origin = (kid, kf.robot_id, kf.map_id, int(kf.keyframe_id))
                orows.append((*origin, row_checksum(origin)))
                out.append(kid)
            if rows:
                self._write(rows, np.stack([descs[i] for i, k in enumerate(out) if k is not None]), lrows, orows,
                            sessions, "add other robots' keyframes to")
        return out

    def _write(self, rows: list[tuple[Any, ...]], descs: np.ndarray, local_rows: list[tuple[Any, ...]],
               origin_rows: list[tuple[Any, ...]], sessions: set[str], action: str) -> None:
        """Keyframe rows (keyframe_row), their local features and origins, in one transaction
        with their sessions; then the index. Under self._lock, ids from self._next_id."""
        ids = [int(r[0]) for r in rows]
        with self.store.transaction(action) as conn:
            now = time.time()
            conn.executemany("INSERT OR IGNORE INTO sessions(id, created) VALUES (?, ?)",
                             [(sid, now) for sid in sorted(sessions)])
            conn.executemany(f"INSERT INTO keyframes({CORE_COLUMNS}, checksum, {BLOB_COLUMNS}, blobs_checksum) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            conn.executemany(f"INSERT INTO local_features({LOCAL_COLUMNS}, checksum) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             local_rows)
            conn.executemany(f"INSERT INTO origins({ORIGIN_COLUMNS}, checksum) VALUES (?,?,?,?,?)", origin_rows)
            if ids:
                self.store.set_meta(conn, "last_id", ids[-1])
        self._next_id += len(ids)
        if self._traversals is not None:
            remote = {int(o[0]): int(o[3]) for o in origin_rows}
            self._traversals.add((int(r[0]), str(r[1]), str(r[3]), remote.get(int(r[0]))) for r in rows)
        self._index.add(descs, np.array(ids, dtype=np.int64), self.store)
        self._last_id = max([self._last_id, *ids])
        self._index.save_if_due()

    def set_robot_id(self, robot_id: str) -> None:
        """Record the robot that maps into this map (`anyloc map merge` names its keyframes by it)."""
        if robot_id and robot_id != self.robot_id:
            with self._lock, self.store.transaction("record the robot id in") as conn:
                self.store.set_meta(conn, "robot_id", robot_id)

    # ---------------------------------------------------------------- index (map_index.MapIndex keeps it in step)
    def reindex(self) -> None:
        """Rebuild the search index from SQLite (and train it, for IVF with enough keyframes)."""
        with self._lock:
            self._index.rebuild(self.store)

    def save_index(self) -> None:
        """Write index.faiss + index.json atomically (writer only: a follower's index is never
        written; MapError when it cannot)."""
        with self._lock:
            self._index.save()

    # ---------------------------------------------------------------- maintenance
    def remove(self, ids: Iterable[int]) -> int:
        """Delete keyframes (database first, then the index). Their ids are never used again,
        and followers drop them on their next `refresh()`."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only)")
        ids = np.asarray(sorted({int(i) for i in ids}), dtype=np.int64)
        with self._lock:
            with self.store.transaction("remove keyframes from") as conn:
                for s in range(0, len(ids), 900):
                    part = ids[s : s + 900].tolist()
                    conn.execute(f"DELETE FROM keyframes WHERE id IN ({','.join('?' * len(part))})", part)
                    conn.execute(f"DELETE FROM local_features WHERE id IN ({','.join('?' * len(part))})", part)
                    conn.execute(f"DELETE FROM origins WHERE id IN ({','.join('?' * len(part))})", part)
                conn.executemany("INSERT INTO removed(id) VALUES (?)", [(int(i),) for i in ids])
            self._index.remove(ids, self.store)
            if self._traversals is not None:
                self._traversals.remove(ids.tolist())
            self._index.save_quietly()
        return len(ids)

    def flush(self) -> None:
        """Make every added keyframe durable (needed only with durable=False) and save the index."""
        if self.follower:
            return
        with self._lock:
            self.store.checkpoint()
            self.save_index()

    def close(self) -> None:
        """Save the index and close. Never raises: what could not be saved is logged (the
        keyframes are durable in map.sqlite; the index is rebuilt on the next open)."""
        with self._lock:
            if self._store is None:
                return
            try:
                self.flush()
            except MapError as exc:
                log.warning("closing map %s: %s", self.path, exc)
            finally:
                self._close_store()

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> PlaceDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


__all__ = ["PlaceDatabase", "IndexConfig", "Keyframe", "Match", "MapStats", "index_config_from_dict", "build_index"]
