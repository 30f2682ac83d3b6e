"""`anyloc replay` over DDS: a bag's messages published at the recorded (scaled) rate into the
real node processes, and what they publish collected (tools/replay.py has the offline mode and
the report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..nodes.conversions import pose_from_msg, stamp_to_ns
from .bags import CAMERA_INFO_TYPE, DEPTH_TYPE, IMAGE_TYPES, ODOM_TYPES, BagError, BagMessage
from .replay_records import FrameResult, ReplayResult, closure_record
from .ros_driver import DriverNode, NodeProcess


class RobotReplay:
    """One robot's real node processes fed one bag: start, `play` at the recorded (scaled) rate,
    `collect` what they published. `namespace` and `fleet` (robot id) make it one robot of a fleet."""

    def __init__(self, driver: DriverNode, messages: list[BagMessage], params_file: Path, map_path: Path,
                 localization: bool, workdir: Path, namespace: str = "", fleet_robot: str = "") -> None:
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from ..msg import LoopClosure, PlaceMatch
        from ..nodes.qos import latched_qos

        self.driver, self.messages, self.map_path = driver, messages, map_path
        self.images = [m for m in messages if m.msgtype in IMAGE_TYPES]
        self.names = ["encoder_node", "recognition_node"] + ([] if localization else ["mapping_node"])
        transport = "compressed" if self.images and self.images[0].msgtype == IMAGE_TYPES[1] else "raw"
        self.ns = f"/{namespace}/" if namespace else ""
        ns_args = ["-r", f"__ns:=/{namespace}"] if namespace else []

        def args(n: str) -> list[str]:
            extra = ["-p", f"image_transport:={transport}"] if n == "encoder_node" else \
                ["-p", f"robot_id:={fleet_robot}", "-p", "fleet.enable:=true"] if fleet_robot else []
            return [*ns_args, "-p", f"map_path:={map_path}", *extra]

        self.nodes = [NodeProcess(n, params_file, workdir, *args(n), name=f"{namespace}_{n}" if namespace else n)
                      for n in self.names]
        self.matches, self.loops = self.ns + "place_matches", self.ns + "loop_closures"
        driver.watch(PlaceMatch, self.matches, 1000)
        driver.watch(LoopClosure, self.loops, 1000)
        node = driver.node
        self.img_pub = node.create_publisher(CompressedImage if transport == "compressed" else Image,
                                             self.ns + ("image/compressed" if transport == "compressed" else "image"), 100)
        self.odom_pub = None
        odoms = [m for m in messages if m.msgtype in ODOM_TYPES]
        if odoms:
            self.odom_pub = node.create_publisher(Odometry if odoms[0].msgtype == ODOM_TYPES[0] else PoseStamped,
                                                  self.ns + ("odom" if odoms[0].msgtype == ODOM_TYPES[0] else "pose"),
                                                  1000)
        self.depth_pub = node.create_publisher(Image, self.ns + "depth", 100) \
            if any(m.msgtype == DEPTH_TYPE for m in messages) else None
        self.infos = [m for m in messages if m.msgtype == CAMERA_INFO_TYPE]
        self.info_pub = node.create_publisher(CameraInfo, self.ns + "camera_info", latched_qos()) if self.infos else None
        self.sent: dict[int, float] = {}

    def wait_ready(self) -> None:
        d = self.driver
        d.wait_matched(self.img_pub, 1, 120, self.nodes)
        if self.odom_pub is not None:
            d.wait_matched(self.odom_pub, len(self.names) - 1, 120)
        d.wait_graph(self.ns + "descriptors", 1, len(self.names) - 1, 120)  # encoder -> recognition (+ mapping)
        d.wait_graph(self.matches, 1, 1, 120)
        if self.info_pub is not None:
            # The encoder node asks for camera_info only when it needs it (keypoints, no camera.fx):
            # give it a moment to be seen, then the first one ahead of the first image, so every
            # frame has the intrinsics the offline mode gives it.
            deadline = time.monotonic() + 3.0
            while self.info_pub.get_subscription_count() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.info_pub.get_subscription_count():
                self.info_pub.publish(self.infos[0].raw)
                time.sleep(0.5)
            else:
                self.info_pub = None

    def play(self, rate: float) -> None:
        start_wall, start_bag = time.monotonic(), self.messages[0].stamp_ns
        for m in self.messages:
            delay = (m.stamp_ns - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if m.msgtype in IMAGE_TYPES:
                self.sent[stamp_to_ns(m.msg.header.stamp)] = time.monotonic()
                self.img_pub.publish(m.raw)
            elif m.msgtype == CAMERA_INFO_TYPE:
                if self.info_pub is not None:
                    self.info_pub.publish(m.raw)
            elif m.msgtype == DEPTH_TYPE:
                if self.depth_pub is not None:
                    self.depth_pub.publish(m.raw)
            elif self.odom_pub is not None:
                self.odom_pub.publish(m.raw)

    def collect(self, timeout: float, local_id: Any = None) -> ReplayResult:
        """What the nodes published for each frame. `local_id(robot, map, id)`: this robot's id of
        another robot's keyframe (its closures name the owner's; the frame records this map's)."""
        driver = self.driver
        result = ReplayResult("dds", map_path=str(self.map_path))
        matches = driver.wait_for(self.matches, len(self.images), timeout)
        # a frame's loop closure is published just after its place match, on another topic: wait
        # until loop closures stop arriving (0.5 s quiet) so the last frames' are not cut off
        quiet_since, seen, give_up = time.monotonic(), len(driver.received[self.loops]), time.monotonic() + 5.0
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
            time.sleep(0.05)
            if len(driver.received[self.loops]) != seen:
                quiet_since, seen = time.monotonic(), len(driver.received[self.loops])
        arrived = driver.arrival_times(self.matches)
        received = {stamp_to_ns(pm.query_stamp): (pm, t) for pm, t in zip(matches, arrived, strict=False)}
        loops = {stamp_to_ns(lc.query_stamp): lc for lc in driver.received[self.loops]}
        for stamp in sorted(self.sent):
            pm, t = received.get(stamp, (None, float("nan")))
            lc = loops.get(stamp)
            closure, match = None, None
            if lc is not None:
                p = lc.relative_pose
                edge = (pose_from_msg(p.pose), np.array(p.covariance, float).reshape(6, 6)) \
                    if lc.relative_pose_valid else None
                closure = closure_record(stamp, lc.match_id, stamp_to_ns(lc.match_stamp), lc.verified, lc.inliers, edge,
                                         lc.scale_known, lc.match_robot_id)
                match = local_id(lc.match_robot_id, lc.match_map_id, lc.match_id) \
                    if lc.match_robot_id and local_id is not None else lc.match_id
            result.frames.append(FrameResult(
                stamp, list(pm.keyframe_ids) if pm else [], [float(x) for x in pm.scores] if pm else [],
                match, (t - self.sent[stamp]) * 1e3, bool(lc and lc.relative_pose_valid), closure))
        if len(received) < len(self.images):
            raise BagError(f"only {len(received)} of {len(self.images)} frames produced a place match over DDS")
        return result

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def replay_dds(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool, rate: float,
               workdir: Path, timeout: float = 60.0) -> ReplayResult:
    """Publish the bag's raw CDR messages at the recorded (scaled) rate into the real nodes."""
    driver = DriverNode("anyloc_replay")
    robot = None
    try:
        robot = RobotReplay(driver, messages, params_file, map_path, localization, workdir)
        robot.wait_ready()
        robot.play(rate)
        return robot.collect(timeout)
    finally:
        if robot is not None:
            robot.stop()
        driver.close()


def replay_fleet_dds(peer_messages: list[BagMessage], messages: list[BagMessage], params_file: Path,
                     peer_map: Path, map_path: Path, robots: tuple[str, str], rate: float, workdir: Path,
                     timeout: float = 60.0) -> ReplayResult:
    """Two bags as two robots of a fleet, each its own nodes in its namespace: the peer (robots[0])
    maps its bag first; the robot (robots[1]) starts, takes all the peer's keyframes over the fleet
    topics, then replays its bag (asking the peer for local features as candidates come)."""
    from ..core.map.database import PlaceDatabase
    from ..srv import GetMapInfo

    driver = DriverNode("anyloc_replay")
    started: list[RobotReplay] = []
    try:
        peer = RobotReplay(driver, peer_messages, params_file, peer_map, False, workdir, robots[0], robots[0])
        started.append(peer)
        peer.wait_ready()
        peer.play(rate)
        peer.collect(timeout)
        info = driver.call(GetMapInfo, f"/{robots[0]}/get_map_info", GetMapInfo.Request())
        own = info.keyframes - info.peer_keyframes
        robot = RobotReplay(driver, messages, params_file, map_path, False, workdir, robots[1], robots[1])
        started.append(robot)
        robot.wait_ready()
        deadline = time.monotonic() + timeout
        while driver.call(GetMapInfo, f"/{robots[1]}/get_map_info", GetMapInfo.Request()).peer_keyframes < own:
            if time.monotonic() > deadline:
                raise BagError(f"{robots[1]} did not receive {robots[0]}'s {own} keyframes over DDS in {timeout} s")
            time.sleep(0.2)
        robot.play(rate)
        with PlaceDatabase(map_path, follower=True) as db:
            return robot.collect(timeout, db.local_id)
    finally:
        for r in started:
            r.stop()
        driver.close()
