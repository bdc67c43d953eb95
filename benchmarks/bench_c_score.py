"""Benchmark: C-score matching, batched over pairs (what tools/c_score.py runs) vs a per-keypoint loop.

    python benchmarks/bench_c_score.py                   # 60×60 grids, C 384 (DINOv2-S at 840 px), 64 pairs
    python benchmarks/bench_c_score.py --grid 16 --channels 1024 --pairs 256

Same random features and keypoints for both; the loop takes one keypoint at a time (cosine against every
target cell, argmax), the way a straightforward implementation does. Reports pairs per second and the ratio,
and checks that both give the same PCK.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mllm_align.metrics.correspondence import from_canvas, hits_from_predictions, predict_matches  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--pairs', type=int, default=64)
    p.add_argument('--grid', type=int, default=60)
    p.add_argument('--channels', type=int, default=384)
    p.add_argument('--keypoints', type=int, default=20)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--device', default='cpu')
    return p.parse_args()


def main() -> None:
    args = parse_args()
    gen = torch.Generator().manual_seed(0)
    B, C, P, K = args.pairs, args.channels, args.grid, args.keypoints
    fs, ft = torch.randn(B, C, P, P, generator=gen), torch.randn(B, C, P, P, generator=gen)
    xy = torch.rand(B, K, 2, generator=gen) * 840
    kps_trg = np.random.default_rng(0).uniform(0, 840, (B, K, 2))
    size, box = (840, 840), (0, 0, 840, 840)

    start = time.perf_counter()
    hits_b = 0
    for s in range(0, B, args.batch):
        pred = predict_matches(fs[s:s + args.batch].to(args.device), ft[s:s + args.batch].to(args.device),
                               xy[s:s + args.batch].to(args.device)).cpu().double().numpy()
        for b in range(pred.shape[0]):
            hits_b += int(hits_from_predictions(pred[b], kps_trg[s + b], size, box, alpha=0.3).sum())
    batched = time.perf_counter() - start

    start = time.perf_counter()
    hits_l = 0
    cell = 840 / P
    for b in range(B):
        trg = torch.nn.functional.normalize(ft[b].flatten(1), dim=0)  # (C, P²)
        for k in range(K):
            x, y = xy[b, k].tolist()
            q = torch.nn.functional.normalize(fs[b, :, min(int(y // cell), P - 1), min(int(x // cell), P - 1)], dim=0)
            best = int((q @ trg).argmax())
            pred = from_canvas(np.array([[(best % P + 0.5) * cell, (best // P + 0.5) * cell]]), size)[0]
            hits_l += int(np.linalg.norm(pred - kps_trg[b, k]) < 0.3 * 840)
    loop = time.perf_counter() - start
    assert hits_b == hits_l, (hits_b, hits_l)
    print(f'| grid | C | pairs × keypoints | batched (pairs/s) | per-keypoint loop (pairs/s) | ratio |\n'
          f'|---|---|---|---|---|---|\n'
          f'| {P}×{P} | {C} | {B} × {K} | {B / batched:.1f} | {B / loop:.1f} | {loop / batched:.1f}× |')


if __name__ == '__main__':
    main()
