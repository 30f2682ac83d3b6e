"""Helpers for integration tests: real node processes over real DDS (loopback, own domain),
and an in-test rclpy node that publishes inputs and records outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO


def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_params(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()}, sort_keys=False))
    return path


class NodeProcess:
    """One anyloc_ros node as a real process (python -m anyloc_ros.nodes.<module>)."""

    def __init__(self, module: str, params_file: Path, log_dir: Path, *extra: str, name: str | None = None) -> None:
        self.name = name or module
        self.log = log_dir / f"{self.name}-{int(time.time() * 1000)}.log"
        args = [sys.executable, "-m", f"anyloc_ros.nodes.{module}", "--ros-args", "--params-file", str(params_file),
                *extra]
        self._fh = self.log.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=ros_env(), stdout=self._fh, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


class DriverNode:
    """An rclpy node spun in a background thread; records every message on watched topics."""

    def __init__(self, name: str = "anyloc_test_driver") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running:
            self.executor.spin_once(timeout_sec=0.05)

    def watch(self, msg_type: Any, topic: str, qos: Any = 100) -> None:
        def cb(msg: Any, topic: str = topic) -> None:
            with self._cv:
                self.received[topic].append(msg)
                self._cv.notify_all()

        self.node.create_subscription(msg_type, topic, cb, qos)

    def wait_for(self, topic: str, count: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.received[topic]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return list(self.received[topic])

    def wait_matched(self, publisher: Any, n: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while publisher.get_subscription_count() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscriber on {publisher.topic_name} after {timeout} s")
            time.sleep(0.05)

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} did not answer")
            time.sleep(0.02)
        self.node.destroy_client(client)
        return future.result()

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.shutdown(context=self.context)


def image_msg(rgb, stamp_ns: int, frame_id: str = "camera"):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    m.header.frame_id = frame_id
    m.height, m.width = rgb.shape[:2]
    m.encoding = "rgb8"
    m.step = m.width * 3
    m.data = rgb.tobytes()
    return m


def odom_msg(stamp_ns: int, x: float, y: float = 0.0):
    from nav_msgs.msg import Odometry

    m = Odometry()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    m.header.frame_id = "odom"
    m.pose.pose.position.x, m.pose.pose.position.y = float(x), float(y)
    m.pose.pose.orientation.w = 1.0
    return m
