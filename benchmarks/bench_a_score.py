"""Benchmark: A score v3 (tools/a_score.py's evaluator) vs the plain training forward on the same pairs.

    python benchmarks/bench_a_score.py                        # the tiny pre-training twin, 64 pairs, batch 8
    python benchmarks/bench_a_score.py --config CFG --pairs 100

Both run under no_grad on the same collated batches: ``AScoreEvaluator`` (per-sample caption log-likelihood,
logits at the supervised positions only) and ``model(data, mode='loss')`` (the training loss, one value per
batch). The score should cost no more than one no-grad training forward. Best of ``--repeat`` passes each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mllm_align.engine.a_score_eval import caption_pairs_from_config  # noqa: E402
from mllm_align.engine.build import build_model_from_config, load_config  # noqa: E402
from mllm_align.evaluation.a_score import AScoreEvaluator  # noqa: E402

TINY = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=TINY)
    p.add_argument('--pairs', type=int, default=64)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--repeat', type=int, default=3)
    args = p.parse_args()
    cfg = load_config(args.config)
    model = build_model_from_config(cfg)
    samples, collate, _ = caption_pairs_from_config(cfg, num_pairs=args.pairs, seed=0)
    ev = AScoreEvaluator(samples, collate, batch_size=args.batch)
    batches = list(ev.batches(model))
    score_t, loss_t = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        ev.score(model)
        score_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for data in batches:
                model(data, mode='loss')
        loss_t.append(time.perf_counter() - start)
    n = len(samples)
    print('| config | pairs (batch) | A v3 (samples/s) | training forward, no grad (samples/s) '
          '| A v3 time / forward time |\n|---|---|---|---|---|')
    print(f'| {Path(args.config).name} | {n} ({args.batch}) | {n / min(score_t):.0f} | {n / min(loss_t):.0f} | '
          f'{min(score_t) / min(loss_t):.2f} |')


if __name__ == '__main__':
    main()
