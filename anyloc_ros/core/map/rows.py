"""How keyframe content is laid out in the map's SQLite rows: encoding, decoding and the row
checksums (a damaged value decodes to None or NaN, or fails its row's checksum: never wrong data
silently taken as right; the caller logs it)."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xxhash

from ..geometry import Pose
from ..types import Keyframe, LocalFeatures

log = logging.getLogger(__name__)

# Column groups, each with its checksum (written in the same transaction, checked on every read
# that returns them): a keyframe's identity, pose and descriptor (what search results and the
# index are made of); its re-ranking patches and thumbnail (the id is hashed with them); its
# local features.
KEYFRAME_COLUMNS = "id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw"
CORE_COLUMNS = KEYFRAME_COLUMNS + ", descriptor"  # checksum
BLOB_COLUMNS = "patches, patches_shape, thumbnail"  # blobs_checksum
LOCAL_COLUMNS = "id, keypoints, descriptors, dim, image_h, image_w, camera_matrix, camera_mount, depths"  # checksum
ORIGIN_COLUMNS = "id, robot_id, map_id, remote_id"  # checksum: a keyframe of another robot (fleet, merged maps)


def row_checksum(values: Sequence[Any]) -> int:
    """xxh3-64 of a row's values as SQLite returns them (type-tagged, length-prefixed), as the
    signed 64-bit integer SQLite stores. Bit rot in any value, or a value moved to another row
    (the id is hashed too), changes it."""
    h = xxhash.xxh3_64()
    for v in values:
        if v is None:
            h.update(b"N")
        elif isinstance(v, int) and not isinstance(v, bool):
            h.update(b"I" + struct.pack("<q", v))
        elif isinstance(v, float):
            h.update(b"F" + struct.pack("<d", v))
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            h.update(b"S" + struct.pack("<Q", len(b)) + b)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            h.update(b"B" + struct.pack("<Q", len(v)) + bytes(v))
        else:
            raise TypeError(f"a map row holds no {type(v).__name__}")
    d = h.intdigest()
    return d - (1 << 64) if d >= 1 << 63 else d


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
    """A local_features row (LOCAL_COLUMNS) -> LocalFeatures; ValueError / TypeError when damaged."""
    kp = np.frombuffer(row[1], np.float32).reshape(-1, 2)
    desc = np.frombuffer(row[2], np.float16).reshape(len(kp), int(row[3]))
    K = None if row[6] is None else np.array(json.loads(row[6]), np.float64).reshape(3, 3)
    mount = None if row[7] is None else Pose(*map(float, json.loads(row[7])))
    depths = None if row[8] is None else np.frombuffer(row[8], np.float32).reshape(len(kp))
    return LocalFeatures(kp, desc, np.ones(len(kp), np.float32), (int(row[4]), int(row[5])), K, mount, depths)


def keyframe_row(kid: int, session: str, stamp_ns: int, frame_id: str, pose: Pose | None, descriptor: np.ndarray,
                 patches: np.ndarray | None, thumbnail: bytes | None) -> tuple[Any, ...]:
    """A keyframes row: CORE_COLUMNS, checksum, BLOB_COLUMNS, blobs_checksum (values as SQLite
    returns them, so the checksums verify on read)."""
    pv = tuple(float(v) for v in pose.as_tuple()) if pose is not None else (None,) * 7
    core = (int(kid), str(session), int(stamp_ns), str(frame_id), *pv,
            np.ascontiguousarray(descriptor, np.float32).tobytes())
    blobs = (None if patches is None else np.ascontiguousarray(patches, np.float16).tobytes(),
             None if patches is None else str(list(np.shape(patches))),
             None if thumbnail is None else bytes(thumbnail))
    return (*core, row_checksum(core), *blobs, row_checksum((int(kid), *blobs)))


def local_row(kid: int, lf: LocalFeatures) -> tuple[Any, ...]:
    """The local_features row of a keyframe (LOCAL_COLUMNS order), its checksum last."""
    K = None if lf.camera_matrix is None else json.dumps(np.asarray(lf.camera_matrix, float).ravel().tolist())
    mount = None if lf.camera_mount is None else json.dumps([float(v) for v in lf.camera_mount.as_tuple()])
    depths = None if lf.depths is None else np.ascontiguousarray(lf.depths, np.float32).tobytes()
    row = (int(kid), np.ascontiguousarray(lf.keypoints, np.float32).tobytes(),
           np.ascontiguousarray(lf.descriptors, np.float16).tobytes(), int(lf.descriptors.shape[1]),
           int(lf.image_size[0]), int(lf.image_size[1]), K, mount, depths)
    return (*row, row_checksum(row))
