"""Mapper: the one keyframe rule every front end uses (mapping node, offline replay, benchmarks).

Several cameras map into one map: each camera (the image's frame_id) has its own keyframe
gate, so a rear camera's frame at the same pose still becomes a keyframe.

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
from .types import LocalFeatures


class Mapper:
    def __init__(self, db: PlaceDatabase, gate: KeyframeGateConfig | None = None) -> None:
        self.db = db
        self.gate_config = gate or KeyframeGateConfig()
        self.gates: dict[str, KeyframeGate] = {}
        self.last_clock_jump = ""

    def gate(self, camera: str = "") -> KeyframeGate:
        if camera not in self.gates:
            self.gates[camera] = KeyframeGate(self.gate_config)
        return self.gates[camera]

    @property
    def clock_jumps(self) -> int:
        """Clock jumps the gates re-anchored on, all cameras (the newest described in last_clock_jump)."""
        return sum(g.clock_jumps for g in self.gates.values())

    def offer(self, descriptor: np.ndarray, stamp_ns: int, frame_id: str = "", pose: Pose | None = None,
              patches: np.ndarray | None = None, thumbnail: bytes | None = None,
              local: LocalFeatures | None = None) -> tuple[int | None, str]:
        """(keyframe id, why) when the frame became a keyframe, else (None, "skipped")."""
        self.db.validate_descriptor(descriptor)  # bad input is refused, not skipped
        gate = self.gate(frame_id)
        jumps = gate.clock_jumps
        reason = gate.check(stamp_ns, pose, descriptor)
        if gate.clock_jumps != jumps:
            self.last_clock_jump = f"{frame_id or 'camera'}: {gate.last_clock_jump}"
        if reason is None:
            return None, "skipped"
        kid = self.db.add(descriptor, stamp_ns, frame_id, pose, patches=patches, thumbnail=thumbnail, local=local)
        gate.accept(stamp_ns, pose, descriptor)
        return kid, reason

    def new_session(self, session_id: str | None = None) -> str:
        sid = self.db.new_session(session_id)
        for gate in self.gates.values():
            gate.reset()
        return sid
