#!/usr/bin/env bash
# Launch an mllm_align tool on NGPUS processes per node with torchrun.
#   bash tools/dist.sh train CONFIG NGPUS [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT (as in xtuner / mmengine):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist.sh train CONFIG 8
# On one node with PORT unset a free port is picked, so concurrent runs do not collide
# (multi-node runs default to 29500, the same on every node).
# On machines without CUDA the processes train on CPU over gloo.
# The ranks belong to this launcher: they stop when it dies or is interrupted (Ctrl-C, SIGTERM,
# even SIGKILL: MLLM_ALIGN_LAUNCHER_PID, see mllm_align/engine/distributed.py), and a failing
# rank ends the whole run at once with a non-zero exit status.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash tools/dist.sh {train} CONFIG NGPUS [args...]" >&2
  exit 2
fi
TOOL=$1; CONFIG=$2; NGPUS=$3; shift 3
case "$TOOL" in
  train) SCRIPT=tools/train.py ;;
  *) echo "dist.sh: unknown tool '$TOOL' (known: train)" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
if [ -z "${PORT:-}" ]; then
  if [ "$NNODES" = 1 ]; then
    PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  else
    PORT=29500
  fi
fi
# Threads per process: share the cores instead of oversubscribing them.
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  CORES=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=$(( CORES / NGPUS > 0 ? CORES / NGPUS : 1 ))
fi
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
# exec keeps this shell's pid: it is the launcher (torchrun) pid every rank watches.
export MLLM_ALIGN_LAUNCHER_PID=$$
echo "dist.sh: $NGPUS process(es) per node, $NNODES node(s), rendezvous $MASTER_ADDR:$PORT" >&2
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$NGPUS" --master_port="$PORT" \
  "$HERE/$SCRIPT" "$CONFIG" --launcher pytorch "$@"
