"""Node health: counters, /diagnostics, and the one log throttle of the package."""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node


class RateStats:
    """Counters and a short latency window for diagnostics."""

    def __init__(self, window: int = 100) -> None:
        self.counts: dict[str, int] = {}
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.values: dict[str, str] = {}

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def key_values(self) -> list[tuple[str, str]]:
        kv = [(k, str(v)) for k, v in sorted(self.counts.items())]
        if self.latency_ms:
            lat = np.array(self.latency_ms)
            kv += [("latency_ms_mean", f"{lat.mean():.2f}"), ("latency_ms_max", f"{lat.max():.2f}")]
        kv += sorted(self.values.items())
        return kv


class Diagnostics:
    """Publishes one DiagnosticStatus for a node on /diagnostics at 1 Hz."""

    def __init__(self, node: Node, name: str, stats: RateStats, period_s: float = 1.0) -> None:

        self.node, self.name, self.stats = node, name, stats
        self.level = 0
        self.message = "ok"
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(period_s, self.publish)

    def set_status(self, level: int, message: str) -> None:
        """0 OK, 1 WARN, 2 ERROR (diagnostic_msgs levels), with a one-line message."""
        self.level, self.message = level, message[:500]

    def publish(self) -> None:

        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        st = DiagnosticStatus(level=bytes([self.level]), name=f"anyloc_ros: {self.name}", message=self.message,
                              hardware_id=self.node.get_fully_qualified_name())
        st.values = [KeyValue(key=k, value=v) for k, v in self.stats.key_values()]
        arr.status = [st]
        self.pub.publish(arr)


_LAST_LOGGED: dict[tuple[str, str], float] = {}


def log_throttled(logger: Any, message: str, level: str = "error", period_s: float = 2.0) -> None:
    """Log at most once per `period_s` per kind of message (digits ignored), so a flood of one
    bad input cannot drown the log and each distinct problem is still reported. (rclpy's
    `throttle_duration_sec` throttles per call site, which would hide a second, different
    problem behind the first.) `logger` is a node or an rclpy logger."""
    if hasattr(logger, "get_logger"):
        logger = logger.get_logger()
    key = (getattr(logger, "name", ""), re.sub(r"[0-9.]+", "#", message)[:80])
    now = time.monotonic()
    if key not in _LAST_LOGGED or now - _LAST_LOGGED[key] >= period_s:  # period inf: once per kind
        _LAST_LOGGED[key] = now
        getattr(logger, {"warning": "warn"}.get(level, level))(message)


def log_error(node: Node, message: str, period_s: float = 2.0) -> None:
    log_throttled(node, message, "error", period_s)
