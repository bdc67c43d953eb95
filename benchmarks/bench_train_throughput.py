"""Training throughput of the tiny LLaVA pre-training config, 1 vs 2 CPU processes.

    python benchmarks/bench_train_throughput.py [--iters 60] [--config CONFIG]

Each run goes through ``tools/dist.sh`` exactly as a user launches it (chat-sample hooks off,
checkpoints only at the end). Throughput = samples per optimiser step (per-process batch × processes)
/ median iteration time from mmengine's own ``time`` scalar, skipping the first 5 iterations.
The 2-process figure is reported as a ratio over the 1-process baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def run(config: str, nproc: int, iters: int, batch: int, port: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ['bash', 'tools/dist.sh', 'train', config, str(nproc), '--work-dir', tmp, '--cfg-options',
               'train_cfg.max_epochs=None', f'train_cfg.max_iters={iters}', 'custom_hooks=[]',
               f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
               f'batch_size={batch}']  # PART 1: the dataloader and its length-grouped sampler
        env = dict(os.environ, PORT=str(port), PYTHON=sys.executable)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
        scalars = next(Path(tmp).glob('*/vis_data/scalars.json'))
        rows = [json.loads(x) for x in scalars.read_text().splitlines() if x.strip()]
    times = [r['time'] for r in rows if 'time' in r][5:]
    t = statistics.median(times)
    return dict(nproc=nproc, iters=iters, s_per_iter=t, samples_per_s=batch * nproc / t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--iters', type=int, default=60)
    parser.add_argument('--batch', type=int, default=8, help='per-process batch size')
    args = parser.parse_args()
    from mllm_align.testing.tiny_assets import build_tiny_assets
    build_tiny_assets(REPO / 'data' / 'tiny')
    one = run(args.config, 1, args.iters, args.batch, 29611)
    two = run(args.config, 2, args.iters, args.batch, 29621)
    print('| processes | s / iteration (median) | samples / s | ratio vs 1 process |')
    print('|---|---|---|---|')
    for r in (one, two):
        print(f"| {r['nproc']} | {r['s_per_iter']:.4f} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / one['samples_per_s']:.2f}x |")


if __name__ == '__main__':
    main()
