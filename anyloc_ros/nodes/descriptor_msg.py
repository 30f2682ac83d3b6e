"""anyloc_ros/PlaceDescriptor <-> DescriptorFrame: the one place that encodes and decodes it."""

from __future__ import annotations

import array
from typing import Any

import numpy as np
from rclpy.node import Node

from ..core.types import DescriptorFrame
from .conversions import stamp_to_ns
from .diagnostics import RateStats, log_error


def float32_array(x: np.ndarray) -> array.array:
    """numpy -> array('f'), the fast way to fill a float32[] message field."""
    a = array.array("f")
    a.frombytes(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return a


def _as_float32(field_value: Any) -> np.ndarray:
    if isinstance(field_value, array.array):
        return np.frombuffer(field_value, dtype=np.float32).copy()
    return np.asarray(field_value, dtype=np.float32)


def frame_to_msg(frame: DescriptorFrame, header: Any) -> Any:
    from ..msg import PlaceDescriptor

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
    return m


def frame_from_msg(msg: Any) -> DescriptorFrame:
    """Raises ValueError for a message whose patch values do not fit its patch_dim."""
    d = _as_float32(msg.descriptor)
    patches = None
    if len(msg.patches) and msg.patch_dim:
        flat = _as_float32(msg.patches)
        if flat.size % int(msg.patch_dim):
            raise ValueError(f"{flat.size} patch values are not a multiple of patch_dim {msg.patch_dim}")
        patches = flat.reshape(-1, int(msg.patch_dim))
    thumb = bytes(msg.thumbnail.data) if len(msg.thumbnail.data) else None
    return DescriptorFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, int(msg.seq), d, msg.encoder_id,
                           patches, thumb, float(msg.encode_ms))


def accept_descriptor(node: Node, msg: Any, stats: RateStats, map_encoder_id: str) -> DescriptorFrame | None:
    """A PlaceDescriptor message as a frame, or None (logged, counted) when it is malformed or
    comes from another encoder than the map's (`map_encoder_id`, empty while no map is open)."""
    try:
        frame = frame_from_msg(msg)
    except (ValueError, TypeError) as exc:
        stats.inc("frames_rejected")
        log_error(node, f"descriptor rejected: {exc}")
        return None
    if map_encoder_id and msg.encoder_id != map_encoder_id:  # an empty id is no exception
        stats.inc("frames_rejected")
        log_error(node, f"descriptor from encoder {msg.encoder_id or '(none given)'} refused: the map was built "
                        f"with encoder {map_encoder_id}")
        return None
    return frame
