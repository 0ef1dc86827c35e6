#!/usr/bin/env bash
# Real-size GPU check, at most ~5 minutes on one GPU (see gpu_check.py for what it measures):
#   bash evaluation/realsize/gpu_check.sh                   # real size, needs CUDA
#   AVATAR3D_GPU_CHECK_TINY=1 bash evaluation/realsize/gpu_check.sh   # tiny presets on the CPU (tests)
# Extra arguments go to gpu_check.py (e.g. --out /tmp/gpu_check.json, --skip ray).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec timeout "${GPU_CHECK_TIMEOUT_S:-300}" "$python" "$here/gpu_check.py" "$@"
