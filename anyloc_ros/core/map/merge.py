"""Merging saved maps of several robots into one (`anyloc map merge A B OUT`): the offline
counterpart of the fleet link. Every keyframe keeps its robot, its session (as
`<robot_id>:<session>`), its id in the map it came from (its origin), pose, descriptor, patches,
thumbnail and local features; one already in OUT is not added twice, so merging again, or merging
a map that already took a peer's keyframes over DDS, adds only what is new. Maps of different
encoders are refused, naming the fields; a new OUT appears complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MapError
from ..types import EncoderSignature, PeerKeyframe
from .database import PlaceDatabase
from .store import owner_session_id

CHUNK = 256


@dataclass
class MergeReport:
    output: Path
    keyframes: int = 0  # added to OUT
    already_held: int = 0
    robots: dict[str, int] = field(default_factory=dict)  # robot id -> keyframes added


def robot_of(db: PlaceDatabase) -> str:
    """A map's robot: the mapping node's robot_id, recorded in the map; else named after the map."""
    return db.robot_id or f"map_{db.map_id[:8]}"


def merge_maps(sources: Sequence[str | Path], output: str | Path) -> MergeReport:
    srcs = [PlaceDatabase(p, follower=True) for p in sources]
    try:
        first = EncoderSignature(srcs[0].encoder_signature)
        for s in srcs[1:]:
            diffs = first.diff(s.encoder_signature, str(srcs[0].path), str(s.path))
            if diffs:
                raise MapError(f"maps of different encoders cannot be merged ({'; '.join(diffs)})")
        out_path = Path(output).expanduser()
        if PlaceDatabase.exists(out_path):
            with PlaceDatabase(out_path, first) as out:
                return _merge_into(srcs, out)
        if out_path.is_symlink():  # never renamed over, never written through
            raise MapError(f"{out_path} is a symbolic link: give the merged map a directory of its own")
        if out_path.exists() and any(out_path.iterdir()):
            raise MapError(f"{out_path} exists and is not a map: choose a new directory for the merged map")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.merging-", dir=out_path.parent))
        try:  # built aside, renamed into place: a new map appears complete or not at all
            with PlaceDatabase(tmp, first) as out:
                report = _merge_into(srcs, out)
            if out_path.exists():
                out_path.rmdir()  # an empty directory given as OUT
            os.rename(tmp, out_path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report.output = out_path
        return report
    finally:
        for s in srcs:
            s.close()


def _merge_into(srcs: list[PlaceDatabase], out: PlaceDatabase) -> MergeReport:
    report = MergeReport(out.path)
    for src in srcs:
        ids = [int(i) for i in src.ids()]
        for s in range(0, len(ids), CHUNK):
            part = ids[s:s + CHUNK]
            descs = src.descriptors(part)
            kfs, patches, thumbs, local = [], [], [], []
            for kid, d in zip(part, descs, strict=True):
                kf = src.get_or_none(kid)
                if kf is None:  # damaged: left out (quarantined in the source)
                    continue
                origin = src.origin(kid)
                if origin is not None:  # a peer's keyframe it held: its own robot and id
                    robot, map_id, remote = origin
                    session = owner_session_id(robot, kf.session)
                else:
                    robot, map_id, remote, session = robot_of(src), src.map_id, kid, kf.session
                kfs.append(PeerKeyframe(robot, map_id, session, remote, kf.stamp_ns, "", d, kf.pose, "", kf.frame_id))
                patches.append(src.patches(kid))
                thumbs.append(src.thumbnail(kid))
                local.append(src.local_features(kid))
            added = out.add_peer_keyframes(kfs, patches, thumbs, local)
            for kf, i in zip(kfs, added, strict=True):
                if i is None:
                    report.already_held += 1
                else:
                    report.keyframes += 1
                    report.robots[kf.robot_id] = report.robots.get(kf.robot_id, 0) + 1
    return report
