"""Train a model from an mllm_align config.

Single process (CPU or one GPU):
    python tools/train.py projects/llava/configs/pretrain/llava_tiny_pretrain_tiny_cpu.py
Several processes / nodes (torchrun; gloo on machines without CUDA):
    bash tools/dist.sh train CONFIG 8 [--deepspeed deepspeed_zero2]
Resume the latest checkpoint of the work dir, or a given one:
    python tools/train.py CONFIG --resume
    python tools/train.py CONFIG --resume work_dirs/CONFIG/iter_500.pth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import DictAction  # noqa: E402

from mllm_align.engine.launch import (build_runner, exit_after_training, prepare_config,  # noqa: E402
                                      shutdown_distributed)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file path (projects/<method>/configs/...)')
    parser.add_argument('--work-dir', help='where logs and iter_N.pth go (default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume training: alone = latest checkpoint in the work dir; or a checkpoint path')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_iters=100')
    parser.add_argument('--deepspeed', choices=['deepspeed_zero2', 'deepspeed_zero3'],
                        help='train with DeepSpeed ZeRO through mmengine FlexibleRunner (on CPU: DS_ACCELERATOR=cpu)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (tools/dist.sh passes pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = prepare_config(args.config, work_dir=args.work_dir, resume=args.resume,
                         cfg_options=args.cfg_options, deepspeed=args.deepspeed, launcher=args.launcher)
    runner = build_runner(cfg)
    try:
        runner.train()
    finally:
        shutdown_distributed()


if __name__ == '__main__':
    main()
    exit_after_training(0)  # only reached on success; see its docstring
