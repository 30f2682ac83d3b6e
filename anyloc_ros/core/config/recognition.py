"""Recognition settings: the keyframe gate, the loop-closure filter, sequence matching and
geometric verification (their logic: core/recognition/). Each field is declared once with its
description and range (config/settings.py); the nodes read them as ROS parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from .settings import check_fields, setting


@dataclass
class KeyframeGateConfig:
    PREFIX: ClassVar[str] = "keyframe."
    min_distance_m: float = setting(0.5, "new keyframe after moving this far", 0.0, 1e6)
    min_rotation_deg: float = setting(15.0, "new keyframe after turning this much", 0.0, 360.0)
    max_interval_s: float = setting(0.0, "with poses: also a keyframe after this long (0 = off)", 0.0, 1e6)
    no_pose_interval_s: float = setting(1.0, "without poses: a keyframe at this interval", 0.0, 1e6)
    min_interval_s: float = setting(0.0, "never add keyframes faster than this", 0.0, 1e6)
    novelty_threshold: float = setting(0.0, "keyframe when similarity to the last one is below this (0 = off)",
                                       0.0, 1.0)
    clock_jump_s: float = setting(1.0, "a frame this much older than the previous one means the clock jumped "
                                  "back: keyframe timing is re-anchored (logged, counted)", 0.0, 1e9)

    def validate(self) -> None:
        check_fields(self)


@dataclass
class LoopClosureConfig:
    PREFIX: ClassVar[str] = "loop."
    top_k: int = setting(10, "map keyframes retrieved per query", 1, 1000, name="top_k")
    # corridor, xfeat_vlad: true revisits' top-1 similarity 5th percentile 0.199, median 0.305;
    # places never visited before reach 0.2 in 31% of frames (test_loop_closure.py)
    min_score: float = setting(0.2, "cosine similarity the best candidate must reach", -1.0, 1.0)
    exclude_recent_count: int = setting(50, "the newest N keyframes of the current session are never candidates",
                                        0, 1_000_000)
    exclude_recent_s: float = setting(30.0, "keyframes of the current session younger than this are never "
                                      "candidates", 0.0, 1e6)
    exclude_travelled_m: float = setting(0.0, "with poses: keyframes less than this much travel ago are excluded",
                                         0.0, 1e6)
    consistency: int = setting(3, "consecutive agreeing queries needed to confirm a loop closure", 1, 1000)
    consistency_window: int = setting(3, "keyframes apart along a traversal (one camera's keyframes of a "
                                      "session) that count as the same map neighbourhood",
                                      0, 100000)
    consistency_radius_m: float = setting(0.0, "with poses: distance that counts as the same neighbourhood "
                                          "(0 = along the traversal)", 0.0, 1e6)
    rerank: bool = setting(True, "re-rank the top-k by mutual-nearest-neighbour patch matching (needs patches)")
    rerank_min_matches: int = setting(0, "mutual matches the best candidate must reach when re-ranking",
                                      0, 1_000_000)
    rerank_min_similarity: float = 0.0  # patch pairs below this cosine similarity never count as matches
    suppress_window: int = setting(10, "after a published closure, candidates within this many keyframes of "
                                   "its keyframe along its traversal are suppressed until the robot has added this many "
                                   "keyframes of its own: one closure per revisit (0 = off)", 0, 1_000_000)
    suppress_radius_m: float = setting(0.0, "with poses: suppress candidates within this distance of the last "
                                       "closure's keyframe instead (0 = along the traversal)", 0.0, 1e6)
    suppress_s: float = setting(30.0, "how long a closure suppresses its neighbourhood (0 = for the session)",
                                0.0, 1e9)
    suppress_travel_m: float = setting(0.0, "with poses: a closure also stops suppressing its neighbourhood once the "
                                       "robot has travelled this far since it (localisation without new keyframes; "
                                       "0 = off)", 0.0, 1e6)

    def validate(self) -> None:
        check_fields(self)


@dataclass
class SequenceConfig:
    PREFIX: ClassVar[str] = "sequence."
    enable: bool = setting(False, "rank places by sequence score over the last `sequence.length` frames "
                                  "(repeated routes); off = single-frame matching")
    length: int = setting(10, "query frames in a sequence (SeqSLAM's ds)", 1, 1000)
    min_velocity: float = setting(0.8, "slowest map keyframes per query frame searched", 0.01, 1000.0)
    max_velocity: float = setting(1.2, "fastest map keyframes per query frame searched", 0.01, 1000.0)
    velocity_steps: int = setting(5, "velocities tried between min and max", 1, 100)
    max_gap_s: float = setting(5.0, "a longer gap between query frames (or time going back) starts a new "
                                    "sequence", 0.0, 1e6)

    def validate(self) -> None:
        check_fields(self)
        if not self.min_velocity <= self.max_velocity:
            raise ConfigError(f"sequence velocities need 0 < min_velocity <= max_velocity, got "
                              f"{self.min_velocity} and {self.max_velocity}")

    def velocities(self) -> np.ndarray:
        return np.linspace(self.min_velocity, self.max_velocity, self.velocity_steps)


@dataclass
class PoseNoise:
    """The covariance model's parameters (VerificationConfig holds them as ROS parameters)."""

    floor_rotation_deg: float = 0.0  # metric fits
    floor_translation: float = 0.0  # metric fits: metres of error floor per metre of median scene depth
    monocular_floor_rotation_deg: float = 0.0
    monocular_floor_direction_deg: float = 0.0  # across the translation direction
    depth_noise_1m: float = 0.0  # depth noise (1 sigma, m) at 1 m; grows with the square of the depth


@dataclass
class VerificationConfig:
    PREFIX: ClassVar[str] = "verification."
    enable: bool = setting(True, "geometric verification of loop closures where both images have keypoints "
                           "(local features of the encoder); a closure that fails it is not published")
    required: bool = setting(False, "publish only verified closures: none when the encoder gives no keypoints")
    # corridor (160x120 fisheye), 512 XFeat keypoints, 1 px: inliers of true pairs 10th percentile 39,
    # of pairs 20-90 frames apart 90th percentile 27, max 35 (test_verification.py computes and checks them)
    min_inliers: int = setting(36, "RANSAC inliers a verified closure needs", 8, 100000)
    min_cosine: float = setting(0.82, "keypoint descriptor similarity a mutual match needs", -1.0, 1.0)
    ransac_threshold_px: float = setting(1.0, "RANSAC inlier threshold in pixels (two-view fits without depth)",
                                         0.01, 100.0)
    pnp_threshold_px: float = setting(2.0, "RANSAC reprojection threshold in pixels of PnP on depth", 0.01, 100.0)
    confidence: float = setting(0.999, "RANSAC confidence", 0.5, 0.999999)
    candidates: int = setting(3, "top matches of the confirmed neighbourhood tried in rank order; the first "
                              "that verifies is published", 1, 100)
    max_distance_m: float = setting(1.0, "a metric closure (depth) that puts the two robots farther apart than "
                                    "this is not a revisit: refused and counted (0 = no limit)", 0.0, 1e6)
    # TUM fr1/xyz true revisits: 5th percentile 0.70 (bench/pose_covariance.py)
    depth_agreement: float = setting(0.5, "with depth on both sides: share of PnP inliers whose depth must agree "
                                     "with the pose (within 3 sigma of the depth noise + 5%)", 0.0, 1.0)
    # The covariance model (core/recognition/relative_pose.py). The floors stand for what the pixel and depth
    # noise leave out on a real camera (calibration, colour-depth registration and timing, rolling
    # shutter); fitted on TUM fr1/xyz (Kinect v1) by bench/pose_covariance.py.
    depth_noise_1m: float = setting(0.0015, "depth noise (1 sigma, m) at 1 m, growing with the square of the depth "
                                    "(Kinect v1 ~0.0015, stereo cameras more)", 0.0, 1.0)
    floor_rotation_deg: float = setting(0.6, "rotation error floor of a metric relative pose (1 sigma, degrees)",
                                        0.0, 90.0)
    floor_translation: float = setting(0.01, "translation error floor of a metric relative pose (1 sigma) per "
                                       "metre of scene depth", 0.0, 10.0)
    monocular_floor_rotation_deg: float = setting(2.4, "rotation error floor of a monocular relative pose "
                                                  "(1 sigma, degrees)", 0.0, 90.0)
    monocular_floor_direction_deg: float = setting(16.0, "translation direction error floor of a monocular "
                                                   "relative pose (1 sigma, degrees)", 0.0, 90.0)

    def validate(self) -> None:
        check_fields(self)

    def noise(self) -> PoseNoise:
        return PoseNoise(self.floor_rotation_deg, self.floor_translation, self.monocular_floor_rotation_deg,
                         self.monocular_floor_direction_deg, self.depth_noise_1m)
