"""Geometric verification (core/recognition/verification.py) on real images: TUM fr2/desk relative poses
against the ground truth, corridor candidates right and wrong."""

import cv2
import numpy as np
import pytest

from anyloc_ros.core.config.recognition import VerificationConfig
from anyloc_ros.core.encoding.images import load_image
from anyloc_ros.core.recognition.verification import UNKNOWN_SCALE_VARIANCE, LocalFeatures, mutual_matches, verify
from anyloc_ros.eval.poses import CHI2_95

from ..conftest import CORRIDOR, TUM_DESK, read_corridor_gt, require

pytestmark = pytest.mark.realdata

TUM_K = np.array([[520.9, 0.0, 325.1], [0.0, 521.0, 249.7], [0.0, 0.0, 1.0]])  # fr2 (TUM's calibration page)


@pytest.fixture(scope="module")
def extractor(xfeat_encoder):
    """The encoder's own keypoints (XFeat's heads, same network run as the descriptor): 512 per image."""
    assert xfeat_encoder.provides_keypoints
    return lambda rgb: xfeat_encoder.encode_frame(rgb, keypoints=512).local


def _rotation(q):
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _angle(R):
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def test_tum_relative_pose_against_ground_truth(extractor):
    """Frame pairs 0.4 s and more apart (7-23 cm of camera travel, 1-5 degrees of rotation):
    rotation and translation direction against the motion-capture ground truth."""
    require(TUM_DESK)
    frames = sorted((TUM_DESK / "rgb").glob("*.png"))
    gt = np.loadtxt(TUM_DESK / "groundtruth.txt", comments="#")

    def pose(f):
        g = gt[np.argmin(np.abs(gt[:, 0] - float(f.stem)))]
        return _rotation(g[4:8]), g[1:4]

    feats = [extractor(load_image(f)) for f in frames]
    rot_err, dir_err, sigma, inside = [], [], [], []
    for i in range(len(frames)):
        for j in range(i + 4, len(frames), 4):
            v = verify(feats[j], feats[i], TUM_K)  # query j, keyframe i
            assert v.verified and v.pose is not None, (i, j, v.inliers)
            (Ri, ti), (Rj, tj) = pose(frames[i]), pose(frames[j])
            R_gt, t_gt = Rj.T @ Ri, Rj.T @ (ti - tj)  # camera i -> camera j
            rot_err.append(_angle(v.pose.rotation.T @ R_gt))
            w = cv2.Rodrigues(v.pose.rotation @ R_gt.T)[0].ravel()  # error in the covariance's convention
            inside.append(w @ np.linalg.solve(v.pose.covariance[3:, 3:], w) <= CHI2_95[3])
            cos = float(v.pose.translation @ t_gt) / np.linalg.norm(t_gt)
            dir_err.append(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
            cov = v.pose.covariance
            assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
            assert cov[:3, :3] @ v.pose.translation @ v.pose.translation == pytest.approx(UNKNOWN_SCALE_VARIANCE,
                                                                                           rel=1e-3)
            assert not v.pose.scale_known
            sigma.append(np.degrees(np.sqrt(np.trace(cov[3:, 3:]))))
    print(f"TUM fr2/desk, {len(rot_err)} pairs: rotation error median {np.median(rot_err):.2f} deg "
          f"(max {max(rot_err):.2f}), translation direction median {np.median(dir_err):.1f} deg, "
          f"rotation sigma median {np.median(sigma):.3f} deg, inside the 95% ellipsoid {np.mean(inside):.2f}")
    # measured 2026-12-06: 40 pairs, median 0.48 deg (max 1.29), direction 3.2 deg, all inside
    assert np.median(rot_err) < 0.8 and max(rot_err) < 2.0
    assert np.median(dir_err) < 6.0
    # monocular floors fitted on fr1/xyz (Kinect v1, rolling shutter): this sharper camera's rotation
    # errors all lie inside; the fit's part makes each pair's covariance its own
    assert np.mean(inside) >= 0.95 and np.ptp(sigma) > 0


def test_corridor_wrong_candidates_are_rejected(extractor):
    """Fundamental-matrix verification (no intrinsics: a fisheye camera) of corridor queries
    against their true map place and against a place 20-90 frames away."""
    require(CORRIDOR)
    gt = read_corridor_gt()
    refs, queries = sorted((CORRIDOR / "ref").glob("*.jpg")), sorted((CORRIDOR / "query").glob("*.jpg"))
    rng = np.random.default_rng(0)
    cache = {}

    def feats(path):
        if path not in cache:
            cache[path] = extractor(load_image(path))
        return cache[path]

    right, wrong = [], []
    for q in range(0, 111, 3):
        true = sorted(gt[q])[len(gt[q]) // 2]
        far = int((q + rng.integers(20, 90)) % 111)
        right.append(verify(feats(queries[q]), feats(refs[true])))
        wrong.append(verify(feats(queries[q]), feats(refs[far])))
    accept_right = np.mean([v.verified for v in right])
    accept_wrong = np.mean([v.verified for v in wrong])
    print(f"corridor: right candidates verified {accept_right:.2f} (inliers median "
          f"{np.median([v.inliers for v in right]):.0f}), wrong ones {accept_wrong:.2f} (median "
          f"{np.median([v.inliers for v in wrong]):.0f}) at min_inliers {VerificationConfig().min_inliers}")
    assert accept_right >= 0.85 and accept_wrong <= 0.15
    # the default min_inliers sits between the two populations (config/recognition.py cites these)
    right_p10 = np.percentile([v.inliers for v in right], 10)
    wrong_p90, wrong_max = np.percentile([v.inliers for v in wrong], 90), max(v.inliers for v in wrong)
    print(f"inliers: right 10th percentile {right_p10:.0f}; wrong 90th percentile {wrong_p90:.0f}, max {wrong_max}")
    assert wrong_p90 < VerificationConfig().min_inliers <= right_p10


def test_mutual_matches_and_degenerate_input():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 16))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    perm = rng.permutation(50)
    ia, ib = mutual_matches(a, a[perm], min_cosine=0.99)
    assert len(ia) == 50 and np.array_equal(perm[ib], ia)
    empty = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 16), np.float16), np.zeros(0), (10, 10))
    v = verify(empty, empty, TUM_K)
    assert not v.verified and v.matches == 0 and v.pose is None


def test_metric_relative_poses_on_real_rgbd_against_motion_capture(tum_rgbd):
    """TUM fr1/xyz, all 519 revisit pairs (query = the later frame) with the encoder's keypoints,
    their depths and the fr1 calibration: PnP on the keyframe's depth gives metric poses
    (measured 2026-12-06: 431 verified; translation error median 1.24 cm, p90 2.32; rotation
    0.77 deg, p90 1.35; 0.97 inside the published 95% ellipsoid, mean NEES 3.9; bench/pose_covariance.py).
    Without depth the same pairs give monocular poses whose covariance holds as well (0.93)."""
    from anyloc_ros.eval.poses import pair_errors, summarise

    frames, _, feats, pairs = tum_rgbd
    metric = [r for r in pair_errors(frames, feats, pairs, VerificationConfig()) if r is not None]
    s = summarise(metric)
    print(f"fr1/xyz metric: {len(metric)} of {len(pairs)} verified, {s}")
    assert len(metric) >= 400 and all(r["dof"] == 6 for r in metric)
    assert s["translation_error_m_median"] <= 0.016 and s["translation_error_m_p90"] <= 0.03
    assert s["rotation_error_deg_median"] <= 1.0 and s["rotation_error_deg_p90"] <= 1.7
    assert s["inside_95_ellipsoid"] >= 0.9 and 2.0 <= s["nees_mean"] <= 8.0  # honest, not inflated to pass
    mono_feats = [LocalFeatures(f.keypoints, f.descriptors, f.scores, f.image_size, f.camera_matrix) for f in feats]
    mono = [r for r in pair_errors(frames, mono_feats, pairs[::3], VerificationConfig()) if r is not None]
    inside = np.mean([r["inside95"] for r in mono])
    print(f"fr1/xyz monocular: {len(mono)} of {len(pairs[::3])} verified, inside the 95% ellipsoid {inside:.2f}")
    assert len(mono) >= 150 and all(r["dof"] == 5 for r in mono) and inside >= 0.85


def test_metric_closures_refuse_far_places_and_inconsistent_depth(tum_rgbd):
    """A closure that puts the robots farther apart than max_distance_m is not a revisit, and one
    whose query depths disagree with the fitted pose is refused: both with their reason."""
    import dataclasses

    frames, _, feats, pairs = tum_rgbd
    near = VerificationConfig(max_distance_m=0.1)
    reasons = {}
    for i, j in pairs[::4]:
        v = verify(feats[j], feats[i], config=near)
        true = np.linalg.norm(frames[i].pose[:3, 3] - frames[j].pose[:3, 3])
        if v.verified:
            assert np.linalg.norm(v.pose.translation) <= 0.1 and true < 0.16
        reasons.setdefault(v.reason, []).append(true)
    assert len(reasons.get("distance", [])) >= 30 and min(reasons["distance"]) > 0.05
    i, j = pairs[0]
    q = feats[j]
    swollen = dataclasses.replace(q, depths=q.depths * 1.5)  # a depth camera off by half: the 3-D check catches it
    assert verify(q, feats[i]).verified
    v = verify(swollen, feats[i])
    assert not v.verified and v.reason == "depth" and v.method == "pnp"


def test_metric_edge_with_different_camera_mounts(tum_rgbd):
    """Two robots with their cameras mounted differently: the edge between the base frames is the
    camera edge carried through both mounts, right in metres against the ground truth."""
    import dataclasses

    from anyloc_ros.core.geometry import pose_from_rpy, pose_matrix

    frames, _, feats, pairs = tum_rgbd
    mq = pose_from_rpy(0.25, -0.05, 0.6, -np.pi / 2, 0.0, -np.pi / 2)  # forward-looking optical frame
    mm = pose_from_rpy(-0.4, 0.2, 1.1, -np.pi / 2, 0.1, -np.pi / 2 + 0.5)  # another robot, turned and higher
    errors = []
    for i, j in pairs[::10]:
        v = verify(dataclasses.replace(feats[j], camera_mount=mq), dataclasses.replace(feats[i], camera_mount=mm))
        if not v.verified:
            continue
        edge, cov = v.pose.in_base_frames()
        # base of query in base of match: M_m (cam_i^-1 cam_j) M_q^-1
        truth = pose_matrix(mm) @ np.linalg.inv(frames[i].pose) @ frames[j].pose @ np.linalg.inv(pose_matrix(mq))
        errors.append(np.linalg.norm(pose_matrix(edge)[:3, 3] - truth[:3, 3]))
    print(f"mounted: {len(errors)} edges, translation error median {np.median(errors) * 100:.2f} cm")
    assert len(errors) >= 40 and np.median(errors) < 0.03


def test_depth_on_the_query_side_only_gives_the_same_metric_pose(tum_rgbd):
    """A keyframe stored without depth (an older map, a colour-only robot) and an RGB-D query:
    PnP runs from the query's depths and the pose is inverted into the keyframe -> query
    convention, as right as the other way round."""
    import dataclasses

    frames, _, feats, pairs = tum_rgbd
    errors = []
    for i, j in pairs[::12]:
        v = verify(feats[j], dataclasses.replace(feats[i], depths=None))
        if not v.verified or v.method != "pnp":  # too few matches with depth: monocular, as without any
            continue
        assert v.pose.scale_known
        truth = np.linalg.inv(frames[j].pose) @ frames[i].pose
        errors.append(np.linalg.norm(v.pose.translation - truth[:3, 3]))
        cov = v.pose.covariance
        assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    print(f"query-side depth: {len(errors)} metric poses, translation error median {np.median(errors) * 100:.2f} cm")
    assert len(errors) >= 30 and np.median(errors) < 0.02
