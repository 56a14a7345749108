#!/usr/bin/env bash
# Set up everything the tests need (Python packages, Chromium) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
