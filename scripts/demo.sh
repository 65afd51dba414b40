#!/usr/bin/env bash
# Set up .venv (if needed) and run the offline demo: `bash scripts/demo.sh [curate demo options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/curate demo "$@"
