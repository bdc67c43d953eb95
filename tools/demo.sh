#!/usr/bin/env bash
# The main job, small: build the tiny offline assets, pre-train a tiny LLaVA with 2 CPU processes
# through tools/dist.sh (saving every few iterations), score every saved iteration with MIR, and
# summarise what was produced. Sets up .venv on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CONFIG=projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py
WORK_DIR=${WORK_DIR:-work_dirs/demo}
NPROC=${NPROC:-2}

echo "== 1/4 tiny assets (random tiny LLaMA + CLIP, trained tokenizer, shapes images) =="
python tools/build_tiny_assets.py --root data/tiny

echo "== 2/4 training: bash tools/dist.sh train $CONFIG $NPROC =="
rm -rf "$WORK_DIR"
PORT=${PORT:-29517} bash tools/dist.sh train "$CONFIG" "$NPROC" --work-dir "$WORK_DIR"

if [ -f tools/eval_mir.py ]; then
  echo "== 3/4 MIR over the saved iterations: tools/eval_mir.py =="
  python tools/eval_mir.py "$WORK_DIR" --config "$CONFIG" --eval-num 20 --out "$WORK_DIR/mir"
else
  echo "== 3/4 MIR: tools/eval_mir.py not available in this checkout, skipped =="
fi

echo "== 4/4 summary =="
python tools/summarize_run.py "$WORK_DIR"
