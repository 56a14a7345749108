#!/usr/bin/env bash
# Set up (first time only) and open the dashboard on the demo dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m streamlit run streamlit_app.py "$@"
