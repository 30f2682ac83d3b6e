"""The relative pose estimators and their covariance (core/recognition/relative_pose.py) on synthetic scenes
with a known pose: the covariance is consistent (NEES inside the chi-square band) for metric
PnP on depth and for the monocular essential matrix, with pixel noise, depth noise, wrong
matches and cameras mounted differently on the two robots."""

import math

import cv2
import numpy as np
import pytest

from anyloc_ros.core.config.recognition import PoseNoise
from anyloc_ros.core.geometry import Pose, pose_from_rpy, pose_matrix
from anyloc_ros.core.recognition.edges import RelativePose, invert, relocalization
from anyloc_ros.core.recognition.relative_pose import essential_pose, pnp_pose
from anyloc_ros.core.recognition.residuals import noise_scale, truncation
from anyloc_ros.eval.poses import pose_error

F = 500.0  # focal length of the synthetic camera (pixels)
TRIALS = 300
# two-sided 95% band of the mean of TRIALS chi-square variables with `dof` degrees of freedom
# (Wilson-Hilferty: chi2(k) quantiles ~ k (1 - 2/9k + z sqrt(2/9k))^3)


def chi2_band(dof: int, trials: int) -> tuple[float, float]:
    k = dof * trials
    q = [k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3 / trials for z in (-1.959964, 1.959964)]
    return q[0], q[1]


def _exp(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, float).reshape(3, 1))[0]


def scene(rng: np.random.Generator, n: int = 150, outliers: float = 0.2, pixel_sigma: float = 1.0,
          depth_noise_1m: float = 0.0):
    """Points 1-4 m in front of the keyframe camera, a query camera 0.1-0.5 m away turned by a few
    degrees; noisy keypoints on both sides, noisy depths, a share of wrong matches."""
    z = rng.uniform(1.0, 4.0, n)
    u = rng.uniform(-0.6, 0.6, (n, 2))
    P = np.c_[u * z[:, None], z]
    R = _exp(rng.normal(0, 0.08, 3))
    d = rng.normal(size=3)
    t = d / np.linalg.norm(d) * rng.uniform(0.1, 0.5)
    X = P @ R.T + t
    xq = X[:, :2] / X[:, 2:3] + rng.normal(0, pixel_sigma / F, (n, 2))
    xk = u + rng.normal(0, pixel_sigma / F, (n, 2))
    zn = z + rng.normal(size=n) * depth_noise_1m * z**2
    k = int(outliers * n)
    xq[:k] = rng.uniform(-0.6, 0.6, (k, 2))  # wrong matches
    return xk, zn, xq, R, t


def test_truncated_noise_is_recovered():
    """Residuals kept below a threshold are smaller than the noise that made them: the estimate
    undoes the cut (2-D norms and 1-D values), and the sandwich factor P/c is what it should be."""
    rng = np.random.default_rng(0)
    for dims, tau in ((2, 2.0), (2, 1.5), (1, 2.0)):
        r = rng.normal(0, 1.0, (200_000, dims))
        r2 = np.sum(r * r, axis=1)
        kept = r2[r2 < tau * tau]
        assert noise_scale(kept, np.zeros(len(kept)), tau, dims, 0) == pytest.approx(1.0, rel=0.01)
        assert np.sqrt(kept.mean() / dims) < 0.9  # what a naive estimate would take as the noise
    P, c = truncation(1.0, 2.0, 2)  # a 2-D cut at 2 sigma: 86% kept, variance x1.46 (README)
    assert float(P) == pytest.approx(1 - math.exp(-2), rel=1e-9) and float(P / c) == pytest.approx(1.456, abs=0.002)


def test_metric_pose_covariance_is_consistent_with_mounts():
    """PnP on the keyframe's depth, propagated to the robots' base frames through two different
    camera mounts: the edge's translation is metric and right, and the NEES of the 6-DoF base-frame
    edge over 300 scenes lies in the chi-square 95% band (measured 2026-12-06: mean 5.74; 5.7-6.4 over
    seven seeds, average 6.1)."""
    rng = np.random.default_rng(1)
    noise = PoseNoise(depth_noise_1m=0.0015)
    mq = pose_from_rpy(0.2, 0.0, 0.5, -math.pi / 2, 0.0, -math.pi / 2)  # front camera, optical frame on a base
    mm = pose_from_rpy(-0.3, 0.1, 0.8, -math.pi / 2, 0.0, math.pi / 2 + 0.3)  # another robot's rear camera
    nees, t_err = [], []
    for _ in range(TRIALS):
        xk, zk, xq, R, t = scene(rng, depth_noise_1m=noise.depth_noise_1m)
        fit = pnp_pose(np.c_[xk, np.ones(len(xk))] * zk[:, None], xq, F, 2.0, 0.999, noise)
        assert fit is not None and fit.inliers[:30].sum() <= 2  # the wrong matches are left out
        rel = RelativePose(fit.rotation, fit.translation, fit.covariance, True, mq, mm)
        edge, cov = rel.in_base_frames()
        T_cam = np.eye(4)
        T_cam[:3, :3], T_cam[:3, 3] = R, t  # keyframe camera -> query camera
        truth = pose_matrix(mm) @ np.linalg.inv(T_cam) @ np.linalg.inv(pose_matrix(mq))  # query base in match base
        e = pose_error(pose_matrix(edge), truth)
        nees.append(e @ np.linalg.solve(cov, e))
        t_err.append(np.linalg.norm(e[:3]))
    lo, hi = chi2_band(6, TRIALS)
    print(f"metric NEES mean {np.mean(nees):.2f} (band {lo:.2f}-{hi:.2f}), translation error median "
          f"{np.median(t_err) * 1000:.1f} mm")
    assert lo <= np.mean(nees) <= hi
    assert np.median(t_err) < 0.01  # metres: the scale is known


def test_monocular_pose_covariance_is_consistent():
    """The essential matrix without depth: rotation and the translation direction (5 DoF) over
    300 scenes with 20% wrong matches: NEES in the chi-square 95% band (measured 2026-12-06: 5.12;
    5.10-5.66 over six seeds, average 5.24: the few wrong matches that fall on their epipolar
    line, about 0.1 per scene, make it a little optimistic; without wrong matches 5.1-5.2)."""
    rng = np.random.default_rng(11)
    nees = []
    for _ in range(TRIALS):
        xk, _, xq, R, t = scene(rng)
        fit = essential_pose(xk, xq, F, 2.0, 0.999, PoseNoise())
        assert fit is not None and not np.isnan(fit.covariance).any()
        u = fit.translation
        a = np.cross(u, [1.0, 0, 0])
        a /= np.linalg.norm(a)
        B = np.stack([a, np.cross(u, a)], axis=1)  # across the estimated direction
        e = np.r_[B.T @ (u - t / np.linalg.norm(t)), cv2.Rodrigues(fit.rotation @ R.T)[0].ravel()]
        J = np.zeros((5, 6))
        J[:2, :3], J[2:, 3:] = B.T, np.eye(3)
        nees.append(e @ np.linalg.solve(J @ fit.covariance @ J.T, e))
    lo, hi = chi2_band(5, TRIALS)
    print(f"monocular NEES mean {np.mean(nees):.2f} (band {lo:.2f}-{hi:.2f})")
    assert lo <= np.mean(nees) <= hi


def test_floors_add_the_model_error_and_scale_with_depth():
    rng = np.random.default_rng(3)
    xk, zk, xq, _, _ = scene(rng, outliers=0.0)
    P = np.c_[xk, np.ones(len(xk))] * zk[:, None]
    bare = pnp_pose(P, xq, F, 2.0, 0.999, PoseNoise())
    floored = pnp_pose(P, xq, F, 2.0, 0.999, PoseNoise(floor_rotation_deg=0.5, floor_translation=0.01))
    far = pnp_pose(P * 2, xq, F, 2.0, 0.999, PoseNoise(floor_rotation_deg=0.5, floor_translation=0.01))
    extra = floored.covariance - bare.covariance
    np.testing.assert_allclose(np.diag(extra)[3:], math.radians(0.5) ** 2, rtol=1e-6)
    np.testing.assert_allclose(np.diag(extra)[:3], (0.01 * floored.scene_depth) ** 2, rtol=1e-6)
    assert far.scene_depth == pytest.approx(2 * floored.scene_depth, rel=0.05)  # the floor follows the scene's depth


def test_inverse_and_relocalization_covariances():
    """The inverse edge's covariance by its closed form equals a numerical propagation; the
    relocalisation hint of a metric edge is the composition with the covariance rotated into the
    map frame, of a monocular one keeps the keyframe's position."""
    rng = np.random.default_rng(4)
    R, t = _exp([0.1, -0.2, 0.3]), np.array([0.3, -0.1, 0.5])
    A = rng.normal(size=(6, 6))
    cov = A @ A.T * 1e-4
    Ri, ti, ci = invert(R, t, cov)
    np.testing.assert_allclose(Ri @ R, np.eye(3), atol=1e-12)
    samples = rng.multivariate_normal(np.zeros(6), cov, 20000)
    errs = []
    for p in samples:
        Rp, tp = _exp(p[3:]) @ R, t + p[:3]
        errs.append(np.r_[-Rp.T @ tp - ti, cv2.Rodrigues(Rp.T @ Ri.T)[0].ravel()])
    np.testing.assert_allclose(np.cov(np.array(errs).T), ci, atol=0.04 * np.abs(ci).max())  # sampling error of 20k
    kf = pose_from_rpy(1.0, 2.0, 0.0, 0.0, 0.0, math.pi / 2)
    edge = Pose(1.0, 0.0, 0.0)
    edge_cov = np.diag([1e-4, 4e-4, 9e-4, 1e-6, 1e-6, 1e-6])
    pose, c = relocalization(kf, (edge, edge_cov), True, 1.0)
    assert (pose.x, pose.y) == pytest.approx((1.0, 3.0))  # one metre ahead of a keyframe facing +y
    np.testing.assert_allclose(np.diag(c)[:3], [4e-4, 1e-4, 9e-4], atol=1e-12)  # x and y swap under the yaw
    mono, cm = relocalization(kf, (edge, edge_cov), False, 2.0)
    assert (mono.x, mono.y) == (1.0, 2.0) and np.allclose(np.diag(cm)[:3], 2.0)
