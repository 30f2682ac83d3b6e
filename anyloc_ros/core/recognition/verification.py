"""Geometric verification of a place match, and the metric relative pose it gives.

Appearance alone (VLAD, re-ranking, sequences) proposes a revisit; a SLAM back-end needs it
checked and measured. Local keypoints with descriptors (core/encoding/local_features.py: XFeat, for
every encoder) are matched mutually-nearest, then a robust two-view fit decides, by what the
two frames carry (core/recognition/relative_pose.py for the estimators and their covariance):

* depth on either side (RGB-D, stereo) and intrinsics on both: PnP of that side's keypoints
  lifted to 3-D against the other's -> a metric 6-DoF pose (`scale_known`), refused when it
  puts the two cameras more than `max_distance_m` apart (not a revisit) or, with depth on both
  sides, when the depths disagree with it or too few matches have depth (both cameras measure
  depth: metric or nothing);
* intrinsics on both, no depth: the essential matrix (rotation, translation direction);
* no intrinsics: the fundamental matrix (inliers only, no pose).

Keypoints arrive undistorted (the encoder removes the lens distortion: encoder.finish_local_features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..config.recognition import VerificationConfig
from ..types import LocalFeatures
from .edges import UNKNOWN_SCALE_VARIANCE, RelativePose, invert
from .relative_pose import essential_pose, pnp_pose

__all__ = ["UNKNOWN_SCALE_VARIANCE", "RelativePose", "Verification", "VerificationConfig", "mutual_matches", "verify"]


@dataclass
class Verification:
    verified: bool
    matches: int
    inliers: int
    pose: RelativePose | None = None  # with intrinsics, when verified (or refused for its distance)
    method: str = ""  # pnp | essential | fundamental (the fit that decided)
    reason: str = ""  # why it was refused: matches | inliers | distance | depth (disagrees, or too few with depth)


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
    """Is `keyframe` the place `query` sees? With both cameras' intrinsics (each side's
    `camera_matrix`, else the `camera_matrix` given here for both), also the relative pose
    keyframe camera -> query camera with its covariance: metric where either side has depths."""
    c = config or VerificationConfig()
    if query.descriptors.shape[1] != keyframe.descriptors.shape[1]:
        return Verification(False, 0, 0, reason="matches")  # keypoints of another network: not comparable
    iq, ik = mutual_matches(query.descriptors, keyframe.descriptors, c.min_cosine)
    n = len(iq)
    if n < max(8, c.min_inliers):
        return Verification(False, n, 0, reason="matches")
    pk = keyframe.keypoints[ik].astype(np.float64)
    pq = query.keypoints[iq].astype(np.float64)
    Kq = query.camera_matrix if query.camera_matrix is not None else camera_matrix
    Kk = keyframe.camera_matrix if keyframe.camera_matrix is not None else camera_matrix
    if Kq is None or Kk is None:
        _, mask = cv2.findFundamentalMat(pk, pq, cv2.USAC_MAGSAC, c.ransac_threshold_px, c.confidence)
        inliers = int(mask.sum()) if mask is not None else 0
        ok = inliers >= c.min_inliers
        return Verification(ok, n, inliers, method="fundamental", reason="" if ok else "inliers")
    # each side in its own camera's normalised coordinates (two cameras may differ); pixel
    # thresholds become normalised ones through the mean focal length
    Kq, Kk = np.asarray(Kq, np.float64), np.asarray(Kk, np.float64)
    xk, xq = _normalised(pk, Kk), _normalised(pq, Kq)
    f = float(np.sqrt(Kq[0, 0] * Kq[1, 1] * Kk[0, 0] * Kk[1, 1]) ** 0.5)
    zk = keyframe.depths[ik] if keyframe.depths is not None else np.full(n, np.nan)
    zq = query.depths[iq] if query.depths is not None else np.full(n, np.nan)
    # PnP from the side with more depths (usually the keyframe: both, on an RGB-D robot)
    from_keyframe = np.isfinite(zk).sum() >= np.isfinite(zq).sum()
    z3, x3, x2 = (zk, xk, xq) if from_keyframe else (zq, xq, xk)
    lifted = np.isfinite(z3)
    if lifted.sum() >= c.min_inliers:
        fit = pnp_pose(np.c_[x3[lifted], np.ones(lifted.sum())] * z3[lifted, None], x2[lifted], f,
                       c.pnp_threshold_px, c.confidence, c.noise(), c.min_inliers)
        if fit is None:
            return Verification(False, n, 0, method="pnp", reason="inliers")
        R, t, cov = fit.rotation, fit.translation, fit.covariance
        if not from_keyframe:  # the fit maps query points into the keyframe camera
            R, t, cov = invert(R, t, cov)
        inliers = int(fit.inliers.sum())
        pose = RelativePose(R, t, cov, True, query.camera_mount, keyframe.camera_mount, fit.scene_depth)
        if inliers < c.min_inliers:
            return Verification(False, n, inliers, method="pnp", reason="inliers")
        if c.max_distance_m > 0:
            edge, _ = pose.in_base_frames()
            if math.hypot(edge.x, edge.y, edge.z) > c.max_distance_m:
                return Verification(False, n, inliers, pose, "pnp", "distance")
        both = np.flatnonzero(lifted)[fit.inliers]
        both = both[np.isfinite(zk[both]) & np.isfinite(zq[both])]
        if len(both) >= 8 and c.depth_agreement > 0 and \
                _depth_agreement(xk[both], zk[both], zq[both], R, t, c.depth_noise_1m) < c.depth_agreement:
            return Verification(False, n, inliers, pose, "pnp", "depth")
        return Verification(True, n, inliers, pose, "pnp")
    if keyframe.depths is not None and query.depths is not None:
        # both cameras measure depth: a closure is metric or none (as RTAB-Map's visual links), never
        # a monocular edge because this pair's matches fell on depth holes
        return Verification(False, n, int(lifted.sum()), method="pnp", reason="depth")
    fit = essential_pose(xk, xq, f, c.ransac_threshold_px, c.confidence, c.noise(), min(c.min_inliers, 8))
    if fit is None:
        return Verification(False, n, 0, method="essential", reason="inliers")
    inliers = int(fit.inliers.sum())
    if inliers < c.min_inliers:
        return Verification(False, n, inliers, method="essential", reason="inliers")
    return Verification(True, n, inliers, RelativePose(fit.rotation, fit.translation, fit.covariance, False,
                                                       query.camera_mount, keyframe.camera_mount), "essential")


def _depth_agreement(xk: np.ndarray, zk: np.ndarray, zq: np.ndarray, R: np.ndarray, t: np.ndarray,
                     depth_noise_1m: float) -> float:
    """Share of correspondences whose keyframe point, moved by the pose, has the depth the query
    measured (3-D consistency: a pose fitted to the 2-D positions alone must also explain depth)."""
    X = np.c_[xk, np.ones(len(xk))] * zk[:, None] @ R.T + t
    tol = 3 * depth_noise_1m * np.hypot(zk**2, zq**2) + 0.05 * zq
    return float(np.mean(np.abs(X[:, 2] - zq) <= tol))


def _normalised(p: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(n, 2) pixels -> (n, 2) normalised image coordinates of a pinhole camera."""
    return np.c_[p, np.ones(len(p))] @ np.linalg.inv(K).T[:, :2]
