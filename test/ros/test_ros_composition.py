"""The encoder's bounded queue under load. (The composed pipeline itself is tested through its
launch file: test_launch_composed.py.)"""

import time

import numpy as np
import pytest

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, write_params

from ..conftest import REPO, XFEAT_ONNX, require

pytestmark = [pytest.mark.ros, pytest.mark.realdata]
N = 40


def test_encoder_accounts_for_every_frame_of_a_burst_over_dds(tmp_path, corridor_vocab, corridor_images):
    from anyloc_ros.msg import PlaceDescriptor
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    require(XFEAT_ONNX)
    pfile = write_params(tmp_path / "p.yaml", {"/**": {
        "encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"), "vocabulary": str(corridor_vocab),
        "device": "cpu", "queue_size": 1, "qos_reliable": True, "qos_depth": 200}})
    proc = NodeProcess("encoder_node", pfile, tmp_path)
    t = DriverNode()
    try:
        t.watch(PlaceDescriptor, "descriptors", 1000)
        t.watch(DiagnosticArray, "/diagnostics")
        ip = t.node.create_publisher(Image, "image", 1000)
        t.wait_matched(ip, 1, 90)
        time.sleep(1.0)
        n = 60
        for i in range(n):  # far faster than ~30 ms/frame encoding
            ip.publish(image_msg(corridor_images["ref"][i % 111], (i + 1) * 10**9))
        time.sleep(4.0)
        got = len(t.received["descriptors"])

        def counter(key):
            for arr in reversed(t.received["/diagnostics"]):
                for st in arr.status:
                    for kv in st.values:
                        if kv.key == key:
                            return int(kv.value)
            return 0

        deadline = time.time() + 10
        while counter("frames_received") < n and time.time() < deadline:
            time.sleep(0.2)
        # every frame is accounted for, whatever the encoder's speed (which frames are dropped is
        # tested deterministically in test_bounded_queue_keeps_the_newest_and_counts_the_rest)
        assert counter("frames_received") == n
        assert counter("frames_dropped") + counter("frames_encoded") == n
        assert counter("frames_encoded") == got
    finally:
        proc.stop()
        t.close()


def test_bounded_queue_keeps_the_newest_and_counts_the_rest(tmp_path):
    """The encoder node's queue, deterministically: while the worker is busy with one frame,
    a burst of n frames leaves only the newest queued and n - 2 dropped and counted."""
    import threading

    import rclpy
    import yaml

    from anyloc_ros.nodes.encoder_node import EncoderNode
    from anyloc_ros.testing import save_random_dinov2
    from anyloc_ros.tools.ros_driver import image_msg

    save_random_dinov2(tmp_path / "model")
    cfg = tmp_path / "enc.yaml"
    cfg.write_text(yaml.safe_dump({"backbone": {"type": "dinov2", "model": str(tmp_path / "model"), "layer": 2,
                                                "max_side": 56}, "aggregation": {"type": "gem"}}))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-p", f"encoder_config:={cfg}", "-p", "queue_size:=1",
                                  "-p", "device:=cpu"])
    node = EncoderNode(context=ctx)
    release, busy, done = threading.Event(), threading.Event(), []

    def slow_encode(msg, received=None, depth=None):  # the worker's encoder, held until released
        busy.set()
        release.wait(10)
        done.append(msg.header.stamp.sec)

    node.encode_message = slow_encode
    try:
        img = np.zeros((56, 56, 3), np.uint8)
        node._on_image(image_msg(img, 1 * 10**9))
        assert busy.wait(10)  # the worker holds frame 1
        n = 20
        for i in range(2, n + 2):
            node._on_image(image_msg(img, i * 10**9))
        assert node.stats.counts["frames_received"] == n + 1
        assert node.stats.counts["frames_dropped"] == n - 1  # queue_size 1: only the newest waits
        release.set()
        deadline = time.time() + 10
        while len(done) < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert done == [1, n + 1]  # the frame in hand, then the newest; the rest never encoded
    finally:
        release.set()
        node.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
