"""Cameras and depth (core/camera.py, core/encoding/depth.py, their message and map forms): lens
distortion removed from keypoints, a keypoint's depth robust to holes and edges, depth images
of every ROS encoding or a clear error, depths carried on PlaceDescriptor and stored with
keyframes (maps made before them still open)."""

import sqlite3
import sys

import cv2
import numpy as np
import pytest

from anyloc_ros.core.camera import CameraModel, check_camera
from anyloc_ros.core.encoding.depth import depth_in_metres, sample_depths
from anyloc_ros.core.errors import ConfigError, ImageError
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.types import DescriptorFrame, LocalFeatures

K = np.array([[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1.0]])
FR1 = [0.2624, -0.9531, -0.0054, 0.0026, 1.1633]  # TUM fr1 (plumb_bob)


@pytest.mark.parametrize("model,coeffs", [("plumb_bob", FR1), ("rational_polynomial", FR1[:5] + [0.01, -0.02, 0.03]),
                                          ("equidistant", [0.05, -0.01, 0.002, -0.001])])
def test_undistort_inverts_the_lens(model, coeffs):
    """Ideal pinhole pixels, distorted by OpenCV's model of the lens, come back to where they were."""
    rng = np.random.default_rng(0)
    ideal = rng.uniform([40, 40], [600, 440], (200, 2))
    rays = np.c_[(ideal - K[:2, 2]) / K[[0, 1], [0, 1]], np.ones(len(ideal))]
    d = np.array(coeffs)
    if model == "equidistant":
        seen = cv2.fisheye.projectPoints(rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, d)[0].reshape(-1, 2)
    else:
        seen = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, d)[0].reshape(-1, 2)
    cam = CameraModel(K, d, model, 640, 480)
    np.testing.assert_allclose(cam.undistort(seen), ideal, atol=0.05)
    rectified = CameraModel(K, np.zeros(5), "plumb_bob")
    np.testing.assert_array_equal(rectified.undistort(seen), seen.astype(np.float32))  # passes through


def test_camera_errors_and_resized_streams():
    half = CameraModel(K, FR1, "plumb_bob", 640, 480).for_image(240, 320)
    np.testing.assert_allclose(half.K[:2], K[:2] / 2)
    assert half.distortion.tolist() == FR1
    assert CameraModel(K, FR1).for_image(240, 320).K is not None  # unknown calibration size: as it is
    assert check_camera(np.zeros((3, 3)), np.zeros(5), "plumb_bob")
    assert check_camera(K, np.array([0.1, 0.2, 0.3]), "plumb_bob")  # 3 coefficients: no model takes that
    assert check_camera(K, np.array([np.nan] * 5), "plumb_bob")
    with pytest.raises(ConfigError, match="fisheye42"):
        CameraModel(K, FR1, "fisheye42")


def test_keypoint_depth_is_robust_to_holes_edges_and_range():
    d = np.full((48, 64), 1.5, np.float32)
    d[:, 32:] = 3.0  # a depth edge at x = 32
    d[10:20, 5:15] = np.nan  # a hole (no reading)
    d[30:40, 5:8] = np.nan  # a few missing readings: the median of the rest
    kp = np.array([[10.5, 40.5], [40.5, 40.5], [32.2, 5.5], [10.5, 15.5], [8.5, 35.5], [-3, 5], [70, 5]])
    z = sample_depths(d, kp)
    assert z[0] == pytest.approx(1.5) and z[1] == pytest.approx(3.0) and z[4] == pytest.approx(1.5)
    assert np.isnan(z[2])  # on the edge: neither surface
    assert np.isnan(z[3])  # in the hole
    assert np.isnan(z[5]) and np.isnan(z[6])  # outside the image
    raw = np.array([[0, 500, 20000]], np.uint16)
    np.testing.assert_allclose(depth_in_metres(raw), [[np.nan, 0.5, 20.0]])
    np.testing.assert_allclose(depth_in_metres(raw, 0.0002, 0.2, 3.0), [[np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(depth_in_metres(np.array([[1.2, np.inf, -1]], np.float32)), [[1.2, np.nan, np.nan]])
    with pytest.raises(ImageError, match="uint16"):
        depth_in_metres(np.zeros((4, 4), np.int32))
    with pytest.raises(ImageError, match="one channel"):
        depth_in_metres(np.zeros((4, 4, 3), np.uint16))


def _depth_msg(array, encoding, bigendian=False, pad=0):
    from sensor_msgs.msg import Image

    a = array.astype(array.dtype.newbyteorder(">" if bigendian else "<"))
    rows = [r.tobytes() + b"\0" * pad for r in a]
    return Image(height=a.shape[0], width=a.shape[1], encoding=encoding, is_bigendian=int(bigendian),
                 step=a.shape[1] * a.itemsize + pad, data=b"".join(rows))


def test_depth_messages_of_every_encoding_or_a_clear_error():
    from anyloc_ros.nodes.images import depth_msg_to_metres

    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    want = np.array([[np.nan, 1.0], [2.5, np.nan]])  # 65.5 m is beyond max_m
    for msg in (_depth_msg(mm, "16UC1"), _depth_msg(mm, "16UC1", bigendian=True), _depth_msg(mm, "mono16", pad=4)):
        np.testing.assert_allclose(depth_msg_to_metres(msg, 0.001, 0.1, 10.0), want)
    m = (mm / 1000).astype(np.float32)
    m[1, 1] = np.nan
    np.testing.assert_allclose(depth_msg_to_metres(_depth_msg(m, "32FC1")), want)
    for bad, why in ((_depth_msg(mm, "rgb8"), "not a depth encoding"), (_depth_msg(mm[:0], "16UC1"), "empty"),
                     (_depth_msg(mm.astype(np.uint8), "16UC1"), "does not hold")):
        with pytest.raises(ImageError, match=why):
            depth_msg_to_metres(bad)
    assert sys.byteorder == "little"  # the big-endian case above is a real byte swap here


def _features(n=20, depths=True, seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, 64))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    z = rng.uniform(0.5, 4, n).astype(np.float32)
    z[::5] = np.nan
    return LocalFeatures(rng.uniform(0, 600, (n, 2)).astype(np.float32), desc.astype(np.float16),
                         np.ones(n, np.float32), (480, 640), K, None, z if depths else None)


def test_depths_travel_on_place_descriptors_and_are_refused_when_malformed():
    from std_msgs.msg import Header

    from anyloc_ros.nodes.descriptor_msg import frame_from_msg, frame_to_msg

    lf = _features()
    frame = DescriptorFrame(5, "cam", 1, np.ones(8, np.float32) / np.sqrt(8), "e", local=lf)
    back = frame_from_msg(frame_to_msg(frame, Header()))
    np.testing.assert_array_equal(back.local.depths, lf.depths)  # NaN where a keypoint has no depth
    # keypoint descriptors travel at the precision the map keeps (float16 bit patterns): exact, half the bytes
    msg = frame_to_msg(frame, Header())
    assert back.local.descriptors.dtype == np.float16 and len(msg.keypoint_descriptors) == lf.descriptors.size
    np.testing.assert_array_equal(back.local.descriptors, lf.descriptors)
    msg.keypoint_descriptors[3] = 0x7E00  # a half-precision NaN
    with pytest.raises(ValueError, match="NaN or inf"):
        frame_from_msg(msg)
    no_depth = frame_from_msg(frame_to_msg(DescriptorFrame(5, "cam", 1, frame.descriptor, "e",
                                                           local=_features(depths=False)), Header()))
    assert no_depth.local.depths is None
    msg = frame_to_msg(frame, Header())
    msg.keypoint_depths = msg.keypoint_depths[:-1]
    with pytest.raises(ValueError, match="keypoint depths for 20 keypoints"):
        frame_from_msg(msg)
    msg = frame_to_msg(frame, Header())
    msg.keypoint_depths[0] = -2.0
    with pytest.raises(ValueError, match="positive metres"):
        frame_from_msg(msg)


def test_keyframe_depths_are_stored_and_maps_made_before_them_still_open(tmp_path):
    sig = {"backbone": "t", "dim": 8}
    d = np.ones(8, np.float32) / np.sqrt(8)
    with PlaceDatabase(tmp_path, sig, durable=False) as db:
        a = db.add(d, 1, local=_features(seed=1))
    conn = sqlite3.connect(tmp_path / "map.sqlite")  # what a map made before depths (and checksums) looks like
    conn.execute("ALTER TABLE local_features DROP COLUMN depths")
    for table, column in (("keyframes", "checksum"), ("keyframes", "blobs_checksum"), ("local_features", "checksum")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DELETE FROM meta WHERE key='checksums'")
    conn.commit()
    conn.close()
    with PlaceDatabase(tmp_path, follower=True) as old:  # read as it is: keypoints, no depths
        lf = old.local_features(a)
        assert lf is not None and lf.depths is None and len(lf.keypoints) == 20
    with PlaceDatabase(tmp_path, sig, durable=False) as db:  # the writer adds the column
        b = db.add(d, 2, local=_features(seed=2))
        assert db.local_features(a).depths is None
        np.testing.assert_array_equal(db.local_features(b).depths, _features(seed=2).depths)
