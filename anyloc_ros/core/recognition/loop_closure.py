"""Loop-closure filtering, the way SLAM systems do it (keyframe selection: mapping.py).

`LoopClosureFilter` turns the raw top-k retrieval results of a stream of queries into
confirmed loop-closure candidates:

1. recent-frame exclusion: keyframes of the current session added within the last
   `exclude_recent_count` keyframes or `exclude_recent_s` seconds, or (with poses) less than
   `exclude_travelled_m` metres of travel ago, are never candidates — the robot just came
   from there. Counted back from the query, not from the newest keyframe: a mapping process
   sharing the map may store this very frame (or the next) before the recogniser queries it,
   and those keyframes are excluded without shifting the count (so a node pipeline excludes
   what the in-process step does);
2. a similarity threshold (`min_score`) on the best remaining candidate;
3. temporal consistency: the candidate is confirmed only when `consistency` consecutive
   queries (default 3, as ORB-SLAM3 and Kimera) matched one neighbourhood of the map
   (keyframes within `consistency_window` of each other along one traversal, a camera's
   keyframes of a session in the order recorded: core/map/traversals.py; or poses within
   `consistency_radius_m` when both are known);
4. one closure per revisit: once a closure is published (`publish`), candidates in its map
   neighbourhood (`suppress_window` keyframes along the traversal, or `suppress_radius_m` with poses) are
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

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.recognition import LoopClosureConfig
from ..geometry import Pose
from ..types import Match

if TYPE_CHECKING:  # a type only: verification (OpenCV) is not loaded with the filter
    from .verification import Verification


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
    pose: Pose | None


# Keyframes kept beyond the exclusion rules' own need, so a query up to this many keyframes behind
# the newest one stored (a mapping node that ran ahead of the recogniser) still sees its recent ones.
AHEAD_SLACK = 16


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
    def _advance(self, pose: Pose | None, travelled: float | None = None, last_pose: Pose | None = None) -> float:
        """Odometry path length up to `pose` (not stored), from `travelled` at `last_pose`
        (default: the newest keyframe's)."""
        if travelled is None:
            travelled, last_pose = self._travelled, self._last_pose
        if pose is None or last_pose is None:
            return travelled
        return travelled + pose.distance_to(last_pose)

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
        self._recent.append(_Recent(keyframe_id, stamp_ns, self._travelled, pose))
        # A keyframe that no rule excludes now never will be again (count, time and travel only
        # grow), so the deque stays as short as the exclusion rules need (plus AHEAD_SLACK
        # keyframes for queries older than the newest keyframe).
        while self._recent and not self._excludes(self._recent[0], len(self._recent) - AHEAD_SLACK, stamp_ns,
                                                  self._travelled):
            self._recent.popleft()

    def _excludes(self, r: _Recent, from_end: int, now_ns: int, travelled: float) -> bool:
        c = self.config
        return (from_end <= c.exclude_recent_count
                # |age|: after a clock jump either way, time alone neither pins keyframes as recent
                # forever nor (with the count and travel rules) releases the ones just added
                or (c.exclude_recent_s > 0 and abs(now_ns - r.stamp_ns) * 1e-9 < c.exclude_recent_s)
                or (c.exclude_travelled_m > 0 and travelled - r.travelled < c.exclude_travelled_m))

    def _ahead(self, query: Query) -> int:
        """How many of the newest keyframes are stamped at or after the query: the frame itself
        and later ones, stored by a mapping process that ran ahead. Only the newest run counts,
        so after a clock jump back the older keyframes are ordinary recent ones again; at most
        AHEAD_SLACK (a camera whose stamps never advance costs that many more, not every recent keyframe)."""
        n = 0
        for r in reversed(self._recent):
            if r.stamp_ns < query.stamp_ns or n == AHEAD_SLACK:
                break
            n += 1
        return n

    def excluded_ids(self, query: Query) -> set[int]:
        """Keyframes that may not be loop-closure candidates for this query: the recent ones as
        the query saw them (what was stored from this frame on is excluded and not counted)."""
        if query.session != self._session:
            return set()
        recent = list(self._recent)
        n = len(recent) - self._ahead(query)
        before, ahead = recent[:n], recent[n:]
        if ahead and before:  # the path length at the query, from the last keyframe before it
            travelled = self._advance(query.pose, before[-1].travelled, before[-1].pose)
        else:
            travelled = self._advance(query.pose)
        return {r.id for r in ahead} | {r.id for i, r in enumerate(before)
                                        if self._excludes(r, n - i, query.stamp_ns, travelled)}

    # ---- decision
    def same_neighbourhood(self, a: Match, b: Match, radius_m: float | None = None, window: int | None = None
                           ) -> bool:
        """Two matches are one map neighbourhood (consistency rule, or the given radius / window)."""
        c = self.config
        radius_m = c.consistency_radius_m if radius_m is None else radius_m
        window = c.consistency_window if window is None else window
        if radius_m > 0 and a.pose is not None and b.pose is not None:
            # poses of two robots are in two odometry frames: never one neighbourhood by distance
            return a.robot_id == b.robot_id and a.pose.distance_to(b.pose) <= radius_m
        # along one traversal (a camera's keyframes of a session, in the order recorded: other cameras'
        # and other robots' keyframes interleave with its ids, never with its traversal index)
        return (a.session == b.session and a.frame_id == b.frame_id and min(a.traversal_index, b.traversal_index) >= 0
                and abs(a.traversal_index - b.traversal_index) <= window)

    def suppressed(self, candidate: LoopCandidate) -> bool:
        """An earlier published closure already links this neighbourhood within the same revisit
        (one closure per revisit)."""
        c = self.config
        if c.suppress_window == 0 and c.suppress_radius_m == 0:
            return False
        now = candidate.query.stamp_ns
        while self._published and c.suppress_s > 0 and abs(now - self._published[0][1]) * 1e-9 >= c.suppress_s:
            self._published.popleft()  # after a clock jump either way too: the neighbourhood is free again
        travelled, added = self._travel_of(candidate.query), self._added_before(candidate.query)

        def revisit_over(d: float | None, k: int) -> bool:  # the robot moved on since that closure
            return (c.suppress_window > 0 and added - k >= c.suppress_window) or \
                (c.suppress_travel_m > 0 and travelled is not None and d is not None and travelled - d >= c.suppress_travel_m)

        return any(self.same_neighbourhood(candidate.match, m, c.suppress_radius_m, c.suppress_window)
                   and (c.suppress_s == 0 or abs(now - t) * 1e-9 < c.suppress_s) and not revisit_over(d, k)
                   for m, t, d, k in self._published)

    def _travel_of(self, query: Query) -> float | None:
        """The robot's odometry path length at this query (None without a pose)."""
        return self._odometer if query.pose is not None else None

    def _added_before(self, query: Query) -> int:
        """Keyframes the robot had added before this query's frame."""
        return self._keyframes_added - (self._ahead(query) if query.session == self._session else 0)

    def publish(self, candidate: LoopCandidate) -> None:
        """The candidate was published: its neighbourhood is suppressed from now on."""
        self._published.append((candidate.match, candidate.query.stamp_ns, self._travel_of(candidate.query),
                                self._added_before(candidate.query)))
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
