"""The relative pose of two views of a place, and a covariance that matches its real errors.

Two estimators, chosen by what the cameras give (core/recognition/verification.py decides):

* metric (RGB-D / stereo): PnP of one view's keypoints lifted to 3-D by their depth against
  the other view's keypoints (RANSAC with SQPnP, then a weighted least-squares refinement in
  which each keypoint's variance holds the pixel noise and its depth noise projected into the
  image). Translation in metres, 6 degrees of freedom;
* monocular: the essential matrix (USAC/MAGSAC), refined by least squares on the inliers'
  Sampson errors: rotation and the direction of translation (5 degrees of freedom; the
  distance along it is unknown).

The covariance has two parts:

1. the fit: s² (JᵀWJ)⁻¹ at the least-squares optimum, where s is the keypoints' pixel noise
   estimated from the inliers' residuals *corrected for the inlier cut* (residuals kept below a
   threshold are smaller than the noise that made them; treating them as the noise would make
   the covariance too small). On synthetic scenes this part alone is consistent (NEES tests);
2. what the measurement model leaves out on real cameras (calibration, colour-depth
   registration, colour/depth timing, rolling shutter, motion blur): an error floor added in
   the query camera's frame: rotation `floor_rotation_deg` and translation `floor_translation`
   per metre of scene depth (metric), rotation `monocular_floor_rotation_deg` and direction
   `monocular_floor_direction_deg` (monocular). Fitted on TUM fr1/xyz
   (bench/pose_covariance.py), camera dependent, hence parameters.

Conventions: a pose maps points of the matched keyframe's camera frame into the query camera's
frame (x_q = R x_m + t); perturbations are t' = t + dt and R' = exp(dw) R (dw in the query
camera frame); covariances are ordered (dt, dw), as ROS PoseWithCovariance (x, y, z, rotation
about x, y, z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..config.recognition import PoseNoise
from .edges import UNKNOWN_SCALE_VARIANCE
from .residuals import noise_scale, truncation

# No keypoint detector localises better than this (pixels): the noise estimate never goes below
# it, so a fit whose residuals the depth noise already explains is not taken as exact.
MIN_SIGMA_PX = 0.1
# A correspondence that alone decides the fit (leverage: its share of the information, over the
# average share) is dropped: one wrong match there would move the pose far beyond its covariance.
LEVERAGE = 5.0
# Inliers of the final fits: residuals within this many noise sigmas (or the RANSAC threshold):
# 2-D reprojection errors (PnP) and 1-D Sampson distances (a band around each epipolar line, which
# a wrong match crosses more easily than a disc: narrower).
CUT_SIGMAS = {2: 3.0, 1: 2.5}


@dataclass
class PoseFit:
    rotation: np.ndarray
    translation: np.ndarray
    covariance: np.ndarray
    inliers: np.ndarray  # bool mask over the correspondences
    sigma_px: float  # the keypoints' pixel noise estimated from the inliers
    scene_depth: float = 0.0  # median depth of the inliers in the query camera (metric fits)


def _skew(v: np.ndarray) -> np.ndarray:
    """(n, 3) -> (n, 3, 3) cross-product matrices."""
    v = np.atleast_2d(v)
    S = np.zeros((len(v), 3, 3))
    S[:, 0, 1], S[:, 0, 2], S[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    S[:, 1, 0], S[:, 2, 0], S[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    return S


def _exp(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def _floor(noise: PoseNoise, depth: float | None) -> np.ndarray:
    """The model-error floor in (dt, dw) of the query camera (isotropic, so frame-free); without
    a depth (monocular) the translation part is the direction's, in radians."""
    if depth is None:
        rot, tr = math.radians(noise.monocular_floor_rotation_deg), math.radians(noise.monocular_floor_direction_deg)
    else:
        rot, tr = math.radians(noise.floor_rotation_deg), noise.floor_translation * depth
    return np.diag([tr * tr] * 3 + [rot * rot] * 3)


# ---------------------------------------------------------------- metric: PnP on depth
def pnp_pose(points: np.ndarray, xq: np.ndarray, focal: float, threshold_px: float, confidence: float,
             noise: PoseNoise, min_inliers: int = 6) -> PoseFit | None:
    """The pose of the camera that saw 3-D `points` (n, 3, metres, in the keyframe camera) at
    normalised image positions `xq` (n, 2) of the query camera: x_q = R x_m + t."""
    P = np.ascontiguousarray(points, np.float64).reshape(-1, 3)
    x = np.ascontiguousarray(xq, np.float64).reshape(-1, 2)
    if len(P) < max(min_inliers, 4):
        return None
    tau = threshold_px / focal
    ok, rvec, tvec, idx = cv2.solvePnPRansac(P, x, np.eye(3), None, iterationsCount=1000, reprojectionError=tau,
                                             confidence=confidence, flags=cv2.SOLVEPNP_SQPNP)
    if not ok or idx is None or len(idx) < min_inliers:
        return None
    idx = idx.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(P[idx], x[idx], np.eye(3), None, rvec, tvec)
    R, t = _exp(rvec), tvec.ravel()
    depth_sigma = noise.depth_noise_1m * P[:, 2] ** 2
    inl = np.zeros(len(P), bool)
    inl[idx] = True
    # Alternate: refit on the inliers (weighted by the noise estimate), take every correspondence
    # within the cut, estimate the noise from them. Once the noise is known the cut widens to
    # CUT_SIGMAS of it (RANSAC's threshold may lie inside the noise: a tight cut biases both the
    # noise estimate and the fit), never below the RANSAC threshold.
    sigma, cut = tau / 2, tau
    for _ in range(4):
        R, t = _weighted_refine(P[inl], x[inl], depth_sigma[inl], R, t, sigma)
        r2, g2 = _pnp_residuals(P, x, depth_sigma, R, t)
        inl = (r2 < cut * cut) & ((P @ R.T + t)[:, 2] > 0)
        if inl.sum() < min_inliers:
            return None
        _, J, W = _pnp_terms(P[inl], x[inl], depth_sigma[inl], R, t, sigma)
        H = np.einsum("nai,nab,nbj->ij", J, W, J)
        lev = np.einsum("nai,ij,nbj,nab->n", J, np.linalg.pinv(H), J, W)  # trace of each point's hat block
        idx = np.nonzero(inl)[0]
        inl[idx[lev > LEVERAGE * 6 / len(idx)]] = False
        if inl.sum() < min_inliers:
            return None
        sigma = max(noise_scale(r2[inl], g2[inl] / 2, cut, 2, 6), MIN_SIGMA_PX / focal)
        used, cut = cut, max(tau, CUT_SIGMAS[2] * sigma)
    R, t = _weighted_refine(P[inl], x[inl], depth_sigma[inl], R, t, sigma)
    r2, g2 = _pnp_residuals(P, x, depth_sigma, R, t)
    cut = used  # the cut the final set was taken with
    _, J, W = _pnp_terms(P[inl], x[inl], depth_sigma[inl], R, t, sigma)
    Pk, c = truncation(np.sqrt(sigma * sigma + g2[inl] / 2), cut, 2)
    info = np.einsum("n,nai,nab,nbj->ij", c / Pk, J, W, J)
    cov = np.linalg.inv(info)
    depth = float(np.median((P[inl] @ R.T + t)[:, 2]))
    cov = cov + _floor(noise, depth)
    sigma *= focal
    return PoseFit(R, t, (cov + cov.T) / 2, inl, sigma, depth)


def _project(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised projections (n, 2) and their Jacobians (n, 2, 3)."""
    z = X[:, 2]
    u = X[:, :2] / z[:, None]
    dp = np.zeros((len(X), 2, 3))
    dp[:, 0, 0] = dp[:, 1, 1] = 1 / z
    dp[:, 0, 2] = -X[:, 0] / z**2
    dp[:, 1, 2] = -X[:, 1] / z**2
    return u, dp


def _pnp_terms(P: np.ndarray, x: np.ndarray, depth_sigma: np.ndarray, R: np.ndarray, t: np.ndarray,
               sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals (n, 2), Jacobians (n, 2, 6) and inverse covariances (n, 2, 2), normalised units."""
    Y = P @ R.T
    u, dp = _project(Y + t)
    J = np.concatenate([dp, -dp @ _skew(Y)], axis=2)
    ray = P / P[:, 2:3]  # d X_m / d depth
    g = (dp @ (ray @ R.T)[:, :, None])[:, :, 0] * depth_sigma[:, None]  # depth noise seen in the query image
    s2 = sigma * sigma
    W = (np.eye(2)[None] - g[:, :, None] * g[:, None, :] / (s2 + np.sum(g * g, axis=1))[:, None, None]) / s2
    return u - x, J, W


def _pnp_residuals(P: np.ndarray, x: np.ndarray, depth_sigma: np.ndarray, R: np.ndarray, t: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Squared residual norms and squared depth-noise terms (normalised units), every point."""
    X = P @ R.T + t
    z = np.where(np.abs(X[:, 2]) > 1e-9, X[:, 2], 1e-9)
    r = X[:, :2] / z[:, None] - x
    u, dp = _project(np.where(np.abs(X[:, 2:3]) > 1e-9, X, 1e-9))
    g = (dp @ ((P / P[:, 2:3]) @ R.T)[:, :, None])[:, :, 0] * depth_sigma[:, None]
    return np.sum(r * r, axis=1), np.sum(g * g, axis=1)


def _weighted_refine(P, x, depth_sigma, R, t, sigma, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton on the weighted reprojection errors (each keypoint's own 2x2 covariance)."""
    for _ in range(iterations):
        r, J, W = _pnp_terms(P, x, depth_sigma, R, t, sigma)
        H = np.einsum("nai,nab,nbj->ij", J, W, J)
        b = np.einsum("nai,nab,nb->i", J, W, r)
        try:
            d = -np.linalg.solve(H, b)
        except np.linalg.LinAlgError:
            break
        t, R = t + d[:3], _exp(d[3:]) @ R
        if np.linalg.norm(d) < 1e-10:
            break
    return R, t


# ---------------------------------------------------------------- monocular: the essential matrix
def _sampson(R: np.ndarray, t: np.ndarray, xk: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Sampson distances of homogeneous normalised correspondences (x_q^T E x_k = 0, E = [t]x R)."""
    E = _skew(t)[0] @ R
    ek, eq = xk @ E.T, xq @ E  # E x_k and E^T x_q per point
    num = np.sum(xq * ek, axis=1)
    return num / np.sqrt(ek[:, 0] ** 2 + ek[:, 1] ** 2 + eq[:, 0] ** 2 + eq[:, 1] ** 2 + 1e-18)


def _in_front(R: np.ndarray, t: np.ndarray, hk: np.ndarray, hq: np.ndarray) -> np.ndarray:
    """Correspondences whose triangulated point lies in front of both cameras (z_q x_q = z_k R x_k + t)."""
    a = hk @ R.T  # R x_k per point
    # least squares for (z_k, z_q) in z_k a - z_q x_q = -t
    aa, bb, ab = np.sum(a * a, 1), np.sum(hq * hq, 1), np.sum(a * hq, 1)
    at, bt = a @ t, hq @ t
    det = aa * bb - ab * ab
    safe = np.where(np.abs(det) > 1e-12, det, 1e-12)
    zk = (-at * bb + ab * bt) / safe
    zq = (aa * bt - ab * at) / safe
    return (zk > 0) & (zq > 0)


def _off_epipole(R: np.ndarray, t: np.ndarray, hk: np.ndarray, hq: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Correspondences away from the epipoles. Near an epipole the epipolar lines of all depths
    meet: a correspondence there says almost nothing about the pose and a wrong one fits any pose
    (its Sampson error is small whatever the pose, its derivative large)."""
    E = _skew(t)[0] @ R
    ek, eq = hk @ E.T, hq @ E
    g = np.sqrt(ek[:, 0] ** 2 + ek[:, 1] ** 2 + eq[:, 0] ** 2 + eq[:, 1] ** 2)
    return g > fraction * np.median(g)


def _direction_basis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.cross(t, [1.0, 0, 0] if abs(t[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    return a, np.cross(t, a)


def essential_pose(xk: np.ndarray, xq: np.ndarray, focal: float, threshold_px: float, confidence: float,
                   noise: PoseNoise, min_inliers: int = 8) -> PoseFit | None:
    """Rotation and translation direction from normalised correspondences (keyframe `xk`, query
    `xq`, (n, 2)), with the 6x6 covariance (unknown variance along the direction)."""
    xk = np.ascontiguousarray(xk, np.float64)
    xq = np.ascontiguousarray(xq, np.float64)
    eye = np.eye(3)
    E, mask = cv2.findEssentialMat(xk, xq, eye, method=cv2.USAC_MAGSAC, prob=confidence,
                                   threshold=threshold_px / focal)
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    _, R, t, mask = cv2.recoverPose(E, xk, xq, eye, mask=mask.copy())
    inl = mask.ravel() > 0
    if inl.sum() < min_inliers:
        return None
    t = t.ravel() / np.linalg.norm(t)
    hk, hq = np.c_[xk, np.ones(len(xk))], np.c_[xq, np.ones(len(xq))]
    tau = threshold_px / focal

    def params_to_pose(p: np.ndarray, R0: np.ndarray, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = _direction_basis(t0)
        tt = t0 + p[3] * a + p[4] * b
        return _exp(p[:3]) @ R0, tt / np.linalg.norm(tt)

    def jacobian(R0: np.ndarray, t0: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r0 = _sampson(R0, t0, hk[keep], hq[keep])
        eps = 1e-7
        cols = []
        for e in np.eye(5):
            rp = _sampson(*params_to_pose(e * eps, R0, t0), hk[keep], hq[keep])
            rm = _sampson(*params_to_pose(-e * eps, R0, t0), hk[keep], hq[keep])
            cols.append((rp - rm) / (2 * eps))
        return r0, np.stack(cols, axis=1)

    sigma, cut = tau / 2, tau
    for _ in range(4):  # refit on the inliers, take every correspondence within the cut, estimate the noise (as PnP)
        for _ in range(5):  # Gauss-Newton on the inliers' Sampson errors: linearise at the optimum
            r0, J = jacobian(R, t, inl)
            d = -np.linalg.lstsq(J, r0, rcond=None)[0]
            R, t = params_to_pose(d, R, t)
            if np.linalg.norm(d) < 1e-10:
                break
        inl = (np.abs(_sampson(R, t, hk, hq)) < cut) & _in_front(R, t, hk, hq) & _off_epipole(R, t, hk, hq)
        if inl.sum() < min_inliers:
            return None
        _, J = jacobian(R, t, inl)
        lev = np.einsum("ij,jk,ik->i", J, np.linalg.pinv(J.T @ J), J)
        idx = np.nonzero(inl)[0]
        inl[idx[lev > LEVERAGE * 5 / len(idx)]] = False
        if inl.sum() < min_inliers:
            return None
        r0, J = jacobian(R, t, inl)
        sigma = max(noise_scale(r0 * r0, np.zeros(len(r0)), cut, 1, 5), MIN_SIGMA_PX / focal)
        used, cut = cut, max(tau, CUT_SIGMAS[1] * sigma)
    for _ in range(5):
        r0, J = jacobian(R, t, inl)
        d = -np.linalg.lstsq(J, r0, rcond=None)[0]
        R, t = params_to_pose(d, R, t)
        if np.linalg.norm(d) < 1e-10:
            break
    r0, J = jacobian(R, t, inl)
    Pk, c = truncation(sigma, used, 1)
    try:
        cov5 = sigma * sigma * Pk / c * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return None
    a, b = _direction_basis(t)
    B = np.stack([a, b], axis=1)  # direction increments span a, b
    cov = np.zeros((6, 6))
    cov[:3, :3] = B @ cov5[3:, 3:] @ B.T
    cov[3:, 3:] = cov5[:3, :3]
    cov[:3, 3:] = B @ cov5[3:, :3]
    cov[3:, :3] = cov[:3, 3:].T
    floor = _floor(noise, None)
    floor[:3, :3] = B @ B.T * floor[0, 0]  # the direction floor lies across the direction
    cov = cov + floor
    cov[:3, :3] += UNKNOWN_SCALE_VARIANCE * np.outer(t, t)
    return PoseFit(R, t, (cov + cov.T) / 2, inl, sigma * focal)
