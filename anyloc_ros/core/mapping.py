"""Mapper: the one keyframe rule every front end uses (mapping node, offline replay, benchmarks).

    mapper = Mapper(db, KeyframeGateConfig())
    kid, reason = mapper.offer(descriptor, stamp_ns, frame_id, pose, patches, thumbnail)

A frame is validated first (a bad descriptor is refused with an error, never silently
skipped), then the keyframe gate decides, then the keyframe is added to the map (durable when
`offer` returns) and only then does the gate take it as its new reference. A failed write
(disk full, read-only) raises `MapError` and leaves the gate as it was, so the next frame is
offered again once the map can be written.
"""

from __future__ import annotations

import numpy as np

from .database import PlaceDatabase
from .geometry import Pose
from .loop_closure import KeyframeGate, KeyframeGateConfig


class Mapper:
    def __init__(self, db: PlaceDatabase, gate: KeyframeGateConfig | None = None) -> None:
        self.db = db
        self.gate = KeyframeGate(gate)

    def offer(self, descriptor: np.ndarray, stamp_ns: int, frame_id: str = "", pose: Pose | None = None,
              patches: np.ndarray | None = None, thumbnail: bytes | None = None) -> tuple[int | None, str]:
        """(keyframe id, why) when the frame became a keyframe, else (None, "skipped")."""
        self.db.validate_descriptor(descriptor)  # bad input is refused, not skipped
        reason = self.gate.check(stamp_ns, pose, descriptor)
        if reason is None:
            return None, "skipped"
        kid = self.db.add(descriptor, stamp_ns, frame_id, pose, patches=patches, thumbnail=thumbnail)
        self.gate.accept(stamp_ns, pose, descriptor)
        return kid, reason

    def new_session(self, session_id: str | None = None) -> str:
        sid = self.db.new_session(session_id)
        self.gate.reset()
        return sid
