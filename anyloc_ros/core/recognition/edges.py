"""Edges between robots' base frames: a relative pose of two cameras, its inverse, carried
through each camera's mount to the base frames, and the relocalisation hint it gives. NumPy
only (the processes that publish edges never need OpenCV for it).

Conventions (core/recognition/relative_pose.py): a pose maps points of the matched keyframe's
camera frame into the query camera's frame (x_q = R x_m + t); perturbations are t' = t + dt and
R' = exp(dw) R; covariances are ordered (dt, dw), as ROS PoseWithCovariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Pose, exp_rotation, pose_from_matrix, pose_matrix

UNKNOWN_SCALE_VARIANCE = 1e6  # m², along the translation direction when the scale is unknown


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix [v]x."""
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


@dataclass
class RelativePose:
    rotation: np.ndarray  # (3, 3): keyframe camera -> query camera
    translation: np.ndarray  # (3,): metres when scale_known, else a unit direction
    covariance: np.ndarray  # (6, 6): (dt, dw) as above
    scale_known: bool = False
    query_mount: Pose | None = None  # each camera's pose in its robot base frame (None: identity)
    match_mount: Pose | None = None
    scene_depth: float = 0.0  # metric fits: median depth of the inliers (what the translation floor scales with)

    def in_base_frames(self) -> tuple[Pose, np.ndarray]:
        """The edge between the robot base frames: see `base_relative_pose`."""
        return base_relative_pose(self, self.query_mount, self.match_mount)



def invert(R: np.ndarray, t: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse transform (x_m = Rᵀ x_q − Rᵀ t) and its covariance in the same convention:
    R' = exp(dw) R, t' = t + dt give dw_inv = −Rᵀ dw and dt_inv = −Rᵀ dt − Rᵀ [t]x dw."""
    J = np.zeros((6, 6))
    J[:3, :3] = -R.T
    J[:3, 3:] = -R.T @ skew(t)
    J[3:, 3:] = -R.T
    out = J @ cov @ J.T
    return R.T, -R.T @ t, (out + out.T) / 2


def base_relative_pose(rel: RelativePose, query_mount: Pose | None = None, match_mount: Pose | None = None
                       ) -> tuple[Pose, np.ndarray]:
    """The query's base frame in the matched keyframe's base frame (an edge match -> query of a
    pose graph), and its 6x6 covariance (x, y, z, rotation about the match base frame's x, y, z).

    `rel` maps points of the match camera into the query camera; a mount is the camera's pose in
    its robot's base frame (None: the camera frame is the base frame). Covariance propagated
    through the composition by a numerical Jacobian."""
    Mq = pose_matrix(query_mount) if query_mount is not None else np.eye(4)
    Mm = pose_matrix(match_mount) if match_mount is not None else np.eye(4)
    Mq_inv = np.linalg.inv(Mq)

    def compose(p: np.ndarray) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = exp_rotation(p[3:]) @ rel.rotation
        T[:3, 3] = rel.translation + p[:3]
        return Mm @ np.linalg.inv(T) @ Mq_inv  # T_bm_bq = T_bm_cm T_cm_cq T_cq_bq

    T0 = compose(np.zeros(6))
    eps = 1e-5

    def delta(p: np.ndarray) -> np.ndarray:
        T = compose(p)
        dR = T[:3, :3] @ T0[:3, :3].T  # a small rotation: its axis-angle is the skew part (to O(eps²))
        w = np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]]) / 2
        return np.r_[T[:3, 3] - T0[:3, 3], w]

    J = np.stack([(delta(e * eps) - delta(-e * eps)) / (2 * eps) for e in np.eye(6)], axis=1)
    cov = J @ rel.covariance @ J.T
    return pose_from_matrix(T0), (cov + cov.T) / 2


def relocalization(keyframe_pose: Pose, edge: tuple[Pose, np.ndarray] | None, scale_known: bool,
                   position_variance: float) -> tuple[Pose, np.ndarray]:
    """The robot's pose from a loop closure to a keyframe at `keyframe_pose` (its base pose in the
    map's odometry frame), with a 6x6 covariance in that frame (x, y, z, rotation about x, y, z).

    With a metric edge (query base in the keyframe's base frame, `in_base_frames`) the pose is
    the composition and its covariance the edge's rotated into the frame (the keyframe pose is
    taken as exact); with a monocular edge the orientation is composed and the position stays
    the keyframe's, with `position_variance` (the distance is unknown); without an edge (an
    unverified closure) both are the keyframe's with `position_variance` (a tenth of it in rad²)."""
    cov = np.zeros((6, 6))
    if edge is None:
        cov[[0, 1, 2], [0, 1, 2]] = position_variance
        cov[[3, 4, 5], [3, 4, 5]] = 0.1 * position_variance
        return keyframe_pose, cov
    rel, rel_cov = edge
    T_kf = pose_matrix(keyframe_pose)
    R_kf = T_kf[:3, :3]
    T = T_kf @ pose_matrix(rel)
    if not scale_known:
        T[:3, 3] = T_kf[:3, 3]
    B = np.zeros((6, 6))
    B[:3, :3] = B[3:, 3:] = R_kf  # (dt, dw) in the keyframe's base frame -> the map's frame
    full = B @ rel_cov @ B.T
    if scale_known:
        cov = full
    else:
        cov[3:, 3:] = full[3:, 3:]
        cov[[0, 1, 2], [0, 1, 2]] = position_variance
    return pose_from_matrix(T), (cov + cov.T) / 2
