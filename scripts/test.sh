#!/usr/bin/env bash
# Set up everything the tests need (Python packages, Chromium), check the code and the docs, and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/check.sh
exec .venv/bin/python -m pytest -q "$@"
