"""`anyloc.launch.py use_composition:=true` for real: the launch arguments map_path and mode win
over the params file's `/**: map_path` and `anyloc_pipeline: mode: localization` (the bug
where launch_ros put `-p` before `--params-file`), and the one process maps and recognises."""

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
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_composed_"))
    launch = package_launch("anyloc.launch.py", params_file=str(user_params(tmp)), map_path=str(tmp / "map"),
                            use_composition="true", mode="full")
    return LaunchDescription([launch, launch_testing.actions.ReadyToTest()]), {"tmp": tmp}


class TestComposition(unittest.TestCase):
    def test_launch_arguments_win_and_the_pipeline_maps_and_recognises(self, tmp):
        # mode localization (from the params file) would never add a keyframe; a map at
        # not_this_map would mean the params file's map_path won
        map_then_recognise(self, tmp / "map", composed=True)
        self.assertTrue((tmp / "map" / "map.sqlite").is_file())
        self.assertFalse((tmp / "not_this_map").exists())


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_the_pipeline_exits_cleanly(self, proc_info):
        self.assertEqual(len(proc_info.process_names()), 1)
        launch_testing.asserts.assertExitCodes(proc_info)
