"""Encoder node: camera images in, place descriptors out.

Subscribes `image` (sensor_msgs/Image) or `image/compressed` (CompressedImage) with
sensor-data QoS into a bounded queue; a worker thread encodes the newest frames on the
configured device and publishes `descriptors` (anyloc_ros/PlaceDescriptor), with keypoints
for geometric verification when the encoder has local features (XFeat), undistorted with the
camera's intrinsics and distortion (`camera.*` parameters, else `camera_info`), its mount
(`camera.mount_*`) and, with `depth.enable`, each keypoint's depth from the registered depth
image on `depth` (paired with the colour image by message_filters' ApproximateTimeSynchronizer;
while no depth arrives, colour frames are encoded alone). When the encoder cannot keep up, the
oldest queued frames are dropped and counted (never a growing backlog). A malformed image is
logged and counted; the node keeps serving; a malformed depth image is logged and counted and
its colour frame encoded without depth.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ..core.camera import CameraModel
from ..core.config.encoder import EncoderSelection
from ..core.config.nodes import CameraSettings, DepthSettings, EncoderNodeSettings
from ..core.encoding.encoder import Encoder
from ..core.encoding.images import set_max_image_pixels
from ..core.encoding.patches import PatchCompressor
from ..core.errors import AnyLocError
from ..core.types import DescriptorFrame
from ..msg import PlaceDescriptor
from .conversions import stamp_to_ns
from .descriptor_msg import frame_to_msg
from .diagnostics import Diagnostics, RateStats, log_error, log_throttled
from .images import depth_msg_to_metres, encode_jpeg, message_to_rgb
from .parameters import declare
from .qos import latched_qos, sensor_qos
from .spin import run_node


class EncoderNode(Node):
    def __init__(self, name: str = "encoder_node", on_frame: Callable[[DescriptorFrame], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)


        self.params = params = declare(self, "encoder_node")  # kept: what the node runs with, for tools and tests
        self.settings = st = params.get(EncoderNodeSettings)

        set_max_image_pixels(st.max_image_pixels)
        self.encoder = Encoder.from_config(params.get(EncoderSelection).build())
        self.signature = self.encoder.signature()
        self.encoder_id = self.signature.id
        self.compressor = PatchCompressor.of(st, self.encoder.backbone.feature_dim)
        self.camera = params.get(CameraSettings)
        self.depth_settings = params.get(DepthSettings)
        self._camera_info: CameraModel | None = None
        self._said_no_intrinsics = False
        if self.camera.model() is None and st.publish_keypoints and self.encoder.provides_keypoints:
            from sensor_msgs.msg import CameraInfo

            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, latched_qos())
        self.on_frame = on_frame
        self.stats = RateStats()
        self.stats.values["encoder_id"] = self.encoder_id
        self.stats.values["descriptor_dim"] = str(self.encoder.dim)
        self._queue: deque[tuple[Any, float, Any]] = deque()  # (image, received, depth image or None)
        self._cv = threading.Condition()
        self._running = True
        self._seq = 0
        self.pub = self.create_publisher(PlaceDescriptor, "descriptors", 10)
        # The full encoder signature, latched: a mapping node creating a new map records it.

        self.info_pub = self.create_publisher(String, "encoder_info", latched_qos())
        self.info_pub.publish(String(data=json.dumps(self.signature, sort_keys=True)))
        qos = sensor_qos(st.qos_depth, st.qos_reliable)
        image_type, image_topic = (CompressedImage, "image/compressed") if st.image_transport == "compressed" \
            else (Image, "image")
        self._last_pair = -float("inf")  # monotonic time a colour frame was last paired with a depth image
        if self.depth_settings.enable:
            self._subscribe_rgbd(image_type, image_topic, qos)
        else:
            self.create_subscription(image_type, image_topic, self._on_image, qos)
        self.diagnostics = Diagnostics(self, "encoder", self.stats)
        self._worker = threading.Thread(target=self._work, name="anyloc-encoder", daemon=True)
        self._worker.start()
        sig = self.signature
        self.get_logger().info(
            f"encoder ready: {sig['backbone']} {sig['model']} layer={sig['layer']} facet={sig['facet']} "
            f"{sig['aggregation']} dim={self.encoder.dim} device={getattr(self.encoder.backbone, 'device', 'onnx')} "
            f"id={self.encoder_id}; listening on {self.resolve_topic_name('image')}"
            f"{'/compressed' if st.image_transport == 'compressed' else ''}")

    def _subscribe_rgbd(self, image_type: Any, image_topic: str, qos: Any) -> None:
        """Colour and depth paired by stamp (ApproximateTimeSynchronizer, slop depth.slop_s). While
        no pair has formed for depth.timeout_s, a colour frame that finds no depth within a short
        grace is encoded alone: a depth camera that stops never stops place recognition."""
        try:
            import message_filters
        except ImportError as exc:
            raise AnyLocError("depth.enable needs the ROS 2 package message_filters (python3-message-filters)") from exc

        colour = message_filters.Subscriber(self, image_type, image_topic, qos_profile=qos)
        depth = message_filters.Subscriber(self, Image, "depth", qos_profile=qos)
        self._sync = message_filters.ApproximateTimeSynchronizer(
            [colour, depth], queue_size=max(self.settings.qos_depth, 5), slop=self.depth_settings.slop_s)
        self._sync.registerCallback(self._on_rgbd)
        colour.registerCallback(self._on_colour)
        self._alone: dict[int, tuple[Any, float]] = {}  # colour frames waiting for a depth (stamp -> msg, arrival)
        self._alone_lock = threading.Lock()
        self._grace_s = self.depth_settings.slop_s + 0.25
        self.create_timer(0.05, self._flush_alone)
        self.get_logger().info(f"pairing {self.resolve_topic_name(image_topic)} with depth "
                               f"{self.resolve_topic_name('depth')} (slop {self.depth_settings.slop_s} s)")

    def _on_rgbd(self, image: Any, depth: Any) -> None:
        self._last_pair = time.monotonic()
        with self._alone_lock:
            self._alone.pop(stamp_to_ns(image.header.stamp), None)
        self.stats.inc("depth_paired")
        self._on_image(image, depth)

    def _on_colour(self, image: Any) -> None:
        if time.monotonic() - self._last_pair <= self.depth_settings.timeout_s:
            return  # depth is flowing: the synchroniser pairs this frame (or drops it, as it would)
        with self._alone_lock:
            self._alone[stamp_to_ns(image.header.stamp)] = (image, time.monotonic())
            while len(self._alone) > self.settings.qos_depth:
                self._alone.pop(min(self._alone))

    def _flush_alone(self) -> None:
        """Colour frames that no depth image joined within the grace: encoded without depth."""
        now = time.monotonic()
        with self._alone_lock:
            due = sorted((s, m) for s, (m, t) in self._alone.items() if now - t >= self._grace_s)
            for s, _ in due:
                del self._alone[s]
        for _, msg in due:
            if self.stats.counts.get("frames_without_depth", 0) == 0:
                self.get_logger().warning(f"no depth image paired for {self.depth_settings.timeout_s} s: encoding "
                                          "colour frames without depth until depth returns")
            self.stats.inc("frames_without_depth")
            self._on_image(msg)

    def _on_camera_info(self, msg: Any) -> None:
        info = CameraModel.from_camera_info(msg.k, msg.d, msg.distortion_model, msg.width, msg.height)
        if info is None:
            return
        if self._camera_info is None:
            K = info.K
            self.get_logger().info(f"intrinsics from camera_info: fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} "
                                   f"cx {K[0, 2]:.1f} cy {K[1, 2]:.1f} ({info.width}x{info.height}, "
                                   f"{info.model if info.distorted else 'no'} distortion)")
        self._camera_info = info

    def camera_model(self, height: int, width: int) -> CameraModel | None:
        """The camera of the image being encoded: the parameters, else camera_info scaled to the image size."""
        return self.camera.camera_for(height, width, self._camera_info)

    def _on_image(self, msg: Any, depth: Any = None) -> None:
        self.stats.inc("frames_received")
        with self._cv:
            if len(self._queue) >= self.settings.queue_size:
                self._queue.popleft()
                self.stats.inc("frames_dropped")
            self._queue.append((msg, time.monotonic(), depth))
            self._cv.notify()

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._running and not self._queue:
                    self._cv.wait(0.5)
                if not self._running:
                    return
                msg, received, depth = self._queue.popleft()
            try:
                self.encode_message(msg, received, depth)
            except AnyLocError as exc:
                self.stats.inc("frames_rejected")
                log_error(self, f"image rejected: {exc}")
            except Exception as exc:  # never let one frame kill the worker
                self.stats.inc("frames_failed")
                log_error(self, f"encoding failed: {type(exc).__name__}: {exc}")

    def encode_message(self, msg: Any, received: float | None = None, depth_msg: Any = None) -> DescriptorFrame:
        t0 = time.perf_counter()
        rgb = message_to_rgb(msg)
        depth = self._depth_of(depth_msg, rgb.shape[:2]) if depth_msg is not None else None
        camera = self.camera_model(*rgb.shape[:2])
        enc = self.encoder.encode_frame(rgb, self.compressor, self.settings.publish_keypoints, camera, depth,
                                        self.camera.mount())
        if enc.local is not None and camera is None and not self._said_no_intrinsics:
            self._said_no_intrinsics = True  # once: a field robot's log is not flooded
            self.get_logger().warning(
                f"no camera intrinsics (camera.fx unset, nothing valid on {self.resolve_topic_name('camera_info')}"
                "): loop closures are verified without a relative pose until a camera_info arrives")
        thumb = encode_jpeg(rgb, self.settings.thumbnail_size) if self.settings.publish_thumbnails else None
        ms = (time.perf_counter() - t0) * 1e3
        frame = DescriptorFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, self._seq, enc.descriptor,
                                self.encoder_id, enc.patches, thumb, ms, enc.local)
        self._seq += 1
        self.stats.inc("frames_encoded")
        self.stats.latency_ms.append(ms)
        self.stats.values["queue_length"] = str(len(self._queue))
        self.pub.publish(frame_to_msg(frame, msg.header))
        if self.on_frame is not None:
            self.on_frame(frame)
        return frame

    def _depth_of(self, msg: Any, size: tuple[int, int]) -> Any:
        """The depth image in metres, or None (logged, counted: the colour frame goes on alone)
        when it cannot be used: another encoding, another size, malformed."""
        d = self.depth_settings
        try:
            depth = depth_msg_to_metres(msg, d.scale, d.min_m, d.max_m)
        except AnyLocError as exc:
            self.stats.inc("depth_rejected")
            log_throttled(self, f"depth image rejected, frames encoded without depth: {exc}", "warn", float("inf"))
            return None
        if depth.shape != size:
            self.stats.inc("depth_rejected")
            log_throttled(self, f"depth image of {depth.shape[1]}x{depth.shape[0]} is not registered to the "
                                f"{size[1]}x{size[0]} colour image (publish the depth aligned to colour); frames "
                                "encoded without depth", "warn", float("inf"))
            return None
        return depth

    def close(self) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
        self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    return run_node(EncoderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
