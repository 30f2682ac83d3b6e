"""Keyframe selection and loop-closure filtering, the way SLAM systems do it.

`KeyframeGate` decides when a frame becomes a map keyframe (moved / rotated enough, time
passed, or a novel view). `LoopClosureFilter` turns the raw top-k retrieval results of a
stream of queries into confirmed loop-closure candidates:

1. recent-frame exclusion: keyframes of the current session added within the last
   `exclude_recent_count` keyframes or `exclude_recent_s` seconds, or (with poses) less than
   `exclude_travelled_m` metres of travel ago, are never candidates — the robot just came
   from there;
2. a similarity threshold (`min_score`) on the best remaining candidate;
3. temporal consistency: the candidate is confirmed only when `consistency` consecutive
   queries (default 3, as ORB-SLAM3 and Kimera) matched one neighbourhood of the map
   (keyframe ids within `consistency_window` in the same session, or poses within
   `consistency_radius_m` when both are known);
4. one closure per revisit: once a closure is published (`publish`), candidates in its map
   neighbourhood (`suppress_window` keyframe ids, or `suppress_radius_m` with poses) are
   suppressed for `suppress_s` seconds, so a robot driving along a mapped corridor gives one
   constraint per stretch of map instead of one per frame. The suppression belongs to the
   revisit, so it also ends once the robot itself has moved on: it added `suppress_window`
   keyframes of its own since that closure (a stretch as long as the neighbourhood), or, with
   `suppress_travel_m` and poses, travelled that far. A robot that comes back to the
   neighbourhood later (around a loop) is not blinded by a closure of its previous pass.

`PlaceRecognizer` in recognition.py composes the map search, optional re-ranking and this
filter; nodes and offline tools both use it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import ConfigError
from .geometry import Pose
from .settings import setting
from .types import Match
from .verification import Verification


@dataclass
class KeyframeGateConfig:
    PREFIX: ClassVar[str] = "keyframe."
    min_distance_m: float = setting(0.5, "new keyframe after moving this far", 0.0, 1e6)
    min_rotation_deg: float = setting(15.0, "new keyframe after turning this much", 0.0, 360.0)
    max_interval_s: float = setting(0.0, "with poses: also a keyframe after this long (0 = off)", 0.0, 1e6)
    no_pose_interval_s: float = setting(1.0, "without poses: a keyframe at this interval", 0.0, 1e6)
    min_interval_s: float = setting(0.0, "never add keyframes faster than this", 0.0, 1e6)
    novelty_threshold: float = setting(0.0, "keyframe when similarity to the last one is below this (0 = off)",
                                       0.0, 1.0)
    clock_jump_s: float = setting(1.0, "a frame this much older than the previous one means the clock jumped "
                                  "back: keyframe timing is re-anchored (logged, counted)", 0.0, 1e9)

    def validate(self) -> None:
        for name, v in vars(self).items():
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"keyframe {name} must be a finite value >= 0, got {v}")
        if self.novelty_threshold > 1:
            raise ConfigError("keyframe novelty_threshold is a cosine similarity: at most 1")


class KeyframeGate:
    """Decides which frames become keyframes.

    Clock jumps: a camera clock that jumps back (a reset, a bag loop, one frame stamped in the
    future before it) would make every later frame look older than the last keyframe, and
    time-based rules would never fire again. A frame more than `clock_jump_s` older than the
    previous frame re-anchors the gate's clock instead (the spatial rules keep working); each
    jump is counted in `clock_jumps` and described in `last_clock_jump` for the caller to log.
    """

    def __init__(self, config: KeyframeGateConfig | None = None) -> None:
        self.config = config or KeyframeGateConfig()
        self.config.validate()
        self.clock_jumps = 0
        self.last_clock_jump = ""
        self.reset()

    def reset(self) -> None:
        self._stamp_ns: int | None = None
        self._pose: Pose | None = None
        self._descriptor: np.ndarray | None = None
        self._seen_ns: int | None = None

    def _watch_clock(self, stamp_ns: int) -> None:
        newest = self._seen_ns  # the newest stamp seen since the last jump
        if newest is not None and (newest - stamp_ns) * 1e-9 > self.config.clock_jump_s:
            self.clock_jumps += 1
            self.last_clock_jump = (f"clock jumped back {(newest - stamp_ns) * 1e-9:.1f} s (frame stamp "
                                    f"{stamp_ns * 1e-9:.3f} s after {newest * 1e-9:.3f} s); keyframe timing re-anchored")
            newest = None
            if self._stamp_ns is not None and self._stamp_ns > stamp_ns:
                self._stamp_ns = stamp_ns  # time-based rules restart from here; poses still decide
        self._seen_ns = stamp_ns if newest is None else max(newest, stamp_ns)

    def check(self, stamp_ns: int, pose: Pose | None = None, descriptor: np.ndarray | None = None) -> str | None:
        """The reason this frame should become a keyframe, or None."""
        c = self.config
        self._watch_clock(stamp_ns)
        if self._stamp_ns is None:
            return "first"
        dt = (stamp_ns - self._stamp_ns) * 1e-9
        if dt < c.min_interval_s:
            return None
        if pose is not None and self._pose is None:
            return "pose"  # first keyframe with a pose after keyframes without one
        if pose is not None and self._pose is not None:
            if pose.distance_to(self._pose) >= c.min_distance_m:
                return "moved"
            if math.degrees(pose.angle_to(self._pose)) >= c.min_rotation_deg:
                return "rotated"
            if c.max_interval_s > 0 and dt >= c.max_interval_s:
                return "interval"
        elif dt >= c.no_pose_interval_s:
            return "interval"
        if c.novelty_threshold > 0 and descriptor is not None and self._descriptor is not None:
            if float(np.dot(descriptor, self._descriptor)) < c.novelty_threshold:
                return "novel"
        return None

    def accept(self, stamp_ns: int, pose: Pose | None = None, descriptor: np.ndarray | None = None) -> None:
        """Record that this frame became a keyframe."""
        self._stamp_ns = stamp_ns
        self._pose = pose if pose is not None else self._pose
        self._descriptor = None if descriptor is None else np.asarray(descriptor, np.float32)


@dataclass
class LoopClosureConfig:
    PREFIX: ClassVar[str] = "loop."
    top_k: int = setting(10, "map keyframes retrieved per query", 1, 1000, name="top_k")
    # corridor, xfeat_vlad: true revisits' top-1 similarity 5th percentile 0.199, median 0.305;
    # places never visited before reach 0.2 in 31% of frames (test_loop_closure.py)
    min_score: float = setting(0.2, "cosine similarity the best candidate must reach", -1.0, 1.0)
    exclude_recent_count: int = setting(50, "the newest N keyframes of the current session are never candidates",
                                        0, 1_000_000)
    exclude_recent_s: float = setting(30.0, "keyframes of the current session younger than this are never "
                                      "candidates", 0.0, 1e6)
    exclude_travelled_m: float = setting(0.0, "with poses: keyframes less than this much travel ago are excluded",
                                         0.0, 1e6)
    consistency: int = setting(3, "consecutive agreeing queries needed to confirm a loop closure", 1, 1000)
    consistency_window: int = setting(3, "keyframe-id distance that counts as the same map neighbourhood",
                                      0, 100000)
    consistency_radius_m: float = setting(0.0, "with poses: distance that counts as the same neighbourhood "
                                          "(0 = ids)", 0.0, 1e6)
    rerank: bool = setting(True, "re-rank the top-k by mutual-nearest-neighbour patch matching (needs patches)")
    rerank_min_matches: int = setting(0, "mutual matches the best candidate must reach when re-ranking",
                                      0, 1_000_000)
    rerank_min_similarity: float = 0.0  # patch pairs below this cosine similarity never count as matches
    suppress_window: int = setting(10, "after a published closure, candidates within this keyframe-id distance "
                                   "of its keyframe (same session) are suppressed until the robot has added this many "
                                   "keyframes of its own: one closure per revisit (0 = off)", 0, 1_000_000)
    suppress_radius_m: float = setting(0.0, "with poses: suppress candidates within this distance of the last "
                                       "closure's keyframe instead (0 = ids)", 0.0, 1e6)
    suppress_s: float = setting(30.0, "how long a closure suppresses its neighbourhood (0 = for the session)",
                                0.0, 1e9)
    suppress_travel_m: float = setting(0.0, "with poses: a closure also stops suppressing its neighbourhood once the "
                                       "robot has travelled this far since it (localisation without new keyframes; "
                                       "0 = off)", 0.0, 1e6)

    def validate(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"loop closure top_k must be >= 1, got {self.top_k}")
        if self.consistency < 1:
            raise ConfigError(f"loop closure consistency must be >= 1, got {self.consistency}")
        if not -1.0 <= self.min_score <= 1.0:
            raise ConfigError(f"loop closure min_score is a cosine similarity in [-1, 1], got {self.min_score}")
        for name in ("exclude_recent_count", "exclude_recent_s", "exclude_travelled_m", "consistency_window",
                     "consistency_radius_m", "rerank_min_matches", "suppress_window", "suppress_radius_m",
                     "suppress_s", "suppress_travel_m"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"loop closure {name} must be >= 0, got {v}")


@dataclass
class Query:
    id: int
    stamp_ns: int
    session: str
    pose: Pose | None = None
    camera: str = ""  # the image's frame_id: consistency is tracked per camera


@dataclass
class LoopCandidate:
    query: Query
    match: Match
    consistent: int
    verification: Verification | None = None  # None: not verified (no keypoints on one side)


@dataclass
class _Recent:
    id: int
    stamp_ns: int
    travelled: float


class LoopClosureFilter:
    """Stateful filter over a stream of queries (one robot, one session at a time)."""

    def __init__(self, config: LoopClosureConfig | None = None) -> None:
        self.config = config or LoopClosureConfig()
        self.config.validate()
        self._recent: deque[_Recent] = deque()
        self._session: str | None = None
        self._travelled = 0.0
        self._last_pose: Pose | None = None
        # per camera: the last accepted candidate and how many consecutive queries agreed with it
        # (a rear camera's queries must not break the front camera's streak)
        self._streaks: dict[str, tuple[Match, int]] = {}
        # closures that suppress their neighbourhood: (match, query stamp, robot's travel then or None,
        # keyframes the robot had added then)
        self._published: deque[tuple[Match, int, float | None, int]] = deque()
        self._keyframes_added = 0
        self._odometer = 0.0
        self._last_query_pose: Pose | None = None

    def reset(self) -> None:
        self.__init__(self.config)

    # ---- trajectory bookkeeping
    def _advance(self, pose: Pose | None) -> float:
        """Odometry path length up to `pose` (not stored)."""
        if pose is None or self._last_pose is None:
            return self._travelled
        return self._travelled + pose.distance_to(self._last_pose)

    def observe_keyframe(self, keyframe_id: int, stamp_ns: int, session: str, pose: Pose | None = None) -> None:
        """Tell the filter a keyframe was added to the map (for recent-frame exclusion)."""
        if session != self._session:
            self._recent.clear()
            self._published.clear()
            self._session = session
            self._travelled, self._last_pose = 0.0, None
        self._travelled = self._advance(pose)
        if pose is not None:
            self._last_pose = pose
        self._keyframes_added += 1
        self._recent.append(_Recent(keyframe_id, stamp_ns, self._travelled))
        # A keyframe that no rule excludes now never will be again (count, time and travel only
        # grow), so the deque stays as short as the exclusion rules need.
        while self._recent and not self._excludes(self._recent[0], len(self._recent), stamp_ns, self._travelled):
            self._recent.popleft()

    def _excludes(self, r: _Recent, from_end: int, now_ns: int, travelled: float) -> bool:
        c = self.config
        return (from_end <= c.exclude_recent_count
                # |age|: after a clock jump either way, time alone neither pins keyframes as recent
                # forever nor (with the count and travel rules) releases the ones just added
                or (c.exclude_recent_s > 0 and abs(now_ns - r.stamp_ns) * 1e-9 < c.exclude_recent_s)
                or (c.exclude_travelled_m > 0 and travelled - r.travelled < c.exclude_travelled_m))

    def excluded_ids(self, query: Query) -> set[int]:
        """Keyframes that may not be loop-closure candidates for this query."""
        if query.session != self._session:
            return set()
        travelled = self._advance(query.pose)
        n = len(self._recent)
        return {r.id for i, r in enumerate(self._recent) if self._excludes(r, n - i, query.stamp_ns, travelled)}

    # ---- decision
    def same_neighbourhood(self, a: Match, b: Match, radius_m: float | None = None, window: int | None = None
                           ) -> bool:
        """Two matches are one map neighbourhood (consistency rule, or the given radius / window)."""
        c = self.config
        radius_m = c.consistency_radius_m if radius_m is None else radius_m
        window = c.consistency_window if window is None else window
        if radius_m > 0 and a.pose is not None and b.pose is not None:
            return a.pose.distance_to(b.pose) <= radius_m
        # ids are a neighbourhood along one camera's keyframes (several cameras interleave their ids)
        return a.session == b.session and a.frame_id == b.frame_id and abs(a.keyframe_id - b.keyframe_id) <= window

    def suppressed(self, candidate: LoopCandidate) -> bool:
        """An earlier published closure already links this neighbourhood within the same revisit
        (one closure per revisit)."""
        c = self.config
        if c.suppress_window == 0 and c.suppress_radius_m == 0:
            return False
        now = candidate.query.stamp_ns
        while self._published and c.suppress_s > 0 and abs(now - self._published[0][1]) * 1e-9 >= c.suppress_s:
            self._published.popleft()  # after a clock jump either way too: the neighbourhood is free again
        travelled = self._travel_of(candidate.query)

        def revisit_over(d: float | None, k: int) -> bool:  # the robot moved on since that closure
            return (c.suppress_window > 0 and self._keyframes_added - k >= c.suppress_window) or \
                (c.suppress_travel_m > 0 and travelled is not None and d is not None and travelled - d >= c.suppress_travel_m)

        return any(self.same_neighbourhood(candidate.match, m, c.suppress_radius_m, c.suppress_window)
                   and (c.suppress_s == 0 or abs(now - t) * 1e-9 < c.suppress_s) and not revisit_over(d, k)
                   for m, t, d, k in self._published)

    def _travel_of(self, query: Query) -> float | None:
        """The robot's odometry path length at this query (None without a pose)."""
        return self._odometer if query.pose is not None else None

    def publish(self, candidate: LoopCandidate) -> None:
        """The candidate was published: its neighbourhood is suppressed from now on."""
        self._published.append((candidate.match, candidate.query.stamp_ns, self._travel_of(candidate.query),
                                self._keyframes_added))
        while len(self._published) > 10_000:
            self._published.popleft()

    def update(self, query: Query, candidates: list[Match]) -> LoopCandidate | None:
        """Feed the (already exclusion-filtered, best-first) candidates of one query."""
        c = self.config
        if query.pose is not None:  # the robot's path length along its queries (mapping or not)
            if self._last_query_pose is not None:
                self._odometer += query.pose.distance_to(self._last_query_pose)
            self._last_query_pose = query.pose
        excluded = self.excluded_ids(query)
        candidates = [m for m in candidates if m.keyframe_id not in excluded]
        best = candidates[0] if candidates else None
        if best is not None and (best.score < c.min_score
                                 or (c.rerank and best.rerank_score is not None and best.rerank_score < c.rerank_min_matches)):
            best = None
        if best is None:
            self._streaks.pop(query.camera, None)
            return None
        prev = self._streaks.get(query.camera)
        count = prev[1] + 1 if prev is not None and self.same_neighbourhood(best, prev[0]) else 1
        self._streaks[query.camera] = (best, count)
        if count >= c.consistency:
            return LoopCandidate(query, best, count)
        return None
