"""make-bag writes real rosbag2 bags; replay over DDS and offline agree."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, TUM_DESK, XFEAT_ONNX, require

pytestmark = pytest.mark.realdata
XFEAT_CFG = REPO / "config" / "encoders" / "xfeat_vlad.yaml"


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
    for name, extra in (("raw", []), ("mcap", ["--storage", "mcap", "--compressed"])):
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
        assert types == {"/camera/image_raw": img_type, "/odom": "nav_msgs/msg/Odometry"}
        images, odoms, last = [], 0, -1
        for conn, t, raw in reader.messages():
            assert t >= last  # written in time order
            last = t
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/odom":
                odoms += 1
                assert abs(np.linalg.norm([msg.pose.pose.orientation.x, msg.pose.pose.orientation.y,
                                           msg.pose.pose.orientation.z, msg.pose.pose.orientation.w]) - 1) < 1e-3
            else:
                images.append(msg)
                assert t == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert len(images) == 20 and odoms == gt_lines_in_span(stamps)
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
