"""The import-linter contracts (pyproject.toml) can fail: one import planted per contract in a
copy of the package, and lint-imports reports each contract broken (scripts/test.sh checks the
real tree keeps them all)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

# contract name (as pyproject.toml names it) -> (module file, the line planted at its top)
PLANTED = {
    "layers: tools > nodes | eval > core": ("eval/metrics.py", "import anyloc_ros.nodes.qos"),
    "the core and evaluation import no ROS": ("core/geometry.py", "import rclpy"),
    "core rooms: recognition > encoding | map > config": ("core/encoding/depth.py",
                                                          "import anyloc_ros.core.recognition.edges"),
    "the map never imports encoding, recognition, torch or OpenCV": ("core/map/rows.py", "import cv2"),
    "recognition does not encode (no encoding room, no torch network stack)": ("core/recognition/edges.py",
                                                                               "import onnxruntime"),
    "fleet: no encoding, recognition, torch or OpenCV": (
        "core/fleet/outbox.py", "import torch"),
    "configuration loads no room and no heavy library": ("core/config/settings.py", "import torch"),
    "the shared core records import no room": ("core/pose_buffer.py", "import anyloc_ros.core.config.settings"),
    "no import cycles inside a layer or a room": ("nodes/qos.py", "import anyloc_ros.nodes.diagnostics"),
}


def test_every_contract_fails_on_a_planted_import(tmp_path):
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.is_file():
        pytest.skip("lint-imports not installed (requirements-dev.txt)")
    names = re.findall(r'^name = "(.*)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert sorted(names) == sorted(PLANTED), "a contract without a planted import here (or the other way round)"
    pkg = tmp_path / "anyloc_ros"
    shutil.copytree(REPO / "anyloc_ros", pkg, ignore=shutil.ignore_patterns("__pycache__", "msg", "srv"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    for rel, line in PLANTED.values():
        path = pkg / rel
        text = path.read_text()
        head = re.search(r"^from __future__ import annotations\n", text, re.M)
        at = head.end() if head else 0
        path.write_text(text[:at] + line + "\n" + text[at:])
    (pkg / "nodes" / "diagnostics.py").write_text("import anyloc_ros.nodes.qos\n" + (pkg / "nodes" / "diagnostics.py")
                                                  .read_text())  # the other half of the planted cycle
    r = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    report = r.stdout + r.stderr
    assert r.returncode != 0, report
    for name in PLANTED:
        assert f"{name} BROKEN" in report, f"{name!r} was not reported broken:\n{report[-3000:]}"
