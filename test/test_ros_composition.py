"""anyloc_pipeline (all nodes in one process) and the encoder's bounded queue under load."""

import time

import numpy as np
import pytest

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, publish_traversal, write_params

from .conftest import REPO, XFEAT_ONNX, require

pytestmark = [pytest.mark.ros, pytest.mark.realdata]
N = 40


def test_composed_pipeline_maps_and_recognises(tmp_path, corridor_vocab, corridor_images, corridor_gt):
    from anyloc_ros.msg import LoopClosure, PlaceMatch
    from anyloc_ros.srv import GetMapInfo, NewSession
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    require(XFEAT_ONNX)
    pfile = write_params(tmp_path / "p.yaml", {
        "/**": {"map_path": str(tmp_path / "map"), "pose_source": "odom"},
        "encoder_node": {"encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"),
                         "vocabulary": str(corridor_vocab), "device": "cpu", "queue_size": 20,
                         "qos_reliable": True},
        "recognition_node": {"exclude_current_session": True},
    })
    proc = NodeProcess("composition", pfile, tmp_path, "-p", "mode:=full", name="pipeline")
    t = DriverNode()
    try:
        t.watch(PlaceMatch, "place_matches")
        t.watch(LoopClosure, "loop_closures")
        ip = t.node.create_publisher(Image, "image", 10)
        op = t.node.create_publisher(Odometry, "odom", 100)
        t.wait_matched(ip, 1, 90)
        t.wait_matched(op, 2, 90)
        publish_traversal(t, ip, op, corridor_images["ref"][:N], 100, [(i, 0.0) for i in range(N)], 0)
        assert t.call(NewSession, "new_session", NewSession.Request(session_id="second")).success
        publish_traversal(t, ip, op, corridor_images["query"][:N], 500, [(i, 0.3) for i in range(N)], N)
        info = t.call(GetMapInfo, "get_map_info", GetMapInfo.Request())
        assert info.keyframes == 2 * N and info.sessions == 2
        q = [m for m in t.received["place_matches"] if m.query_stamp.sec >= 500]
        hits = [(m.keyframe_ids[0] - 1) in corridor_gt[m.query_stamp.sec - 500] for m in q if m.keyframe_ids]
        assert len(q) == N and np.mean(hits) >= 0.8
        loops = t.received["loop_closures"]
        assert loops and all(lc.match_session != "second" for lc in loops)  # exclude_current_session
        assert proc.alive()
    finally:
        proc.stop()
        t.close()


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
