"""The relative pose of two views of a place, and a covariance that matches its real errors.

Two estimators, chosen by what the cameras give (core/verification.py decides):

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

from .geometry import Pose, pose_from_matrix, pose_matrix

UNKNOWN_SCALE_VARIANCE = 1e6  # m², along the translation direction when the scale is unknown
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
class PoseNoise:
    """The covariance model's parameters (VerificationConfig holds them as ROS parameters)."""

    floor_rotation_deg: float = 0.0  # metric fits
    floor_translation: float = 0.0  # metric fits: metres of error floor per metre of median scene depth
    monocular_floor_rotation_deg: float = 0.0
    monocular_floor_direction_deg: float = 0.0  # across the translation direction
    depth_noise_1m: float = 0.0  # depth noise (1 sigma, m) at 1 m; grows with the square of the depth


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


@dataclass
class PoseFit:
    rotation: np.ndarray
    translation: np.ndarray
    covariance: np.ndarray
    inliers: np.ndarray  # bool mask over the correspondences
    sigma_px: float  # the keypoints' pixel noise estimated from the inliers
    scene_depth: float = 0.0  # median depth of the inliers in the query camera (metric fits)


# ---------------------------------------------------------------- the noise behind truncated residuals
# Inliers are the correspondences whose residual is below the RANSAC threshold τ. Two effects
# follow, both derived for Gaussian errors of standard deviation σ per axis, cut at τ (q = τ²/2σ²
# in 2-D, b = τ/σ in 1-D):
#  * the kept residuals are smaller than the noise: E[r² | r < τ] = 2σ² c / P (2-D) or σ² c / P (1-D),
#    with P = P(r < τ) and c = 1 − e⁻q (1 + q) (2-D) or P − 2bφ(b) (1-D);
#  * the estimate from kept points only (a hard-redescending M-estimator) is noisier than a
#    least-squares fit on all of them: its covariance is σ² (Σ_kept (c/P) JᵀJ)⁻¹, not σ² (Σ JᵀJ)⁻¹
#    (sandwich formula; at τ = 2σ in 2-D the difference is a factor 1.46 in variance).
def truncation(sigma: np.ndarray | float, threshold: float, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, c) above for per-axis noise `sigma` (array or scalar) and the cut `threshold`."""
    s = np.maximum(np.asarray(sigma, np.float64), 1e-300)
    if dims == 2:
        q = np.minimum(threshold * threshold / (2 * s * s), 700.0)
        P = -np.expm1(-q)
        return P, P - q * np.exp(-q)
    b = threshold / s
    P = np.vectorize(math.erf)(b / math.sqrt(2))
    return P, P - 2 * b * np.exp(-b * b / 2) / math.sqrt(2 * math.pi)


def noise_scale(r2: np.ndarray, extra: np.ndarray, threshold: float, dims: int, params: int) -> float:
    """σ of the keypoints' noise per axis from kept residuals: Σ r² = Σ E[r² | r < τ] over points
    whose variance per axis is σ² + extra_i (e.g. depth noise seen in the image), with the fit's
    `params` parameters taken out of the residuals' degrees of freedom. Bisection in σ."""
    r2 = np.asarray(r2, np.float64)
    extra = np.asarray(extra, np.float64)
    m = len(r2)
    target = float(np.sum(r2)) * (dims * m) / max(dims * m - params, 1)

    def expected(sig: float) -> float:
        s2 = sig * sig + extra
        P, c = truncation(np.sqrt(s2), threshold, dims)
        return float(np.sum(dims * s2 * c / np.maximum(P, 1e-300)))

    lo, hi = threshold * 1e-4, threshold * 10
    if expected(hi) <= target:
        return hi
    if expected(lo) >= target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected(mid) < target else (lo, mid)
    return math.sqrt(lo * hi)


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


# ---------------------------------------------------------------- composing edges
def invert(R: np.ndarray, t: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse transform (x_m = Rᵀ x_q − Rᵀ t) and its covariance in the same convention:
    R' = exp(dw) R, t' = t + dt give dw_inv = −Rᵀ dw and dt_inv = −Rᵀ dt − Rᵀ [t]x dw."""
    J = np.zeros((6, 6))
    J[:3, :3] = -R.T
    J[:3, 3:] = -R.T @ _skew(t)[0]
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
        T[:3, :3] = _exp(p[3:]) @ rel.rotation
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
