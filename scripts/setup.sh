#!/usr/bin/env bash
# Create .venv (if needed) and install the app's dependencies into it.
# Usage: scripts/setup.sh [dev]   ("dev" adds the test tools and Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the releases the project is tested with. On Linux, PyPI's torch wheel is the CUDA
# build: it brings NVIDIA's libraries (a few GB) and runs on a CPU as well. For a CPU-only install (much
# smaller, no GPU support) set TORCH_INDEX=https://download.pytorch.org/whl/cpu before running this script.
.venv/bin/python -m pip install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==2.14.1" "torchvision==0.29.1"
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
else
  .venv/bin/python -m pip install --quiet -r requirements.txt
fi
# The project itself, editable: `python -m core …`, the `tld` command and the app's worker processes
# then import it from anywhere, with no path tricks. Its dependencies are installed just above.
.venv/bin/python -m pip install --quiet "setuptools>=77"
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
