"""Drive the real nodes from Python: node processes over real DDS, and a driver node that
publishes inputs and records outputs. Used by `anyloc demo` and `anyloc replay` (DDS kept on
loopback in its own domain by the caller's environment). Node processes run the installed
package (`python -m anyloc_ros.nodes.<module>` with this interpreter and environment)."""

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


def isolated_dds_env(domain_id: int | None = None) -> None:
    """Keep DDS on loopback, in its own domain, with the large-image FastDDS profile (without
    it FastDDS drops most best-effort 640x480 frames between processes)."""
    import random

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(101, 215))
    profile = share_dir() / "config" / "fastdds_localhost.xml"
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    elif "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        print(f"warning: no FastDDS profile at {profile}: large best-effort images between processes may be "
              "dropped (set FASTDDS_DEFAULT_PROFILES_FILE)", file=sys.stderr)


def share_dir() -> Path:
    """The package's share directory (config/, launch/): the ament index's when the environment
    is sourced, else the one installed into this interpreter's prefix (a venv run without
    activating it), else the source checkout this module is in (same layout)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("anyloc_ros"))
    except Exception:  # AMENT_PREFIX_PATH unset or without anyloc_ros
        pass
    for candidate in (Path(sys.prefix) / "share" / "anyloc_ros", Path(__file__).resolve().parents[2]):
        if (candidate / "package.xml").is_file() and (candidate / "config").is_dir():
            return candidate
    return Path("/nonexistent")


def write_params(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()}, sort_keys=False))
    return path


class NodeProcess:
    """One anyloc_ros node as a real process (python -m anyloc_ros.nodes.<module>)."""

    def __init__(self, module: str, params_file: Path, log_dir: Path, *extra: str, name: str | None = None) -> None:
        self.name = name or module
        self.log = log_dir / f"{self.name}-{int(time.time() * 1000)}.log"
        args = [sys.executable, "-m", f"anyloc_ros.nodes.{module}", "--ros-args", "--params-file",
                str(Path(params_file).resolve()), *extra]
        self._fh = self.log.open("w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, env=env, stdout=self._fh, stderr=subprocess.STDOUT)

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
        self._arrivals: dict[str, list[float]] = defaultdict(list)
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
                self._arrivals[topic].append(time.monotonic())
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

    def arrival_times(self, topic: str) -> list[float]:
        """time.monotonic() at which each recorded message of `topic` arrived."""
        with self._cv:
            return list(self._arrivals[topic])

    def wait_matched(self, publisher: Any, n: int = 1, timeout: float = 30.0,
                     processes: list[NodeProcess] | None = None) -> None:
        """Wait for `n` subscribers; fail at once (with its log) if one of `processes` died."""
        deadline = time.monotonic() + timeout
        while publisher.get_subscription_count() < n:
            for p in processes or []:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited with code {p.proc.returncode}:\n{p.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscriber on {publisher.topic_name} after {timeout} s")
            time.sleep(0.05)

    def wait_graph(self, topic: str, publishers: int, subscribers: int, timeout: float = 60.0) -> None:
        """Wait until `topic` has this many publishers and subscribers (between the nodes under
        test, e.g. encoder -> mapping + recognition), plus a moment for the endpoints to match."""
        deadline = time.monotonic() + timeout
        while (self.node.count_publishers(topic) < publishers or self.node.count_subscribers(topic) < subscribers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {self.node.count_publishers(topic)} publishers / "
                                   f"{self.node.count_subscribers(topic)} subscribers after {timeout} s")
            time.sleep(0.05)
        time.sleep(0.5)

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


def publish_traversal(driver: DriverNode, image_pub: Any, odom_pub: Any, images: list, t0_s: float,
                      positions: list[tuple[float, float]], done_before: int, topic: str = "place_matches",
                      timeout: float = 30.0, attempts: int = 3) -> None:
    """Publish odometry then image for each frame (1 frame/s of stamp time), lock-step: wait
    for the frame's output on `topic` before the next, so nothing is dropped for speed. A frame
    lost in transit (e.g. right after discovery) is sent again, up to `attempts` times."""
    for i, im in enumerate(images):
        stamp = int((t0_s + i) * 1_000_000_000)
        for _attempt in range(attempts):
            if odom_pub is not None:
                odom_pub.publish(odom_msg(stamp, *positions[i]))
                time.sleep(0.01)
            image_pub.publish(image_msg(im, stamp))
            if len(driver.wait_for(topic, done_before + i + 1, timeout=timeout / attempts)) >= done_before + i + 1:
                break
        else:
            raise TimeoutError(f"no output on {topic} for frame {i} within {timeout} s")
