"""A process that only stores keyframes pays for no deep-learning stack: the mapping node is
built without torch, OpenCV, transformers or onnxruntime ever being imported."""

import json
import subprocess
import sys

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.ros

SCRIPT = """
import json, sys, rclpy, psutil
rclpy.init(args=["--ros-args", "-p", "map_path:=%s", "-p", "new_session_on_start:=true"])
from anyloc_ros.nodes.mapping_node import MappingNode
node = MappingNode()
heavy = sorted(m for m in ("torch", "cv2", "transformers", "onnxruntime", "matplotlib") if m in sys.modules)
print(json.dumps({"heavy": heavy, "rss_mib": psutil.Process().memory_info().rss / 2**20}))
node.destroy_node()
rclpy.shutdown()
"""


def test_mapping_node_loads_no_network(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT % (tmp_path / "map")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"mapping node at start: {out['rss_mib']:.0f} MiB resident, heavy modules {out['heavy']}")
    assert out["heavy"] == []
    assert out["rss_mib"] < 200  # measured 2026-12-06: 80 MiB (296 MiB when it loaded torch and OpenCV)
