"""Relative poses against ground truth: errors, their Mahalanobis distance under the published
covariance, and the TUM RGB-D data they are measured on.

Errors follow the covariance's convention (core/recognition/relative_pose.py): for an estimate T and the
truth T*, e = (t − t*, log(R R*ᵀ)), so eᵀ Σ⁻¹ e is chi-square distributed (6 degrees of
freedom) when Σ is honest; a monocular estimate is scored on its rotation and the two
components of its direction error across the estimated direction (5 degrees of freedom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from ..core.camera import CameraModel
from ..core.encoding.depth import depth_in_metres
from ..core.encoding.encoder import finish_local_features
from ..core.encoding.images import load_image
from ..core.encoding.local_features import XFeatExtractor
from ..core.geometry import Pose, pose_matrix, rotation_matrix
from ..core.recognition.verification import verify
from ..core.types import LocalFeatures
from .datasets import DatasetError
from .plots import pose_errors

# chi-square 95% quantiles by degrees of freedom
CHI2_95 = {1: 3.8415, 2: 5.9915, 3: 7.8147, 5: 11.0705, 6: 12.5916}


def mahalanobis2(e: np.ndarray, cov: np.ndarray) -> float:
    try:
        return float(e @ np.linalg.solve(cov, e))
    except np.linalg.LinAlgError:
        return float("inf")


def pose_error(T: np.ndarray, T_true: np.ndarray) -> np.ndarray:
    """(6,) error (dt, dw) of a 4x4 estimate against the truth."""
    w = cv2.Rodrigues(T[:3, :3] @ T_true[:3, :3].T)[0].ravel()
    return np.r_[T[:3, 3] - T_true[:3, 3], w]


def transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def score(T: np.ndarray, cov: np.ndarray, T_true: np.ndarray, scale_known: bool) -> dict[str, Any]:
    """Errors of one relative pose and where they lie under its covariance."""
    e = pose_error(T, T_true)
    t, t_true = T[:3, 3], T_true[:3, 3]
    direction_error = math.acos(float(np.clip(t @ t_true / (np.linalg.norm(t) * np.linalg.norm(t_true) + 1e-12),
                                              -1, 1)))
    out = {"e": e, "translation_error": float(np.linalg.norm(e[:3])), "rotation_error": float(np.linalg.norm(e[3:])),
           "direction_error": direction_error}
    if scale_known:
        d2 = mahalanobis2(e, cov)
        dof = 6
    else:  # unit direction: its error across the estimated direction, with the rotation
        u = t / np.linalg.norm(t)
        a = np.cross(u, [1.0, 0, 0] if abs(u[0]) < 0.9 else [0, 1.0, 0])
        a /= np.linalg.norm(a)
        B = np.stack([a, np.cross(u, a)], axis=1)
        e5 = np.r_[B.T @ (u - t_true / np.linalg.norm(t_true)), e[3:]]
        J = np.zeros((5, 6))
        J[:2, :3], J[2:, 3:] = B.T, np.eye(3)
        d2 = mahalanobis2(e5, J @ cov @ J.T)
        out["e"] = np.r_[u - t_true / np.linalg.norm(t_true), e[3:]]
        out["across"] = B
        dof = 5
    out.update(nees=d2, dof=dof, inside95=bool(d2 <= CHI2_95[dof]))
    return out


def score_closures(closures: list[dict[str, Any]], truth: Any, plot: Path) -> dict[str, Any]:
    """Each closure's relative pose against the truth (match base -> query base), its errors and
    Mahalanobis distance under its covariance, written into the closure record; the summary; a plot."""
    scored = []
    for c in closures:
        a, b = truth.at(c["match_stamp_ns"]), truth.at(c["query_stamp_ns"])
        if a is None or b is None:
            continue
        T_true = np.linalg.inv(pose_matrix(a)) @ pose_matrix(b)
        c["true_distance_m"] = float(np.linalg.norm(T_true[:3, 3]))
        if c["relative_pose"] is None:
            continue
        cov = np.array(c["covariance"]).reshape(6, 6)
        s = score(pose_matrix(Pose(*c["relative_pose"])), cov, T_true, c["scale_known"])
        s["cov"] = cov
        c.update(translation_error_m=s["translation_error"], rotation_error_deg=float(np.degrees(s["rotation_error"])),
                 direction_error_deg=float(np.degrees(s["direction_error"])), mahalanobis2=s["nees"],
                 inside_95_ellipsoid=s["inside95"])
        scored.append(s)
    metric = [s for s in scored if s["dof"] == 6]
    out = summarise(metric or scored)
    out["metric"] = bool(metric)
    out["largest_true_distance_m"] = max((c.get("true_distance_m", 0.0) for c in closures), default=0.0)
    if scored:
        out["plot"] = str(pose_errors(metric or scored, plot))
    return out


def summarise(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Median / 90th percentile errors and the share inside the 95% ellipsoid."""
    if not scored:
        return {"closures_scored": 0}
    t = np.array([s["translation_error"] for s in scored])
    r = np.degrees([s["rotation_error"] for s in scored])
    d = np.degrees([s["direction_error"] for s in scored])
    return {"closures_scored": len(scored), "translation_error_m_median": float(np.median(t)),
            "translation_error_m_p90": float(np.percentile(t, 90)), "rotation_error_deg_median": float(np.median(r)),
            "rotation_error_deg_p90": float(np.percentile(r, 90)), "direction_error_deg_median": float(np.median(d)),
            "inside_95_ellipsoid": float(np.mean([s["inside95"] for s in scored])),
            "nees_mean": float(np.mean([s["nees"] for s in scored]))}


# ---------------------------------------------------------------- TUM RGB-D folders (shared/data/tum_fr1_xyz)
@dataclass
class RgbdFrame:
    stamp: float
    rgb: np.ndarray
    depth: np.ndarray  # metres, NaN = no reading
    pose: np.ndarray  # 4x4 camera-to-world (ground truth)


def tum_camera(folder: str | Path) -> tuple[CameraModel, float]:
    """The camera.yaml of a TUM RGB-D folder: the model and the depth scale (value per metre)."""
    path = Path(folder) / "camera.yaml"
    try:
        c = yaml.safe_load(path.read_text(encoding="utf-8"))
        cam = CameraModel(np.array([[c["fx"], 0, c["cx"]], [0, c["fy"], c["cy"]], [0, 0, 1]], float),
                          np.array(c.get("distortion") or [], float), "plumb_bob", int(c["width"]), int(c["height"]))
        return cam, float(c["depth_scale"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: not a TUM camera file ({exc})") from exc


def load_tum_rgbd(folder: str | Path) -> tuple[list[RgbdFrame], CameraModel]:
    """Colour, registered depth and ground-truth pose of every frame in associations.txt."""
    folder = Path(folder)
    cam, scale = tum_camera(folder)
    poses = {}
    for line in (folder / "poses_at_rgb.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            v = [float(x) for x in line.split()]
            poses[round(v[0], 6)] = transform(rotation_matrix(v[4:8]), np.array(v[1:4]))
    frames = []
    for line in (folder / "associations.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _, t_rgb, rgb, _, depth, _ = line.split()[:6]
        raw = cv2.imread(str(folder / depth), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"cannot read {folder / depth}")
        frames.append(RgbdFrame(float(t_rgb), load_image(folder / rgb), depth_in_metres(raw, 1.0 / scale),
                                poses[round(float(t_rgb), 6)]))
    return frames, cam


def revisit_pairs(folder: str | Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b, *_ in (line.split() for line in
                                            (Path(folder) / "revisit_pairs.txt").read_text().splitlines()
                                            if line.strip() and not line.startswith("#"))]


def tum_rgbd_local_features(frames: list[RgbdFrame], camera: CameraModel, xfeat: str | Path,
                            top_k: int = 512) -> list[LocalFeatures]:
    """The encoder's local features of each frame: XFeat keypoints with depths, undistorted."""

    extractor = XFeatExtractor(xfeat, device="cpu")
    return [finish_local_features(extractor.extract([f.rgb], top_k)[0], camera, f.depth, None) for f in frames]


def pair_errors(frames: list[RgbdFrame], feats: list[LocalFeatures], pairs: list[tuple[int, int]],
                config: Any) -> list[dict[str, Any] | None]:
    """verify(query j, keyframe i) for each pair, scored against the ground truth (None where it
    did not verify)."""

    out: list[dict[str, Any] | None] = []
    for i, j in pairs:
        v = verify(feats[j], feats[i], config=config)
        if not v.verified or v.pose is None:
            out.append(None)
            continue
        T_true = np.linalg.inv(frames[j].pose) @ frames[i].pose  # keyframe camera -> query camera
        s = score(transform(v.pose.rotation, v.pose.translation), v.pose.covariance, T_true, v.pose.scale_known)
        s.update(i=i, j=j, inliers=v.inliers, cov=v.pose.covariance, depth=v.pose.scene_depth)
        out.append(s)
    return out
