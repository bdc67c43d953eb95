#!/usr/bin/env bash
# Source me: creates (once) and activates the project's virtual environment in .venv.
# Re-installs when requirements*.txt or setup.py change. Needs only Python >= 3.10 (3.11 tested).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLLM_ALIGN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.mllm_align_installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.11 python3.12 python3.10 python3; do
      if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
  fi
  [ -n "$PY" ] || { echo "env.sh: no python3 found; install Python 3.11" >&2; return 1 2>/dev/null || exit 1; }
  echo "[env] creating $VENV with $($PY --version) and installing pinned requirements (first run only)..."
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || { echo "env.sh: venv creation failed" >&2; return 1 2>/dev/null || exit 1; }
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt" \
    && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT" \
    || { echo "env.sh: pip install failed (see above)" >&2; return 1 2>/dev/null || exit 1; }
  echo "$WANT" > "$STAMP"
fi
# The demo extra (real-weights converters, requirements-demo.txt), installed once on request:
#   mllm_align_demo_extra || echo "not installed"
mllm_align_demo_extra() {
  local stamp="$VENV/.mllm_align_demo_installed" want
  want="$(sha256sum "$ROOT/requirements-demo.txt" | cut -d' ' -f1)"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  echo "[env] installing the demo extra (requirements-demo.txt: gguf, onnx, onnxruntime, tifffile; first run only)..."
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-demo.txt" \
    && echo "$want" > "$stamp"
}
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
