"""Two cameras (front: the corridor; rear: TUM fr2/desk) through `anyloc.launch.py
camera_topics:=/front/image_raw,/rear/image_raw`: one encoder per camera into one map,
keyframes gated per camera and tagged with it, matches and loop closures say which camera."""

import tempfile
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.asserts
import numpy as np
import pytest

from launch import LaunchDescription

from ..conftest import TUM_DESK
from .launch_support import available, corridor, package_launch, read_corridor_gt, user_params

STEPS = 20


@pytest.mark.launch_test
@pytest.mark.skipif(not (available() and TUM_DESK.is_dir()), reason="needs ../shared/data (xfeat, corridor, TUM)")
def generate_test_description():
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_cams_"))
    launch = package_launch("anyloc.launch.py", params_file=str(user_params(tmp)), map_path=str(tmp / "map"),
                            camera_topics="/front/image_raw,/rear/image_raw")
    return LaunchDescription([launch, launch_testing.actions.ReadyToTest()]), {"tmp": tmp}


class TestTwoCameras(unittest.TestCase):
    def test_one_map_per_camera_keyframes_and_camera_aware_matches(self, tmp):
        from anyloc_ros.msg import Keyframe, LoopClosure, PlaceMatch
        from anyloc_ros.srv import NewSession
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import Image

        from anyloc_ros.core.encoding.images import list_images, load_image
        from anyloc_ros.tools.ros_driver import DriverNode, image_msg, odom_msg

        front, gt = corridor(), read_corridor_gt()
        rear = [load_image(p) for p in list_images(TUM_DESK / "rgb")[:STEPS]]
        t = DriverNode()
        try:
            for msg_type, topic in ((PlaceMatch, "place_matches"), (LoopClosure, "loop_closures"),
                                    (Keyframe, "keyframes")):
                t.watch(msg_type, topic, 1000)
            pubs = {cam: t.node.create_publisher(Image, f"/{cam}/image_raw", 10) for cam in ("front", "rear")}
            op = t.node.create_publisher(Odometry, "/odom", 100)
            for p in pubs.values():
                t.wait_matched(p, 1, 120)
            t.wait_matched(op, 2, 120)
            t.wait_graph("descriptors", 2, 2)  # two encoders -> mapping + recognition

            def answered(stamp_s: int) -> set:
                return {m.query_camera for m in list(t.received["place_matches"]) if m.query_stamp.sec == stamp_s}

            def drive(t0: int, y: float, front_images: list) -> None:
                """Lock-step: both cameras' matches for a stamp before the next (a frame lost in
                transit is sent again; the same stamp twice is no new keyframe)."""
                for i in range(STEPS):
                    stamp = (t0 + i) * 1_000_000_000
                    for _attempt in range(3):
                        op.publish(odom_msg(stamp, i, y))
                        pubs["front"].publish(image_msg(front_images[i], stamp, "front"))
                        pubs["rear"].publish(image_msg(rear[i], stamp, "rear"))
                        deadline = time.monotonic() + 30
                        while answered(t0 + i) != {"front", "rear"} and time.monotonic() < deadline:
                            time.sleep(0.02)
                        if answered(t0 + i) == {"front", "rear"}:
                            break

            drive(100, 0.0, front["ref"])
            self.assertTrue(t.call(NewSession, "new_session", NewSession.Request(session_id="second")).success)
            drive(500, 0.3, front["query"])
            keyframes = t.wait_for("keyframes", 4 * STEPS, 30)
            # gated per camera: at every pose both cameras add a keyframe
            self.assertEqual(sorted(k.camera for k in keyframes), ["front"] * 2 * STEPS + ["rear"] * 2 * STEPS)
            first = {(k.camera, k.header.stamp.sec): k.id for k in keyframes if k.session != "second"}
            q = list({(m.query_camera, m.query_stamp.sec): m for m in t.received["place_matches"]
                      if m.query_stamp.sec >= 500}.values())  # one per frame, also if a frame was sent twice
            self.assertEqual(sorted(m.query_camera for m in q), ["front"] * STEPS + ["rear"] * STEPS)
            rear_q = [m for m in q if m.query_camera == "rear"]
            # the rear camera revisits the same desk views: its own keyframes, at the same step
            hits = [m.keyframe_cameras[0] == "rear" and m.keyframe_ids[0] == first[("rear", 100 + m.query_stamp.sec - 500)]
                    for m in rear_q]
            self.assertGreaterEqual(np.mean(hits), 0.9)
            front_q = [m for m in q if m.query_camera == "front"]
            front_ids = {v: k[1] - 100 for k, v in first.items() if k[0] == "front"}  # keyframe id -> ref index
            ok = [m.keyframe_cameras[0] == "front" and front_ids.get(m.keyframe_ids[0], -99) in gt[m.query_stamp.sec - 500]
                  for m in front_q]
            self.assertGreaterEqual(np.mean(ok), 0.8)
            loops = [lc for lc in t.received["loop_closures"] if lc.query_stamp.sec >= 500]
            self.assertEqual({lc.query_camera for lc in loops}, {"front", "rear"})  # consistency per camera
            self.assertTrue(all(lc.match_camera == lc.query_camera for lc in loops))
        finally:
            t.close()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_all_four_nodes_exit_cleanly(self, proc_info):
        self.assertEqual(len(proc_info.process_names()), 4)
        launch_testing.asserts.assertExitCodes(proc_info)
