"""What an epoch boundary costs the training loop: mmengine's data iterator against ``EpochDataIterator``.

    python benchmarks/bench_epoch_boundary.py [--config CONFIG] [--epochs 3] [--workers 0 1]

Both iterators read the same DataLoader, built from the config's ``train_dataloader`` exactly as the runner
builds it (dataset, length-grouped sampler, collate function; 1 process), for ``--epochs`` passes, in the same
run, once per worker setting (``--workers 1``: one persistent worker, the recipes' default with a GPU). Printed:
seconds for all the passes, seconds per epoch boundary beyond a pass's own reading time
(``(total - epochs × first pass) / (epochs - 1)``, the first pass timed with the same iterator), and the ratio of the
two totals. mmengine's ``_InfiniteDataloaderIterator`` sleeps 2 s before every new pass;
``mllm_align.engine.loops.EpochDataIterator`` (what ``TrainLoop`` uses) waits only when non-persistent workers restart.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def build_loader(config: str, workers: int):
    from mmengine.runner import Runner

    from mllm_align.engine.build import load_config
    cfg = load_config(config, {'dataloader_num_workers': workers})
    return Runner.build_dataloader(cfg.train_dataloader, seed=cfg.randomness.seed)


def timed(make_iterator, loader, batches: int) -> float:
    start = time.perf_counter()
    iterator = make_iterator(loader)
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1])
    args = parser.parse_args()
    from mmengine.runner.loops import _InfiniteDataloaderIterator

    from mllm_align.engine.loops import EpochDataIterator
    print(f'config: {args.config}; {args.epochs} passes, 1 process')
    print(f'| workers | batches / pass | iterator | {args.epochs} passes (s) | per boundary (s) | ratio |')
    print('|---|---|---|---|---|---|')
    for workers in args.workers:
        loader = build_loader(args.config, workers)
        per_pass = len(loader)
        totals = {}
        for name, make in (('mmengine _InfiniteDataloaderIterator', _InfiniteDataloaderIterator),
                           ('EpochDataIterator', EpochDataIterator)):
            one = timed(make, loader, per_pass)  # a single pass: no boundary
            total = timed(make, loader, per_pass * args.epochs)
            totals[name] = total
            boundary = (total - args.epochs * one) / (args.epochs - 1)
            ratio = '' if name.startswith('mmengine') else \
                f'{total / totals["mmengine _InfiniteDataloaderIterator"]:.3f}'
            print(f'| {workers} | {per_pass} | {name} | {total:.2f} | {boundary:.3f} | {ratio} |')


if __name__ == '__main__':
    main()
