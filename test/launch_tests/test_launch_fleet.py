"""A fleet through `ros2 launch`: two robots, each `anyloc.launch.py namespace:=<robot>
robot_id:=<robot> fleet:=true` with its own camera, odometry and map, in one DDS domain. Robot A
maps (mode mapping, separate node processes) the corridor's first traversal; robot B (full, the
composed pipeline: `use_composition:=true`) drives the second, behind it:
B's loop closures are to A's keyframes (match_robot_id), verified, correct against the ground
truth; each map holds the other robot's keyframes as its sessions."""

import tempfile
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.asserts
import numpy as np
import pytest
import yaml

from launch import LaunchDescription

from .launch_support import XFEAT_CFG, N, available, corridor, package_launch, read_corridor_gt, vocabulary

LAG = 10


def fleet_params(tmp: Path) -> Path:
    """One params file for both robots: sections by `/**/<node>` (the nodes live in namespaces)."""
    p = {"/**": {"pose_source": "odom", "fleet.history_depth": 100, "fleet.max_feature_requests_per_s": 60.0},
         "/**/encoder_node": {"encoder_config": str(XFEAT_CFG), "vocabulary": str(vocabulary()), "device": "cpu",
                              "queue_size": 20, "qos_reliable": True},
         "/**/recognition_node": {"exclude_current_session": True, "sequence.enable": True}}
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in p.items()}))
    return path


@pytest.mark.launch_test
@pytest.mark.skipif(not available(), reason="needs ../shared/data (xfeat weights, corridor)")
def generate_test_description():
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_fleet_"))
    params = str(fleet_params(tmp))
    # A runs separate node processes, B the composed pipeline (one process): both deployments in a fleet
    robots = [package_launch("anyloc.launch.py", params_file=params, map_path=str(tmp / f"map_{r}"), namespace=r,
                             robot_id=r, fleet="true", mode=mode, camera_topic=f"/{r}/camera/image_raw",
                             odom_topic=f"/{r}/odom", use_composition=composed)
              for r, mode, composed in (("robot_a", "mapping", "false"), ("robot_b", "full", "true"))]
    return LaunchDescription([*robots, launch_testing.actions.ReadyToTest()]), {"tmp": tmp}


class TestFleet(unittest.TestCase):
    def test_robot_b_closes_loops_on_robot_a_keyframes(self, tmp):
        from anyloc_ros.msg import Keyframe, LoopClosure, PlaceMatch
        from anyloc_ros.srv import GetMapInfo
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import Image

        from anyloc_ros.tools.ros_driver import DriverNode, image_msg, odom_msg

        images, gt = corridor(), read_corridor_gt()
        t = DriverNode()
        try:
            t.watch(Keyframe, "/robot_a/keyframes", 1000)
            t.watch(PlaceMatch, "/robot_b/place_matches", 1000)
            t.watch(LoopClosure, "/robot_b/loop_closures", 1000)
            cams = {r: t.node.create_publisher(Image, f"/{r}/camera/image_raw", 10) for r in ("robot_a", "robot_b")}
            odoms = {r: t.node.create_publisher(Odometry, f"/{r}/odom", 100) for r in ("robot_a", "robot_b")}
            for r, n in (("robot_a", 1), ("robot_b", 1)):
                t.wait_matched(cams[r], n, 120)
            t.wait_matched(odoms["robot_a"], 1, 120)
            t.wait_matched(odoms["robot_b"], 2, 120)
            t.wait_graph("/anyloc_fleet/keyframes", 2, 2)
            t.wait_graph("/robot_a/descriptors", 1, 1)  # (B's nodes share one process: frames by direct call)

            def drive(robot: str, im, i: int, t0: int, y: float, topic: str, done: int) -> None:
                stamp = (t0 + i) * 1_000_000_000
                for _attempt in range(3):
                    odoms[robot].publish(odom_msg(stamp, i, y))
                    time.sleep(0.01)
                    cams[robot].publish(image_msg(im, stamp))
                    if len(t.wait_for(topic, done + 1, 20)) >= done + 1:
                        return
                raise TimeoutError(f"{robot}: no output on {topic} for frame {i}")

            for i in range(N + LAG):
                if i < N:
                    drive("robot_a", images["ref"][i], i, 100, 0.0, "/robot_a/keyframes", i)
                if i >= LAG:
                    drive("robot_b", images["query"][i - LAG], i - LAG, 500, 0.3, "/robot_b/place_matches", i - LAG)
            time.sleep(2.0)
            a_ref = {k.id: k.header.stamp.sec - 100 for k in t.received["/robot_a/keyframes"]}
            loops = list(t.received["/robot_b/loop_closures"])
            self.assertTrue(loops)
            for lc in loops:
                self.assertEqual((lc.robot_id, lc.match_robot_id), ("robot_b", "robot_a"))
                self.assertTrue(lc.verified)
                self.assertIn(a_ref[lc.match_id], gt[lc.query_stamp.sec - 500])
            info = {r: t.call(GetMapInfo, f"/{r}/get_map_info", GetMapInfo.Request()) for r in ("robot_a", "robot_b")}
            self.assertEqual((info["robot_b"].peer_keyframes, list(info["robot_b"].robots)), (N, ["robot_a"]))
            self.assertEqual((info["robot_a"].peer_keyframes, list(info["robot_a"].robots)), (N, ["robot_b"]))
            on_a = np.mean([bool(m.keyframe_ids) and m.session_ids[0].startswith("robot_a:")
                            for m in t.received["/robot_b/place_matches"]])
            print(f"fleet launch: {len(loops)} inter-robot closures, all correct; B's best match on A's keyframes "
                  f"for {on_a:.0%} of its frames")
            self.assertGreaterEqual(on_a, 0.9)
        finally:
            t.close()


@launch_testing.post_shutdown_test()
class TestFleetShutdown(unittest.TestCase):
    def test_nodes_exit_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
