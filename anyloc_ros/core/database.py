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

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatureDimensionError, MapError
from .geometry import Pose
from .map_index import IndexConfig, MapIndex, build_index, index_config_from_dict
from .map_store import MapStore, validate_session_id
from .types import EncoderSignature, Keyframe, LocalFeatures, MapStats, Match

log = logging.getLogger(__name__)

class PlaceDatabase:
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
        self._local_depths: bool | None = None
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
    def sessions(self) -> list[str]:
        return self.store.sessions()

    def _active_session(self) -> str:
        """The session being written: recorded by the writer (also when it resumes an old one)."""
        active = self.store.meta("active_session")
        sessions = self.sessions()
        if isinstance(active, str) and active in sessions:
            return active
        return sessions[-1] if sessions else ""

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
        d = np.asarray(d, dtype=np.float32).reshape(-1)
        if d.shape[0] != self.dim:
            raise FeatureDimensionError(f"descriptor has {d.shape[0]} dimensions, the map holds {self.dim}-D descriptors")
        if not np.isfinite(d).all():
            raise FeatureDimensionError("descriptor contains NaN or inf")
        n = float(np.linalg.norm(d))
        if n == 0.0:
            raise FeatureDimensionError("descriptor is all zeros")
        return d / n

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
            rows = []
            for i in range(n):
                p = poses[i]
                pv = p.as_tuple() if p is not None else (None,) * 7
                pa = patches[i]
                pb = None if pa is None else np.ascontiguousarray(pa, dtype=np.float16).tobytes()
                ps = None if pa is None else str(list(np.shape(pa)))
                rows.append((ids[i], sid, int(stamps_ns[i]), frame_ids[i], *pv, descs[i].tobytes(), pb, ps, thumbnails[i]))
            with self.store.transaction("add keyframes to") as conn:
                conn.execute("INSERT OR IGNORE INTO sessions(id, created) VALUES (?, ?)", (sid, time.time()))
                conn.executemany(
                    "INSERT INTO keyframes(id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw, descriptor, "
                    "patches, patches_shape, thumbnail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                conn.executemany(
                    "INSERT INTO local_features(id, keypoints, descriptors, dim, image_h, image_w, camera_matrix, "
                    "camera_mount, depths) VALUES (?,?,?,?,?,?,?,?,?)",
                    [_local_row(i, lf) for i, lf in zip(ids, local, strict=True) if lf is not None])
                if ids:
                    self.store.set_meta(conn, "last_id", ids[-1])
            self._next_id += n
            self._index.add(descs, np.array(ids, dtype=np.int64), self.store)
            self._last_id = max([self._last_id, *ids])
            self._index.save_if_due()
        return ids

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

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return self.store.count()

    def ids(self, session: str | None = None) -> np.ndarray:
        return self.store.all_ids() if session is None else self.store.ids(session)

    def descriptors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.store.descriptors(ids, self.dim)

    def patches(self, keyframe_id: int) -> np.ndarray | None:
        row = self.store.blob("patches, patches_shape", keyframe_id)
        if row is None or row[0] is None:
            return None
        try:
            shape = [int(s) for s in str(row[1]).strip("[]").split(",")]
            return np.frombuffer(row[0], np.float16).reshape(shape).astype(np.float32)
        except (ValueError, TypeError):
            log.error("map %s: keyframe %d has damaged patch features; not re-ranked", self.path, keyframe_id)
            return None

    def local_features(self, keyframe_id: int) -> LocalFeatures | None:
        """The keyframe's keypoints for geometric verification (None when it has none or they are damaged)."""
        if not self._local_depths:  # maps made before keypoint depths were stored have no column (until a writer adds it)
            self._local_depths = self.store.has_column("local_features", "depths")
        row = self.store.blob("keypoints, descriptors, dim, image_h, image_w, camera_matrix, camera_mount"
                              + (", depths" if self._local_depths else ""), keyframe_id, table="local_features")
        if row is None:
            return None
        try:
            kp = np.frombuffer(row[0], np.float32).reshape(-1, 2)
            desc = np.frombuffer(row[1], np.float16).reshape(len(kp), int(row[2]))
            K = None if row[5] is None else np.array(json.loads(row[5]), np.float64).reshape(3, 3)
            mount = None if row[6] is None else Pose(*map(float, json.loads(row[6])))
            depths = None if len(row) < 8 or row[7] is None else np.frombuffer(row[7], np.float32).reshape(len(kp))
            return LocalFeatures(kp, desc, np.ones(len(kp), np.float32), (int(row[3]), int(row[4])), K, mount,
                                 depths)
        except (ValueError, TypeError):
            log.error("map %s: keyframe %d has damaged local features; not verified", self.path, keyframe_id)
            return None

    def get(self, keyframe_id: int) -> Keyframe:
        kf = self.store.keyframes_by_id([keyframe_id]).get(int(keyframe_id))
        if kf is None:
            raise KeyError(keyframe_id)
        return kf

    def sessions_of(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The session of each id ("" for ids not in the map), in order."""
        known = self.store.sessions_of(ids)
        return [known.get(int(i), "") for i in ids]

    def newest_keyframes(self, session: str, n: int) -> list[Keyframe]:
        """The session's `n` newest keyframes, oldest first."""
        return self.store.newest_keyframes(session, n)

    def keyframes(self, session: str | None = None) -> list[Keyframe]:
        if session:
            return self.store.keyframes("WHERE session=? ORDER BY id", (session,))
        return self.store.keyframes("ORDER BY id")

    def search(
        self,
        queries: np.ndarray,
        k: int = 5,
        *,
        sessions: Sequence[str] | None = None,
        exclude_sessions: Sequence[str] | None = None,
        max_id: int | None = None,
        exclude_ids: Iterable[int] | None = None,
    ) -> list[list[Match]]:
        """Top-k keyframes by cosine similarity for each query (best first).

        sessions / exclude_sessions restrict the search to, or away from, traversals;
        max_id keeps only keyframes with id < max_id (e.g. to exclude recent ones).
        """
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise FeatureDimensionError(f"query has {q.shape[1]} dimensions, the map holds {self.dim}-D descriptors")
        if not np.isfinite(q).all():
            raise FeatureDimensionError("query descriptor contains NaN or inf")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        with self._lock:
            include = None if sessions is None else \
                np.concatenate([self.ids(s) for s in sessions] or [np.zeros(0, np.int64)])
            excl = [self.ids(s) for s in (exclude_sessions or [])]
            if exclude_ids is not None:
                excl.append(np.asarray(list(exclude_ids), np.int64))
            exclude = np.concatenate(excl) if excl else None
            results = self._index.search(q, k, include=include, exclude=exclude, max_id=max_id)
            return [self._matches(i_row, s_row) for i_row, s_row in results]

    def search_ids(self, query: np.ndarray, ids: Sequence[int]) -> list[Match]:
        """The query's similarity to the given keyframes (those that exist), in the order given."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        with self._lock:
            d = self.descriptors(list(ids))
            scores = np.nan_to_num(d @ q, nan=-1.0)
            return self._matches(np.asarray(ids, np.int64), scores)

    def _matches(self, ids: np.ndarray, scores: np.ndarray) -> list[Match]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]
        info = self.store.keyframes_by_id([i for i, _ in valid]) if valid else {}
        return [Match(i, s, kf.session, kf.stamp_ns, kf.frame_id, kf.pose)
                for i, s in valid if (kf := info.get(i)) is not None]

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
                conn.executemany("INSERT INTO removed(id) VALUES (?)", [(int(i),) for i in ids])
            self._index.remove(ids, self.store)
            self._index.save_quietly()
        return len(ids)

    def refresh(self) -> list[Keyframe]:
        """Follower: pick up the writer's changes since the last call: the active session, removed
        keyframes (dropped from the index) and new keyframes (returned, oldest first)."""
        with self._lock:
            self.session = self._active_session()
            seq, removed = self.store.removed_since(self._removed_seq)
            if removed:
                self._removed_seq = seq
                self._index.remove(np.asarray(removed, np.int64), self.store)
            new = self.store.keyframes("WHERE id > ? ORDER BY id", (self._last_id,))
            if not new:
                return []
            ids = np.array([k.id for k in new], np.int64)
            self._index.add_from_store(ids, self.store)
            self._last_id = int(ids[-1])
            return new

    def thumbnail(self, keyframe_id: int) -> bytes | None:
        row = self.store.blob("thumbnail", keyframe_id)
        return row[0] if row is not None and isinstance(row[0], bytes) else None

    def flush(self) -> None:
        """Make every added keyframe durable (needed only with durable=False) and save the index."""
        if self.follower:
            return
        with self._lock:
            self.store.checkpoint()
            self.save_index()

    def stats(self) -> MapStats:
        return MapStats(len(self), self.sessions(), self.session, self.dim, self.index_config.type,
                        self._index.trained, dict(self.encoder_signature))

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


def _local_row(kid: int, lf: LocalFeatures) -> tuple[Any, ...]:
    K = None if lf.camera_matrix is None else json.dumps(np.asarray(lf.camera_matrix, float).ravel().tolist())
    mount = None if lf.camera_mount is None else json.dumps(list(lf.camera_mount.as_tuple()))
    depths = None if lf.depths is None else np.ascontiguousarray(lf.depths, np.float32).tobytes()
    return (kid, np.ascontiguousarray(lf.keypoints, np.float32).tobytes(),
            np.ascontiguousarray(lf.descriptors, np.float16).tobytes(), int(lf.descriptors.shape[1]),
            int(lf.image_size[0]), int(lf.image_size[1]), K, mount, depths)
