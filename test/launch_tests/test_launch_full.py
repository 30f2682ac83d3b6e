"""`ros2 launch anyloc_ros anyloc.launch.py` for real (launch_testing): encoder, mapping and
recognition as separate processes map and recognise the corridor, then exit cleanly."""

import tempfile
import unittest
from pathlib import Path

import launch_testing
import launch_testing.asserts
import pytest

from launch import LaunchDescription

from .launch_support import available, map_then_recognise, package_launch, user_params


@pytest.mark.launch_test
@pytest.mark.skipif(not available(), reason="needs ../shared/data (xfeat.onnx, corridor)")
def generate_test_description():
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_full_"))
    launch = package_launch("anyloc.launch.py", params_file=str(user_params(tmp)), map_path=str(tmp / "map"))
    return LaunchDescription([launch, launch_testing.actions.ReadyToTest()]), {"tmp": tmp}


class TestFullMode(unittest.TestCase):
    def test_maps_and_recognises_the_corridor(self, tmp):
        map_then_recognise(self, tmp / "map", composed=False)
        self.assertFalse((tmp / "not_this_map").exists())  # map_path:= won over the params file


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_every_node_exits_cleanly(self, proc_info):
        self.assertEqual(len(proc_info.process_names()), 3)
        launch_testing.asserts.assertExitCodes(proc_info)
