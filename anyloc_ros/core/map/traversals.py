"""Where each keyframe lies along its traversal: the map positions of sequences and id windows.

A traversal is one camera's keyframes of one session, in the order the robot recorded them; a
keyframe's index along it (0, 1, 2, ...) is what sequence lines (recognition/sequence.py) and
the loop-closure filter's windows (recognition/loop_closure.py) count in. Keyframe ids are not
that order once a map holds more than one stream: several cameras interleave their ids, and
another robot's keyframes (fleet) arrive between the robot's own, in batches, late (catch-up)
or older ones after newer ones. So the order is the robot's own id for its keyframes and the
owner's id (origin) for another robot's, ranked within the traversal.

Held in memory (built from the map on first use, then kept in step with adds, removals and a
follower's refresh); a key packs (traversal, index) in one int64 so sequence arithmetic stays
vectorised: key = traversal << 32 | index.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence

import numpy as np

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1


class Traversals:
    """Traversal (session, camera) and the index along it of every keyframe of a map."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], int] = {}
        self._order: list[list[tuple[int, int]]] = []  # per traversal: (order key, id), ascending
        self._where: dict[int, tuple[int, int]] = {}  # id -> (traversal, order key)

    def __len__(self) -> int:
        return len(self._where)

    def add(self, rows: Iterable[tuple[int, str, str, int | None]]) -> None:
        """(id, session, camera, owner's id or None for the map's own keyframe); ids held already are skipped."""
        touched: dict[int, list[tuple[int, int]]] = {}
        for kid, session, camera, remote in rows:
            kid = int(kid)
            if kid in self._where:
                continue
            t = self._names.setdefault((str(session), str(camera)), len(self._names))
            if t == len(self._order):
                self._order.append([])
            order = int(remote) if remote is not None else kid
            touched.setdefault(t, []).append((order, kid))
            self._where[kid] = (t, order)
        for t, items in touched.items():
            if len(items) == 1:
                insort(self._order[t], items[0])  # a live keyframe: usually appended
            else:  # a map opened or a batch: streams come mostly in order, which sorts in linear time
                self._order[t].extend(items)
                self._order[t].sort()

    def remove(self, ids: Iterable[int]) -> None:
        for kid in ids:
            found = self._where.pop(int(kid), None)
            if found is not None:
                t, order = found
                line = self._order[t]
                del line[bisect_left(line, (order, int(kid)))]

    def index(self, keyframe_id: int) -> int:
        """The keyframe's index along its traversal (-1 when the map has no such keyframe)."""
        found = self._where.get(int(keyframe_id))
        if found is None:
            return -1
        t, order = found
        return bisect_left(self._order[t], (order, int(keyframe_id)))

    def keys(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """traversal << 32 | index of each id (-1 for ids not in the map)."""
        out = np.full(len(ids), -1, np.int64)
        for i, kid in enumerate(ids):
            found = self._where.get(int(kid))
            if found is not None:
                out[i] = (found[0] << INDEX_BITS) | bisect_left(self._order[found[0]], (found[1], int(kid)))
        return out

    def ids_at(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """The keyframe id at each key (-1 where the traversal has no keyframe at that index)."""
        out = np.full(len(keys), -1, np.int64)
        for i, key in enumerate(keys):
            key = int(key)
            t, index = key >> INDEX_BITS, key & INDEX_MASK
            if key >= 0 and t < len(self._order) and index < len(self._order[t]):
                out[i] = self._order[t][index][1]
        return out
