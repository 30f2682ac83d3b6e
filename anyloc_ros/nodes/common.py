"""Shared pieces of the anyloc_ros nodes: declared parameters, QoS, diagnostics, pose input.

Parameters are declared from small specs (name, default, description, range or choices),
read once at start-up and validated; every problem is collected and raised together as a
`ParameterError`, which each node's `main()` reports as one clear start-up error.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from ..core.errors import AnyLocError
from ..core.geometry import Pose
from ..core.pose_buffer import PoseBuffer, PoseError
from .conversions import pose_from_msg, stamp_to_ns


class ParameterError(AnyLocError, ValueError):
    """Invalid node parameters (all problems listed)."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None


# Parameters every node that builds an encoder or opens a map understands.
ENCODER_PARAMS = (
    Param("encoder_config", "", "encoder config YAML (backbone + aggregation + PCA); empty = encoder_preset"),
    Param("encoder_preset", "dinov2_vitg14_vlad", "named encoder preset used when encoder_config is empty"),
    Param("vocabulary", "", "VLAD vocabulary file; overrides the encoder config's aggregation.vocabulary"),
    Param("pca", "", "PCA file; overrides the encoder config's projection.pca"),
    Param("device", "auto", "encoder device: auto (CUDA if available), cpu, cuda, cuda:N"),
)
MAP_PARAMS = (
    Param("map_path", "", "map directory (created by the mapping node, read by the recognition node)"),
    Param("index.type", "flat", "search index: flat (exact), ivf or hnsw", choices=("flat", "ivf", "hnsw")),
    Param("index.nprobe", 16, "IVF lists searched per query", 1, 65536),
    Param("index.hnsw_ef_search", 128, "HNSW search breadth", 1, 65536),
    Param("index.use_gpu", "auto", "faiss GPU for flat/IVF search", choices=("auto", "true", "false")),
)
POSE_PARAMS = (
    Param("pose_source", "odom", "robot pose input: odom (nav_msgs/Odometry on 'odom'), pose (PoseStamped on "
          "'pose') or none", choices=("odom", "pose", "none")),
    Param("pose.max_age_s", 10.0, "how much pose history is buffered", 0.1, 3600.0),
    Param("pose.max_extrapolation_s", 0.05, "tolerated gap between an image stamp and the nearest pose", 0.0, 10.0),
)


def declare(node: Node, specs: tuple[Param, ...] | list[Param]) -> dict[str, Any]:
    """Declare and read parameters, validating ranges and choices; raise ParameterError."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for p in specs:
        desc = ParameterDescriptor(description=p.description)
        if p.min is not None and p.max is not None:
            if isinstance(p.default, bool):
                pass
            elif isinstance(p.default, int):
                desc.integer_range = [IntegerRange(from_value=int(p.min), to_value=int(p.max), step=0)]
            elif isinstance(p.default, float):
                desc.floating_point_range = [FloatingPointRange(from_value=float(p.min), to_value=float(p.max), step=0.0)]
        if p.choices:
            desc.additional_constraints = "one of: " + ", ".join(p.choices)
        try:
            value = node.declare_parameter(p.name, p.default, desc).value
        except Exception as exc:  # rclpy raises InvalidParameterValueException / type errors
            errors.append(f"{p.name}: {exc}")
            continue
        if isinstance(p.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(p.default):
            errors.append(f"{p.name}: expected {type(p.default).__name__}, got {value!r}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                errors.append(f"{p.name}: must be finite, got {value}")
            if p.min is not None and value < p.min or p.max is not None and value > p.max:
                errors.append(f"{p.name}: {value} is outside [{p.min}, {p.max}]")
        if p.choices and value not in p.choices:
            errors.append(f"{p.name}: {value!r} is not one of {list(p.choices)}")
        values[p.name] = value
    if errors:
        raise ParameterError(f"invalid parameters for node '{node.get_name()}':\n  " + "\n  ".join(errors))
    return values


def sensor_qos(depth: int, reliable: bool = False) -> QoSProfile:
    if not reliable:
        q = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ("reliability", "durability", "history")},
                       depth=depth)
        return q
    return QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=depth)


def validate_map_path(node_name: str, value: str, must_exist: bool = False) -> str:
    """A map directory parameter: set, no NUL bytes, not an existing file, and (when it must
    exist) holding a map. Returns the expanded absolute path."""
    from pathlib import Path

    if not value:
        raise ParameterError(f"node '{node_name}': map_path must be set")
    if "\x00" in value:
        raise ParameterError(f"node '{node_name}': map_path contains a NUL byte")
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ParameterError(f"node '{node_name}': map_path {path} exists and is not a directory")
    if not must_exist:
        parent = next((p for p in (path, *path.parents) if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            raise ParameterError(f"node '{node_name}': cannot create a map at {path} (no writable parent directory)")
    return str(path)


def latched_qos() -> QoSProfile:
    """Transient-local, reliable: late subscribers still get the last message (like ROS 1 latching)."""
    from rclpy.qos import DurabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      history=HistoryPolicy.KEEP_LAST)


def encoder_id(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:12]


def build_encoder(values: dict[str, Any]) -> Any:
    """Encoder from the ENCODER_PARAMS values."""
    from pathlib import Path

    from ..core.config import EncoderConfig
    from ..core.encoder import Encoder

    if values["encoder_config"]:
        cfg = EncoderConfig.from_yaml(values["encoder_config"])
    else:
        cfg = EncoderConfig.from_dict({"preset": values["encoder_preset"]})
    if values["vocabulary"]:
        cfg.aggregation.vocabulary = str(Path(values["vocabulary"]).expanduser().resolve())
    if values["pca"]:
        cfg.projection.pca = str(Path(values["pca"]).expanduser().resolve())
    cfg.backbone.device = values["device"]
    return Encoder.from_config(cfg)


@dataclass
class DescriptorFrame:
    """One encoded image, as passed between encoder, mapping and recognition (in or across processes)."""

    stamp_ns: int
    frame_id: str
    seq: int
    descriptor: np.ndarray
    encoder_id: str = ""
    patches: np.ndarray | None = None
    thumbnail: bytes | None = None
    encode_ms: float = 0.0
    received: float = field(default_factory=time.monotonic)


def float32_array(x: np.ndarray) -> array.array:
    """numpy -> array('f'), the fast way to fill a float32[] message field."""
    a = array.array("f")
    a.frombytes(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return a


def as_float32(field_value: Any) -> np.ndarray:
    if isinstance(field_value, array.array):
        return np.frombuffer(field_value, dtype=np.float32).copy()
    return np.asarray(field_value, dtype=np.float32)


def frame_from_msg(msg: Any) -> DescriptorFrame:
    d = as_float32(msg.descriptor)
    patches = None
    if len(msg.patches) and msg.patch_dim:
        flat = as_float32(msg.patches)
        if flat.size % int(msg.patch_dim):
            raise ValueError(f"{flat.size} patch values are not a multiple of patch_dim {msg.patch_dim}")
        patches = flat.reshape(-1, int(msg.patch_dim))
    thumb = bytes(msg.thumbnail.data) if len(msg.thumbnail.data) else None
    return DescriptorFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, int(msg.seq), d, msg.encoder_id,
                           patches, thumb, float(msg.encode_ms))


def accept_descriptor(node: Node, msg: Any, stats: RateStats, map_encoder_id: str) -> DescriptorFrame | None:
    """A PlaceDescriptor message as a frame, or None (logged, counted) when it is malformed or
    comes from another encoder than the map's (`map_encoder_id`, empty while no map is open)."""
    try:
        frame = frame_from_msg(msg)
    except (ValueError, TypeError) as exc:
        stats.inc("frames_rejected")
        log_error(node, f"descriptor rejected: {exc}")
        return None
    if map_encoder_id and msg.encoder_id != map_encoder_id:  # an empty id is no exception
        stats.inc("frames_rejected")
        log_error(node, f"descriptor from encoder {msg.encoder_id or '(none given)'} refused: the map was built "
                        f"with encoder {map_encoder_id}")
        return None
    return frame


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
        from diagnostic_msgs.msg import DiagnosticArray

        self.node, self.name, self.stats = node, name, stats
        self.level = 0
        self.message = "ok"
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(period_s, self.publish)

    def set_status(self, level: int, message: str) -> None:
        """0 OK, 1 WARN, 2 ERROR (diagnostic_msgs levels), with a one-line message."""
        self.level, self.message = level, message[:500]

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        st = DiagnosticStatus(level=bytes([self.level]), name=f"anyloc_ros: {self.name}", message=self.message,
                              hardware_id=self.node.get_fully_qualified_name())
        st.values = [KeyValue(key=k, value=v) for k, v in self.stats.key_values()]
        arr.status = [st]
        self.pub.publish(arr)


_LAST_LOGGED: dict[tuple[str, str], float] = {}


def log_error(node: Node, message: str, period_s: float = 2.0) -> None:
    """Log an error at most once per `period_s` per kind of message (digits ignored), so a
    flood of one bad input cannot drown the log and each distinct problem is still reported."""
    key = (node.get_name(), re.sub(r"[0-9.]+", "#", message)[:80])
    now = time.monotonic()
    if now - _LAST_LOGGED.get(key, -1e9) >= period_s:
        _LAST_LOGGED[key] = now
        node.get_logger().error(message)


class PoseInput:
    """Subscribes the robot pose (Odometry or PoseStamped) into a PoseBuffer."""

    def __init__(self, node: Node, values: dict[str, Any], stats: RateStats) -> None:
        self.buffer = PoseBuffer(values["pose.max_age_s"], values["pose.max_extrapolation_s"])
        self.node, self.stats = node, stats
        self.source = values["pose_source"]
        if self.source == "odom":
            from nav_msgs.msg import Odometry

            node.create_subscription(Odometry, "odom", lambda m: self._add(m.header.stamp, m.pose.pose), 100)
        elif self.source == "pose":
            from geometry_msgs.msg import PoseStamped

            node.create_subscription(PoseStamped, "pose", lambda m: self._add(m.header.stamp, m.pose), 100)

    def _add(self, stamp: Any, pose_msg: Any) -> None:
        try:
            self.buffer.add(stamp_to_ns(stamp), pose_from_msg(pose_msg))
            self.stats.inc("poses_received")
        except PoseError as exc:
            self.stats.inc("poses_rejected")
            log_error(self.node, str(exc))

    def at(self, stamp_ns: int) -> Pose | None:
        return None if self.source == "none" else self.buffer.at(stamp_ns)


def run_node(factory: Any, args: list[str] | None = None) -> int:
    """Standard main(): init, construct the node (or list of nodes: one multi-threaded executor),
    spin, shut down. Start-up errors (bad parameters, missing weights) print one clear message."""
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

    rclpy.init(args=args)
    nodes: list[Any] = []
    try:
        made = factory()
        nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        executor = MultiThreadedExecutor(num_threads=2) if len(nodes) > 1 else SingleThreadedExecutor()
        for n in nodes:
            executor.add_node(n)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except AnyLocError as exc:
        print(f"[anyloc_ros] start-up error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
