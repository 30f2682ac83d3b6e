"""A node that cannot start (its encoder config is missing) ends the launch with its message,
instead of the other nodes waiting forever.

`ros2 launch` runs as a user runs it, in its own process: nothing but the launch file's own
exit handler can end it (a launch_testing harness would end the launch itself once its tests
finish, and races the handler it is meant to watch)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .launch_support import available, user_params


@pytest.mark.skipif(not available(), reason="needs ../shared/data (xfeat.onnx, corridor)")
def test_a_node_that_cannot_start_ends_the_launch_with_its_message(tmp_path):
    ros2 = shutil.which("ros2") or str(Path(sys.executable).parent / "ros2")
    if not os.access(ros2, os.X_OK):
        pytest.skip("the ros2 CLI is not installed (bash scripts/setup.sh installs it)")
    params = user_params(tmp_path, encoder_node={"encoder_config": str(tmp_path / "missing_encoder.yaml")})
    try:
        r = subprocess.run([ros2, "launch", "anyloc_ros", "anyloc.launch.py", f"params_file:={params}",
                            f"map_path:={tmp_path / 'map'}"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the launch did not end by itself within 120 s:\n{exc.stdout}\n{exc.stderr}")
    out = r.stdout + r.stderr
    assert "encoder config not found" in out and "missing_encoder.yaml" in out
    assert "exited with code 1 (its error is above): ending the launch" in out
    for name in ("mapping_node", "recognition_node"):  # stopped by the launch, cleanly
        assert any(f"[{name}-" in line and "process has finished cleanly" in line for line in out.splitlines()), out
