"""make-bag writes real rosbag2 bags; replay over DDS and offline agree."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, TUM_DESK, XFEAT_ONNX, require

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
