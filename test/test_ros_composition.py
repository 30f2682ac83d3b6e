"""The encoder's bounded queue under load. (The composed pipeline itself is tested through its
launch file: test_launch_composed.py.)"""

import time

import pytest

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, write_params

from .conftest import REPO, XFEAT_ONNX, require

pytestmark = [pytest.mark.ros, pytest.mark.realdata]
N = 40


def test_encoder_drops_and_counts_frames_it_cannot_keep_up_with(tmp_path, corridor_vocab, corridor_images):
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
        assert counter("frames_received") == n
        assert 0 < got < n
        assert counter("frames_dropped") == n - counter("frames_encoded") > 0
        assert counter("frames_encoded") == got
    finally:
        proc.stop()
        t.close()
