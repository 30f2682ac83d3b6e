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


def rotation_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation of a unit quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def quaternion_of(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation."""
    m = np.asarray(R, float)
    w = math.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def pose_matrix(p: Pose) -> np.ndarray:
    """4x4 homogeneous transform of a pose (the pose of a child frame in its parent)."""
    T = np.eye(4)
    T[:3, :3] = rotation_matrix(p.quaternion)
    T[:3, 3] = p.position
    return T


def pose_from_matrix(T: np.ndarray) -> Pose:
    return Pose(*map(float, T[:3, 3]), *map(float, quaternion_of(T[:3, :3])))


def pose_from_rpy(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> Pose:
    """A pose from a position and fixed-axis roll, pitch, yaw in radians (as tf2's static transforms)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    R = np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                  [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                  [-sp, cp * sr, cp * cr]])
    return Pose(x, y, z, *map(float, quaternion_of(R)))


def exp_rotation(w: np.ndarray) -> np.ndarray:
    """3x3 rotation of a rotation vector (axis times angle, radians): Rodrigues' formula."""
    w = np.asarray(w, float).reshape(3)
    theta = float(np.linalg.norm(w))
    K = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-12:
        return np.eye(3) + K
    return np.eye(3) + math.sin(theta) / theta * K + (1 - math.cos(theta)) / theta**2 * K @ K


def log_rotation(R: np.ndarray) -> np.ndarray:
    """The rotation vector of a 3x3 rotation (inverse of exp_rotation), angle in [0, pi]."""
    R = np.asarray(R, float)
    c = min(1.0, max(-1.0, (np.trace(R) - 1) / 2))
    theta = math.acos(c)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2
    if theta < 1e-7:
        return v
    if math.pi - theta < 1e-6:  # near pi: the axis from the symmetric part
        A = (R + np.eye(3)) / 2
        axis = A[:, int(np.argmax(np.diag(A)))]
        return theta * axis / np.linalg.norm(axis)
    return theta / math.sin(theta) * v
