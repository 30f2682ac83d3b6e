"""Geometric verification (core/verification.py) on real images: TUM fr2/desk relative poses
against the ground truth, corridor candidates right and wrong."""

import numpy as np
import pytest

from anyloc_ros.core.images import load_image
from anyloc_ros.core.verification import (
    UNKNOWN_SCALE_VARIANCE,
    LocalFeatures,
    VerificationConfig,
    mutual_matches,
    verify,
)

from .conftest import CORRIDOR, TUM_DESK, read_corridor_gt, require

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
    rot_err, dir_err, sigma = [], [], []
    for i in range(len(frames)):
        for j in range(i + 4, len(frames), 4):
            v = verify(feats[j], feats[i], TUM_K)  # query j, keyframe i
            assert v.verified and v.pose is not None, (i, j, v.inliers)
            (Ri, ti), (Rj, tj) = pose(frames[i]), pose(frames[j])
            R_gt, t_gt = Rj.T @ Ri, Rj.T @ (ti - tj)  # camera i -> camera j
            rot_err.append(_angle(v.pose.rotation.T @ R_gt))
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
          f"rotation sigma median {np.median(sigma):.3f} deg")
    assert np.median(rot_err) < 2.0 and max(rot_err) < 5.0
    assert np.median(dir_err) < 10.0
    # the covariance is of the right order: not a hand-set constant, not absurd
    assert 0.005 < np.median(sigma) < 2.0 and np.ptp(sigma) > 0


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
