"""Sequence matching: a robot traverses, so score places over the last frames, not one.

SeqSLAM (Milford & Wyeth, ICRA 2012) compares a sequence of query frames with the map along
straight lines of constant velocity in the (query time x map position) difference matrix.
This is the banded variant that scales: it never builds that matrix. Each query frame keeps
the top-k keyframes the index returned for it (ids and cosine similarities). For the current
frame, a candidate place c and a velocity v (map keyframes per query frame), the sequence
score is the mean over the last L frames j = 0..L-1 of frame j's similarity to the keyframe
round(v j) places before c along c's traversal; a keyframe outside frame j's top-k counts as
that frame's lowest retrieved similarity (an upper bound on what it missed), and so does an
alignment before the traversal's start, so sequences never span traversals. Candidates are
the current frame's top-k plus the places the earlier frames' top-k predict at each velocity.

Map positions are indices along traversals (one camera's keyframes of one session, in the
order recorded: core/map/traversals.py), not keyframe ids: several cameras, or another robot's
keyframes arriving between the robot's own (fleet), interleave ids but not traversals. They
are read per query, so a late catch-up of older keyframes moves later ones along at once.

Cost per query: O(L·k·V) candidates x O(L·V) lookups (binary search in k sorted keys), memory
O(L·k) per camera: independent of the map's size (100k keyframes cost what 1k do beyond the
index search itself).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config.recognition import SequenceConfig
from ..map.traversals import INDEX_MASK


@dataclass
class _Frame:
    stamp_ns: int
    ids: np.ndarray  # keyframe ids retrieved for the frame
    scores: np.ndarray  # their similarities, in the same order
    floor: float  # the lowest retrieved similarity


@dataclass
class SequenceMatch:
    keyframe_id: int
    score: float  # mean similarity along the best line
    velocity: float  # map keyframes per query frame of that line
    frames: int  # query frames the score covers (fewer than `length` at a sequence's start)


class SequenceMatcher:
    """Per-camera histories of retrieved candidates, scored along constant-velocity lines.

    Args:
        config: sequence settings.
        keys_of: keyframe ids -> their traversal keys, traversal << 32 | index along it (-1 for ids
            not in the map): PlaceDatabase.traversal_keys.
        ids_at: traversal keys -> keyframe ids (-1 where there is none):
            PlaceDatabase.ids_at_traversal_keys.
    """

    def __init__(self, config: SequenceConfig, keys_of: Callable[[np.ndarray], np.ndarray],
                 ids_at: Callable[[np.ndarray], np.ndarray]) -> None:
        config.validate()
        self.config = config
        self._keys_of = keys_of
        self._ids_at = ids_at
        self._shifts = np.rint(np.outer(config.velocities(), np.arange(config.length))).astype(np.int64)  # (V, L)
        self._history: dict[str, deque[_Frame]] = {}

    def reset(self, camera: str | None = None) -> None:
        if camera is None:
            self._history.clear()
        else:
            self._history.pop(camera, None)

    def update(self, camera: str, stamp_ns: int, ids: np.ndarray, scores: np.ndarray,
               top: int = 10) -> list[SequenceMatch]:
        """Add one query frame's retrieved (ids, similarities); the best `top` places by sequence score."""
        ids = np.asarray(ids, np.int64)
        scores = np.asarray(scores, np.float64)
        history = self._history.setdefault(camera, deque(maxlen=self.config.length))
        if history and (stamp_ns < history[-1].stamp_ns
                        or stamp_ns - history[-1].stamp_ns > self.config.max_gap_s * 1e9):
            history.clear()  # a clock jump or a pause: the earlier frames are not this sequence
        floor = float(scores.min()) if len(scores) else 0.0
        history.append(_Frame(stamp_ns, ids, scores, floor))
        if not len(ids):
            return []
        frames = list(reversed(history))  # j = 0 is the current frame
        n = len(frames)
        # every frame's retrieved keyframes as traversal keys, sorted (one lookup for all frames)
        all_keys = self._keys_of(np.concatenate([f.ids for f in frames]))
        keyed = []
        for f, k in zip(frames, np.split(all_keys, np.cumsum([len(f.ids) for f in frames])[:-1]), strict=True):
            known = k >= 0  # a keyframe removed since it was retrieved is gone from its line
            order = np.argsort(k[known], kind="stable")
            keyed.append((k[known][order], f.scores[known][order]))
        shifts = self._shifts[:, :n]  # (V, n)
        # candidates: the current top-k, and where each earlier frame's top-k puts the robot now
        cands = [keyed[0][0]] + [(k[None, :] + shifts[:, j, None]).ravel() for j, (k, _) in enumerate(keyed) if j]
        cand = np.unique(np.concatenate(cands))
        cand_ids = self._ids_at(cand)
        cand, cand_ids = cand[cand_ids >= 0], cand_ids[cand_ids >= 0]  # past a traversal's end: no place
        if not len(cand):
            return []
        aligned = cand[:, None, None] - shifts[None, :, :]  # (M, V, n) the key frame j sees on each line
        inside = (cand[:, None, None] & INDEX_MASK) >= shifts[None, :, :]  # not before the traversal's start
        sim = np.empty(aligned.shape, np.float64)
        for j, (f, (k, sc)) in enumerate(zip(frames, keyed, strict=True)):
            a = aligned[:, :, j]
            if len(k):
                pos = np.clip(np.searchsorted(k, a), 0, len(k) - 1)
                hit = (k[pos] == a) & inside[:, :, j]
                sim[:, :, j] = np.where(hit, sc[pos], f.floor)
            else:
                sim[:, :, j] = f.floor
        line = sim.mean(axis=2)  # (M, V)
        best_v = line.argmax(axis=1)
        best = line[np.arange(len(cand)), best_v]
        order = np.argsort(-best, kind="stable")[:top]
        velocities = self.config.velocities()
        return [SequenceMatch(int(cand_ids[i]), float(best[i]), float(velocities[best_v[i]]), n) for i in order]
