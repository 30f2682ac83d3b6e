"""Pose at an image stamp: the nodes' interpolating PoseBuffer vs message_filters.Cache.

Issue #12 asked to use message_filters where it is the idiomatic tool and keep the
interpolating buffer only where it does better. This measures both on a real trajectory:
TUM fr2/desk ground truth (100 Hz) as the truth, odometry published at `--odom-hz` from it,
and 2000 image stamps at random phases. Cache returns the newest pose before the stamp
(getElemBeforeTime) or the nearest of the two around it; PoseBuffer interpolates (lerp +
slerp) between the two. Errors are against the full-rate truth interpolated at the stamp.

    .venv/bin/python bench/pose_lookup.py [--odom-hz 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import SHARED, record, table  # noqa: I001


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--odom-hz", type=float, default=30.0)
    args = ap.parse_args()
    import message_filters
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import PoseStamped
    from rclpy.clock_type import ClockType
    from rclpy.time import Time as RosTime

    from anyloc_ros.core.geometry import Pose, interpolate_pose
    from anyloc_ros.core.pose_buffer import PoseBuffer
    from anyloc_ros.eval.datasets import read_tum_trajectory

    t, poses = read_tum_trajectory(SHARED / "tum_fr2_desk" / "groundtruth.txt")
    truth = [Pose(*p) for p in poses]
    ns = (t * 1e9).astype(np.int64)
    keep = np.unique(np.searchsorted(ns, np.arange(ns[0], ns[-1], int(1e9 / args.odom_hz))))
    buf = PoseBuffer(max_age_s=1e9, max_extrapolation_s=0.05)
    cache = message_filters.Cache(message_filters.SimpleFilter(), cache_size=len(keep))
    for i in keep:
        buf.add(int(ns[i]), truth[i])
        m = PoseStamped()
        m.header.stamp = Time(sec=int(ns[i] // 1_000_000_000), nanosec=int(ns[i] % 1_000_000_000))
        p = truth[i]
        m.pose.position.x, m.pose.position.y, m.pose.position.z = p.x, p.y, p.z
        m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w = p.qx, p.qy, p.qz, p.qw
        cache.add(m)
    rng = np.random.default_rng(0)
    stamps = rng.integers(ns[keep[1]], ns[keep[-2]], 3000)
    # stamps inside gaps of the recorded truth (tracking lost) have no truth to compare with
    j = np.searchsorted(ns, stamps)
    stamps = stamps[(ns[j] - ns[j - 1]) < 0.05e9][:2000]

    def true_at(s: int) -> Pose:
        j = int(np.searchsorted(ns, s))
        a, b = truth[j - 1], truth[j]
        return interpolate_pose(a, b, (s - ns[j - 1]) / (ns[j] - ns[j - 1]))

    def from_msg(m) -> Pose:
        p, q = m.pose.position, m.pose.orientation
        return Pose(p.x, p.y, p.z, q.x, q.y, q.z, q.w)

    def cache_before(s: int) -> Pose:
        return from_msg(cache.getElemBeforeTime(RosTime(nanoseconds=int(s), clock_type=ClockType.ROS_TIME)))

    def cache_nearest(s: int) -> Pose:
        rt = RosTime(nanoseconds=int(s), clock_type=ClockType.ROS_TIME)
        a, b = cache.getElemBeforeTime(rt), cache.getElemAfterTime(rt)
        ta = RosTime.from_msg(a.header.stamp).nanoseconds
        tb = RosTime.from_msg(b.header.stamp).nanoseconds
        return from_msg(a if s - ta <= tb - s else b)

    rows = []
    for name, fn in (("PoseBuffer.at (interpolated; the nodes)", buf.at),
                     ("message_filters.Cache.getElemBeforeTime", cache_before),
                     ("message_filters.Cache nearest of before/after", cache_nearest)):
        t0 = time.perf_counter()
        got = [fn(int(s)) for s in stamps]
        us = (time.perf_counter() - t0) / len(stamps) * 1e6
        pos = np.array([g.distance_to(true_at(int(s))) for g, s in zip(got, stamps, strict=True)]) * 1e3
        rot = np.degrees([g.angle_to(true_at(int(s))) for g, s in zip(got, stamps, strict=True)])
        rows.append([name, f"{pos.mean():.2f}", f"{np.percentile(pos, 95):.2f}", f"{rot.mean():.3f}",
                     f"{np.percentile(rot, 95):.3f}", f"{us:.1f}"])
    body = (f"TUM fr2/desk ground truth as odometry at {args.odom_hz:g} Hz ({len(keep)} poses), 2000 image "
            "stamps at random phases; error against the full-rate truth at the stamp.\n\n"
            + table(["lookup", "pos err mean mm", "pos err p95 mm", "rot err mean deg", "rot err p95 deg",
                     "us / lookup"], rows))
    record("Pose at an image stamp: PoseBuffer vs message_filters.Cache", f"python bench/pose_lookup.py "
           f"--odom-hz {args.odom_hz:g}", body)


if __name__ == "__main__":
    main()
