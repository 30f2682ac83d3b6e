"""Geometric verification of a place match, and the relative pose it gives.

Appearance alone (VLAD, re-ranking, sequences) proposes a revisit; a SLAM back-end needs it
checked and measured. Here: local keypoints with descriptors (XFeat's detector and descriptor
heads, which the `xfeat_vlad` encoder's network already computes), mutual-nearest-neighbour
matching, and a robust two-view fit with OpenCV's USAC/MAGSAC: the essential matrix when the
camera intrinsics are known (rotation and translation direction: monocular, so the scale is
unknown), the fundamental matrix otherwise (inliers only). The covariance of the relative pose
comes from the fit: Gauss-Newton on the inliers' Sampson errors around the estimate, scaled by
their residual variance.

Conventions: the relative pose maps points from the matched keyframe's camera frame to the
query camera's frame (x_q = R x_m + t); covariances are ordered as ROS
PoseWithCovariance (x, y, z, then rotation about x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import FeatureDimensionError
from .geometry import Pose, pose_from_matrix, pose_matrix
from .settings import setting
from .types import LocalFeatures

UNKNOWN_SCALE_VARIANCE = 1e6  # m², along the translation direction when the scale is unknown


def xfeat_keypoints(descriptors: torch.Tensor, logits: torch.Tensor, reliability: torch.Tensor,
                    image_size: tuple[int, int], top_k: int = 512, nms: int = 5,
                    min_score: float = 1e-4) -> LocalFeatures:
    """Keypoints from XFeat's three heads for one image (Potje et al., CVPR 2024).

    descriptors (1, 64, h, w) at 1/8 resolution; logits (1, 65, h, w): each 8x8 cell's 64 pixel
    positions plus a "no keypoint" bin; reliability (1, 1, h, w). A keypoint's score is its
    position's softmax probability times the cell's reliability, kept where it is the maximum of
    its `nms` x `nms` neighbourhood; its descriptor is the descriptor map sampled bilinearly there."""
    if logits.shape[1] != 65 or descriptors.ndim != 4 or reliability.shape[1] != 1:
        raise FeatureDimensionError(f"XFeat heads of unexpected shapes: descriptors {tuple(descriptors.shape)}, "
                                    f"logits {tuple(logits.shape)}, reliability {tuple(reliability.shape)}")
    heat = F.pixel_shuffle(F.softmax(logits.float(), dim=1)[:, :64], 8)[0, 0]  # (8h, 8w)
    in_h, in_w = heat.shape
    score = heat * F.interpolate(reliability.float(), size=(in_h, in_w), mode="bilinear", align_corners=False)[0, 0]
    peak = F.max_pool2d(score[None, None], nms, stride=1, padding=nms // 2)[0, 0]
    ys, xs = torch.nonzero((score == peak) & (score > min_score), as_tuple=True)
    s = score[ys, xs]
    order = torch.argsort(s, descending=True)[:top_k]
    ys, xs, s = ys[order], xs[order], s[order]
    grid = torch.stack([(xs.float() + 0.5) / in_w * 2 - 1, (ys.float() + 0.5) / in_h * 2 - 1], dim=-1)[None, None]
    desc = F.grid_sample(descriptors.float(), grid, mode="bilinear", align_corners=False)[0, :, 0].T
    h, w = image_size
    pts = np.stack([(xs.numpy() + 0.5) * w / in_w, (ys.numpy() + 0.5) * h / in_h], axis=1)
    return LocalFeatures(pts.astype(np.float32), F.normalize(desc, dim=-1).numpy().astype(np.float16),
                         s.numpy().astype(np.float32), (int(h), int(w)))


@dataclass
class VerificationConfig:
    PREFIX: ClassVar[str] = "verification."
    enable: bool = setting(True, "geometric verification of loop closures where both images have keypoints "
                           "(XFeat encoders); a closure that fails it is not published")
    required: bool = setting(False, "publish only verified closures: none when the encoder gives no keypoints")
    # corridor (160x120 fisheye), 512 XFeat keypoints, 1 px: inliers of true pairs 10th percentile 39,
    # of pairs 20-90 frames apart 90th percentile 28, max 36 (test_verification.py)
    min_inliers: int = setting(36, "RANSAC inliers a verified closure needs", 8, 100000)
    min_cosine: float = setting(0.82, "keypoint descriptor similarity a mutual match needs", -1.0, 1.0)
    ransac_threshold_px: float = setting(1.0, "RANSAC inlier threshold in pixels", 0.01, 100.0)
    confidence: float = setting(0.999, "RANSAC confidence", 0.5, 0.999999)
    candidates: int = setting(3, "top matches of the confirmed neighbourhood tried in rank order; the first "
                              "that verifies is published", 1, 100)


@dataclass
class RelativePose:
    rotation: np.ndarray  # (3, 3): keyframe camera -> query camera
    translation: np.ndarray  # (3,): a unit direction when scale_known is False
    covariance: np.ndarray  # (6, 6): x, y, z, rotation about x, y, z
    scale_known: bool = False
    query_mount: Pose | None = None  # each camera's pose in its robot base frame (None: identity)
    match_mount: Pose | None = None

    def in_base_frames(self) -> tuple[Pose, np.ndarray]:
        """The edge between the robot base frames: see `base_relative_pose`."""
        return base_relative_pose(self, self.query_mount, self.match_mount)


@dataclass
class Verification:
    verified: bool
    matches: int
    inliers: int
    pose: RelativePose | None = None  # with intrinsics, when verified


def mutual_matches(a: np.ndarray, b: np.ndarray, min_cosine: float = 0.82) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of mutual nearest neighbours between two sets of unit descriptors."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = a.astype(np.float32) @ b.astype(np.float32).T
    ab, ba = sim.argmax(axis=1), sim.argmax(axis=0)
    keep = (ba[ab] == np.arange(len(a))) & (sim[np.arange(len(a)), ab] >= min_cosine)
    return np.nonzero(keep)[0], ab[keep]


def verify(query: LocalFeatures, keyframe: LocalFeatures, camera_matrix: np.ndarray | None = None,
           config: VerificationConfig | None = None) -> Verification:
    """Is `keyframe` the place `query` sees? When both cameras' intrinsics are known (each
    side's `camera_matrix`, else the `camera_matrix` given here for both), also the relative pose
    keyframe camera -> query camera with its covariance; else inliers of a fundamental matrix."""
    c = config or VerificationConfig()
    iq, ik = mutual_matches(query.descriptors, keyframe.descriptors, c.min_cosine)
    n = len(iq)
    if n < max(8, c.min_inliers):
        return Verification(False, n, 0)
    pk = keyframe.keypoints[ik].astype(np.float64)
    pq = query.keypoints[iq].astype(np.float64)
    Kq = query.camera_matrix if query.camera_matrix is not None else camera_matrix
    Kk = keyframe.camera_matrix if keyframe.camera_matrix is not None else camera_matrix
    if Kq is None or Kk is None:
        _, mask = cv2.findFundamentalMat(pk, pq, cv2.USAC_MAGSAC, c.ransac_threshold_px, c.confidence)
        inliers = int(mask.sum()) if mask is not None else 0
        return Verification(inliers >= c.min_inliers, n, inliers)
    # each side in its own camera's normalised coordinates (two cameras may differ); the pixel
    # threshold becomes a normalised one through the mean focal length
    Kq, Kk = np.asarray(Kq, np.float64), np.asarray(Kk, np.float64)
    xk, xq = _normalised(pk, Kk), _normalised(pq, Kq)
    f = float(np.sqrt(Kq[0, 0] * Kq[1, 1] * Kk[0, 0] * Kk[1, 1]) ** 0.5)
    eye = np.eye(3)
    E, mask = cv2.findEssentialMat(xk, xq, eye, method=cv2.USAC_MAGSAC, prob=c.confidence,
                                   threshold=c.ransac_threshold_px / f)
    if E is None or E.shape != (3, 3) or mask is None:
        return Verification(False, n, 0)
    _, R, t, mask = cv2.recoverPose(E, xk, xq, eye, mask=mask.copy())
    keep = mask.ravel() > 0
    inliers = int(keep.sum())
    if inliers < c.min_inliers:
        return Verification(False, n, inliers)
    t = t.ravel() / np.linalg.norm(t)
    cov = pose_covariance(R, t, xk[keep], xq[keep], f)
    return Verification(True, n, inliers, RelativePose(R, t, cov, False, query.camera_mount, keyframe.camera_mount))


def _normalised(p: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(n, 2) pixels -> (n, 2) normalised image coordinates of a pinhole camera."""
    return np.c_[p, np.ones(len(p))] @ np.linalg.inv(K).T[:, :2]


def _sampson(R: np.ndarray, t: np.ndarray, xk: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Sampson distances of normalised correspondences (x_q^T E x_k = 0, E = [t]x R)."""
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ R
    ek, eq = xk @ E.T, xq @ E  # E x_k and E^T x_q per point
    num = np.sum(xq * ek, axis=1)
    return num / np.sqrt(ek[:, 0] ** 2 + ek[:, 1] ** 2 + eq[:, 0] ** 2 + eq[:, 1] ** 2 + 1e-18)


def pose_covariance(R: np.ndarray, t: np.ndarray, xk: np.ndarray, xq: np.ndarray, focal: float) -> np.ndarray:
    """6x6 covariance (x, y, z, rx, ry, rz) of the two-view pose from its inliers.

    The 5 degrees of freedom (a rotation increment, two directions orthogonal to t) are
    linearised around the estimate; their covariance is s² (JᵀJ)⁻¹ with J the Jacobian of the
    inliers' Sampson errors in pixels (normalised coordinates `xk`, `xq` times `focal`) and s²
    their variance. Along t the scale is unknown."""
    xk = np.c_[xk, np.ones(len(xk))]
    xq = np.c_[xq, np.ones(len(xq))]
    f = focal
    a = np.cross(t, [1.0, 0, 0] if abs(t[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(t, a)

    def residuals(p: np.ndarray) -> np.ndarray:
        dR, _ = cv2.Rodrigues(p[:3])
        tt = t + p[3] * a + p[4] * b
        return f * _sampson(dR @ R, tt / np.linalg.norm(tt), xk, xq)

    r0 = residuals(np.zeros(5))
    eps = 1e-6
    J = np.stack([(residuals(e * eps) - residuals(-e * eps)) / (2 * eps) for e in np.eye(5)], axis=1)
    dof = max(len(r0) - 5, 1)
    s2 = float(r0 @ r0) / dof
    cov5 = s2 * np.linalg.pinv(J.T @ J)
    cov = np.zeros((6, 6))
    B = np.stack([a, b], axis=1)  # translation increments span a, b
    cov[:3, :3] = B @ cov5[3:, 3:] @ B.T + UNKNOWN_SCALE_VARIANCE * np.outer(t, t)
    # rotation increments are left-multiplied (R' = exp(w) R): w is in the query camera frame
    cov[3:, 3:] = cov5[:3, :3]
    cov[:3, 3:] = B @ cov5[3:, :3]
    cov[3:, :3] = cov[:3, 3:].T
    return cov


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
        dR, _ = cv2.Rodrigues(p[3:])
        T = np.eye(4)
        T[:3, :3] = dR @ rel.rotation
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
