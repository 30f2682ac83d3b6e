"""One camera frame through the place memory: the per-frame step every front end calls (the
nodes, offline replay, evaluation, benchmarks and tests), so the order and the rules below
exist once.

    step = FrameStep(PlaceRecognizer(db, ...), Mapper(db, ...))
    result = step(frame, pose)     # matches, loop closure, its edge, relocalisation hint, keyframe id

Order: the frame is recognised first (so it is never its own match), then offered to the
mapper as a keyframe, and a new keyframe is reported to the recogniser (its recent-frame
exclusion). The recognition node runs the step with a recogniser only (a follower: it learns
the mapping node's keyframes by syncing with the map), the mapping node with a mapper only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config.nodes import MappingSettings, RecognitionSettings
from ..geometry import Pose
from ..types import DescriptorFrame, LocalFeatures, Match
from .edges import relocalization
from .mapping import Mapper

if TYPE_CHECKING:  # the recogniser (verification: OpenCV; re-ranking: torch) stays out of a mapping process
    from .loop_closure import LoopCandidate
    from .recognizer import PlaceRecognizer, RecognitionResult


@dataclass
class StepResult:
    recognition: RecognitionResult | None = None
    keyframe_id: int | None = None  # the frame became this keyframe
    keyframe_reason: str = "skipped"
    edge: tuple[Pose, np.ndarray] | None = None  # the closure's query base in its keyframe's base, with covariance
    relocalization: tuple[Pose, np.ndarray] | None = None  # the robot's pose hint and its covariance
    ms: dict[str, float] = field(default_factory=dict)  # wall time of each half: recognise, map

    @property
    def matches(self) -> list[Match]:
        return self.recognition.matches if self.recognition is not None else []

    @property
    def loop(self) -> LoopCandidate | None:
        return self.recognition.loop if self.recognition is not None else None

    @property
    def scale_known(self) -> bool:
        """The closure's edge is metric (PnP on depth)."""
        v = self.loop.verification if self.loop is not None else None
        return bool(self.edge is not None and v is not None and v.pose is not None and v.pose.scale_known)


class FrameStep:
    """Recognise, then map, one frame. `recognition` and `mapping` are the nodes' settings
    (what is stored with a keyframe; whether the current session is matched; the
    relocalisation rule); their defaults where not given."""

    def __init__(self, recognizer: PlaceRecognizer | None = None, mapper: Mapper | None = None,
                 recognition: RecognitionSettings | None = None, mapping: MappingSettings | None = None) -> None:
        self.recognizer, self.mapper = recognizer, mapper
        self.recognition = recognition or RecognitionSettings()
        self.mapping = mapping or MappingSettings()

    def __call__(self, frame: DescriptorFrame, pose: Pose | None = None) -> StepResult:
        out = StepResult()
        t0 = time.perf_counter()
        if self.recognizer is not None:
            out.recognition = self.recognizer.recognize(
                frame.descriptor, frame.stamp_ns, pose, frame.patches, query_id=frame.seq,
                exclude_current_session=self.recognition.exclude_current_session, camera=frame.frame_id,
                local=frame.local)
            out.edge = self._edge(out.recognition)
            out.relocalization = self._relocalization(out)
            out.ms["recognise"] = (time.perf_counter() - t0) * 1e3
        if self.mapper is not None:
            t0 = time.perf_counter()
            m = self.mapping
            kid, out.keyframe_reason = self.mapper.offer(
                frame.descriptor, frame.stamp_ns, frame.frame_id, pose,
                patches=frame.patches if m.store_patches else None,
                thumbnail=frame.thumbnail if m.store_thumbnails else None,
                local=frame.local if m.store_local_features else None)
            out.keyframe_id = kid
            if kid is not None and self.recognizer is not None:
                self.recognizer.observe_keyframe(kid, frame.stamp_ns, pose)
            out.ms["map"] = (time.perf_counter() - t0) * 1e3
        return out

    def finish(self, waiting: RecognitionResult, local: LocalFeatures | None) -> StepResult:
        """The step's end for a candidate that waited for other robots' local features (fleet)."""
        assert self.recognizer is not None
        out = StepResult(recognition=self.recognizer.finish(waiting, local))
        out.edge = self._edge(out.recognition)
        out.relocalization = self._relocalization(out)
        return out

    @staticmethod
    def _edge(result: RecognitionResult) -> tuple[Pose, np.ndarray] | None:
        v = result.loop.verification if result.loop is not None else None
        return v.pose.in_base_frames() if v is not None and v.pose is not None else None

    def _relocalization(self, out: StepResult) -> tuple[Pose, np.ndarray] | None:
        """A pose hint for a published closure (metric with a depth-verified edge, orientation
        only with a monocular one); with `relocalization_requires_loop` off also every frame's
        best match, unverified."""
        st = self.recognition
        if not st.publish_relocalization:
            return None
        if out.loop is not None:
            match, edge = out.loop.match, out.edge
        elif not st.relocalization_requires_loop and out.matches:
            match, edge = out.matches[0], None
        else:
            return None
        if match.pose is None or match.score < st.relocalization_min_score or match.robot_id:
            return None  # (another robot's keyframe: its pose is in that robot's odometry frame)
        return relocalization(match.pose, edge, out.scale_known if edge is not None else False,
                              st.relocalization_covariance)
