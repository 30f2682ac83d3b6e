"""The read side of a PlaceDatabase: keyframes, their content and search (a follower uses only
this; database.py adds opening, writing and maintenance)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FeatureDimensionError
from ..types import EncoderSignature, Keyframe, LocalFeatures, MapStats, Match
from .rows import local_features_from_row, patches_from_row
from .traversals import Traversals

if TYPE_CHECKING:
    from ..config.map import IndexConfig
    from .index import MapIndex
    from .store import MapStore

log = logging.getLogger("anyloc_ros.core.map.database")


class MapReading:
    """Reads of an open map (PlaceDatabase's state: its store, index, lock, dimension)."""

    path: Path
    dim: int
    session: str
    encoder_signature: EncoderSignature  # its .id is the map's encoder id
    index_config: IndexConfig
    _lock: threading.RLock
    _index: MapIndex
    _quarantined: set[int]
    _last_id: int
    _removed_seq: int
    _traversals: Traversals | None

    @property
    def store(self) -> MapStore:  # provided by PlaceDatabase
        raise NotImplementedError

    def sessions(self) -> list[str]:
        return self.store.sessions()

    def _active_session(self) -> str:
        """The session being written: recorded by the writer (also when it resumes an old one)."""
        active = self.store.meta("active_session")
        sessions = self.sessions()
        if isinstance(active, str) and active in sessions:
            return active
        return sessions[-1] if sessions else ""

    def __len__(self) -> int:
        return self.store.count()

    def ids(self, session: str | None = None) -> np.ndarray:
        return self.store.all_ids() if session is None else self.store.ids(session)

    def descriptors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.store.descriptors(ids, self.dim)

    def patches(self, keyframe_id: int) -> np.ndarray | None:
        row = self.store.blobs(keyframe_id)
        self._quarantine()
        if row is None or row[0] is None:
            return None
        try:
            return patches_from_row(row)
        except (ValueError, TypeError):
            log.error("map %s: keyframe %d has damaged patch features; not re-ranked", self.path, keyframe_id)
            return None

    def local_features(self, keyframe_id: int) -> LocalFeatures | None:
        """The keyframe's keypoints for geometric verification (None when it has none or they are damaged)."""
        row = self.store.local_row(keyframe_id)
        self._quarantine()
        if row is None:
            return None
        try:
            return local_features_from_row(row)
        except (ValueError, TypeError):
            log.error("map %s: keyframe %d has damaged local features; not verified", self.path, keyframe_id)
            return None

    def get(self, keyframe_id: int) -> Keyframe:
        """The keyframe; KeyError when the map has none with that id (or only a damaged one)."""
        kf = self.store.keyframes_by_id([keyframe_id]).get(int(keyframe_id))
        self._quarantine()
        if kf is None:
            raise KeyError(keyframe_id)
        return kf

    def get_or_none(self, keyframe_id: int) -> Keyframe | None:
        try:
            return self.get(keyframe_id)
        except KeyError:
            return None

    # ---- keyframes of other robots (fleet link, merged maps)
    def origin(self, keyframe_id: int) -> tuple[str, str, int] | None:
        """(robot_id, map_id, id in that map) of another robot's keyframe; None for the map's own
        (or a damaged origin: the keyframe is then quarantined)."""
        found = self.store.origins([keyframe_id]).get(int(keyframe_id))
        self._quarantine()
        return found

    def local_id(self, robot_id: str, map_id: str, remote_id: int) -> int | None:
        """This map's id of another robot's keyframe, when it holds it."""
        return self.store.local_id(robot_id, map_id, remote_id)

    def holds_peer_keyframe(self, key: tuple[str, str, int]) -> bool:
        return self.store.local_id(*key) is not None

    def peer_keyframe_max_ids(self) -> dict[tuple[str, str], int]:
        """The newest id held of each (robot, map) of other robots: where a catch-up starts."""
        return self.store.peer_max_ids()

    def own_ids(self, after: int = -1) -> list[int]:
        """The map's own keyframes (what it shares with a fleet) above `after`, ascending."""
        return self.store.own_ids(after)

    def is_own(self, keyframe_id: int) -> bool:
        return self.get_or_none(keyframe_id) is not None and not self.store.has_origin(keyframe_id)

    @property
    def robot_id(self) -> str:
        """The robot that maps into this map (recorded by its mapping node), "" when not recorded."""
        rid = self.store.meta("robot_id")
        return rid if isinstance(rid, str) else ""

    def _robots_of(self, ids: Sequence[int]) -> dict[int, str]:
        return {kid: o[0] for kid, o in self.store.origins(ids).items()}

    @property
    def damaged(self) -> dict[int, str]:
        """Keyframes found damaged (id -> the part that failed its checksum): quarantined."""
        return dict(self.store.damaged)

    def _quarantine(self) -> bool:
        """Take keyframes found damaged since the last call out of search; True when there were any."""
        new = [k for k in self.store.damaged if k not in self._quarantined]
        if not new:
            return False
        self._quarantined.update(new)
        with self._lock:
            self._index.remove(np.asarray(new, np.int64), self.store)
        return True

    # ---- traversals: where keyframes lie along their (session, camera) streams (traversals.py)
    def _traversal_order(self) -> Traversals:
        """Built from the map on first use, then kept in step by writes, removals and refresh."""
        if self._traversals is None:
            traversals = Traversals()
            traversals.add(self.store.traversal_rows())
            self._traversals = traversals
        return self._traversals

    def traversal_keys(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """traversal << 32 | index along it of each id (-1 for ids not in the map)."""
        with self._lock:
            return self._traversal_order().keys(ids)

    def ids_at_traversal_keys(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """The keyframe at each traversal key (-1 where there is none)."""
        with self._lock:
            return self._traversal_order().ids_at(keys)

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
            for _ in range(2):  # a result found damaged on reading is quarantined; search again once
                results = self._index.search(q, k, include=include, exclude=exclude, max_id=max_id)
                matches = [self._matches(i_row, s_row) for i_row, s_row in results]
                if not self._quarantine():
                    break
            return matches

    def search_ids(self, query: np.ndarray, ids: Sequence[int]) -> list[Match]:
        """The query's similarity to the given keyframes (those that exist), in the order given."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        with self._lock:
            d = self.descriptors(list(ids))
            ok = np.isfinite(d).all(axis=1)  # missing or damaged (quarantined) rows are left out
            self._quarantine()
            return self._matches(np.asarray(ids, np.int64)[ok], d[ok] @ q)

    def _matches(self, ids: np.ndarray, scores: np.ndarray) -> list[Match]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]
        info = self.store.keyframes_by_id([i for i, _ in valid]) if valid else {}
        robots = self._robots_of(list(info)) if info else {}
        order = self._traversal_order()
        return [Match(i, s, kf.session, kf.stamp_ns, kf.frame_id, kf.pose, robot_id=robots.get(i, ""),
                      traversal_index=order.index(i))
                for i, s in valid if (kf := info.get(i)) is not None and i not in self.store.damaged]

    def refresh(self) -> list[Keyframe]:
        """Follower: pick up the writer's changes since the last call: the active session, removed
        keyframes (dropped from the index) and new keyframes (returned, oldest first)."""
        with self._lock:
            self.session = self._active_session()
            seq, removed = self.store.removed_since(self._removed_seq)
            if removed:
                self._removed_seq = seq
                self._index.remove(np.asarray(removed, np.int64), self.store)
                if self._traversals is not None:
                    self._traversals.remove(removed)
            new = self.store.keyframes("WHERE id > ? ORDER BY id", (self._last_id,))
            if not new:
                return []
            if self._traversals is not None:
                self._traversals.add(self.store.traversal_rows(self._last_id))
            ids = np.array([k.id for k in new], np.int64)
            by_id = {k.id: k for k in new}
            for kid, robot in self._robots_of(ids.tolist()).items():
                by_id[kid].robot_id = robot
            self._index.add_from_store(ids, self.store)
            self._last_id = int(ids[-1])
            self._quarantine()
            return new

    def thumbnail(self, keyframe_id: int) -> bytes | None:
        row = self.store.blobs(keyframe_id)
        self._quarantine()
        return row[2] if row is not None and isinstance(row[2], bytes) else None

    def stats(self) -> MapStats:
        return MapStats(len(self), self.sessions(), self.session, self.dim, self.index_config.type,
                        self._index.trained, dict(self.encoder_signature), len(self.store.damaged),
                        self.store.peer_count(), self.store.robots())
