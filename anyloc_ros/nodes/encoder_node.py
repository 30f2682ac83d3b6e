"""Encoder node: camera images in, place descriptors out.

Subscribes `image` (sensor_msgs/Image) or `image/compressed` (CompressedImage) with
sensor-data QoS into a bounded queue; a worker thread encodes the newest frames on the
configured device and publishes `descriptors` (anyloc_ros/PlaceDescriptor), with keypoints
for geometric verification when the backbone has keypoint heads (XFeat) and the camera's
intrinsics (`camera.fx` ... parameters, else `camera_info`) and mount (`camera.mount_*`). When the encoder
cannot keep up, the oldest queued frames are dropped and counted (never a growing backlog).
A malformed image is logged and counted; the node keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.node import Node

from ..core.config import EncoderSelection
from ..core.encoder import Encoder
from ..core.errors import AnyLocError
from ..core.params import CameraInfoIntrinsics, CameraSettings, EncoderNodeSettings
from ..core.types import DescriptorFrame
from .conversions import encode_jpeg, message_to_rgb, stamp_to_ns
from .descriptor_msg import frame_to_msg
from .diagnostics import Diagnostics, RateStats, log_error
from .parameters import declare
from .qos import latched_qos, sensor_qos
from .spin import run_node


class EncoderNode(Node):
    def __init__(self, name: str = "encoder_node", on_frame: Callable[[DescriptorFrame], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        from sensor_msgs.msg import CompressedImage, Image

        from ..msg import PlaceDescriptor

        self.params = params = declare(self, "encoder_node")  # kept: what the node runs with, for tools and tests
        self.settings = st = params.get(EncoderNodeSettings)
        from ..core.images import set_max_image_pixels

        set_max_image_pixels(st.max_image_pixels)
        self.encoder = Encoder.from_config(params.get(EncoderSelection).build())
        self.signature = self.encoder.signature()
        self.encoder_id = self.signature.id
        self.compressor = st.patch_compressor(self.encoder.backbone.feature_dim)
        self.camera = params.get(CameraSettings)
        self._camera_info: CameraInfoIntrinsics | None = None
        self._said_no_intrinsics = False
        if self.camera.camera_matrix() is None and st.publish_keypoints and self.encoder.provides_keypoints:
            from sensor_msgs.msg import CameraInfo

            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, latched_qos())
        self.on_frame = on_frame
        self.stats = RateStats()
        self.stats.values["encoder_id"] = self.encoder_id
        self.stats.values["descriptor_dim"] = str(self.encoder.dim)
        self._queue: deque[tuple[Any, float]] = deque()
        self._cv = threading.Condition()
        self._running = True
        self._seq = 0
        self.pub = self.create_publisher(PlaceDescriptor, "descriptors", 10)
        # The full encoder signature, latched: a mapping node creating a new map records it.
        from std_msgs.msg import String

        self.info_pub = self.create_publisher(String, "encoder_info", latched_qos())
        self.info_pub.publish(String(data=json.dumps(self.signature, sort_keys=True)))
        qos = sensor_qos(st.qos_depth, st.qos_reliable)
        if st.image_transport == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos)
        else:
            self.create_subscription(Image, "image", self._on_image, qos)
        self.diagnostics = Diagnostics(self, "encoder", self.stats)
        self._worker = threading.Thread(target=self._work, name="anyloc-encoder", daemon=True)
        self._worker.start()
        sig = self.signature
        self.get_logger().info(
            f"encoder ready: {sig['backbone']} {sig['model']} layer={sig['layer']} facet={sig['facet']} "
            f"{sig['aggregation']} dim={self.encoder.dim} device={getattr(self.encoder.backbone, 'device', 'onnx')} "
            f"id={self.encoder_id}; listening on {self.resolve_topic_name('image')}"
            f"{'/compressed' if st.image_transport == 'compressed' else ''}")

    def _on_camera_info(self, msg: Any) -> None:
        info = CameraInfoIntrinsics.from_k(msg.k, msg.width, msg.height)
        if info is None:
            return
        if self._camera_info is None:
            K = info.K
            self.get_logger().info(f"intrinsics from camera_info: fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} "
                                   f"cx {K[0, 2]:.1f} cy {K[1, 2]:.1f} ({info.width}x{info.height})")
        self._camera_info = info

    def camera_matrix(self, height: int, width: int) -> np.ndarray | None:
        """K of the image being encoded: the parameters, else camera_info scaled to the image size."""
        return self.camera.camera_matrix_for(height, width, self._camera_info)

    def _on_image(self, msg: Any) -> None:
        self.stats.inc("frames_received")
        with self._cv:
            if len(self._queue) >= self.settings.queue_size:
                self._queue.popleft()
                self.stats.inc("frames_dropped")
            self._queue.append((msg, time.monotonic()))
            self._cv.notify()

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._running and not self._queue:
                    self._cv.wait(0.5)
                if not self._running:
                    return
                msg, received = self._queue.popleft()
            try:
                self.encode_message(msg, received)
            except AnyLocError as exc:
                self.stats.inc("frames_rejected")
                log_error(self, f"image rejected: {exc}")
            except Exception as exc:  # never let one frame kill the worker
                self.stats.inc("frames_failed")
                log_error(self, f"encoding failed: {type(exc).__name__}: {exc}")

    def encode_message(self, msg: Any, received: float | None = None) -> DescriptorFrame:
        t0 = time.perf_counter()
        rgb = message_to_rgb(msg)
        enc = self.encoder.encode_frame(rgb, self.compressor, self.settings.publish_keypoints)
        if enc.local is not None:
            enc.local.camera_matrix = self.camera_matrix(*rgb.shape[:2])
            enc.local.camera_mount = self.camera.mount()
            if enc.local.camera_matrix is None and not self._said_no_intrinsics:
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

    def close(self) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
        self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    return run_node(EncoderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
