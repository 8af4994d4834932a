#!/usr/bin/env bash
# Set up, then lint and run the test suite; exits non-zero if either fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UNDIFFUSE_WITH_BROWSER=1 bash scripts/setup.sh   # with Chromium, for the test of the explain page

status=0
.venv/bin/ruff check src tests || status=$?
.venv/bin/python -m pytest -q "$@" || status=$?
exit "$status"
