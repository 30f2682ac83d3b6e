"""anyloc_ros/PlaceDescriptor <-> DescriptorFrame: the one place that encodes and decodes it."""

from __future__ import annotations

import array
import json
from typing import Any

import numpy as np
from rclpy.node import Node

from ..core.types import DescriptorFrame, EncoderSignature, LocalFeatures
from ..msg import PlaceDescriptor
from .conversions import pose_from_msg, pose_to_msg, stamp_to_ns
from .diagnostics import RateStats, log_error


def float32_array(x: np.ndarray) -> array.array:
    """numpy -> array('f'), the fast way to fill a float32[] message field."""
    a = array.array("f")
    a.frombytes(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return a


def half_array(x: np.ndarray) -> array.array:
    """numpy -> array('H') of IEEE half-precision bit patterns (a uint16[] field holding float16 values:
    ROS 2 has no float16 type; keypoint descriptors are kept at that precision, so float32 would
    only double the bytes)."""
    a = array.array("H")
    a.frombytes(np.ascontiguousarray(x, dtype=np.float16).tobytes())
    return a


def _from_half(field_value: Any) -> np.ndarray:
    raw = np.frombuffer(field_value, dtype=np.uint16) if isinstance(field_value, array.array) \
        else np.asarray(field_value, dtype=np.uint16)
    return raw.view(np.float16).copy()


def _as_float32(field_value: Any) -> np.ndarray:
    if isinstance(field_value, array.array):
        return np.frombuffer(field_value, dtype=np.float32).copy()
    return np.asarray(field_value, dtype=np.float32)


def frame_to_msg(frame: DescriptorFrame, header: Any) -> Any:

    m = PlaceDescriptor()
    m.header = header
    m.seq = frame.seq
    m.encoder_id = frame.encoder_id
    m.descriptor = float32_array(frame.descriptor)
    if frame.patches is not None:
        m.patches = float32_array(frame.patches)
        m.patch_dim = int(frame.patches.shape[1])
    if frame.thumbnail is not None:
        m.thumbnail.header = header
        m.thumbnail.format = "jpeg"
        m.thumbnail.data = frame.thumbnail
    m.encode_ms = float(frame.encode_ms)
    if frame.local is not None:
        local_features_to_msg(frame.local, m)
    return m


def local_features_to_msg(lf: LocalFeatures, m: Any) -> None:
    """Fill the local-feature fields (PlaceDescriptor, FleetFeatures: the same names)."""
    if not len(lf.keypoints):
        return
    m.keypoints = float32_array(lf.keypoints)
    m.keypoint_descriptors = half_array(lf.descriptors)
    m.keypoint_dim = int(lf.descriptors.shape[1])
    m.image_height, m.image_width = (int(v) for v in lf.image_size)
    if lf.camera_matrix is not None:
        m.camera_matrix = [float(v) for v in np.asarray(lf.camera_matrix).ravel()]
    if lf.camera_mount is not None:
        m.camera_mount = pose_to_msg(lf.camera_mount, type(m.camera_mount))
    if lf.depths is not None:
        m.keypoint_depths = float32_array(lf.depths)


def local_features_from_msg(msg: Any) -> LocalFeatures | None:
    """The local-feature fields of a PlaceDescriptor or FleetFeatures message (None when it has
    none); ValueError naming what is malformed."""
    if not len(msg.keypoints) or not msg.keypoint_dim:
        return None
    kp = _as_float32(msg.keypoints)
    desc = _from_half(msg.keypoint_descriptors)
    dim = int(msg.keypoint_dim)
    if kp.size % 2 or desc.size != kp.size // 2 * dim:
        raise ValueError(f"{kp.size // 2} keypoints do not fit {desc.size} keypoint descriptor values of "
                         f"keypoint_dim {dim}")
    if not (np.isfinite(kp).all() and np.isfinite(desc).all()):
        raise ValueError("keypoints or keypoint descriptors contain NaN or inf")
    K = None
    if len(msg.camera_matrix):
        K = np.asarray(msg.camera_matrix, np.float64)
        if K.size != 9 or not np.isfinite(K).all() or K[0] <= 0 or K[4] <= 0 or abs(np.linalg.det(K.reshape(3, 3))) < 1e-9:
            raise ValueError(f"camera_matrix must be 9 finite values of an invertible K, got {K.size} values")
    mount = pose_from_msg(msg.camera_mount)
    identity = mount.as_tuple() in ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), (0.0,) * 7)
    if not identity and not mount.is_valid():
        raise ValueError("camera_mount is not a valid pose (non-finite, or not a unit quaternion)")
    n = kp.size // 2
    depths = None
    if len(msg.keypoint_depths):
        depths = _as_float32(msg.keypoint_depths)
        if depths.size != n:
            raise ValueError(f"{depths.size} keypoint depths for {n} keypoints")
        if np.any(np.isinf(depths)) or np.nanmin(np.r_[depths, 1.0]) < 0:
            raise ValueError("keypoint depths must be positive metres or NaN (no depth)")
    return LocalFeatures(kp.reshape(n, 2), desc.reshape(n, dim), np.ones(n, np.float32),
                         (int(msg.image_height), int(msg.image_width)), K, None if identity else mount, depths)


def frame_from_msg(msg: Any) -> DescriptorFrame:
    """Raises ValueError for a message whose patch values do not fit its patch_dim, or whose
    keypoints, camera matrix or mount are malformed."""
    d = _as_float32(msg.descriptor)
    patches = None
    if len(msg.patches) and msg.patch_dim:
        flat = _as_float32(msg.patches)
        if flat.size % int(msg.patch_dim):
            raise ValueError(f"{flat.size} patch values are not a multiple of patch_dim {msg.patch_dim}")
        patches = flat.reshape(-1, int(msg.patch_dim))
    thumb = bytes(msg.thumbnail.data) if len(msg.thumbnail.data) else None
    return DescriptorFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, int(msg.seq), d, msg.encoder_id,
                           patches, thumb, float(msg.encode_ms), local_features_from_msg(msg))


class EncoderGate:
    """Which encoders' descriptors a node's map takes: its own encoder id, and any encoder whose
    full signature (latched on `encoder_info`) the map's signature accepts (EncoderSignature.diff:
    a map made before a signature field existed, or one recording another precision)."""

    def __init__(self) -> None:
        self.map_signature: EncoderSignature | None = None
        self.signatures: dict[str, EncoderSignature] = {}  # encoder id -> signature, from encoder_info

    @property
    def map_id(self) -> str:
        return self.map_signature.id if self.map_signature is not None else ""

    def learn(self, text: str) -> EncoderSignature | None:
        """An encoder_info message (the encoder's signature as JSON); None when malformed."""
        try:
            sig = EncoderSignature(json.loads(text))
        except (ValueError, TypeError):
            return None
        self.signatures[sig.id] = sig
        return sig

    def refusal(self, encoder_id: str) -> str | None:
        """Why descriptors of `encoder_id` may not enter the map (None: they may)."""
        if self.map_signature is None or encoder_id == self.map_id:
            return None
        theirs = self.signatures.get(encoder_id)
        if theirs is not None:
            diffs = self.map_signature.diff(theirs)
            if not diffs:
                return None
            return f"descriptor from encoder {encoder_id} refused: the map was built with another encoder (" + \
                "; ".join(diffs) + ")"
        return (f"descriptor from encoder {encoder_id or '(none given)'} refused: the map was built with encoder "
                f"{self.map_id}")


def accept_descriptor(node: Node, msg: Any, stats: RateStats, gate: EncoderGate) -> DescriptorFrame | None:
    """A PlaceDescriptor message as a frame, or None (logged, counted) when it is malformed or
    comes from an encoder the map does not take (`gate`; every encoder while no map is open)."""
    try:
        frame = frame_from_msg(msg)
    except (ValueError, TypeError) as exc:
        stats.inc("frames_rejected")
        log_error(node, f"descriptor rejected: {exc}")
        return None
    why = gate.refusal(msg.encoder_id)
    if why is not None:
        stats.inc("frames_rejected")
        log_error(node, why)
        return None
    return frame
