#!/usr/bin/env bash
# The test suite: sets up .venv on first use, lints with ruff (config in pyproject.toml), then runs
# pytest (extra args go to pytest). A lint error stops it before any test runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
exec python -m pytest -q "$@"
