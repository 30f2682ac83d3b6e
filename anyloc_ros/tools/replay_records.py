"""What `anyloc replay` records per frame and per published loop closure, the same in both modes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("anyloc_ros.tools.replay")


@dataclass
class FrameResult:
    stamp_ns: int
    top_ids: list[int]
    top_scores: list[float]
    loop_match: int | None = None
    latency_ms: float = 0.0
    loop_relative_pose: bool = False  # the closure carries the keyframe -> query relative pose (intrinsics known)
    closure: dict[str, Any] | None = None  # the published loop closure (closure_record)


def closure_record(query_stamp_ns: int, match_id: int, match_stamp_ns: int, verified: bool, inliers: int,
                   edge: tuple[Any, np.ndarray] | None, scale_known: bool, match_robot_id: str = "") -> dict[str, Any]:
    """A published loop closure as replay's JSON lists it (the same fields from the core result
    offline and from the LoopClosure message over DDS). Another robot's keyframe is named as its
    owner names it (match_robot_id, its id there)."""
    rec: dict[str, Any] = {"query_stamp_ns": int(query_stamp_ns), "match_id": int(match_id), "match_robot_id": match_robot_id,
                           "match_stamp_ns": int(match_stamp_ns), "verified": bool(verified), "inliers": int(inliers),
                           "scale_known": bool(scale_known), "relative_pose": None, "covariance": None}
    if edge is not None:
        pose, cov = edge
        rec["relative_pose"] = [float(v) for v in pose.as_tuple()]
        rec["covariance"] = [float(v) for v in np.asarray(cov).ravel()]
    return rec


@dataclass
class ReplayResult:
    mode: str
    frames: list[FrameResult] = field(default_factory=list)
    map_path: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # bad messages skipped and counted, as the nodes do

    def skip(self, kind: str, why: Exception) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("replay: %s skipped: %s", kind, why)
