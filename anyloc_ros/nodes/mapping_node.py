"""Mapping node: builds the place map during traversal.

Input: `descriptors` (anyloc_ros/PlaceDescriptor from the encoder node) plus the robot pose
from `odom` (nav_msgs/Odometry) or `pose` (PoseStamped), interpolated at each image stamp.
(To map from images directly, without descriptors crossing DDS, run `anyloc_pipeline`: the
same node fed in-process.) The keyframe gate decides which frames become keyframes; each is
durable in the map once added. A new map records the encoder signature that the encoder
node publishes on `encoder_info` (latched), so no second copy of the model is loaded here.

Each keyframe is acknowledged on `keyframes` (anyloc_ros/Keyframe) once it is durable. With
`fleet.enable` it is also shared on the fleet topic, and the peers' keyframes are stored in the map
as their sessions (nodes/fleet.py).
Services: `save_map` (anyloc_ros/SaveMap), `new_session` (NewSession), `get_map_info`
(GetMapInfo).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose as PoseMsg
from rclpy.node import Node
from std_msgs.msg import String

from ..core.config.map import IndexConfig
from ..core.config.nodes import FleetSettings, MappingSettings, MapSettings, PoseSettings
from ..core.config.recognition import KeyframeGateConfig
from ..core.errors import AnyLocError, MapError
from ..core.map.database import PlaceDatabase
from ..core.recognition.mapping import Mapper
from ..core.recognition.step import FrameStep
from ..core.types import DescriptorFrame
from ..msg import Keyframe, PlaceDescriptor
from ..srv import GetMapInfo, NewSession, SaveMap
from .conversions import ns_to_stamp, pose_to_msg
from .descriptor_msg import EncoderGate, accept_descriptor
from .diagnostics import Diagnostics, RateStats, log_error, log_throttled
from .parameters import declare, validate_map_path
from .pose_input import PoseInput
from .qos import latched_qos
from .spin import run_node


class MappingNode(Node):
    def __init__(self, name: str = "mapping_node", encoder_signature: dict[str, Any] | None = None,
                 subscribe_descriptors: bool = True, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.params = params = declare(self, "mapping_node")  # kept: what the node runs with, for tools and tests
        self.map_settings = params.get(MapSettings)
        self.map_path = validate_map_path(name, self.map_settings.map_path)
        self.settings = params.get(MappingSettings)
        self.index_config = params.get(IndexConfig)
        self.gate_config = params.get(KeyframeGateConfig)
        pose_settings = params.get(PoseSettings)
        self.fleet_settings = params.get(FleetSettings)
        self.fleet: Any = None  # nodes/fleet.FleetMapLink with fleet.enable
        self.stats = RateStats()
        self.db: PlaceDatabase | None = None
        self.mapper: Mapper | None = None
        self.encoders = EncoderGate()
        self.poses = PoseInput(self, pose_settings, self.stats)
        self._pending: deque[DescriptorFrame] = deque(maxlen=100)
        self._lock = threading.Lock()
        self._add_lock = threading.Lock()
        if subscribe_descriptors:  # composed: frames arrive by direct call instead
            self.create_subscription(PlaceDescriptor, "descriptors", self._on_descriptor, 50)

        self.keyframe_pub = self.create_publisher(Keyframe, "keyframes", 100)
        self.create_service(SaveMap, "save_map", self._save_map)
        self.create_service(NewSession, "new_session", self._new_session)
        self.create_service(GetMapInfo, "get_map_info", self._map_info)
        self.create_timer(0.05, self._drain_pending)
        self.diagnostics = Diagnostics(self, "mapping", self.stats)
        self.stats.values["map_path"] = self.map_path
        if encoder_signature is not None or PlaceDatabase.exists(self.map_path):
            self._open(encoder_signature)
        else:
            self.get_logger().info(f"no map at {self.map_path} yet: waiting for the encoder's signature on "
                                   f"{self.resolve_topic_name('encoder_info')}")
        if subscribe_descriptors:  # the encoders' signatures: a new map records one, the gate learns them all
            self.create_subscription(String, "encoder_info", self._on_encoder_info, latched_qos())

    def _open(self, signature: dict[str, Any] | None) -> None:
        st = self.settings
        db = PlaceDatabase(self.map_path, signature, index=self.index_config, durable=st.durable)
        mapper = Mapper(db, self.gate_config)
        if st.new_session_on_start or st.session:
            mapper.new_session(st.session or None)
        self.encoders.map_signature = db.encoder_signature
        self.stats.values["map_size"] = str(len(db))
        self.stats.values["damaged_keyframes"] = str(len(db.damaged))
        self.stats.values["session"] = db.session
        self.db, self.mapper = db, mapper
        self.step = FrameStep(mapper=mapper, mapping=st)
        fs = self.fleet_settings
        if fs.robot_id:
            db.set_robot_id(fs.robot_id)  # `anyloc map merge` names this map's keyframes by it
        if fs.enable:
            from .fleet import FleetMapLink

            self.fleet = FleetMapLink(self, db, fs, self.encoders, self.stats, lambda: self.poses.frame_id)
        self.get_logger().info(
            f"mapping into {db.path} ({len(db)} keyframes, session {db.session}, index {db.index_config.type}, "
            f"pose source {self.poses.source}, encoder {self.encoders.map_id})")

    def _on_encoder_info(self, msg: Any) -> None:
        sig = self.encoders.learn(msg.data)
        if self.db is not None:
            return
        try:
            if sig is None:
                raise ValueError("encoder_info is not a JSON signature")
            self._open(sig)
        except (AnyLocError, ValueError) as exc:
            self.get_logger().error(f"cannot create the map from the encoder signature: {exc}")

    # ---- input
    def _on_descriptor(self, msg: Any) -> None:
        frame = accept_descriptor(self, msg, self.stats, self.encoders)
        if frame is not None:
            self.handle_frame(frame)

    def handle_frame(self, frame: DescriptorFrame) -> int | None:
        """Decide on and add one keyframe (returns its id), or queue it until its pose arrives."""
        pose = self.poses.at(frame.stamp_ns)
        waiting_for_pose = pose is None and self.poses.source != "none" and self.settings.pose_wait_s > 0
        # Frames are added in stamp order: while earlier ones wait for their pose, later ones queue
        # behind them (the keyframe gate would otherwise see time going backwards and skip them).
        if self.db is None or waiting_for_pose or self._pending:
            with self._lock:
                if len(self._pending) == self._pending.maxlen:
                    self.stats.inc("frames_dropped_waiting_for_pose")
                self._pending.append(frame)
            return None
        return self._add(frame, pose)

    def _drain_pending(self) -> None:
        now = time.monotonic()
        while self.db is not None:
            with self._lock:
                if not self._pending:
                    return
                frame = self._pending[0]
                pose = self.poses.at(frame.stamp_ns)
                if pose is None and now - frame.received < self.settings.pose_wait_s:
                    return
                self._pending.popleft()
            if pose is None:
                self.stats.inc("frames_without_pose")
                if self.settings.require_pose:
                    log_throttled(self, "no pose for frame; dropped (require_pose)", "warn", 5.0)
                    continue
            self._add(frame, pose)

    def _add(self, frame: DescriptorFrame, pose: Any) -> int | None:
        with self._add_lock:  # frames come from DDS callbacks, the pose timer and (composed) the encoder thread
            return self._add_locked(frame, pose)

    def _add_locked(self, frame: DescriptorFrame, pose: Any) -> int | None:
        try:
            out = self.step(frame, pose)
        except MapError as exc:  # the map cannot be written (disk full, read-only): report, keep running
            self.stats.inc("map_write_failures")
            self.diagnostics.set_status(2, f"map write failed: {exc}")
            log_error(self, f"keyframe not added: {exc}")
            return None
        except AnyLocError as exc:
            self.stats.inc("frames_rejected")
            log_error(self, f"keyframe refused: {exc}")
            return None
        except Exception as exc:  # never let one frame stop the node
            self.stats.inc("frames_failed")
            log_error(self, f"keyframe not added: {type(exc).__name__}: {exc}")
            return None
        finally:
            self._report_clock_jumps()
        kid, reason = out.keyframe_id, out.keyframe_reason
        if kid is None:
            self.stats.inc("frames_skipped")
            return None
        if self.diagnostics.level:
            self.get_logger().info("the map can be written again: mapping resumed")
            self.diagnostics.set_status(0, "ok")
        self._acknowledge(kid, frame, pose)
        self.stats.inc("keyframes_added")
        self.stats.values["map_size"] = str(len(self.db))
        self.stats.values["damaged_keyframes"] = str(len(self.db.damaged))
        self.get_logger().debug(f"keyframe {kid} ({reason}) pose={'yes' if pose else 'no'}")
        return kid

    def _report_clock_jumps(self) -> None:
        if self.mapper.clock_jumps != self.stats.counts.get("clock_jumps", 0):
            self.stats.counts["clock_jumps"] = self.mapper.clock_jumps
            self.get_logger().warn(self.mapper.last_clock_jump)

    def _acknowledge(self, kid: int, frame: DescriptorFrame, pose: Any) -> None:
        if self.fleet is not None:
            self.fleet.keyframe_added(kid)
        msg = Keyframe(id=int(kid), session=self.db.session, camera=frame.frame_id, pose=pose_to_msg(pose, PoseMsg),
                       pose_valid=pose is not None)
        msg.header.stamp = ns_to_stamp(frame.stamp_ns, Time)
        msg.header.frame_id = self.poses.frame_id  # the pose's frame (odometry), never called map
        self.keyframe_pub.publish(msg)

    # ---- services
    def _save_map(self, req: Any, res: Any) -> Any:
        try:
            if self.db is None:
                res.success, res.message = False, "no map yet (waiting for the encoder signature)"
                return res
            if req.path and Path(req.path).expanduser().resolve() != self.db.path.resolve():
                res.success, res.message = False, "saving to another directory is not supported; copy the map " \
                                                  f"directory {self.db.path} instead"
            else:
                self.db.flush()
                res.success, res.message = True, f"map saved: {self.db.path}"
        except Exception as exc:
            res.success, res.message = False, f"save failed: {exc}"
        res.keyframes = len(self.db)
        self.get_logger().info(res.message)
        return res

    def _new_session(self, req: Any, res: Any) -> Any:
        if self.db is None:
            res.success, res.message = False, "no map yet (waiting for the encoder signature)"
            return res
        try:
            res.session_id = self.mapper.new_session(req.session_id or None)
            self.stats.values["session"] = res.session_id
            res.success, res.message = True, f"new session {res.session_id}"
        except Exception as exc:
            res.success, res.message = False, str(exc)
        self.get_logger().info(res.message)
        return res

    def _map_info(self, req: Any, res: Any) -> Any:
        res.map_path = self.map_path
        if self.db is None:
            return res
        st = self.db.stats()
        res.keyframes, res.sessions, res.current_session = st.keyframes, len(st.sessions), st.current_session
        res.map_path, res.encoder_id = str(self.db.path), self.encoders.map_id
        res.descriptor_dim, res.index_type = st.dim, st.index_type
        res.damaged_keyframes = st.damaged
        res.map_id, res.peer_keyframes, res.robots = self.db.map_id, st.peer_keyframes, st.robots
        return res

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def main(args: list[str] | None = None) -> int:
    return run_node(MappingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
