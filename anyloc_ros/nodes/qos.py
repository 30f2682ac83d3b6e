"""QoS profiles of the package's topics."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data


def sensor_qos(depth: int, reliable: bool = False) -> QoSProfile:
    """Camera input: sensor-data QoS (best effort, volatile) with `depth`, or reliable."""
    if not reliable:
        return QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ("reliability", "durability", "history")},
                          depth=depth)
    return QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=depth)


def latched_qos() -> QoSProfile:
    """Transient-local, reliable: late subscribers still get the last message (like ROS 1 latching)."""
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      history=HistoryPolicy.KEEP_LAST)


def queue_qos(depth: int) -> QoSProfile:
    """Reliable, keep-last `depth`: a bounded queue that keeps the newest messages."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
