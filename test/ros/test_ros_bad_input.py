"""Nodes survive malformed input with a logged, counted error, and keep serving."""

import time

import cv2
import pytest

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, write_params

from ..conftest import REPO, XFEAT_ONNX, require

pytestmark = [pytest.mark.ros, pytest.mark.realdata]


def _diag_value(msgs, node, key):
    for arr in reversed(msgs):
        for st in arr.status:
            if st.hardware_id == node:
                for kv in st.values:
                    if kv.key == key:
                        return int(kv.value)
    return 0


def _wait_counter(t, node, key, value, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _diag_value(t.received["/diagnostics"], node, key) >= value:
            return True
        time.sleep(0.2)
    return False


def test_encoder_node_survives_malformed_images(tmp_path, corridor_vocab, corridor_images):
    from anyloc_ros.msg import PlaceDescriptor
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    require(XFEAT_ONNX)
    pfile = write_params(tmp_path / "p.yaml", {"/**": {
        "encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"), "vocabulary": str(corridor_vocab),
        "device": "cpu", "queue_size": 10}})
    raw = NodeProcess("encoder_node", pfile, tmp_path, "-r", "__ns:=/raw", name="raw")
    comp = NodeProcess("encoder_node", pfile, tmp_path, "-r", "__ns:=/comp", "-p", "image_transport:=compressed",
                       name="compressed")
    t = DriverNode()
    try:
        t.watch(PlaceDescriptor, "/raw/descriptors")
        t.watch(PlaceDescriptor, "/comp/descriptors")
        t.watch(DiagnosticArray, "/diagnostics")
        ip = t.node.create_publisher(Image, "/raw/image", 10)
        cp = t.node.create_publisher(CompressedImage, "/comp/image/compressed", 10)
        t.wait_matched(ip, 1, 60)
        t.wait_matched(cp, 1, 60)
        good = corridor_images["ref"][0]
        # warm up: the first frame after discovery proves the path works (best-effort QoS)
        for _attempt in range(10):
            ip.publish(image_msg(good, 100 * 10**9))
            if t.wait_for("/raw/descriptors", 1, 3):
                break
        t.received["/raw/descriptors"].clear()

        bad = []
        m = image_msg(good, 1 * 10**9)
        m.encoding = "weird_encoding"
        bad.append(m)
        m = image_msg(good, 2 * 10**9)
        m.step = 10  # smaller than width * 3
        bad.append(m)
        m = image_msg(good, 3 * 10**9)
        m.height, m.width, m.step, m.data = 0, 0, 0, b""
        bad.append(m)
        m = image_msg(good, 4 * 10**9)
        m.data = m.data[: len(m.data) // 2]  # truncated payload
        bad.append(m)
        m = image_msg(good, 5 * 10**9)
        m.height, m.width = 100000, 100000  # absurd dimensions
        bad.append(m)
        for m in bad:
            ip.publish(m)
            time.sleep(0.1)
        assert _wait_counter(t, "/raw/encoder_node", "frames_rejected", len(bad)), raw.output()[-2000:]
        ip.publish(image_msg(good, 9 * 10**9))
        got = t.wait_for("/raw/descriptors", 1, 30)
        assert len(got) == 1 and got[0].header.stamp.sec == 9 and len(got[0].descriptor) == 2048

        # a camera's steady stream (640x480 rgb8, best effort, 4 Hz) arrives whole: the shipped
        # FastDDS profile's shared memory carries it (FastDDS defaults lose most such frames)
        before = _diag_value(t.received["/diagnostics"], "/raw/encoder_node", "frames_received")
        frame = cv2.resize(good, (640, 480))
        for i in range(8):
            ip.publish(image_msg(frame, (20 + i) * 10**9))
            time.sleep(0.25)
        assert _wait_counter(t, "/raw/encoder_node", "frames_received", before + 8), \
            _diag_value(t.received["/diagnostics"], "/raw/encoder_node", "frames_received") - before

        ok, jpeg = cv2.imencode(".jpg", good[:, :, ::-1])
        jpeg = jpeg.tobytes()
        for _attempt in range(10):  # warm up the compressed path too
            cp.publish(CompressedImage(format="jpeg", data=jpeg))
            if t.wait_for("/comp/descriptors", 1, 3):
                break
        t.received["/comp/descriptors"].clear()
        for data in (jpeg[: len(jpeg) // 3], b"\x89PNG\r\n garbage", b""):
            c = CompressedImage(format="jpeg", data=data)
            c.header.stamp.sec = 1
            cp.publish(c)
            time.sleep(0.1)
        c = CompressedImage(format="jpeg", data=jpeg)
        c.header.stamp.sec = 7
        cp.publish(c)
        got = t.wait_for("/comp/descriptors", 1, 30)
        assert [g.header.stamp.sec for g in got] == [7]
        assert _wait_counter(t, "/comp/encoder_node", "frames_rejected", 3)
        assert raw.alive() and comp.alive()
        for log in (raw.output(), comp.output()):
            assert "image rejected" in log
        assert "unsupported image encoding 'weird_encoding'" in raw.output()
        # no camera.fx and no camera_info: said once, naming the topic it listens on
        assert raw.output().count("no camera intrinsics") == 1
        assert "nothing valid on /raw/camera_info" in raw.output()
    finally:
        raw.stop()
        comp.stop()
        t.close()


def test_bad_parameters_are_a_clear_startup_error(tmp_path):
    pfile = write_params(tmp_path / "p.yaml", {"/**": {"map_path": str(tmp_path / "m"), "top_k": 0,
                                                       "index.type": "annoy", "loop.min_score": 2.0}})
    node = NodeProcess("recognition_node", pfile, tmp_path)
    assert node.proc.wait(60) == 1
    out = node.output()
    assert "start-up error" in out and "top_k" in out and "index.type" in out and "loop.min_score" in out
    assert "Traceback" not in out


def test_encoder_node_pairs_depth_and_survives_bad_depth(tmp_path, corridor_vocab, tum_rgbd):
    """depth.enable: colour and registered depth paired by stamp (ApproximateTimeSynchronizer)
    give each keypoint its depth on the descriptor; a depth image of another size or encoding is
    logged once, counted, and its colour frame still encoded (without depths); with no depth at
    all the colour frames go on alone after depth.timeout_s."""
    import numpy as np
    from anyloc_ros.msg import PlaceDescriptor
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    require(XFEAT_ONNX)
    frames, camera, _, _ = tum_rgbd
    K = camera.K
    pfile = write_params(tmp_path / "p.yaml", {"/**": {
        "encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"), "vocabulary": str(corridor_vocab),
        "device": "cpu", "queue_size": 10, "qos_reliable": True, "depth.enable": True, "depth.timeout_s": 2.0,
        "camera.fx": float(K[0, 0]), "camera.fy": float(K[1, 1]), "camera.cx": float(K[0, 2]),
        "camera.cy": float(K[1, 2]), "camera.distortion": [float(d) for d in camera.distortion]}})
    node = NodeProcess("encoder_node", pfile, tmp_path, name="rgbd")
    t = DriverNode()

    def depth_msg(depth_m, stamp_ns, encoding="16UC1"):
        m = Image()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        mm = np.nan_to_num(depth_m * 1000).astype(np.uint16)
        m.height, m.width = mm.shape
        m.encoding, m.step, m.data = encoding, mm.shape[1] * 2, mm.tobytes()
        return m

    try:
        t.watch(PlaceDescriptor, "descriptors")
        t.watch(DiagnosticArray, "/diagnostics")
        ip = t.node.create_publisher(Image, "image", 10)
        dp = t.node.create_publisher(Image, "depth", 10)
        t.wait_matched(ip, 1, 60)
        t.wait_matched(dp, 1, 60)
        f = frames[0]
        for k in range(3):  # paired: 15 ms apart (as TUM's Kinect), within the default slop
            ip.publish(image_msg(f.rgb, (10 + k) * 10**9))
            dp.publish(depth_msg(f.depth, (10 + k) * 10**9 - 15_000_000))
        got = t.wait_for("descriptors", 3, 60)
        assert len(got) == 3, node.output()[-2000:]
        d = np.asarray(got[0].keypoint_depths, np.float32)
        assert len(d) == len(got[0].keypoints) // 2 and np.isfinite(d).sum() > 300
        assert np.nanmedian(d) == pytest.approx(np.nanmedian(f.depth), rel=0.2)
        t.received["descriptors"].clear()
        ip.publish(image_msg(f.rgb, 20 * 10**9))  # a depth image of half the size: not registered to colour
        dp.publish(depth_msg(f.depth[::2, ::2], 20 * 10**9))
        ip.publish(image_msg(f.rgb, 21 * 10**9))  # a colour image published as "depth"
        bad = image_msg(f.rgb, 21 * 10**9)
        dp.publish(bad)
        got = t.wait_for("descriptors", 2, 60)
        assert [g.header.stamp.sec for g in got] == [20, 21] and all(len(g.keypoint_depths) == 0 for g in got)
        assert _wait_counter(t, "/encoder_node", "depth_rejected", 2)
        t.received["descriptors"].clear()
        time.sleep(2.5)  # the depth stream has stopped: colour frames go on alone
        for k in range(2):
            ip.publish(image_msg(f.rgb, (30 + k) * 10**9))
            time.sleep(0.2)
        got = t.wait_for("descriptors", 2, 60)
        assert [g.header.stamp.sec for g in got] == [30, 31]
        assert _wait_counter(t, "/encoder_node", "frames_without_depth", 2)
        log = node.output()
        assert log.count("is not registered to the 320x240 colour image") == 0  # the message names the sizes
        assert log.count("is not registered to the 640x480 colour image") == 1  # logged once
        assert log.count("is not a depth encoding") == 1 and node.alive()
    finally:
        node.stop()
        t.close()
