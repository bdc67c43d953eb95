"""Benchmark: CoLVA's object features (expert forward + mask grid + adapter + pooling) vs the expert forward alone.

    OMP_NUM_THREADS=2 python benchmarks/bench_colva_expert.py
    OMP_NUM_THREADS=2 python benchmarks/bench_colva_expert.py --images 4 --objects 8 --llm-dim 3072 --repeat 5

Both paths run under ``no_grad`` on the same batch of ``--images`` random images resized to the expert's
side (``resize_for_expert``, included in neither timing) with ``--objects`` random box masks each
(120–240 × 160–320 px) at 480×640 image pixels. The object path adds, per image, ``masks_to_grid``
(bilinear to g×g, ``> 0.5``), ``ObjectAdapter`` on every grid cell (C → ``--llm-dim``) and ``mask_pool``.
Experts: the tiny RADIO stand-in (``data/tiny/radio``, built if missing) and, when ``data/real/dinov2_small``
exists, DINOv2-S at 224 and 448 px. Best of ``--repeat`` timed runs after one warm-up; the ratio is object
path / expert alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mllm_align.models.object_adapter import ObjectAdapter, mask_pool, masks_to_grid  # noqa: E402
from mllm_align.models.vision_expert import HFVisionExpert, resize_for_expert  # noqa: E402
from mllm_align.testing.tiny_radio import build_tiny_radio  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=4, help='images per batch (default: 4)')
    p.add_argument('--objects', type=int, default=8, help='object masks per image (default: 8)')
    p.add_argument('--llm-dim', type=int, default=3072, help="adapter output width, H (default: 3072, Phi-3's)")
    p.add_argument('--repeat', type=int, default=5, help='timed runs; the best is reported (default: 5)')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads (default: 2)')
    return p.parse_args()


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _batch(n: int, k: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]
    masks = torch.zeros(n, k, 480, 640, dtype=torch.bool)
    for i in range(n):
        for j in range(k):
            y, x = int(rng.integers(0, 320)), int(rng.integers(0, 480))
            masks[i, j, y:y + int(rng.integers(120, 240)), x:x + int(rng.integers(160, 320))] = True
    return images, masks


def measure(name: str, expert: HFVisionExpert, args: argparse.Namespace) -> dict:
    images, masks = _batch(args.images, args.objects)
    pixels = resize_for_expert(images, expert.image_size)  # (N, 3, E, E)
    torch.manual_seed(0)
    adapter = ObjectAdapter(expert.hidden_size, args.llm_dim).eval()

    def expert_only():
        with torch.no_grad():
            return expert(pixels)

    def objects():
        with torch.no_grad():
            grid = expert(pixels)  # (N, g, g, C)
            out = []
            for i in range(grid.shape[0]):
                weights, valid = masks_to_grid(masks[i], expert.grid_size)  # (K, g, g), (K,)
                if valid.any():  # objects that vanish on the grid are dropped, as CoLVA's model counts them
                    out.append(mask_pool(adapter(grid[i]), weights[valid]))  # (K_valid, H)
            return torch.cat(out)

    alone, full = _best(expert_only, args.repeat), _best(objects, args.repeat)
    return dict(expert=name, side=expert.image_size, grid=expert.grid_size, c=expert.hidden_size,
                alone_ms=alone * 1e3, full_ms=full * 1e3, ratio=full / alone)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f'images={args.images} objects={args.objects} llm_dim={args.llm_dim} repeat={args.repeat} '
          f'threads={args.threads}')
    rows = [measure('tiny RADIO stand-in', HFVisionExpert(str(build_tiny_radio(REPO / 'data' / 'tiny')),
                                                          trust_remote_code=True), args)]
    dinov2 = REPO / 'data' / 'real' / 'dinov2_small'
    if (dinov2 / 'config.json').is_file():
        for side in (224, 448):
            rows.append(measure('DINOv2-S', HFVisionExpert(str(dinov2), image_size=side), args))
    else:
        print(f'{dinov2} absent: DINOv2-S rows skipped (python data/prepare_real.py --only dinov2_small)')
    print('| expert | side (px) | grid × C | expert alone (ms) | expert + masks + adapter + pool (ms) | ratio |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['expert']} | {r['side']} | {r['grid']}×{r['grid']} × {r['c']} | {r['alone_ms']:.1f} | "
              f"{r['full_ms']:.1f} | {r['ratio']:.2f} |")


if __name__ == '__main__':
    main()
