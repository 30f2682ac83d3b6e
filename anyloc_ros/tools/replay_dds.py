"""`anyloc replay` over DDS: a bag's messages published at the recorded (scaled) rate into the
real node processes, and what they publish collected (tools/replay.py has the offline mode and
the report)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..nodes.conversions import pose_from_msg, stamp_to_ns
from .bags import CAMERA_INFO_TYPE, DEPTH_TYPE, IMAGE_TYPES, ODOM_TYPES, BagError, BagMessage
from .replay_records import FrameResult, ReplayResult, closure_record
from .ros_driver import DriverNode, NodeProcess


def replay_dds(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool, rate: float, workdir: Path, timeout: float = 60.0) -> ReplayResult:
    """Publish the bag's raw CDR messages at the recorded (scaled) rate into the real nodes."""

    images = [m for m in messages if m.msgtype in IMAGE_TYPES]
    names = ["encoder_node", "recognition_node"] + ([] if localization else ["mapping_node"])
    transport = "compressed" if images and images[0].msgtype == IMAGE_TYPES[1] else "raw"
    nodes = [NodeProcess(n, params_file, workdir, "-p", f"map_path:={map_path}",
                         *(["-p", f"image_transport:={transport}"] if n == "encoder_node" else []))
             for n in names]
    driver = DriverNode("anyloc_replay")
    result = ReplayResult("dds", map_path=str(map_path))
    try:
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from ..msg import LoopClosure, PlaceMatch
        from ..nodes.qos import latched_qos

        driver.watch(PlaceMatch, "place_matches", 1000)
        driver.watch(LoopClosure, "loop_closures", 1000)
        img_pub = driver.node.create_publisher(CompressedImage if transport == "compressed" else Image,
                                               "image/compressed" if transport == "compressed" else "image", 100)
        odom_pub = None
        odoms = [m for m in messages if m.msgtype in ODOM_TYPES]
        if odoms:
            odom_pub = driver.node.create_publisher(Odometry if odoms[0].msgtype == ODOM_TYPES[0] else PoseStamped,
                                                    "odom" if odoms[0].msgtype == ODOM_TYPES[0] else "pose", 1000)
        driver.wait_matched(img_pub, 1, 120, nodes)
        if odom_pub is not None:
            driver.wait_matched(odom_pub, len(names) - 1, 120)
        driver.wait_graph("descriptors", 1, len(names) - 1, 120)  # encoder -> recognition (+ mapping)
        driver.wait_graph("place_matches", 1, 1, 120)
        depth_pub = driver.node.create_publisher(Image, "depth", 100) \
            if any(m.msgtype == DEPTH_TYPE for m in messages) else None
        infos = [m for m in messages if m.msgtype == CAMERA_INFO_TYPE]
        info_pub = driver.node.create_publisher(CameraInfo, "camera_info", latched_qos()) if infos else None
        if info_pub is not None:
            # The encoder node asks for camera_info only when it needs it (keypoints, no camera.fx):
            # give it a moment to be seen, then the first one ahead of the first image, so every
            # frame has the intrinsics the offline mode gives it.
            deadline = time.monotonic() + 3.0
            while info_pub.get_subscription_count() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            if info_pub.get_subscription_count():
                info_pub.publish(infos[0].raw)
                time.sleep(0.5)
            else:
                info_pub = None
        sent: dict[int, float] = {}
        start_wall, start_bag = time.monotonic(), messages[0].stamp_ns
        for m in messages:
            delay = (m.stamp_ns - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if m.msgtype in IMAGE_TYPES:
                sent[stamp_to_ns(m.msg.header.stamp)] = time.monotonic()
                img_pub.publish(m.raw)
            elif m.msgtype == CAMERA_INFO_TYPE:
                if info_pub is not None:
                    info_pub.publish(m.raw)
            elif m.msgtype == DEPTH_TYPE:
                if depth_pub is not None:
                    depth_pub.publish(m.raw)
            elif odom_pub is not None:
                odom_pub.publish(m.raw)
        matches = driver.wait_for("place_matches", len(images), timeout)
        # a frame's loop closure is published just after its place match, on another topic: wait
        # until loop closures stop arriving (0.5 s quiet) so the last frames' are not cut off
        quiet_since, seen, give_up = time.monotonic(), len(driver.received["loop_closures"]), time.monotonic() + 5.0
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
            time.sleep(0.05)
            if len(driver.received["loop_closures"]) != seen:
                quiet_since, seen = time.monotonic(), len(driver.received["loop_closures"])
        arrived = driver.arrival_times("place_matches")
        received = {stamp_to_ns(pm.query_stamp): (pm, t) for pm, t in zip(matches, arrived, strict=False)}
        loops = {stamp_to_ns(lc.query_stamp): lc for lc in driver.received["loop_closures"]}
        for stamp in sorted(sent):
            pm, t = received.get(stamp, (None, float("nan")))
            lc = loops.get(stamp)
            closure = None
            if lc is not None:
                p = lc.relative_pose
                edge = (pose_from_msg(p.pose), np.array(p.covariance, float).reshape(6, 6)) \
                    if lc.relative_pose_valid else None
                closure = closure_record(stamp, lc.match_id, stamp_to_ns(lc.match_stamp), lc.verified, lc.inliers, edge,
                                         lc.scale_known)
            result.frames.append(FrameResult(
                stamp, list(pm.keyframe_ids) if pm else [], [float(x) for x in pm.scores] if pm else [],
                lc.match_id if lc else None, (t - sent[stamp]) * 1e3, bool(lc and lc.relative_pose_valid), closure))
        if len(received) < len(images):
            raise BagError(f"only {len(received)} of {len(images)} frames produced a place match over DDS")
    finally:
        for n in nodes:
            n.stop()
        driver.close()
    return result
