"""make-bag writes real rosbag2 bags; replay over DDS and offline agree."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ..conftest import REPO, TUM_DESK, TUM_RGBD, XFEAT_ONNX, require

pytestmark = pytest.mark.realdata
XFEAT_CFG = REPO / "config" / "encoders" / "xfeat_vlad.yaml"
TUM_FR2_K = ("520.9", "521.0", "325.1", "249.7")  # fx fy cx cy of TUM's freiburg2 camera


def anyloc(*args):
    return subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def gt_lines_in_span(stamps):
    rows = [ln.split() for ln in (TUM_DESK / "groundtruth.txt").read_text().splitlines() if not ln.startswith("#")]
    t = np.array([float(r[0]) for r in rows if r])
    return int(np.sum((t >= min(stamps) - 0.5) & (t <= max(stamps) + 0.5)))


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    require(TUM_DESK)
    d = tmp_path_factory.mktemp("bags")
    for name, extra in (("raw", ["--camera", *TUM_FR2_K]), ("mcap", ["--storage", "mcap", "--compressed",
                                                                        "--camera", *TUM_FR2_K]), ("nocam", [])):
        r = anyloc("make-bag", "--images", str(TUM_DESK / "rgb"), "--trajectory", str(TUM_DESK / "groundtruth.txt"),
                   "--output", str(d / name), "--quiet", *extra)
        assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("name,storage,img_type", [("raw", "sqlite3", "sensor_msgs/msg/Image"),
                                                   ("mcap", "mcap", "sensor_msgs/msg/CompressedImage")])
def test_make_bag_reads_back_with_rosbags(bags, name, storage, img_type):
    import cv2
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    files = sorted((TUM_DESK / "rgb").glob("*.png"))
    stamps = [float(p.stem) for p in files]
    import yaml

    meta = yaml.safe_load((bags / name / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage and meta["version"] == 9
    with Reader(bags / name) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {"/camera/image_raw": img_type, "/odom": "nav_msgs/msg/Odometry",
                         "/camera/camera_info": "sensor_msgs/msg/CameraInfo"}
        images, odoms, infos, last = [], 0, [], -1
        for conn, t, raw in reader.messages():
            assert t >= last  # written in time order
            last = t
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/camera/camera_info":
                infos.append((t, msg))
            elif conn.topic == "/odom":
                odoms += 1
                assert abs(np.linalg.norm([msg.pose.pose.orientation.x, msg.pose.pose.orientation.y,
                                           msg.pose.pose.orientation.z, msg.pose.pose.orientation.w]) - 1) < 1e-3
            else:
                images.append(msg)
                assert t == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert len(images) == 20 and odoms == gt_lines_in_span(stamps)
    # one CameraInfo per image, at its stamp, for the image's size
    assert [t for t, _ in infos] == [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images]
    assert all((i.width, i.height) == (640, 480) for _, i in infos)
    np.testing.assert_allclose(infos[0][1].k, [520.9, 0, 325.1, 0, 521.0, 249.7, 0, 0, 1])
    for msg, s in zip(images, stamps, strict=True):
        assert abs(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - s) < 1e-6
    first = cv2.imread(str(files[0]))
    if img_type.endswith("/Image"):
        assert (images[0].height, images[0].width, images[0].encoding) == (480, 640, "bgr8")
        np.testing.assert_array_equal(images[0].data.reshape(480, 640, 3), first)
    else:
        np.testing.assert_array_equal(cv2.imdecode(images[0].data, cv2.IMREAD_COLOR), first)


@pytest.mark.ros
def test_replay_dds_and_offline_give_the_same_matches(bags, tmp_path, corridor_vocab):
    require(XFEAT_ONNX)
    enc = ["--config", str(XFEAT_CFG), "--vocabulary", str(corridor_vocab), "--device", "cpu"]
    # build a map from the bag (offline), then localise the other bag against it both ways
    r = anyloc("replay", str(bags / "raw"), "--offline", *enc, "--output", str(tmp_path / "build"))
    assert r.returncode == 0, r.stderr
    map_dir = tmp_path / "build" / "map_offline"
    off = anyloc("replay", str(bags / "raw"), "--offline", "--map", str(map_dir), *enc, "--output", str(tmp_path / "o"))
    dds = anyloc("replay", str(bags / "mcap"), "--map", str(map_dir), *enc, "--rate", "0.5", "--output",
                 str(tmp_path / "d"))
    assert off.returncode == 0, off.stderr
    assert dds.returncode == 0, dds.stderr + dds.stdout
    a = json.loads((tmp_path / "o" / "replay_offline.json").read_text())
    b = json.loads((tmp_path / "d" / "replay_dds.json").read_text())
    assert a["frames"] == b["frames"] == 20 and a["frames_matched"] == 20
    assert [m["stamp_ns"] for m in a["matches"]] == [m["stamp_ns"] for m in b["matches"]]
    # raw bgr8 (offline) vs jpeg -> CompressedImage (DDS) decode to the same pixels for PNG sources
    assert [m["top_ids"] for m in a["matches"]] == [m["top_ids"] for m in b["matches"]]
    for x, y in zip(a["matches"], b["matches"], strict=True):
        np.testing.assert_allclose(x["scores"], y["scores"], atol=1e-4)
    assert [m["loop_match"] for m in a["matches"]] == [m["loop_match"] for m in b["matches"]]
    assert b["latency_ms_median"] > 0
    # the bags' camera_info reaches verification both ways: closures carry relative poses
    # (the DDS one through the encoder node's camera_info subscription)
    assert a["loop_closures"] > 0
    assert a["loop_closures_with_relative_pose"] == b["loop_closures_with_relative_pose"] == a["loop_closures"]
    assert [m["loop_relative_pose"] for m in a["matches"]] == [m["loop_relative_pose"] for m in b["matches"]]
    # the same frames without camera_info: closures verified by the fundamental matrix, no pose
    r = anyloc("replay", str(bags / "nocam"), "--offline", "--map", str(map_dir), *enc, "--output", str(tmp_path / "n"))
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "n" / "replay_offline.json").read_text())
    assert c["loop_closures"] > 0 and c["loop_closures_with_relative_pose"] == 0


def test_bag_errors(bags, tmp_path):
    r = anyloc("replay", str(bags / "raw"), "--offline", "--config", str(XFEAT_CFG), "--image-topic", "/nope",
               "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no image topic /nope" in r.stderr
    r = anyloc("replay", str(tmp_path / "missing_bag"), "--offline", "--config", str(XFEAT_CFG))
    assert r.returncode == 2 and "bag not found" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = anyloc("make-bag", "--images", str(empty), "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "no images" in r.stderr
    r = anyloc("make-bag", "--images", str(TUM_DESK / "rgb"), "--output", str(tmp_path / "c"), "--camera", "0", "1",
               "2", "3")
    assert r.returncode == 2 and "fx, fy > 0" in r.stderr and not (tmp_path / "c").exists()
    r = anyloc("replay", str(bags / "nocam"), "--offline", "--config", str(XFEAT_CFG), "--camera-info-topic",
               "/odom", "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no camera_info topic /odom" in r.stderr
    # depth: colour images are not depth images; distortion needs the intrinsics; a depth topic must exist
    r = anyloc("make-bag", "--images", str(TUM_DESK / "rgb"), "--depth", str(TUM_DESK / "rgb"), "--output",
               str(tmp_path / "d1"))
    assert r.returncode == 2 and "is not a 16-bit single-channel depth image" in r.stderr and not (tmp_path / "d1").exists()
    r = anyloc("make-bag", "--images", str(TUM_DESK / "rgb"), "--distortion", "0.1", "0", "0", "0", "0",
               "--output", str(tmp_path / "d2"))
    assert r.returncode == 2 and "distortion needs --camera" in r.stderr
    r = anyloc("replay", str(bags / "nocam"), "--offline", "--config", str(XFEAT_CFG), "--depth-topic", "/odom",
               "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no depth image topic /odom" in r.stderr


# Replay settings for the 26 s fr1/xyz sequence: every frame may close a loop with keyframes
# 1 s and more back (the defaults exclude the last 30 s: no closure at all in so short a bag).
RGBD_REPLAY = {"mapping_node": {"keyframe.min_distance_m": 0.05, "keyframe.min_rotation_deg": 5.0},
               "recognition_node": {"loop.exclude_recent_count": 1, "loop.exclude_recent_s": 1.0, "loop.consistency": 1,
                                    "loop.suppress_window": 0, "loop.min_score": 0.0}}


@pytest.fixture(scope="module")
def rgbd_bag(tmp_path_factory):
    """TUM fr1/xyz as an RGB-D camera records it: colour, registered depth (16UC1 mm), CameraInfo
    with the fr1 calibration and distortion, and the motion capture as odometry."""
    import yaml

    require(TUM_RGBD)
    cam = yaml.safe_load((TUM_RGBD / "camera.yaml").read_text())
    out = tmp_path_factory.mktemp("rgbd") / "fr1_xyz"
    r = anyloc("make-bag", "--images", str(TUM_RGBD / "rgb"), "--depth", str(TUM_RGBD / "depth"), "--depth-scale",
               str(cam["depth_scale"]), "--trajectory", str(TUM_RGBD / "groundtruth.txt"), "--camera",
               *(str(cam[k]) for k in ("fx", "fy", "cx", "cy")), "--distortion", *map(str, cam["distortion"]),
               "--output", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_make_bag_writes_registered_depth_in_millimetres(rgbd_bag):
    import cv2
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    with Reader(rgbd_bag) as reader:
        conns = {c.topic: c for c in reader.connections}
        assert conns["/camera/aligned_depth_to_color/image_raw"].msgtype == "sensor_msgs/msg/Image"
        depth = [ts.deserialize_cdr(raw, c.msgtype) for c, _, raw in
                 reader.messages(connections=[conns["/camera/aligned_depth_to_color/image_raw"]])]
        info = next(ts.deserialize_cdr(raw, c.msgtype) for c, _, raw in
                    reader.messages(connections=[conns["/camera/camera_info"]]))
    first = sorted((TUM_RGBD / "depth").glob("*.png"))[0]
    png = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert len(depth) == 40 and depth[0].encoding == "16UC1"
    assert abs(depth[0].header.stamp.sec + depth[0].header.stamp.nanosec * 1e-9 - float(first.stem)) < 1e-6
    mm = depth[0].data.view(np.uint16).reshape(480, 640)
    assert np.abs(mm.astype(float) - png / 5.0).max() <= 0.5  # 1/5000 m -> mm, rounded
    assert info.distortion_model == "plumb_bob" and np.allclose(info.d, [0.2624, -0.9531, -0.0054, 0.0026, 1.1633])


@pytest.mark.ros
def test_rgbd_bag_replays_into_metric_closures_offline_and_over_dds(rgbd_bag, tmp_path, corridor_vocab):
    """The RGB-D bag through the real nodes (DDS) and offline: the same closures, every one
    verified by PnP on depth with a metric relative pose (both cameras measure depth: metric or
    none), right against the motion capture (replay --ground-truth odom) with errors inside their
    published covariance; none between places more than 1 m apart. Measured 2026-12-06: 37
    closures, translation error median 0.9 cm, rotation 0.60 deg, all inside the 95% ellipsoid,
    both ways. The mapping node usually stores a frame before the recognition node queries it;
    the recent-keyframe rules count back from the query, so that does not change a closure
    (test_loop_closure.py, lead)."""
    from anyloc_ros.tools.ros_driver import write_params

    require(XFEAT_ONNX)
    params = write_params(tmp_path / "p.yaml", RGBD_REPLAY)
    enc = ["--config", str(XFEAT_CFG), "--vocabulary", str(corridor_vocab), "--device", "cpu", "--params-file",
           str(params), "--ground-truth", "odom"]
    off = anyloc("replay", str(rgbd_bag), "--offline", *enc, "--output", str(tmp_path / "o"))
    dds = anyloc("replay", str(rgbd_bag), *enc, "--output", str(tmp_path / "d"))
    assert off.returncode == 0, off.stderr
    assert dds.returncode == 0, dds.stderr + dds.stdout
    a = json.loads((tmp_path / "o" / "replay_offline.json").read_text())
    b = json.loads((tmp_path / "d" / "replay_dds.json").read_text())
    print(off.stdout, dds.stdout)
    assert a["skipped"] == b["skipped"] == {}
    key = [(c["query_stamp_ns"], c["match_id"]) for c in a["closures"]]
    assert key == [(c["query_stamp_ns"], c["match_id"]) for c in b["closures"]] and len(key) >= 25
    for x, y in zip(a["closures"], b["closures"], strict=True):
        assert x["verified"] and y["verified"] and x["relative_pose"] is not None
        assert x["scale_known"] and y["scale_known"]
        np.testing.assert_allclose(x["relative_pose"], y["relative_pose"], atol=1e-4)
        assert x["true_distance_m"] <= 1.0 and y["true_distance_m"] <= 1.0
    for run in (a, b):
        e = run["relative_pose_errors"]
        assert e["metric"] and e["closures_scored"] == run["loop_closures_metric"]
        assert e["translation_error_m_median"] <= 0.02 and e["rotation_error_deg_median"] <= 1.0
        assert e["translation_error_m_p90"] <= 0.04 and e["inside_95_ellipsoid"] >= 0.85
        assert e["largest_true_distance_m"] <= 1.0 and (tmp_path / ("o" if run is a else "d") /
                                                          f"closure_errors_{run['mode']}.png").stat().st_size > 0
    assert a["loop_closures_metric"] == b["loop_closures_metric"] == len(key)
    # the report's true loops follow the run's own recency rule (1 s here), so every closure counts
    assert a["true_loop_min_gap_s"] == 1.0 and a["loop_precision"] == b["loop_precision"] == 1.0


@pytest.mark.ros
def test_two_bags_replay_as_two_robots_offline_and_over_dds(tmp_path, corridor_vocab):
    """TUM fr1/xyz split in two RGB-D bags, two robots (#25): robot_a maps the first half, robot_b
    replays the second matching only robot_a's keyframes (exclude_current_session). Offline (the
    core objects) and over DDS (each robot's nodes in its namespace, keyframes and local features
    over the fleet topics) give the same inter-robot closures, every one metric and right against
    the motion capture. Measured 2026-12-06: 20 closures both ways, 1.2 cm / 0.65 deg median."""
    import yaml

    from anyloc_ros.tools.ros_driver import write_params

    require(TUM_RGBD)
    require(XFEAT_ONNX)
    cam = yaml.safe_load((TUM_RGBD / "camera.yaml").read_text())
    rgb, depth = sorted((TUM_RGBD / "rgb").glob("*.png")), sorted((TUM_RGBD / "depth").glob("*.png"))
    bags = {}
    for robot, part in (("a", slice(0, 20)), ("b", slice(20, 40))):
        for kind, files in (("rgb", rgb[part]), ("depth", depth[part])):
            (tmp_path / robot / kind).mkdir(parents=True)
            for f in files:
                (tmp_path / robot / kind / f.name).symlink_to(f)
        bags[robot] = tmp_path / f"bag_{robot}"
        r = anyloc("make-bag", "--images", str(tmp_path / robot / "rgb"), "--depth", str(tmp_path / robot / "depth"),
                   "--depth-scale", str(cam["depth_scale"]), "--trajectory", str(TUM_RGBD / "groundtruth.txt"),
                   "--camera", *(str(cam[k]) for k in ("fx", "fy", "cx", "cy")), "--distortion",
                   *map(str, cam["distortion"]), "--output", str(bags[robot]), "--quiet")
        assert r.returncode == 0, r.stderr
    sections = {k: dict(v) for k, v in RGBD_REPLAY.items()}
    sections["recognition_node"].update({"exclude_current_session": True, "fleet.max_feature_requests_per_s": 0.0})
    params = write_params(tmp_path / "p.yaml", sections)
    run = ["replay", str(bags["b"]), "--peer-bag", str(bags["a"]), "--config", str(XFEAT_CFG), "--vocabulary",
           str(corridor_vocab), "--device", "cpu", "--params-file", str(params), "--ground-truth",
           str(TUM_RGBD / "groundtruth.txt")]
    off = anyloc(*run, "--offline", "--output", str(tmp_path / "o"))
    dds = anyloc(*run, "--output", str(tmp_path / "d"))
    assert off.returncode == 0, off.stderr
    assert dds.returncode == 0, dds.stderr + dds.stdout
    print(off.stdout, dds.stdout)
    a = json.loads((tmp_path / "o" / "replay_offline.json").read_text())
    b = json.loads((tmp_path / "d" / "replay_dds.json").read_text())
    key = [(c["query_stamp_ns"], c["match_robot_id"], c["match_id"]) for c in a["closures"]]
    assert key == [(c["query_stamp_ns"], c["match_robot_id"], c["match_id"]) for c in b["closures"]]
    assert len(key) >= 10 and all(robot == "robot_a" for _, robot, _ in key)
    assert a["inter_robot_closures"] == b["inter_robot_closures"] == len(key)
    for x, y in zip(a["closures"], b["closures"], strict=True):
        assert x["verified"] and x["scale_known"] and y["scale_known"]
        np.testing.assert_allclose(x["relative_pose"], y["relative_pose"], atol=1e-4)
    for run_ in (a, b):
        e = run_["relative_pose_errors"]
        assert e["closures_scored"] == len(key)
        assert e["translation_error_m_median"] <= 0.02 and e["rotation_error_deg_median"] <= 1.0
        assert e["inside_95_ellipsoid"] >= 0.85
