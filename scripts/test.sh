#!/usr/bin/env bash
# Set up .venv (if needed) with the test extras and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Headless Chromium for the report's browser test (tests/test_report.py). Best effort: where
# apt is unavailable or not permitted, that test is skipped with a message; the run goes on.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test of the report will be skipped" >&2
fi
# --durations=15: the 15 slowest tests at the end of every run (the suite must stay under 30 minutes).
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
