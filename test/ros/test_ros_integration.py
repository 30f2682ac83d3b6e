"""The product as a robot sees it: encoder, mapping and recognition nodes as separate
processes over real DDS (loopback, own domain), fed the real corridor images with poses."""

import time

import numpy as np
import pytest

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, publish_traversal, write_params

from ..conftest import REPO, XFEAT_ONNX, require

pytestmark = [pytest.mark.ros, pytest.mark.realdata]

S = 1_000_000_000
REF_T0, QUERY_T0 = 1000, 2000


@pytest.fixture(scope="module")
def params(tmp_path_factory, corridor_vocab):
    require(XFEAT_ONNX)
    d = tmp_path_factory.mktemp("ros")
    path = write_params(d / "params.yaml", {
        "/**": {"map_path": str(d / "map"), "pose_source": "odom"},
        "encoder_node": {"encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"),
                         "vocabulary": str(corridor_vocab), "device": "cpu", "queue_size": 20,
                         "qos_reliable": True,
                         # nominal pinhole intrinsics (the corridor's fisheye has no calibration): they
                         # make the closures carry relative poses whose fields are checked here
                         "camera.fx": 100.0, "camera.fy": 100.0, "camera.cx": 80.0, "camera.cy": 60.0,
                         "camera.mount_z": 0.5},
        "mapping_node": {"session": "corridor_map", "keyframe.min_distance_m": 0.5},
        "recognition_node": {"exclude_current_session": True, "loop.consistency": 3, "loop.rerank": True,
                             "publish_debug_image": True, "robot_id": "robot_a"},
    })
    return d, path


def _top1_by_stamp(matches, t0, n):
    out = {}
    for m in matches:
        i = m.query_stamp.sec - t0
        if 0 <= i < n and m.keyframe_ids:
            out[i] = int(m.keyframe_ids[0])
    return out


def test_nodes_map_then_recognise_corridor(params, corridor_images, corridor_gt):
    from anyloc_ros.msg import LoopClosure, PlaceMatch
    from anyloc_ros.srv import GetMapInfo, NewSession, SaveMap
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from anyloc_ros.core.geometry import rotation_matrix

    d, pfile = params
    nodes = {m: NodeProcess(m, pfile, d) for m in ("encoder_node", "mapping_node", "recognition_node")}
    t = DriverNode()
    try:
        t.watch(PlaceMatch, "place_matches")
        t.watch(LoopClosure, "loop_closures")
        t.watch(Image, "match_image", 10)
        ip = t.node.create_publisher(Image, "image", 10)
        op = t.node.create_publisher(Odometry, "odom", 100)
        t.wait_matched(ip, 1, 60)
        t.wait_matched(op, 2, 60)
        t.wait_graph("descriptors", 1, 2)  # encoder -> mapping + recognition
        refs, queries = corridor_images["ref"], corridor_images["query"]

        # 1. map traversal, 1 m apart: every frame becomes a keyframe
        publish_traversal(t, ip, op, refs, REF_T0, [(i, 0.0) for i in range(len(refs))], 0)
        time.sleep(0.5)
        info = t.call(GetMapInfo, "get_map_info", GetMapInfo.Request())
        assert info.keyframes == len(refs) and info.current_session == "corridor_map" and info.descriptor_dim == 2048
        assert info.damaged_keyframes == 0

        # 2. a second traversal, as a new session; recognition matches earlier sessions only
        res = t.call(NewSession, "new_session", NewSession.Request(session_id="corridor_query"))
        assert res.success and res.session_id == "corridor_query"
        publish_traversal(t, ip, op, queries, QUERY_T0, [(i, 0.5) for i in range(len(queries))], len(refs))
        matches = t.wait_for("place_matches", len(refs) + len(queries), 10)
        top1 = _top1_by_stamp(matches, QUERY_T0, len(queries))
        assert len(top1) == len(queries)
        recall1 = np.mean([(top1[i] - 1) in corridor_gt[i] for i in range(len(queries))])
        print(f"nodes over DDS: corridor Recall@1 = {recall1:.3f}")
        assert recall1 >= 0.8

        # 3. loop closures: verified, one per revisited stretch (suppress_window 10 of 111 frames),
        # with the right ids, stamps, sessions, poses and frames, and a relative pose with covariance
        loops = [lc for lc in t.received["loop_closures"] if lc.query_stamp.sec >= QUERY_T0]
        assert 3 <= len(loops) <= 111 // 10 + 2
        by_time = sorted(loops, key=lambda lc: lc.query_stamp.sec)
        for a, b in zip(by_time, by_time[1:], strict=False):  # never two closures to one stretch in one revisit:
            # a second one to the same 10 keyframes only after the robot added 10 keyframes of its own (1 per s;
            # the recognition node sees the mapping node's newest keyframe up to one frame late)
            assert abs(b.match_id - a.match_id) > 10 or b.query_stamp.sec - a.query_stamp.sec >= 9
        for lc in loops:
            assert lc.verified and lc.inliers >= 36 and lc.keypoint_matches >= lc.inliers
            assert lc.robot_id == "robot_a" and len(lc.map_id) == 32 and lc.map_id == loops[0].map_id
            assert lc.relative_pose_valid and not lc.scale_known
            cov = np.array(lc.relative_pose.covariance).reshape(6, 6)
            assert np.allclose(cov, cov.T) and np.all(np.diag(cov) > 0) and cov.max() <= 1.01e6
            # monocular: the camera-to-camera translation t is a unit direction; the edge between the base
            # frames (camera.mount_z 0.5 on both) is m - R_b (m + t), with no information along R_b t
            p, o = lc.relative_pose.pose.position, lc.relative_pose.pose.orientation
            Rb, m = rotation_matrix([o.x, o.y, o.z, o.w]), np.array([0.0, 0.0, 0.5])
            t_cam = Rb.T @ (m - np.array([p.x, p.y, p.z])) - m
            assert np.linalg.norm(t_cam) == pytest.approx(1.0, abs=1e-5)
            eig = np.linalg.eigvalsh(cov[:3, :3])
            assert eig[-1] == pytest.approx(1e6, rel=1e-3) and eig[1] < 1.0
        correct = 0
        for lc in loops:
            q = lc.query_stamp.sec - QUERY_T0
            ref = lc.match_id - 1  # keyframe ids 1..111 are the map traversal in order
            assert lc.match_session == "corridor_map" and lc.query_session == "corridor_query"
            assert lc.match_stamp.sec == REF_T0 + ref
            assert lc.match_pose_valid and lc.match_pose.position.x == pytest.approx(ref)
            assert lc.match_pose.position.y == pytest.approx(0.0)
            assert lc.query_pose_valid and lc.query_pose.position.x == pytest.approx(q)
            assert lc.query_pose.position.y == pytest.approx(0.5)
            assert lc.consistent_matches >= 3 and lc.header.frame_id == "odom"  # the odometry's frame
            correct += ref in corridor_gt[q]
        assert correct >= len(loops) - 1  # single-frame: a near miss (1 frame outside +-2) may remain
        dbg = t.wait_for("match_image", 1, 5)
        assert dbg and dbg[-1].encoding == "rgb8" and dbg[-1].width > dbg[-1].height

        # 4. save through the service, restart recognition on the saved map alone. No session is
        # being mapped now, so exclude_current_session excludes nothing: every query image finds
        # its own keyframe of the second traversal (ids after the map traversal's)
        saved = t.call(SaveMap, "save_map", SaveMap.Request())
        assert saved.success and saved.keyframes == len(refs) + len(queries)
        assert nodes["recognition_node"].stop() == 0
        assert nodes["mapping_node"].stop() == 0
        nodes["recognition_node"] = NodeProcess("recognition_node", pfile, d, name="recognition_restarted")
        t.received["place_matches"].clear()
        t.wait_graph("place_matches", 1, 1)
        publish_traversal(t, ip, op, queries, QUERY_T0, [(i, 0.5) for i in range(len(queries))], 0)
        again = _top1_by_stamp(t.received["place_matches"], QUERY_T0, len(queries))
        assert again == {i: len(refs) + 1 + i for i in range(len(queries))}
        for n in nodes.values():
            assert n.alive() or n.proc.returncode == 0
    finally:
        for n in nodes.values():
            n.stop()
        t.close()


def test_recognition_node_publishes_sequence_matches(tmp_path, corridor_vocab, corridor_features, corridor_gt):
    """recognition_node alone, localising on a saved corridor map (the ref traversal), fed the
    query traversal's descriptors over DDS (stamped at 10 Hz): with `sequence.enable` its place matches
    are ranked by sequence score (and carry them) and find the right place where single frames
    do not. Relocalisation hints come only with confirmed loop closures, at the matched
    keyframe's pose."""
    from anyloc_ros.msg import LoopClosure, PlaceDescriptor, PlaceMatch
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from std_msgs.msg import Header

    from anyloc_ros.core.encoding.encoder import Encoder
    from anyloc_ros.core.geometry import Pose
    from anyloc_ros.core.map.database import PlaceDatabase
    from anyloc_ros.core.types import DescriptorFrame, EncoderSignature
    from anyloc_ros.nodes.descriptor_msg import frame_to_msg

    enc = Encoder.from_config({"preset": "xfeat_vlad", "backbone": {"model_path": str(XFEAT_ONNX), "device": "cpu"},
                               "aggregation": {"vocabulary": str(corridor_vocab)}})
    ref = enc.aggregate(corridor_features["ref"])
    queries = enc.aggregate(corridor_features["query"])
    with PlaceDatabase(tmp_path / "map", enc.signature(), session="corridor_map") as db:
        db.add_many(ref, [(REF_T0 + i) * S for i in range(len(ref))], poses=[Pose(i, 0, 0) for i in range(len(ref))])
    encoder_id = EncoderSignature.checked(enc.signature(), "encoder").id
    recall = {}
    for enable in (True, False):
        pfile = write_params(tmp_path / f"p{enable}.yaml", {"/**": {
            "map_path": str(tmp_path / "map"), "descriptor_queue": 200, "loop.rerank": False,
            "sequence.enable": enable}})
        node = NodeProcess("recognition_node", pfile, tmp_path, name=f"recognition_seq_{enable}")
        t = DriverNode()
        try:
            t.watch(PlaceMatch, "place_matches", 200)
            t.watch(LoopClosure, "loop_closures", 200)
            t.watch(PoseWithCovarianceStamped, "relocalization_pose", 200)
            pub = t.node.create_publisher(PlaceDescriptor, "descriptors", 200)
            t.wait_matched(pub, 1, 60)
            t.wait_graph("place_matches", 1, 1)
            for i, d in enumerate(queries):
                stamp = QUERY_T0 * S + i * S // 10
                h = Header(frame_id="camera")
                h.stamp.sec, h.stamp.nanosec = divmod(stamp, S)
                pub.publish(frame_to_msg(DescriptorFrame(stamp, "camera", i, d, encoder_id), h))
                time.sleep(0.02)  # the stamps say 10 Hz; the reliable 200-deep queue keeps every frame
            matches = t.wait_for("place_matches", len(queries), 30)
            assert len(matches) == len(queries)  # none dropped: the sequence is the whole traversal
            top1 = {m.query_id: int(m.keyframe_ids[0]) for m in matches}
            recall[enable] = np.mean([(top1[i] - 1) in corridor_gt[i] for i in range(len(queries))])
            assert all(len(m.sequence_scores) == len(m.keyframe_ids) if enable else not m.sequence_scores
                       for m in matches)
            if enable:  # ranked by sequence score
                assert all(list(m.sequence_scores) == sorted(m.sequence_scores, reverse=True) for m in matches)
            time.sleep(1.0)  # the last frames' loop closures and hints follow their place matches
            loops = {(lc.query_stamp.sec, lc.query_stamp.nanosec): lc.match_id for lc in t.received["loop_closures"]}
            hints = {(h.header.stamp.sec, h.header.stamp.nanosec): h.pose.pose.position.x
                     for h in t.received["relocalization_pose"]}
            assert loops and set(hints) == set(loops)  # one hint per confirmed closure, none otherwise
            assert all(hints[k] == pytest.approx(loops[k] - 1) for k in loops)  # the matched keyframe's pose
            assert node.alive()
        finally:
            node.stop()
            t.close()
    print(f"recognition node over DDS: corridor Recall@1 single {recall[False]:.3f}, sequence {recall[True]:.3f}")
    assert recall[True] >= 0.97 and recall[True] > recall[False]


def test_dds_env_finds_the_large_image_profile_unsourced():
    """`anyloc demo` / `replay` / the benchmarks run as `.venv/bin/python ...` without the venv
    activated (no AMENT_PREFIX_PATH): the loopback environment still carries the FastDDS profile."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "FASTDDS_DEFAULT_PROFILES_FILE")}
    out = subprocess.run([sys.executable, "-c", "import os; from anyloc_ros.tools.ros_driver import isolated_dds_env; "
                          "isolated_dds_env(); print(os.environ['FASTDDS_DEFAULT_PROFILES_FILE'])"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    profile = out.stdout.strip()
    assert profile.endswith("config/fastdds_localhost.xml") and os.path.isfile(profile), out
    assert "<type>SHM</type>" in open(profile).read()
