"""Loop-closure precision and recall against a trajectory (scores `anyloc replay` and the demo)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..core.types import Keyframe


class LoopDecision(Protocol):
    stamp_ns: int
    loop_match: int | None  # the keyframe id a loop closure was published for, else None


def loop_closure_pr(decisions: Iterable[LoopDecision], keyframes: Iterable[Keyframe],
                    poses_by_stamp: dict[int, Any], radius: float, min_gap_s: float) -> dict[str, float]:
    """A loop closure is true when the query's and the keyframe's poses are within `radius` and
    at least `min_gap_s` apart in time. Recall counts the queries for which a true one existed."""
    kfs = {k.id: k for k in keyframes}

    def true_match(stamp_ns: int, q: Any, k: Keyframe | None) -> bool:
        return k is not None and k.pose is not None and q.distance_to(k.pose) <= radius \
            and abs(stamp_ns - k.stamp_ns) / 1e9 >= min_gap_s

    tp = fp = possible = 0
    for d in decisions:
        q = poses_by_stamp.get(d.stamp_ns)
        if q is None:
            continue
        possible += any(true_match(d.stamp_ns, q, k) for k in kfs.values())
        if d.loop_match is not None:
            ok = true_match(d.stamp_ns, q, kfs.get(d.loop_match))
            tp, fp = tp + ok, fp + (not ok)
    return {"loop_closures": tp + fp, "loop_precision": tp / (tp + fp) if tp + fp else 1.0,
            "loop_recall": tp / possible if possible else 0.0, "frames_with_true_loop": possible}
