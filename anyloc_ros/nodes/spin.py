"""Node start-up and spinning: the package's standard `main()`, and core log records on /rosout."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

from ..core.errors import AnyLocError
from ..core.threads import single_threaded_numpy_blas

_LEVELS = ((logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info"))


class RosLogHandler(logging.Handler):
    """Forwards the core library's `logging` records (logger `anyloc_ros.*`) to an rclpy logger,
    so they reach the console and /rosout like the node's own messages."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(logging.DEBUG)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = next((name for level, name in _LEVELS if record.levelno >= level), "debug")
            getattr(self.ros_logger, method)(f"[{record.name}] {record.getMessage()}")
        except Exception:  # logging must never break the node
            self.handleError(record)


def forward_core_logs(node: Any) -> RosLogHandler:
    """Route `anyloc_ros` log records to `node`'s logger (child `core`) at INFO and above."""
    core = logging.getLogger("anyloc_ros")
    for h in [h for h in core.handlers if isinstance(h, RosLogHandler)]:
        core.removeHandler(h)
    handler = RosLogHandler(node.get_logger().get_child("core"))
    core.addHandler(handler)
    core.setLevel(logging.INFO)
    core.propagate = False  # printed once, by rclpy
    return handler


def run_node(factory: Any, args: list[str] | None = None) -> int:
    """Standard main(): init, construct the node (or list of nodes: one multi-threaded executor),
    spin, shut down. Start-up errors (bad parameters, missing weights) print one clear message
    and return 1, so a launch file sees the node exit with a failure."""

    single_threaded_numpy_blas()
    rclpy.init(args=args)
    nodes: list[Any] = []
    handler = None
    try:
        made = factory()
        nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        handler = forward_core_logs(nodes[0])
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
        # Shutting down: a second Ctrl-C (the terminal signals the whole process group and
        # `ros2 launch` forwards its own) must not abort the cleanup half-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if handler is not None:
            logging.getLogger("anyloc_ros").removeHandler(handler)
        for node in nodes:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
