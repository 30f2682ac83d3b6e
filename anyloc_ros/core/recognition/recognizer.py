"""PlaceRecognizer: map search -> mutual-NN re-ranking or sequence matching -> loop-closure filter
-> geometric verification -> one closure per revisit.

The one path every front end uses (ROS nodes, `anyloc replay --offline`, evaluation), so
their results agree; a frame goes through it, then to the Mapper, in the per-frame step
(step.py: `FrameStep(PlaceRecognizer(db, LoopClosureConfig()), Mapper(db))(frame, pose)`).
"""

from __future__ import annotations

import time
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


class PlaceRecognizer:
    """With `sequence.enable`, matches are ranked by sequence score (their `score` stays the
    frame's cosine similarity; `sequence_score` holds the line's mean) and re-ranking is not
    run: patch matching would re-order a single frame's list that the sequence overrides."""

    def __init__(self, db: PlaceDatabase, config: LoopClosureConfig | None = None,
                 sequence: SequenceConfig | None = None, verification: VerificationConfig | None = None) -> None:
        self.db = db
        self.filter = LoopClosureFilter(config)
        self.config = self.filter.config
        self.verification = verification or VerificationConfig()
        self.sequence = SequenceMatcher(sequence, db.sessions_of) if sequence is not None and sequence.enable else None
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
            matches = rerank(patches, matches, [self.db.patches(m.keyframe_id) for m in matches],
                             self.config.rerank_min_similarity)
            clock.lap("rerank")
        self.timings = clock.laps
        loop = self.filter.update(q, matches)
        if loop is None:
            return RecognitionResult(q, matches)
        if self.filter.suppressed(loop):
            return RecognitionResult(q, matches, suppressed=True)
        clock.lap("filter")
        verified, rejected = self._verify(loop, matches, local)
        clock.lap("verification")
        if verified is None:
            return RecognitionResult(q, matches, rejected=rejected)
        self.filter.publish(verified)
        return RecognitionResult(q, matches, verified)

    def _verify(self, loop: LoopCandidate, matches: list[Match], local: LocalFeatures | None
                ) -> tuple[LoopCandidate | None, Verification | None]:
        """(the closure to publish, None) or (None, the best failed verification).

        The confirmed neighbourhood's top `verification.candidates` keyframes are checked in rank
        order; the first that verifies is published (appearance ranks, geometry gates: the
        keyframe with most inliers is often a neighbour along a corridor, not the closest one)."""
        vc = self.verification
        if not vc.enable:
            return loop, None
        best: tuple[Match, Verification] | None = None
        failed: Verification | None = None
        if local is not None:
            near = [m for m in matches if self.filter.same_neighbourhood(m, loop.match)][: vc.candidates]
            for m in near:
                kf = self.db.local_features(m.keyframe_id)
                if kf is None:
                    continue
                v = verify(local, kf, config=vc)
                if v.verified:
                    best = (m, v)
                    break
                if failed is None or v.inliers > failed.inliers:
                    failed = v
        if best is not None:
            return LoopCandidate(loop.query, best[0], loop.consistent, best[1]), None
        if failed is None and not vc.required:  # nothing to verify with: published unverified
            return loop, None
        return None, failed or Verification(False, 0, 0)

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
