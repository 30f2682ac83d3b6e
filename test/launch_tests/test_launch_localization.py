"""`ros2 launch anyloc_ros anyloc.launch.py mode:=localization` on a saved map: only the encoder and the
recognition node start, the query traversal is recognised against the map, nothing is added."""

import tempfile
import unittest
from pathlib import Path

import launch_testing
import launch_testing.asserts
import pytest

from launch import LaunchDescription

from .launch_support import N, available, build_saved_map, corridor, package_launch, recall, user_params


@pytest.mark.launch_test
@pytest.mark.skipif(not available(), reason="needs ../shared/data (xfeat.onnx, corridor)")
def generate_test_description():
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_loc_"))
    map_path = build_saved_map(tmp)
    launch = package_launch("anyloc.launch.py", mode="localization", params_file=str(user_params(tmp)),
                            map_path=str(map_path))
    return LaunchDescription([launch, launch_testing.actions.ReadyToTest()]), {"map_path": map_path}


class TestLocalization(unittest.TestCase):
    def test_recognises_the_query_traversal_on_the_saved_map(self, map_path):
        from anyloc_ros.msg import PlaceMatch
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import Image

        from anyloc_ros.core.map.database import PlaceDatabase
        from anyloc_ros.tools.ros_driver import DriverNode, publish_traversal

        t = DriverNode()
        try:
            t.watch(PlaceMatch, "place_matches", 1000)
            ip = t.node.create_publisher(Image, "/camera/image_raw", 10)
            op = t.node.create_publisher(Odometry, "/odom", 100)
            t.wait_matched(ip, 1, 120)
            t.wait_graph("descriptors", 1, 1)
            publish_traversal(t, ip, op, corridor()["query"], 500, [(i, 0.3) for i in range(N)], 0)
            q = t.wait_for("place_matches", N, 10)
            self.assertEqual(len(q), N)
            self.assertGreaterEqual(recall(q, 500), 0.8)
            self.assertEqual(t.node.count_publishers("keyframes"), 0)  # no mapping node in localization
        finally:
            t.close()
        with PlaceDatabase(map_path, follower=True) as db:
            self.assertEqual(len(db), N)  # localisation never writes the map


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_only_encoder_and_recognition_ran_and_exit_cleanly(self, proc_info):
        self.assertEqual(sorted(n.rsplit("-", 1)[0] for n in proc_info.process_names()),
                         ["encoder_node", "recognition_node"])
        launch_testing.asserts.assertExitCodes(proc_info)
