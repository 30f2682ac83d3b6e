"""pip install path for anyloc_ros (core library, CLI and node entry points).

On a ROS 2 workspace colcon builds this package with CMake (CMakeLists.txt), which also
generates the messages. `pip install .` alone gives the ROS-free core and the `anyloc` CLI;
scripts/setup.sh does both inside a venv on machines with ROS 2 from PyPI.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup


def executables() -> list[str]:
    """Console scripts from bin/, the one list of executables (CMake installs the same files for
    `ros2 run`): each launcher names the module whose main() it runs."""
    out = []
    for path in sorted(Path(__file__).resolve().parent.joinpath("bin").iterdir()):
        module = re.search(r"^from (\S+) import main$", path.read_text(), re.M)
        if module:
            out.append(f"{path.name} = {module.group(1)}:main")
    return out


setup(
    name="anyloc_ros",
    version="0.1.0",
    description="AnyLoc visual place recognition for ROS 2",
    packages=find_packages(include=["anyloc_ros", "anyloc_ros.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "transformers>=4.40",
        "safetensors",
        "faiss-cpu>=1.8",  # faiss-gpu on CUDA robots provides the same `faiss` module
        "onnxruntime>=1.17",
        "opencv-python-headless>=4.8",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "rosbags>=0.10",
        "rosbags-image>=0.10",
        "threadpoolctl>=3.1",
        "xxhash>=3.0",
    ],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/anyloc_ros"]),
        ("share/anyloc_ros", ["package.xml"]),
    ],
    entry_points={"console_scripts": executables()},
)
