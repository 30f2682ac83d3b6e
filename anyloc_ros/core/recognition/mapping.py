"""Keyframes: the gate that decides which frames become keyframes, and the Mapper that adds
them to the map (the one keyframe rule every front end uses: mapping node, offline replay,
benchmarks).

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

import math

import numpy as np

from ..config.recognition import KeyframeGateConfig
from ..geometry import Pose
from ..map.database import PlaceDatabase
from ..types import LocalFeatures


class KeyframeGate:
    """Decides which frames become keyframes.

    Clock jumps: a camera clock that jumps back (a reset, a bag loop, one frame stamped in the
    future before it) would make every later frame look older than the last keyframe, and
    time-based rules would never fire again. A frame more than `clock_jump_s` older than the
    previous frame re-anchors the gate's clock instead (the spatial rules keep working); each
    jump is counted in `clock_jumps` and described in `last_clock_jump` for the caller to log.
    """

    def __init__(self, config: KeyframeGateConfig | None = None) -> None:
        self.config = config or KeyframeGateConfig()
        self.config.validate()
        self.clock_jumps = 0
        self.last_clock_jump = ""
        self.reset()

    def reset(self) -> None:
        self._stamp_ns: int | None = None
        self._pose: Pose | None = None
        self._descriptor: np.ndarray | None = None
        self._seen_ns: int | None = None

    def _watch_clock(self, stamp_ns: int) -> None:
        newest = self._seen_ns  # the newest stamp seen since the last jump
        if newest is not None and (newest - stamp_ns) * 1e-9 > self.config.clock_jump_s:
            self.clock_jumps += 1
            self.last_clock_jump = (f"clock jumped back {(newest - stamp_ns) * 1e-9:.1f} s (frame stamp "
                                    f"{stamp_ns * 1e-9:.3f} s after {newest * 1e-9:.3f} s); keyframe timing re-anchored")
            newest = None
            if self._stamp_ns is not None and self._stamp_ns > stamp_ns:
                self._stamp_ns = stamp_ns  # time-based rules restart from here; poses still decide
        self._seen_ns = stamp_ns if newest is None else max(newest, stamp_ns)

    def check(self, stamp_ns: int, pose: Pose | None = None, descriptor: np.ndarray | None = None) -> str | None:
        """The reason this frame should become a keyframe, or None."""
        c = self.config
        self._watch_clock(stamp_ns)
        if self._stamp_ns is None:
            return "first"
        dt = (stamp_ns - self._stamp_ns) * 1e-9
        if dt < c.min_interval_s:
            return None
        if pose is not None and self._pose is None:
            return "pose"  # first keyframe with a pose after keyframes without one
        if pose is not None and self._pose is not None:
            if pose.distance_to(self._pose) >= c.min_distance_m:
                return "moved"
            if math.degrees(pose.angle_to(self._pose)) >= c.min_rotation_deg:
                return "rotated"
            if c.max_interval_s > 0 and dt >= c.max_interval_s:
                return "interval"
        elif dt >= c.no_pose_interval_s:
            return "interval"
        if c.novelty_threshold > 0 and descriptor is not None and self._descriptor is not None:
            if float(np.dot(descriptor, self._descriptor)) < c.novelty_threshold:
                return "novel"
        return None

    def accept(self, stamp_ns: int, pose: Pose | None = None, descriptor: np.ndarray | None = None) -> None:
        """Record that this frame became a keyframe."""
        self._stamp_ns = stamp_ns
        self._pose = pose if pose is not None else self._pose
        self._descriptor = None if descriptor is None else np.asarray(descriptor, np.float32)

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
