"""Start-up to the first batch on a LLaVA-665k-sized JSON: lazy index vs parse-and-tokenize-everything.

    python benchmarks/bench_dataset_startup.py                       # 665k items, ~0.66 GiB temp file
    python benchmarks/bench_dataset_startup.py --num-items 50000     # quicker

Synthesizes a LLaVA JSON with ``--num-items`` records (mixed 1–8-turn conversations, ~1 KB per
record, 90 % with an image, some unicode/quotes/braces in the text) into a temporary directory,
then measures in one process:

(a) ``LLaVADataset`` construction (byte-offset index + length estimates) and the first batch
    through a ``DataLoader`` with ``LengthGroupedSampler`` and ``llava_collate_fn``: a tiny
    byte-level BPE tokenizer, a CLIP-336 image processor and one small PNG that every record
    references;
(b) the baseline of xtuner-style datasets: ``json.load`` of the whole file and tokenizing every
    record up front, timed on the first ``--baseline-items`` records and extrapolated linearly
    (printed as such). The file is in the page cache in both cases (it has just been written).

The temporary files are deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from PIL import Image
from transformers import CLIPImageProcessor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mllm_align.data import LengthGroupedSampler, LLaVADataset, encode_conversation, llava_collate_fn  # noqa: E402
from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer  # noqa: E402

WORDS = ('the a of to in is on with what where image picture photo shows man woman child cat dog '
         'car bus street table kitchen red blue green white black large small two three several '
         'people standing sitting holding looking building sky tree water food plate describe '
         'detail color left right behind front near above below answer question briefly why how '
         'many wearing shirt sign text reads number visible background foreground scene').split()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-items', type=int, default=665_000, help='records in the synthetic JSON')
    parser.add_argument('--baseline-items', type=int, default=20_000,
                        help='records the parse-and-tokenize baseline is timed on (then extrapolated)')
    parser.add_argument('--batch-size', type=int, default=16, help='per-device batch size')
    parser.add_argument('--num-workers', type=int, default=0, help='DataLoader workers for (a)')
    parser.add_argument('--workdir', type=str, default=None, help='where to write the data (default: a temp dir)')
    parser.add_argument('--keep', action='store_true', help='keep the synthetic data')
    return parser.parse_args()


def _sentence(rng: random.Random, n: int) -> str:
    return ' '.join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice('..?!')


def _record_body(rng: random.Random, with_image: bool) -> dict:
    """One record without its id: LLaVA-665k-like mix of short VQA and longer multi-turn chats."""
    turns = rng.choice([1, 1, 1, 2, 3, 4, 6, 8])
    conv = []
    for t in range(turns):
        q = _sentence(rng, rng.randint(5, 16))
        if t == 0 and with_image:
            q = '<image>\n' + q if rng.random() < 0.8 else q + '\n<image>'
        if rng.random() < 0.05:
            q += ' He said "look at {this}" [1] \\ done.'
        n_sent = rng.randint(1, 3) if turns > 2 else rng.randint(1, 8)
        a = ' '.join(_sentence(rng, rng.randint(6, 18)) for _ in range(n_sent))
        if rng.random() < 0.03:
            a += '\nCode: {"a": [1, 2]} — naïve café ✓'
        conv += [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': a}]
    body = {'image': 'coco/train2017/sample.png'} if with_image else {}
    body['conversations'] = conv
    return body


def synthesize(path: Path, num_items: int, seed: int = 0, pool_size: int = 20_000) -> None:
    """Write ``num_items`` records, cycling through ``pool_size`` distinct bodies with fresh ids."""
    rng = random.Random(seed)
    pool = []
    for _ in range(pool_size):
        body = json.dumps(_record_body(rng, rng.random() < 0.9), ensure_ascii=False)
        pool.append(body[1:])  # without the opening brace: the id goes first
    with open(path, 'w', encoding='utf-8') as f:
        f.write('[\n')
        for i in range(num_items):
            f.write('{"id": "%012d", %s%s\n' % (i, pool[i % pool_size], ',' if i < num_items - 1 else ''))
        f.write(']\n')


def anon_rss_gb() -> float:
    """Anonymous (heap) resident memory; unlike RSS it leaves out the memory-mapped data file's
    page-cache pages. Falls back to RSS off Linux."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('RssAnon:'):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return psutil.Process().memory_info().rss / 2**30


def main() -> int:
    args = parse_args()
    print(f'args: {vars(args)}')
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
          f'python {platform.python_version()}, torch {torch.__version__}')
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='bench_startup_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = work / 'llava_synthetic.json'
        t = time.perf_counter()
        synthesize(data, args.num_items)
        size_gb = data.stat().st_size / 2**30
        print(f'synthesized {args.num_items} records, {size_gb:.2f} GiB '
              f'({data.stat().st_size / args.num_items:.0f} B/record) in {time.perf_counter() - t:.1f} s')
        image_dir = work / 'images'
        (image_dir / 'coco' / 'train2017').mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (64, 48), (200, 40, 40)).save(image_dir / 'coco' / 'train2017' / 'sample.png')
        tokenizer = build_tiny_tokenizer('vicuna', list(SAMPLE_CORPUS) + WORDS, vocab_size=1024)
        processor = CLIPImageProcessor(size={'shortest_edge': 336}, crop_size={'height': 336, 'width': 336})

        # (a) lazy dataset: construction + first batch
        rss0 = anon_rss_gb()
        t0 = time.perf_counter()
        ds = LLaVADataset(str(data), str(image_dir), tokenizer, 'vicuna_v1', processor,
                          max_length=2048, num_image_tokens=576)
        t_build = time.perf_counter() - t0
        sampler = LengthGroupedSampler(ds, per_device_batch_size=args.batch_size, seed=0)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
            collate_fn=functools.partial(llava_collate_fn, pad_token_id=tokenizer.pad_token_id))
        batch = next(iter(loader))
        t_first = time.perf_counter() - t0
        rss_a = anon_rss_gb() - rss0
        shape = tuple(batch['data']['input_ids'].shape)
        print(f'(a) construction {t_build:.2f} s, first batch {t_first:.2f} s (input_ids {shape}), '
              f'+{rss_a:.2f} GiB anonymous memory')
        del loader, sampler, ds, batch

        # (b) baseline: json.load + tokenize everything, on a slice, extrapolated
        n_base = min(args.baseline_items, args.num_items)
        slice_path = work / 'slice.json'
        synthesize(slice_path, n_base)
        rss0 = anon_rss_gb()
        t0 = time.perf_counter()
        with open(slice_path, encoding='utf-8') as f:
            records = json.load(f)
        t_load = time.perf_counter() - t0
        encoded = [encode_conversation(r['conversations'], tokenizer, 'vicuna_v1', sample_id=r['id'])
                   for r in records]  # kept, as a pre-tokenized dataset keeps them
        t_base = time.perf_counter() - t0
        rss_b = anon_rss_gb() - rss0
        scale = args.num_items / n_base
        t_base_full = t_base * scale
        print(f'(b) json.load {t_load:.2f} s + tokenize {t_base - t_load:.2f} s on {n_base} records; '
              f'EXTRAPOLATED to {args.num_items}: {t_base_full:.1f} s; +{rss_b:.2f} GiB anonymous memory '
              f'for the parsed and tokenized records (≈{rss_b * scale:.1f} GiB extrapolated)')

        del encoded, records
        print()
        print('| approach | records | start-up to first batch (s) |')
        print('|---|---:|---:|')
        print(f'| lazy `LLaVADataset` (index + length estimates), construction only | {args.num_items:,} '
              f'| {t_build:.2f} |')
        print(f'| lazy `LLaVADataset` + `LengthGroupedSampler` + first batch of {args.batch_size} | '
              f'{args.num_items:,} | {t_first:.2f} |')
        print(f'| baseline: `json.load` + tokenize all (measured on {n_base:,}) | {n_base:,} | {t_base:.2f} |')
        print(f'| baseline extrapolated linearly ×{scale:.2f} | {args.num_items:,} | ≈{t_base_full:.0f} |')
        print(f'\nspeed-up to first batch: ≈{t_base_full / t_first:.0f}× (baseline extrapolated)')
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
