"""Train a model from an mllm_align config.

Single process (CPU or one GPU):
    python tools/train.py projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py
Several processes / nodes (torchrun; gloo on machines without CUDA):
    bash tools/dist.sh train projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py 2
    bash tools/dist.sh train projects/llava/configs/pretrain/llava_v15_7b_pretrain.py 8 --deepspeed deepspeed_zero2
Override settings with --cfg-options KEY=VALUE. A PART 1 variable (data_path, warmup_ratio, template,
lr, ...) re-evaluates the config, so every dict built from it changes; a dotted key sets one field.
Values parse as Python literals (8, 0.3, None, True, (0.9,0.95), [a,b]; anything else is a string):
    CFG=projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py
    python tools/train.py $CFG --cfg-options data_path=data/tiny/shapes/pretrain.json image_folder=data/tiny/shapes
    python tools/train.py $CFG --cfg-options warmup_ratio=0.3 template=vicuna_v1
    python tools/train.py $CFG --cfg-options train_cfg.max_iters=100 default_hooks.checkpoint.interval=50
(train_cfg.max_iters=N alone replaces the config's max_epochs, which is set to None with a warning.)
Unknown keys, component arguments a class does not take, and settings that must agree (template,
tokenizer, image-token count) fail at start, naming the key and the fix.
Resume the newest complete checkpoint of the work dir (error if there is none), the same or start
fresh (for schedulers that relaunch jobs), or a given checkpoint (file or DeepSpeed directory):
    python tools/train.py CONFIG --resume
    python tools/train.py CONFIG --resume auto
    python tools/train.py CONFIG --resume work_dirs/CONFIG/iter_500.pth
A torn newest checkpoint is skipped with a warning naming it. Checkpoints load with weights_only=True;
one that needs full unpickling is refused unless --trust-checkpoint (mllm_align/engine/resume.py,
mllm_align/engine/checkpoint.py).

The log file's path (work_dir/<timestamp>/<timestamp>.log) is printed at start. Under tools/dist.sh
a rank that fails prints its traceback once ("rank N failed: ...") and exits at once, without
waiting for the others; torchrun then stops the remaining ranks, which print one line each
("rank M: stopping because another rank failed"). The exit status is non-zero. Every rank
also stops when the launcher dies (SIGKILL included), and writes no checkpoint after that.

For the fault-injection tests only: MLLM_ALIGN_CRASH_AT_ITER / MLLM_ALIGN_CKPT_FAULT (and the variables
that go with them, mllm_align/testing/fault_injection.py) add that module's crash or checkpoint-write
hook to the config's custom_hooks. Without them mllm_align.testing is not imported.

Start-up: a run without --deepspeed never imports deepspeed (mllm_align/lazy_imports.py); the time to the
first iteration and where it goes: benchmarks/bench_startup.py, docs/benchmarks.md ("Start-up").
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before the first mmengine.runner import (mllm_align.engine below): a run without --deepspeed does not import
# deepspeed through mmengine's strategy module (~0.3 s; mllm_align/lazy_imports.py says why it is done this way).
from mllm_align.lazy_imports import argv_asks_for_deepspeed, defer_mmengine_deepspeed_import  # noqa: E402

if not argv_asks_for_deepspeed(sys.argv[1:]):
    defer_mmengine_deepspeed_import()

from mllm_align.engine.checkpoint import add_trust_checkpoint_argument  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402
from mllm_align.engine.distributed import exit_on_failure, start_launcher_watchdog  # noqa: E402
from mllm_align.engine.launch import build_runner, exit_after_training, prepare_config, shutdown_distributed  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file path (projects/<method>/configs/...)')
    parser.add_argument('--work-dir', help='where logs and iter_N.pth go (default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='latest', default=None, metavar='auto|PATH',
                        help='resume training: alone = the newest complete checkpoint in the work dir (error if '
                             'none); auto = the same, or start fresh when there is none; or a checkpoint path')
    add_trust_checkpoint_argument(parser)
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                        help='override settings: a PART 1 variable re-evaluates the config (data_path=..., '
                             'warmup_ratio=0.3, template=vicuna_v1); a dotted key sets one field '
                             '(train_cfg.max_iters=100, default_hooks.checkpoint.interval=50)')
    parser.add_argument('--deepspeed', choices=['deepspeed_zero2', 'deepspeed_zero3'],
                        help='train with DeepSpeed ZeRO through mmengine FlexibleRunner (on CPU: DS_ACCELERATOR=cpu)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (tools/dist.sh passes pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


# The test suite's fault requests (mllm_align/testing/fault_injection.py); checked by name here so that a
# normal run does not import mllm_align.testing.
FAULT_REQUEST_ENVS = ('MLLM_ALIGN_CRASH_AT_ITER', 'MLLM_ALIGN_CKPT_FAULT')


def fault_hooks() -> list[dict]:
    """The fault-injection hook configs the environment asks for (none, and no import, in a normal run)."""
    if not any(os.environ.get(name) for name in FAULT_REQUEST_ENVS):
        return []
    from mllm_align.testing.fault_injection import fault_hooks_from_env
    return fault_hooks_from_env()


def _announce_log_file(runner) -> None:
    """Print (rank 0) where mmengine writes this run's log: work_dir/<timestamp>/<timestamp>.log."""
    files = [h.baseFilename for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]
    if runner.rank == 0:
        runner.logger.info(f'Log file: {files[0] if files else "(none: no file handler)"}')


def main() -> None:
    args = parse_args()
    distributed = args.launcher != 'none'
    if distributed:
        start_launcher_watchdog()  # this rank dies with its launcher (mllm_align/engine/distributed.py)
    try:
        cfg = prepare_config(args.config, work_dir=args.work_dir, resume=args.resume,
                             cfg_options=args.cfg_options, deepspeed=args.deepspeed, launcher=args.launcher,
                             extra_hooks=fault_hooks())
        runner = build_runner(cfg)
        _announce_log_file(runner)
        runner.train()
        shutdown_distributed()
    except BaseException as exc:  # noqa: BLE001 - reported once, then the rank ends without a collective
        if not distributed:
            raise
        exit_on_failure(exc)


if __name__ == '__main__':
    main()
    exit_after_training(0)  # only reached on success; see its docstring
