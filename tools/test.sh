#!/usr/bin/env bash
# The test suite: sets up .venv on first use, then runs pytest (extra args go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m pytest -q "$@"
