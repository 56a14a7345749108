#!/usr/bin/env bash
# The checks that read the code without running it: lint and import order (ruff), the type check of core/
# (mypy), and the documentation site (mkdocs build --strict: a broken link or a missing page fails).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
echo "checks: ruff, mypy and mkdocs --strict found nothing"
