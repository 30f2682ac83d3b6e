"""PlaceRecognizer: map search -> mutual-NN re-ranking or sequence matching -> loop-closure filter
-> geometric verification -> one closure per revisit.

The one path every front end uses (ROS nodes, `anyloc replay --offline`, evaluation), so
their results agree; a frame goes through it, then to the Mapper, in the per-frame step
(step.py: `FrameStep(PlaceRecognizer(db, LoopClosureConfig()), Mapper(db))(frame, pose)`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config.recognition import LoopClosureConfig, SequenceConfig, VerificationConfig
from ..geometry import Pose
from ..map.database import PlaceDatabase
from ..types import LocalFeatures, Match
from .loop_closure import LoopCandidate, LoopClosureFilter, Query
from .rerank import rerank
from .sequence import SequenceMatcher
from .verification import Verification, verify


@dataclass
class RecognitionResult:
    query: Query
    matches: list[Match] = field(default_factory=list)
    loop: LoopCandidate | None = None  # a published loop closure
    suppressed: bool = False  # a confirmed candidate in the neighbourhood of an earlier closure
    rejected: Verification | None = None  # a confirmed candidate that failed geometric verification
    # another robot's keyframes of a confirmed candidate whose local features are not here yet
    # (fleet: the node asks their owner, then calls `finish`); `candidate` is what waits for them
    awaiting: list[int] = field(default_factory=list)
    candidate: LoopCandidate | None = None


class PlaceRecognizer:
    """With `sequence.enable`, matches are ranked by sequence score (their `score` stays the
    frame's cosine similarity; `sequence_score` holds the line's mean) and re-ranking is not
    run: patch matching would re-order a single frame's list that the sequence overrides."""

    def __init__(self, db: PlaceDatabase, config: LoopClosureConfig | None = None,
                 sequence: SequenceConfig | None = None, verification: VerificationConfig | None = None,
                 peer_features: Callable[[int], LocalFeatures | None] | None = None) -> None:
        self.db = db
        # local features of other robots' keyframes, fetched from their owners (fleet link)
        self.peer_features = peer_features or (lambda _: None)
        self.filter = LoopClosureFilter(config)
        self.config = self.filter.config
        self.verification = verification or VerificationConfig()
        self.sequence = SequenceMatcher(sequence, db.traversal_keys, db.ids_at_traversal_keys) \
            if sequence is not None and sequence.enable else None
        self._query_seq = 0
        self.timings: dict[str, float] = {}  # ms of the last query's stages: search, rerank, sequence, verification

    def query(self, descriptor: np.ndarray, stamp_ns: int, pose: Pose | None = None,
              patches: np.ndarray | None = None, query_id: int | None = None,
              exclude_sessions: list[str] | None = None, camera: str = "",
              local: LocalFeatures | None = None) -> RecognitionResult:
        """Top-k map matches of one frame (recent keyframes excluded) and, when confirmed,
        verified and not already linked, a loop closure."""
        if query_id is None:
            query_id = self._query_seq
        self._query_seq += 1
        q = Query(query_id, stamp_ns, self.db.session, pose, camera)
        clock = _Stopwatch()
        excluded = self.filter.excluded_ids(q)
        matches = self.db.search(descriptor, self.config.top_k, exclude_ids=excluded or None,
                                 exclude_sessions=exclude_sessions)[0]
        clock.lap("search")
        if self.sequence is not None:
            matches = self._sequence_matches(q, descriptor, matches, excluded, exclude_sessions)
            clock.lap("sequence")
        elif self.config.rerank and patches is not None and matches:
            stored = [self.db.patches(m.keyframe_id) for m in matches]
            # another robot's keyframes travel without patches: a list holding them stays in the
            # global descriptor's order (mutual-NN counts of some against cosines of others mean nothing)
            if not any(p is None and m.robot_id for m, p in zip(matches, stored, strict=True)):
                matches = rerank(patches, matches, stored, self.config.rerank_min_similarity)
            clock.lap("rerank")
        self.timings = clock.laps
        loop = self.filter.update(q, matches)
        if loop is None:
            return RecognitionResult(q, matches)
        if self.filter.suppressed(loop):
            return RecognitionResult(q, matches, suppressed=True)
        clock.lap("filter")
        result = self._conclude(q, matches, loop, local)
        clock.lap("verification")
        return result

    def finish(self, result: RecognitionResult, local: LocalFeatures | None) -> RecognitionResult:
        """A candidate that waited for other robots' local features, verified now that they are
        here (`peer_features`): published unless a closure of that neighbourhood came meanwhile."""
        loop = result.candidate
        if loop is None or self.filter.suppressed(loop):
            return RecognitionResult(result.query, result.matches, suppressed=loop is not None)
        return self._conclude(result.query, result.matches, loop, local)

    def _conclude(self, q: Query, matches: list[Match], loop: LoopCandidate, local: LocalFeatures | None
                  ) -> RecognitionResult:
        """A confirmed, unsuppressed candidate: verified and published, rejected, or waiting for
        other robots' local features."""
        verified, rejected, awaiting = self._verify(loop, matches, local)
        if verified is None:
            return RecognitionResult(q, matches, rejected=rejected, awaiting=awaiting,
                                     candidate=loop if awaiting else None)
        self.filter.publish(verified)
        return RecognitionResult(q, matches, verified)

    def _features(self, m: Match) -> LocalFeatures | None:
        lf = self.db.local_features(m.keyframe_id)
        return lf if lf is not None or not m.robot_id else self.peer_features(m.keyframe_id)

    def _verify(self, loop: LoopCandidate, matches: list[Match], local: LocalFeatures | None
                ) -> tuple[LoopCandidate | None, Verification | None, list[int]]:
        """(the closure to publish, None) or (None, the best failed verification).

        The confirmed neighbourhood's top `verification.candidates` keyframes are checked in rank
        order; the first that verifies is published (appearance ranks, geometry gates: the
        keyframe with most inliers is often a neighbour along a corridor, not the closest one).
        Another robot's keyframe whose local features are not here yet holds the decision until
        they are (`awaiting`): rank order decides, not the order in which owners answer."""
        vc = self.verification
        if not vc.enable:
            return loop, None, []
        best: tuple[Match, Verification] | None = None
        failed: Verification | None = None
        awaiting: list[int] = []
        if local is not None:
            near = [m for m in matches if self.filter.same_neighbourhood(m, loop.match)][: vc.candidates]
            for m in near:
                kf = self._features(m)
                if kf is None:
                    if m.robot_id:
                        awaiting.append(m.keyframe_id)
                    continue
                v = verify(local, kf, config=vc)
                if v.verified:
                    if not awaiting:  # (a better-ranked peer keyframe still to come decides first)
                        best = (m, v)
                    break
                if failed is None or v.inliers > failed.inliers:
                    failed = v
        if best is not None:
            return LoopCandidate(loop.query, best[0], loop.consistent, best[1]), None, []
        if awaiting:  # another robot's keyframes: decided when their owner's features arrive (not rejected yet)
            return None, None, awaiting
        if failed is None and not vc.required:  # nothing to verify with: published unverified
            return loop, None, []
        return None, failed or Verification(False, 0, 0), []

    def recognize(self, descriptor: np.ndarray, stamp_ns: int, pose: Pose | None = None,
                  patches: np.ndarray | None = None, query_id: int | None = None,
                  exclude_current_session: bool = False, camera: str = "",
                  local: LocalFeatures | None = None) -> RecognitionResult:
        """A follower's step for one frame: take in the map's changes, then query."""
        self.sync()
        # "current" is the session being mapped now; a saved map's last session is not current
        exclude = exclude_current_session and self.db.session and self.db.store.writer_active()
        return self.query(descriptor, stamp_ns, pose, patches, query_id,
                          exclude_sessions=[self.db.session] if exclude else None, camera=camera, local=local)

    def _sequence_matches(self, q: Query, descriptor: np.ndarray, matches: list[Match],
                          excluded: set[int] | list[int] | None, exclude_sessions: list[str] | None) -> list[Match]:
        assert self.sequence is not None
        ranked = self.sequence.update(q.camera, q.stamp_ns, np.array([m.keyframe_id for m in matches], np.int64),
                                      np.array([m.score for m in matches]), top=self.config.top_k)
        skip = set(excluded or ())
        ranked = [r for r in ranked if r.keyframe_id not in skip]  # recent keyframes stay excluded
        known = {m.keyframe_id: m for m in matches}
        missing = [r.keyframe_id for r in ranked if r.keyframe_id not in known]
        if missing:  # places only the sequence found: read them, with this frame's true similarity
            found = self.db.search_ids(descriptor, missing)
            known.update({m.keyframe_id: m for m in found})
        out = []
        for r in ranked:
            m = known.get(r.keyframe_id)
            if m is not None and m.session not in (exclude_sessions or ()):
                m.sequence_score = r.score
                out.append(m)
        return out

    @property
    def map_size(self) -> int:
        return len(self.db)

    def thumbnail(self, keyframe_id: int) -> bytes | None:
        return self.db.thumbnail(keyframe_id)

    def close(self) -> None:
        self.db.close()

    def observe_keyframe(self, keyframe_id: int, stamp_ns: int, pose: Pose | None = None,
                         session: str | None = None) -> None:
        """A keyframe was added to the map by someone else (the mapping side of the same process)."""
        self.filter.observe_keyframe(keyframe_id, stamp_ns, session or self.db.session, pose)

    def sync(self) -> int:
        """Follower: take in the writer's new keyframes and removals; returns how many were new."""
        new = self.db.refresh()
        for kf in new:
            if not kf.robot_id:  # another robot's keyframes are never this robot's recent ones
                self.filter.observe_keyframe(kf.id, kf.stamp_ns, kf.session, kf.pose)
        return len(new)

    def prime_from_map(self) -> int:
        """On start-up against a map that is being written: the active session's newest keyframes
        are recent, so a restarted recogniser never offers what the robot just added as a loop."""
        session = self.db.session
        if not session or not self.db.store.writer_active():  # localisation on a saved map: nothing is recent
            return 0
        tail = self.db.newest_keyframes(session, max(4 * self.config.exclude_recent_count, 1000))
        for kf in tail:
            self.filter.observe_keyframe(kf.id, kf.stamp_ns, kf.session, kf.pose)
        return len(tail)


class _Stopwatch:
    """Milliseconds per stage of one query (what bench/per_frame.py reports)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = (now - self._t) * 1e3
        self._t = now
