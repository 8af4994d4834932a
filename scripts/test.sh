#!/usr/bin/env bash
# Set up, then lint and run the test suite; exits non-zero if either fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

# The page test of `undiffuse explain` opens the page in Debian's headless Chromium.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    echo "test: installing chromium" >&2
    (apt-get install -y -qq chromium >/dev/null 2>&1 ||
     { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) ||
        echo "test: could not install chromium (the browser test will fail)" >&2
fi

status=0
.venv/bin/ruff check src tests || status=$?
.venv/bin/python -m pytest -q "$@" || status=$?
exit "$status"
