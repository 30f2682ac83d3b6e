"""Poses: position + unit quaternion (x, y, z, w), with the distances keyframe logic needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    x: float
    y: float
    z: float
    qx: float = 0.0
    qy: float = 0.0
    qz: float = 0.0
    qw: float = 1.0

    @property
    def position(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])

    @property
    def quaternion(self) -> np.ndarray:
        return np.array([self.qx, self.qy, self.qz, self.qw])

    def as_tuple(self) -> tuple[float, ...]:
        return (self.x, self.y, self.z, self.qx, self.qy, self.qz, self.qw)

    def distance_to(self, other: Pose) -> float:
        return float(np.linalg.norm(self.position - other.position))

    def angle_to(self, other: Pose) -> float:
        """Rotation angle between the two orientations, radians in [0, pi]."""
        dot = abs(float(np.dot(self.quaternion, other.quaternion)))
        return 2.0 * math.acos(min(1.0, dot))

    def is_valid(self, tol: float = 1e-3) -> bool:
        """Finite, with a unit quaternion (within `tol`)."""
        v = np.array(self.as_tuple())
        return bool(np.isfinite(v).all()) and abs(float(np.linalg.norm(self.quaternion)) - 1.0) < tol


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w)."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def interpolate_pose(p0: Pose, p1: Pose, t: float) -> Pose:
    """Pose at fraction t in [0, 1] between p0 and p1 (lerp position, slerp orientation)."""
    pos = (1 - t) * p0.position + t * p1.position
    q = slerp(p0.quaternion, p1.quaternion, t)
    return Pose(*map(float, pos), *map(float, q))
