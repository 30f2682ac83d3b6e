"""Relative poses of loop closures against motion capture, and the covariance model's floors.

TUM RGB-D fr1/xyz (../shared/data/tum_fr1_xyz: 40 Kinect v1 frames, registered depth, mocap
ground truth; Sturm et al., IROS 2012): every one of its 519 revisit pairs is verified as the
recognition node does (query = the later frame, keyframe = the earlier one) with the encoder's
local features (XFeat, 512 keypoints, depths sampled from the registered depth image, lens
distortion removed with the fr1 calibration):

* metric: PnP on the keyframe's depth (the RGB-D path);
* monocular: the same pairs without depth (essential matrix; rotation and direction only).

It reports the errors against the ground truth and how many lie inside the published 95%
ellipsoid, and fits the covariance model's floors (VerificationConfig.floor_*): the smallest
floor with which 95% of the rotation errors lie inside their 3-D 95% ellipsoid (chi-square, 3
degrees of freedom), and likewise for the translation (metric) and the direction (monocular,
2 degrees of freedom), each with the other floors at zero. A two-fold check fits on the pairs
whose keyframe is in the first half of the sequence and reports the coverage on the rest.

    .venv/bin/python bench/pose_covariance.py            # prints and records in bench/RESULTS.md
    .venv/bin/python bench/pose_covariance.py --no-record
"""

from __future__ import annotations

import dataclasses

import numpy as np
from _common import SHARED, run_recorded, table

from anyloc_ros.eval.poses import (
    CHI2_95,
    load_tum_rgbd,
    mahalanobis2,
    pair_errors,
    revisit_pairs,
    tum_rgbd_local_features,
)

DATA = SHARED / "tum_fr1_xyz"
TITLE = "Relative poses on TUM fr1/xyz revisit pairs: accuracy and covariance floors"


def floors_for(records: list[dict], kind: str, target: float = 0.95) -> float:
    """The smallest floor (per the model's units) putting `target` of the errors of `kind`
    (rotation | translation | direction) inside their own 95% ellipsoid."""
    grid = {"rotation": np.radians(np.linspace(0, 3, 301)), "translation": np.linspace(0, 0.05, 501),
            "direction": np.radians(np.linspace(0, 20, 401))}[kind]
    for v in grid:
        if coverage(records, kind, v) >= target:
            return float(np.degrees(v)) if kind != "translation" else float(v)
    return float("nan")


def coverage(records: list[dict], kind: str, floor: float) -> float:
    inside = []
    for r in records:
        if kind == "rotation":
            e, C = r["e"][3:], r["cov"][3:, 3:] + np.eye(3) * floor**2
        elif kind == "translation":
            e, C = r["e"][:3], r["cov"][:3, :3] + np.eye(3) * (floor * r["depth"]) ** 2
        else:  # monocular direction: the 2 components across the direction
            B = r["across"]
            e, C = B.T @ r["e"][:3], B.T @ r["cov"][:3, :3] @ B + np.eye(2) * floor**2
        inside.append(mahalanobis2(e, C) <= CHI2_95[len(e)])
    return float(np.mean(inside))


def measure() -> str:
    from anyloc_ros.core.config.recognition import VerificationConfig

    frames, camera = load_tum_rgbd(DATA)
    feats = tum_rgbd_local_features(frames, camera, SHARED / "weights" / "xfeat.onnx")
    pairs = revisit_pairs(DATA)
    defaults = VerificationConfig()
    no_floor = dataclasses.replace(defaults, floor_rotation_deg=0.0, floor_translation=0.0,
                                   monocular_floor_rotation_deg=0.0, monocular_floor_direction_deg=0.0,
                                   max_distance_m=0.0)
    rows, fitted = [], {}
    for mode in ("metric", "monocular"):
        use = feats if mode == "metric" else [dataclasses.replace(f, depths=None) for f in feats]
        fit_only = pair_errors(frames, use, pairs, no_floor)
        published = pair_errors(frames, use, pairs, defaults)
        recs = [r for r in fit_only if r is not None]
        first = [r for r in recs if r["i"] < len(frames) // 2]
        rest = [r for r in recs if r["i"] >= len(frames) // 2]
        kinds = ("rotation", "translation") if mode == "metric" else ("rotation", "direction")
        for kind in kinds:
            fitted[(mode, kind)] = floors_for(recs, kind)
        pub = [r for r in published if r is not None]
        t_err = np.array([np.linalg.norm(r["e"][:3]) for r in pub])
        r_err = np.degrees([np.linalg.norm(r["e"][3:]) for r in pub])
        d_err = np.degrees([r["direction_error"] for r in pub])
        inside = np.mean([r["inside95"] for r in pub])
        nees = np.mean([r["nees"] for r in pub])
        split = [f"{k} {floors_for(first, k):.3g} -> {coverage(rest, k, _units(k, floors_for(first, k))):.2f}"
                 for k in kinds]
        rows.append([mode, f"{len(pub)}/{len(pairs)}", f"{np.median(t_err) * 100:.2f} / {np.percentile(t_err, 90) * 100:.2f}"
                     if mode == "metric" else "-", f"{np.median(r_err):.2f} / {np.percentile(r_err, 90):.2f}",
                     f"{np.median(d_err):.1f} / {np.percentile(d_err, 90):.1f}",
                     f"{np.mean([r['inside95'] for r in recs]):.2f}", f"{inside:.2f}", f"{nees:.1f}",
                     ", ".join(f"{k} {fitted[(mode, k)]:.3g}" for k in kinds), "; ".join(split)])
    headers = ["estimate", "pairs verified", "translation error cm median / p90", "rotation error deg median / p90",
               "direction error deg median / p90", "inside 95% (fit only)", "inside 95% (defaults)",
               "mean NEES (defaults)", "floors fitted (deg, m/m)", "2-fold: fit on first half -> coverage on rest"]
    text = table(headers, rows) + (
        f"\n\nDefaults used: floor_rotation_deg {defaults.floor_rotation_deg}, floor_translation "
        f"{defaults.floor_translation} m per m of depth, monocular_floor_rotation_deg "
        f"{defaults.monocular_floor_rotation_deg}, monocular_floor_direction_deg "
        f"{defaults.monocular_floor_direction_deg}, "
        f"depth_noise_1m {defaults.depth_noise_1m}, pnp_threshold_px {defaults.pnp_threshold_px}, "
        f"ransac_threshold_px {defaults.ransac_threshold_px}. 'inside 95%' is the share of pairs whose 6-D error "
        "(5-D monocular: rotation and the two components across the direction) lies inside the published 95% "
        "ellipsoid (chi-square 12.59 / 11.07); NEES its mean Mahalanobis square (6 / 5 for a consistent "
        "covariance). Ground truth: mocap poses interpolated to the colour stamps (poses_at_rgb.txt).")
    return text


def _units(kind: str, value: float) -> float:
    return value if kind == "translation" else float(np.radians(value))


if __name__ == "__main__":
    raise SystemExit(run_recorded(__doc__, TITLE, "python bench/pose_covariance.py", DATA, measure))
