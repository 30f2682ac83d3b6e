"""A short time-indexed buffer of robot poses, queried at image timestamps.

Odometry usually runs faster than the camera and is never stamped at exactly the image
time, so the pose of a keyframe is interpolated (position lerp, orientation slerp) between
the two buffered poses that bracket the image stamp. A stamp slightly outside the buffered
range is tolerated (`max_extrapolation_s`, the nearest pose is used); further out, there is
no pose rather than a wrong one.
"""

from __future__ import annotations

import bisect
import threading

from .errors import AnyLocError
from .geometry import Pose, interpolate_pose


class PoseError(AnyLocError, ValueError):
    """An odometry sample was refused (non-finite, non-unit quaternion)."""


class PoseBuffer:
    def __init__(self, max_age_s: float = 10.0, max_extrapolation_s: float = 0.05, max_gap_s: float = 1.0) -> None:
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_extrapolation_ns = int(max_extrapolation_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._stamps: list[int] = []
        self._poses: list[Pose] = []
        self._lock = threading.Lock()
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, pose: Pose) -> None:
        """Insert a pose. Raises `PoseError` for invalid poses; a stamp older than the
        newest by more than the buffer age (time going backwards, e.g. a bag loop or
        simulation reset) clears the buffer instead of mixing two timelines."""
        if not pose.is_valid():
            self.rejected += 1
            raise PoseError(f"pose at {stamp_ns} ns refused: non-finite values or a non-unit quaternion")
        with self._lock:
            if self._stamps and stamp_ns < self._stamps[-1] - self.max_age_ns:
                self._stamps.clear()
                self._poses.clear()
            i = bisect.bisect_right(self._stamps, stamp_ns)
            if i > 0 and self._stamps[i - 1] == stamp_ns:
                self._poses[i - 1] = pose
            else:
                self._stamps.insert(i, stamp_ns)
                self._poses.insert(i, pose)
            cutoff = self._stamps[-1] - self.max_age_ns
            drop = bisect.bisect_left(self._stamps, cutoff)
            if drop:
                del self._stamps[:drop]
                del self._poses[:drop]

    def at(self, stamp_ns: int) -> Pose | None:
        """Pose at `stamp_ns`, or None when the buffer does not cover that time."""
        with self._lock:
            if not self._stamps:
                return None
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                return self._poses[i]
            if i == 0:
                ok = self._stamps[0] - stamp_ns <= self.max_extrapolation_ns
                return self._poses[0] if ok else None
            if i == len(self._stamps):
                ok = stamp_ns - self._stamps[-1] <= self.max_extrapolation_ns
                return self._poses[-1] if ok else None
            t0, t1 = self._stamps[i - 1], self._stamps[i]
            if t1 - t0 > self.max_gap_ns:
                return None  # odometry dropped out around this time
            return interpolate_pose(self._poses[i - 1], self._poses[i], (stamp_ns - t0) / (t1 - t0))
