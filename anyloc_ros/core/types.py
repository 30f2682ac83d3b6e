"""Small records shared across the core and the nodes: keyframes, matches, encoded frames and
the encoder signature."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FeatureDimensionError, MapError
from .geometry import Pose


def digest(data: bytes | np.ndarray, length: int = 16) -> str:
    """Short content hash (sha256, hex) of bytes or an array (as contiguous float32)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, dtype=np.float32).tobytes()
    return hashlib.sha256(data).hexdigest()[:length]


class EncoderSignature(dict):
    """What a descriptor is made of (backbone, layer, facet, aggregation, vocabulary and PCA
    hashes, dim, ...), as a JSON-able dict. Descriptors are comparable when `KEYS` agree; `id`
    names the whole signature on topics and in map records."""

    KEYS = ("backbone", "model", "layer", "facet", "aggregation", "vocabulary", "pca", "dim", "preprocess",
            "local_features")
    # Recorded since the map format gained them: a map with no value for one (made before, or by
    # a caller that does not know it) is not refused for it. `precision` is recorded but never enforced: fp16/bf16 and fp32
    # descriptors of one encoder agree to cosine >= 0.9999, and a map built on a GPU robot must
    # serve a CPU one. `local_features` names the network whose keypoint descriptors the map's
    # keyframes hold (verification matches them): another one is refused like another backbone.
    LATER_KEYS = ("preprocess", "local_features")

    @property
    def id(self) -> str:
        """Names what makes descriptors comparable (KEYS), not how they were computed: the
        precision is left out, so a map built on a GPU robot accepts a CPU robot's descriptors."""
        return hashlib.sha256(json.dumps({k: self.get(k) for k in self.KEYS}, sort_keys=True).encode()
                              ).hexdigest()[:12]

    @property
    def dim(self) -> int:
        return int(self["dim"])

    def diff(self, other: dict[str, Any], mine: str = "map", theirs: str = "encoder") -> list[str]:
        """The fields that make descriptors of `other` incomparable with these, described."""
        return [f"{k}: {mine} {self.get(k)!r} vs {theirs} {other.get(k)!r}" for k in self.KEYS
                if self.get(k) != other.get(k) and not (k in self.LATER_KEYS and self.get(k) is None)]

    @classmethod
    def checked(cls, sig: Any, what: str, hint: str = "") -> EncoderSignature:
        """`sig` as a signature: a mapping with the descriptor dimension 'dim' (a positive integer)."""
        if not isinstance(sig, dict):
            raise MapError(f"{what} is not a JSON object{hint}")
        dim = sig.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise MapError(f"{what} must include the descriptor dimension 'dim' (a positive integer), got "
                           f"{dim!r}{hint}")
        return cls(sig)


def unit_descriptor(d: np.ndarray, dim: int) -> np.ndarray:
    """A global descriptor as a unit float32 vector of `dim` values, or FeatureDimensionError
    (wrong dimension, NaN/inf, all zeros): the one check of a descriptor entering a map."""
    d = np.asarray(d, dtype=np.float32).reshape(-1)
    if d.shape[0] != dim:
        raise FeatureDimensionError(f"descriptor has {d.shape[0]} dimensions, the map holds {dim}-D descriptors")
    if not np.isfinite(d).all():
        raise FeatureDimensionError("descriptor contains NaN or inf")
    n = float(np.linalg.norm(d))
    if n == 0.0:
        raise FeatureDimensionError("descriptor is all zeros")
    return d / n


@dataclass
class Keyframe:
    id: int
    session: str
    stamp_ns: int
    frame_id: str = ""
    pose: Pose | None = None
    robot_id: str = ""  # another robot's keyframe (fleet): its robot id; "" for the map's own


@dataclass
class Match:
    """One search result: a map keyframe and its similarity to the query."""

    keyframe_id: int
    score: float
    session: str = ""
    stamp_ns: int = 0
    frame_id: str = ""
    pose: Pose | None = None
    rerank_score: float | None = None
    sequence_score: float | None = None  # mean similarity along the best sequence line (core/recognition/sequence.py)
    robot_id: str = ""  # another robot's keyframe (fleet): its pose is in that robot's odometry frame
    # its index along its traversal (session, camera; core/map/traversals.py): the map position that
    # id windows count in (-1: not read from a map)
    traversal_index: int = -1

    @property
    def frame_score(self) -> float:
        """This frame's own evidence for the place: the re-ranking score when re-ranked, else
        the descriptor similarity (PlaceMatch.scores)."""
        return self.rerank_score if self.rerank_score is not None else self.score

    @property
    def ranking_score(self) -> float:
        """What the match list is ranked by: the sequence score with sequence matching, else
        the frame's score."""
        return self.sequence_score if self.sequence_score is not None else self.frame_score


@dataclass
class LocalFeatures:
    """Keypoints of one image for geometric verification (core/recognition/verification.py): (n, 2) pixel
    positions (x, y) in the original image, (n, d) L2-normalised descriptors (float16), (n,)
    detection scores, the image size, the camera's 3x3 intrinsic matrix when known (the positions
    are then ideal pinhole pixels of it: lens distortion removed), where the camera is mounted on
    the robot (the camera frame's pose in the base frame; None = identity) and, from an RGB-D
    camera, each keypoint's depth in metres (NaN where it has none; None: no depth image)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]  # (height, width)
    camera_matrix: np.ndarray | None = None
    camera_mount: Pose | None = None
    depths: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.shape != (n, 2) or self.descriptors.ndim != 2 or len(self.descriptors) != n \
                or len(self.scores) != n or (self.depths is not None and np.shape(self.depths) != (n,)):
            raise ValueError(f"local features of inconsistent shapes: keypoints {self.keypoints.shape}, "
                             f"descriptors {self.descriptors.shape}, scores {self.scores.shape}, depths "
                             f"{None if self.depths is None else np.shape(self.depths)}")
        if self.camera_matrix is not None:
            self.camera_matrix = np.asarray(self.camera_matrix, np.float64).reshape(3, 3)
        if self.depths is not None:
            d = np.asarray(self.depths, np.float32)
            self.depths = np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan))

    @property
    def valid_depths(self) -> int:
        return 0 if self.depths is None else int(np.isfinite(self.depths).sum())


@dataclass
class MapStats:
    keyframes: int
    sessions: list[str]
    current_session: str
    dim: int
    index_type: str
    index_trained: bool
    encoder: dict[str, Any] = field(default_factory=dict)
    damaged: int = 0  # keyframes found damaged on disk (failed their checksum): quarantined
    peer_keyframes: int = 0  # keyframes of other robots (fleet, merged maps)
    robots: list[str] = field(default_factory=list)  # the other robots whose keyframes the map holds


@dataclass
class PeerKeyframe:
    """A keyframe of another robot before it enters this map (fleet link, map merging). (robot_id,
    map_id, keyframe_id) names it across the fleet; its pose is in the owner's odometry frame."""

    robot_id: str
    map_id: str
    session: str  # the owner's session id
    keyframe_id: int  # its id in the owner's map
    stamp_ns: int
    encoder_id: str
    descriptor: np.ndarray | None
    pose: Pose | None = None
    frame_id: str = ""  # the odometry frame of the pose
    camera: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return self.robot_id, self.map_id, self.keyframe_id


@dataclass
class DescriptorFrame:
    """One encoded image, as passed between encoder, mapping and recognition (in or across processes)."""

    stamp_ns: int
    frame_id: str
    seq: int
    descriptor: np.ndarray
    encoder_id: str = ""
    patches: np.ndarray | None = None
    thumbnail: bytes | None = None
    encode_ms: float = 0.0
    local: LocalFeatures | None = None  # keypoints for geometric verification
    received: float = field(default_factory=time.monotonic)
