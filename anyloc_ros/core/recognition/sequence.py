"""Sequence matching: a robot traverses, so score places over the last frames, not one.

SeqSLAM (Milford & Wyeth, ICRA 2012) compares a sequence of query frames with the map along
straight lines of constant velocity in the (query time x map position) difference matrix.
This is the banded variant that scales: it never builds that matrix. Each query frame keeps
the top-k keyframes the index returned for it (ids and cosine similarities). For the current
frame, a candidate place c and a velocity v (map keyframes per query frame), the sequence
score is the mean over the last L frames j = 0..L-1 of frame j's similarity to keyframe
c - round(v j); a keyframe outside frame j's top-k counts as that frame's lowest retrieved
similarity (an upper bound on what it missed), and an alignment that leaves c's session
(traversal) counts the same way, so sequences never span sessions. Candidates are the
current frame's top-k plus the places the earlier frames' top-k predict at each velocity.

Cost per query: O(L·k·V) candidates x O(L·V) lookups (binary search in k sorted ids), memory
O(L·k) per camera: independent of the map's size (100k keyframes cost what 1k do beyond the
index search itself). Map positions are keyframe ids, which follow the traversal when one
camera writes the map; with several cameras writing one map widen the velocity range.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config.recognition import SequenceConfig


@dataclass
class _Frame:
    stamp_ns: int
    ids: np.ndarray  # sorted keyframe ids retrieved for the frame
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
        sessions_of: keyframe ids -> their session ids ("" for unknown ids); lines that leave the
            candidate's session are not used.
    """

    def __init__(self, config: SequenceConfig, sessions_of: Callable[[np.ndarray], list[str]]) -> None:
        config.validate()
        self.config = config
        self._sessions_of = sessions_of
        self._shifts = np.rint(np.outer(config.velocities(), np.arange(config.length))).astype(np.int64)  # (V, L)
        self._history: dict[str, deque[_Frame]] = {}
        self._sessions: dict[int, str] = {}  # a keyframe's session never changes: read each once

    def _session_array(self, ids: np.ndarray) -> np.ndarray:
        unknown = [int(i) for i in ids if int(i) not in self._sessions]
        if unknown:
            if len(self._sessions) > 1_000_000:
                self._sessions.clear()
            # ids not (yet) in the map are not remembered: a live map grows into them
            self._sessions.update((i, s) for i, s in zip(unknown, self._sessions_of(np.array(unknown)), strict=True)
                                  if s)
        return np.array([self._sessions.get(int(i), "") for i in ids], dtype=object)

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
        order = np.argsort(ids, kind="stable")
        floor = float(scores.min()) if len(scores) else 0.0
        history.append(_Frame(stamp_ns, ids[order], scores[order], floor))
        if not len(ids):
            return []
        frames = list(reversed(history))  # j = 0 is the current frame
        n = len(frames)
        shifts = self._shifts[:, :n]  # (V, n)
        # candidates: the current top-k, and where each earlier frame's top-k puts the robot now
        cands = [frames[0].ids] + [(f.ids[None, :] + shifts[:, j, None]).ravel() for j, f in enumerate(frames) if j]
        cand = np.unique(np.concatenate(cands))
        cand = cand[cand > 0]
        aligned = cand[:, None, None] - shifts[None, :, :]  # (M, V, n) keyframe id of frame j on each line
        sim = np.empty(aligned.shape, np.float64)
        for j, f in enumerate(frames):
            a = aligned[:, :, j]
            pos = np.clip(np.searchsorted(f.ids, a), 0, max(len(f.ids) - 1, 0))
            hit = (f.ids[pos] == a) if len(f.ids) else np.zeros(a.shape, bool)
            sim[:, :, j] = np.where(hit, f.scores[pos] if len(f.ids) else f.floor, f.floor)
        if n > 1:  # lines that leave the candidate's session count as misses
            uniq, inverse = np.unique(aligned, return_inverse=True)
            sess = self._session_array(uniq)[inverse.reshape(aligned.shape)]
            same = sess == sess[:, :, :1]
            floors = np.array([f.floor for f in frames])
            sim = np.where(same, sim, floors[None, None, :])
        line = sim.mean(axis=2)  # (M, V)
        best_v = line.argmax(axis=1)
        best = line[np.arange(len(cand)), best_v]
        order = np.argsort(-best, kind="stable")[:top]
        velocities = self.config.velocities()
        return [SequenceMatch(int(cand[i]), float(best[i]), float(velocities[best_v[i]]), n) for i in order]
