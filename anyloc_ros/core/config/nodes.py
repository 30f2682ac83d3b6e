"""The nodes' own settings groups (ROS parameters): map path, pose input, the encoder node's
image handling, camera and depth, the mapping and recognition nodes' behaviour, the pipeline's
mode. config/params.py says which node declares which group."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..camera import DISTORTION_MODELS, CameraModel, check_camera
from ..errors import ConfigError
from ..geometry import Pose, pose_from_rpy
from .settings import setting

DEFAULT_MAP_PATH = "~/.ros/anyloc/map"


@dataclass
class MapSettings:
    map_path: str = setting(DEFAULT_MAP_PATH, "map directory (created by the mapping node, read by the recognition "
                            "node)")


@dataclass
class PoseSettings:
    PREFIX: ClassVar[str] = "pose."
    source: str = setting("odom", "robot pose input: odom (nav_msgs/Odometry on 'odom'), pose (PoseStamped on "
                          "'pose') or none", choices=("odom", "pose", "none"), name="pose_source")
    max_age_s: float = setting(10.0, "how much pose history is buffered", 0.1, 3600.0)
    max_extrapolation_s: float = setting(0.05, "tolerated gap between an image stamp and the nearest pose",
                                         0.0, 10.0)


@dataclass
class EncoderNodeSettings:
    image_transport: str = setting("raw", "subscribe 'image' (raw) or 'image/compressed' (compressed)",
                                   choices=("raw", "compressed"))
    queue_size: int = setting(2, "frames waiting for the encoder; older ones are dropped", 1, 1000)
    qos_depth: int = setting(5, "subscription history depth (sensor-data QoS)", 1, 1000)
    qos_reliable: bool = setting(False, "reliable instead of best-effort image subscription")
    publish_patches: bool = setting(True, "publish compact patch features for mutual-NN re-ranking")
    # 24: corridor (XFeat) re-ranked Recall@1 0.910 and Recall@5 0.982 as with 32x32, AUC-PR 0.867 -> 0.882,
    # re-ranking 6 ms per frame instead of 16 (16x16: Recall@1 0.865). bench/rerank.py, RESULTS.md (#27).
    patch_grid: int = setting(24, "patch features are pooled to at most grid x grid cells", 1, 256)
    patch_dim: int = setting(64, "patch features are projected to this many dimensions", 1, 4096)
    publish_keypoints: int = setting(512, "keypoints (with descriptors) published for geometric verification, "
                                     "when the encoder has local features (XFeat: its heads, or beside DINOv2 with "
                                     "local_features_model); 0 = none", 0, 8192)
    publish_thumbnails: bool = setting(True, "attach a small JPEG of the image (keyframe previews, debug image)")
    thumbnail_size: int = setting(160, "longer side of the thumbnail in pixels", 16, 2048)
    max_image_pixels: int = setting(50_000_000, "larger images are refused (checked from the header, before "
                                    "decoding: decompression bombs)", 1, 1_000_000_000)


@dataclass
class DepthSettings:
    """A depth image registered to the colour image (RGB-D and stereo cameras), for metric loop closures."""

    PREFIX: ClassVar[str] = "depth."
    enable: bool = setting(False, "subscribe 'depth' (sensor_msgs/Image registered to the colour image: 16UC1 or "
                           "32FC1) and give each keypoint its depth: loop closures get a metric relative pose")
    slop_s: float = setting(0.02, "largest stamp difference of a colour and a depth image that are paired "
                            "(message_filters ApproximateTimeSynchronizer)", 0.0, 10.0)
    timeout_s: float = setting(1.0, "colour frames are encoded without depth while no depth image has been paired "
                               "for this long (a depth stream that stops never stops recognition)", 0.0, 1e6)
    scale: float = setting(0.001, "metres per unit of a 16UC1 depth image (REP 118: millimetres)", 1e-9, 1e3)
    min_m: float = setting(0.1, "depth readings below this are no reading", 0.0, 1e3)
    max_m: float = setting(10.0, "depth readings beyond this are no reading", 0.0, 1e6)

    def validate(self) -> None:
        if self.max_m <= self.min_m:
            raise ConfigError(f"depth.max_m ({self.max_m}) must exceed depth.min_m ({self.min_m})")


@dataclass
class CameraSettings:
    """The camera the encoder node serves: intrinsics and lens distortion (for relative poses of
    loop closures) and where it is mounted on the robot (a static transform base -> camera
    optical frame). Unset intrinsics come from `camera_info`."""

    PREFIX: ClassVar[str] = "camera."
    fx: float = setting(0.0, "focal length x in pixels (0 = from camera_info, else unknown: closures are verified "
                        "without a relative pose)", 0.0, 1e6)
    fy: float = setting(0.0, "focal length y in pixels", 0.0, 1e6)
    cx: float = setting(0.0, "principal point x in pixels", 0.0, 1e6)
    cy: float = setting(0.0, "principal point y in pixels", 0.0, 1e6)
    distortion_model: str = setting("plumb_bob", "lens distortion model of camera.distortion (as CameraInfo)",
                                    choices=DISTORTION_MODELS)
    distortion: list = setting([0.0, 0.0, 0.0, 0.0, 0.0], "lens distortion coefficients with camera.fx: k1 k2 p1 p2 "
                               "k3 [k4 k5 k6] (plumb_bob, rational_polynomial) or k1 k2 k3 k4 (equidistant); zeros "
                               "for a rectified image")
    mount_x: float = setting(0.0, "camera frame position in the base frame, x (m)", -1e3, 1e3)
    mount_y: float = setting(0.0, "camera frame position in the base frame, y (m)", -1e3, 1e3)
    mount_z: float = setting(0.0, "camera frame position in the base frame, z (m)", -1e3, 1e3)
    mount_roll: float = setting(0.0, "camera frame orientation in the base frame, roll (rad, fixed axes as tf2)",
                                -7.0, 7.0)
    mount_pitch: float = setting(0.0, "camera frame orientation in the base frame, pitch (rad)", -7.0, 7.0)
    mount_yaw: float = setting(0.0, "camera frame orientation in the base frame, yaw (rad)", -7.0, 7.0)

    def validate(self) -> None:
        given = [v > 0 for v in (self.fx, self.fy, self.cx, self.cy)]
        if any(given[:2]) and not all(given[:2]):
            raise ConfigError("camera.fx and camera.fy are set together (or both 0: intrinsics from camera_info)")
        if self.fx > 0:
            problems = check_camera(self.camera_matrix(), np.asarray(self.distortion, float), self.distortion_model)
            if problems:
                raise ConfigError("camera parameters: " + "; ".join(problems))

    def camera_matrix(self) -> np.ndarray | None:
        if self.fx <= 0:
            return None
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def model(self) -> CameraModel | None:
        """The camera of the parameters (None: camera.fx unset)."""
        K = self.camera_matrix()
        return None if K is None else CameraModel(K, np.asarray(self.distortion, float), self.distortion_model)

    def camera_for(self, height: int, width: int, info: CameraModel | None = None) -> CameraModel | None:
        """The camera of an image of this size: the parameters' when set, else the camera_info's
        scaled from the size it was calibrated at to the image (a driver may publish a resized stream)."""
        own = self.model()
        if own is not None or info is None:
            return own
        return info.for_image(height, width)

    def mount(self) -> Pose | None:
        v = (self.mount_x, self.mount_y, self.mount_z, self.mount_roll, self.mount_pitch, self.mount_yaw)
        return None if not any(v) else pose_from_rpy(*v)


@dataclass
class MappingSettings:
    session: str = setting("", "session id for this traversal; empty = a new generated id")
    new_session_on_start: bool = setting(True, "start a new session (traversal) when the node starts")
    durable: bool = setting(True, "each keyframe is fsynced before the next (off: durable after save_map)")
    store_patches: bool = setting(True, "store compact patch features with keyframes (mutual-NN re-ranking)")
    store_local_features: bool = setting(True, "store keypoints with keyframes (geometric verification of loop "
                                         "closures)")
    store_thumbnails: bool = setting(True, "store the descriptor's thumbnail JPEG with keyframes")
    require_pose: bool = setting(False, "drop frames for which no pose arrives within pose.wait_s")
    pose_wait_s: float = setting(0.3, "how long a frame waits for odometry covering its stamp", 0.0, 10.0,
                                 name="pose.wait_s")


@dataclass
class RecognitionSettings:
    descriptor_queue: int = setting(2, "descriptors waiting to be recognised; older ones are dropped (counted) so "
                                    "matches stay current", 1, 1000)
    exclude_current_session: bool = setting(False, "only match keyframes of earlier sessions (traversals) than "
                                            "the one being mapped")
    publish_relocalization: bool = setting(True, "publish a pose hint on relocalization_pose for published loop "
                                                 "closures (verified: the keyframe's pose composed with the relative "
                                                 "pose and its covariance; metric with depth, orientation only without)")
    relocalization_requires_loop: bool = setting(True, "relocalisation hints only from published loop closures "
                                                       "(false: also from every frame's best match, unverified)")
    relocalization_min_score: float = setting(0.0, "minimum similarity for a relocalisation hint", -1.0, 1.0)
    relocalization_covariance: float = setting(1.0, "position variance (m^2) of a hint where the fit gives none "
                                               "(monocular: unknown distance; unverified hints)", 0.0, 1e6)
    publish_markers: bool = setting(True, "publish loop-closure edges as a MarkerArray for rviz")
    publish_debug_image: bool = setting(False, "publish query | match thumbnails side by side on match_image")
    map_wait_s: float = setting(30.0, "how long to wait for the map to appear before giving up (0 = forever)",
                                0.0, 1e6)


ROBOT_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def check_robot_id(robot_id: str, what: str = "robot_id") -> str:
    """A robot id as ROS names allow it (it names sessions and, in launch files, namespaces)."""
    if not isinstance(robot_id, str) or not ROBOT_ID_RE.match(robot_id):
        raise ConfigError(f"{what} {robot_id!r} is not a robot id: 1-64 letters, digits and '_', starting with a "
                          "letter")
    return robot_id


def parse_peers(text: str) -> frozenset[str]:
    """The `fleet.peers` parameter: robot ids separated by commas or spaces; empty = any peer."""
    return frozenset(check_robot_id(p, "fleet.peers entry") for p in re.split(r"[,\s]+", text.strip()) if p)


@dataclass
class FleetSettings:
    """Several robots share one place memory over DDS (README "Fleet"; nodes/fleet.py)."""

    PREFIX: ClassVar[str] = "fleet."
    robot_id: str = setting("", "this robot's id: carried in loop closures (multi-robot back-ends), recorded in the "
                            "map, and the name of its keyframes on the fleet topic", name="robot_id")
    enable: bool = setting(False, "share keyframes with the fleet and take the peers' (needs robot_id)")
    topic: str = setting("/anyloc_fleet", "the fleet's topics: <topic>/keyframes, <topic>/requests, <topic>/features "
                         "(one set for the whole fleet: give it outside the robots' namespaces)")
    peers: str = setting("", "robot ids whose keyframes are taken, separated by commas (empty: any robot)")
    descriptor_format: str = setting("float16", "global descriptors on the fleet topic: float16 (half of float32, "
                                     "recall unchanged), int8 (a quarter) or float32 (bench/fleet.py)",
                                     choices=("float32", "float16", "int8"))
    max_bytes_per_s: float = setting(0.0, "bandwidth budget of this robot's keyframes on the fleet topic (bytes/s; "
                                     "0: unlimited); over it keyframes wait, none is dropped", 0.0, 1e12)
    max_feature_requests_per_s: float = setting(3.0, "local-feature requests to peers per second, bursts of 3 (a "
                                                "candidate's neighbourhood; each answer is one keyframe's keypoints, "
                                                "~70 KB with 512); 0: unlimited", 0.0, 1e6)
    feature_timeout_s: float = setting(2.0, "how long a peer candidate waits for its owner's local features", 0.01,
                                       600.0)
    history_depth: int = setting(100, "own keyframes DDS keeps for late joiners (transient local); older ones are "
                                 "sent on a catch-up request", 0, 100000)
    peer_queue: int = setting(500, "peer keyframes waiting to be stored, per peer (a flood drops its oldest, "
                              "counted; a catch-up fetches them again)", 1, 1_000_000)

    def validate(self) -> None:
        if self.enable and not self.robot_id:
            raise ConfigError("fleet.enable needs robot_id (this robot's id in the fleet)")
        if self.robot_id:
            check_robot_id(self.robot_id)
        parse_peers(self.peers)
        if not self.topic.startswith("/"):
            raise ConfigError(f"fleet.topic {self.topic!r} must be absolute (start with '/'): one topic for the "
                              "fleet, not one per robot namespace")


@dataclass
class PipelineSettings:
    mode: str = setting("full", "which nodes the one-process pipeline runs: full (map + recognise), mapping or "
                        "localization", choices=("full", "mapping", "localization"))
