"""ROS stamps and poses <-> the core's (images: images.py)."""

from __future__ import annotations

from typing import Any

from ..core.geometry import Pose


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, time_type: Any) -> Any:
    t = time_type()
    t.sec, t.nanosec = divmod(int(ns), 1_000_000_000)
    return t


def pose_from_msg(p: Any) -> Pose:
    """geometry_msgs/Pose -> Pose (not validated; see Pose.is_valid)."""
    return Pose(p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y, p.orientation.z,
                p.orientation.w)


def pose_to_msg(pose: Pose | None, msg_type: Any) -> Any:
    m = msg_type()
    if pose is not None:
        m.position.x, m.position.y, m.position.z = pose.x, pose.y, pose.z
        m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = pose.qx, pose.qy, pose.qz, pose.qw
    return m
