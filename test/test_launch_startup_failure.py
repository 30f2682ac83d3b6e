"""A node that cannot start (its encoder config is missing) ends the launch with its message,
instead of the other nodes waiting forever."""

import tempfile
import unittest
from pathlib import Path

import launch_testing
import launch_testing.asserts
import pytest

from launch import LaunchDescription

from .launch_support import available, package_launch, user_params


@pytest.mark.launch_test
@pytest.mark.skipif(not available(), reason="needs ../shared/data (xfeat.onnx, corridor)")
def generate_test_description():
    tmp = Path(tempfile.mkdtemp(prefix="anyloc_launch_fail_"))
    params = user_params(tmp, encoder_node={"encoder_config": str(tmp / "missing_encoder.yaml")})
    launch = package_launch("anyloc.launch.py", params_file=str(params), map_path=str(tmp / "map"))
    return LaunchDescription([launch, launch_testing.actions.ReadyToTest()]), {"tmp": tmp}


class TestStartupFailure(unittest.TestCase):
    def test_the_launch_ends_by_itself(self, proc_info, proc_output):
        # nobody but the launch file's own handler shuts the other two nodes down
        for name in ("encoder_node", "mapping_node", "recognition_node"):
            proc_info.assertWaitForShutdown(process=name, timeout=90)
        proc_output.assertWaitFor("encoder config not found", process="encoder_node", stream="stderr",
                                  timeout=5)


@launch_testing.post_shutdown_test()
class TestExitCodes(unittest.TestCase):
    def test_the_failing_node_reports_failure(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, [1], process="encoder_node")
        for name in ("mapping_node", "recognition_node"):
            launch_testing.asserts.assertExitCodes(proc_info, process=name)
