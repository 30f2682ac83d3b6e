#!/usr/bin/env bash
# The project's test command (README and .ci/run): lint, then the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k vlad`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run 'bash scripts/setup.sh' first" >&2; exit 1; }
# The venv's ROS 2 environment (PATH for node executables, AMENT_PREFIX_PATH for launch files).
# shellcheck disable=SC1091
. .venv/bin/activate
"$PY" -m ruff check .
# The package's layers and no import cycles (contracts in pyproject.toml).
.venv/bin/lint-imports
status=0
"$PY" -m pytest "$@" || status=$?
# FastDDS can leave shared-memory segments of killed test processes behind (the cleaner needs psutil).
.venv/bin/fastdds shm clean >/dev/null 2>&1 || true
exit $status
