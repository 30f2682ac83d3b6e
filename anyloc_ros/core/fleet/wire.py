"""A keyframe on the fleet topic: what it carries, the compact descriptor and the checks a peer's
keyframe must pass before it may enter the map.

Swarm-SLAM sends float64 descriptors; here the unit descriptor travels as float16 by default
(half the bytes of float32, cosine error ~1e-4) or int8 with one scale per vector (a quarter);
bench/fleet.py measures what each costs in recall. Local features never travel with a keyframe:
a robot asks the owner for them when the keyframe becomes a loop-closure candidate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..config.nodes import check_robot_id, parse_peers
from ..errors import ConfigError, FeatureDimensionError, MapError
from ..map.store import peer_session_id, validate_session_id
from ..types import PeerKeyframe, unit_descriptor

if TYPE_CHECKING:
    from ..map.database import PlaceDatabase

__all__ = ["FORMATS", "PeerKeyframe", "check_peer_keyframe", "check_robot_id", "decode_descriptor",
           "encode_descriptor", "keyframes_as_sent", "parse_peers"]

FORMATS = ("float32", "float16", "int8")  # FleetKeyframe.descriptor_format codes 0, 1, 2


def encode_descriptor(d: np.ndarray, fmt: str) -> tuple[bytes, float]:
    """(bytes, scale) of a unit descriptor in `fmt`; scale is 1 except for int8 (max |value|)."""
    d = np.asarray(d, np.float32).reshape(-1)
    if fmt == "float32":
        return d.astype("<f4").tobytes(), 1.0
    if fmt == "float16":
        return d.astype("<f2").tobytes(), 1.0
    if fmt == "int8":
        scale = float(np.abs(d).max()) or 1.0
        return np.clip(np.rint(d / scale * 127.0), -127, 127).astype(np.int8).tobytes(), scale
    raise ConfigError(f"fleet descriptor format {fmt!r}: use one of {', '.join(FORMATS)}")


def decode_descriptor(data: bytes, fmt_code: int, dim: int, scale: float) -> np.ndarray:
    """The descriptor as unit float32, or ValueError naming what is wrong (size, format, values)."""
    if not 0 <= fmt_code < len(FORMATS):
        raise ValueError(f"unknown descriptor format {fmt_code}")
    fmt = FORMATS[fmt_code]
    width = {"float32": 4, "float16": 2, "int8": 1}[fmt]
    if len(data) != dim * width:
        raise ValueError(f"descriptor of {len(data)} bytes; the map holds {dim}-D descriptors ({dim * width} bytes "
                         f"as {fmt})")
    if fmt == "int8":
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"int8 descriptor scale {scale} is not a positive number")
        d = np.frombuffer(data, np.int8).astype(np.float32) * (scale / 127.0)
    else:
        d = np.frombuffer(data, "<f4" if fmt == "float32" else "<f2").astype(np.float32)
    try:
        return unit_descriptor(d, dim)
    except FeatureDimensionError as exc:
        raise ValueError(str(exc)) from exc


def check_peer_keyframe(kf: PeerKeyframe) -> None:
    """ValueError naming the first malformed field of a peer's keyframe (the gate counts it)."""
    check_robot_id(kf.robot_id)
    if not kf.map_id or len(kf.map_id) > 64:
        raise ValueError("map_id is empty or longer than 64 characters")
    if not kf.session or len(kf.session) > 100:
        raise ValueError("session is empty or longer than 100 characters")
    if kf.keyframe_id < 0 or kf.stamp_ns < 0:
        raise ValueError("negative keyframe id or stamp")
    if kf.pose is not None and not kf.pose.is_valid():
        raise ValueError("pose holds NaN or inf, or a quaternion that is not unit length")
    try:
        validate_session_id(peer_session_id(kf.robot_id, kf.session))
    except MapError as exc:
        raise ValueError(str(exc)) from exc


def keyframes_as_sent(src: PlaceDatabase, robot_id: str, fmt: str = "float16") -> list[PeerKeyframe]:
    """A map's own keyframes as a peer takes them from the fleet topic (each descriptor through
    `fmt`, no local features): what `anyloc replay --peer-bag` gives the second robot offline."""
    out = []
    code = FORMATS.index(fmt)
    for kid in src.own_ids():
        kf = src.get_or_none(kid)
        if kf is None:  # damaged: never sent
            continue
        data, scale = encode_descriptor(src.descriptors([kid])[0], fmt)
        out.append(PeerKeyframe(robot_id, src.map_id, kf.session, kid, kf.stamp_ns, src.encoder_signature.id,
                                decode_descriptor(data, code, src.dim, scale), kf.pose, "", kf.frame_id))
    return out
