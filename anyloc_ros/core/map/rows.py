"""How keyframe content is laid out in the map's SQLite rows: encoding and decoding (a damaged
value decodes to None or NaN, never to wrong data silently taken as right: the caller logs it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..geometry import Pose
from ..types import Keyframe, LocalFeatures

log = logging.getLogger(__name__)

LOCAL_FEATURE_COLUMNS = "keypoints, descriptors, dim, image_h, image_w, camera_matrix, camera_mount"


def keyframe_from_row(row: Sequence[Any]) -> Keyframe | None:
    """A Keyframe from a row, or None when the row is damaged (values of the wrong type)."""
    try:
        pose = None
        if row[4] is not None:
            pose = Pose(*(float(v) for v in row[4:11]))
            if not pose.is_valid():
                pose = None
        return Keyframe(int(row[0]), str(row[1]), int(row[2]), str(row[3] or ""), pose)
    except (TypeError, ValueError):
        log.error("map keyframe row %r is damaged; ignored", row[0])
        return None


def decode_descriptor(blob: Any, out: np.ndarray) -> None:
    """Fill `out` from a descriptor BLOB; a damaged one (wrong type or size) leaves it NaN."""
    if isinstance(blob, bytes) and len(blob) == 4 * len(out):
        out[:] = np.frombuffer(blob, np.float32)


def from_json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def chunks(ids: list[int], n: int = 900) -> Iterable[list[int]]:  # SQLite's bound-parameter limit
    for s in range(0, len(ids), n):
        yield ids[s : s + n]


def patches_from_row(row: Sequence[Any]) -> np.ndarray:
    """(patches BLOB, shape text) -> float32 (n, d); ValueError / TypeError when damaged."""
    shape = [int(s) for s in str(row[1]).strip("[]").split(",")]
    return np.frombuffer(row[0], np.float16).reshape(shape).astype(np.float32)


def local_features_from_row(row: Sequence[Any]) -> LocalFeatures:
    """A local_features row (LOCAL_FEATURE_COLUMNS [, depths]) -> LocalFeatures; ValueError /
    TypeError when damaged."""
    kp = np.frombuffer(row[0], np.float32).reshape(-1, 2)
    desc = np.frombuffer(row[1], np.float16).reshape(len(kp), int(row[2]))
    K = None if row[5] is None else np.array(json.loads(row[5]), np.float64).reshape(3, 3)
    mount = None if row[6] is None else Pose(*map(float, json.loads(row[6])))
    depths = None if len(row) < 8 or row[7] is None else np.frombuffer(row[7], np.float32).reshape(len(kp))
    return LocalFeatures(kp, desc, np.ones(len(kp), np.float32), (int(row[3]), int(row[4])), K, mount, depths)


def local_row(kid: int, lf: LocalFeatures) -> tuple[Any, ...]:
    K = None if lf.camera_matrix is None else json.dumps(np.asarray(lf.camera_matrix, float).ravel().tolist())
    mount = None if lf.camera_mount is None else json.dumps(list(lf.camera_mount.as_tuple()))
    depths = None if lf.depths is None else np.ascontiguousarray(lf.depths, np.float32).tobytes()
    return (kid, np.ascontiguousarray(lf.keypoints, np.float32).tobytes(),
            np.ascontiguousarray(lf.descriptors, np.float16).tobytes(), int(lf.descriptors.shape[1]),
            int(lf.image_size[0]), int(lf.image_size[1]), K, mount, depths)
