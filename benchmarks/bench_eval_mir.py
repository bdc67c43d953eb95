"""Benchmark: tools/eval_mir.py memory vs N, and a series in one call vs one call per checkpoint.

    python benchmarks/bench_eval_mir.py          # ~2 min on 2 CPU cores (builds data/tiny if needed)

1. Peak memory. ``tools/eval_mir.py`` scores one checkpoint of the tiny pre-training config with
   N = 10 and N = 100 image–text pairs, each in a fresh process whose RSS high-water mark
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is read at exit; the streaming extraction should
   keep it flat in N with ``--replay-mb 0`` (the model run again for MIR's second pass); the default, which keeps
   the first pass's rows (up to 1 GiB) and reads them again, is timed beside it. Texts: a generated JSONL of 120
   distinct long paragraphs (24 sentences of ``data/mir_texts`` recombined), so that every text is cut to exactly
   ``--text-max-tokens`` (default 1024) tokens and every sample costs the same; otherwise a larger N also means a longer
   longest sample, whose per-sample activations raise the peak. For contrast, the table gives what
   keeping every selected layer's rows in float32 (the seed's approach) would hold.
2. Series. 5 checkpoints (a real 10-iteration tiny run, saved every 2) scored by ONE call (base model
   built once, weights swapped) vs 5 calls (one per checkpoint), N = 20 as in the demo, each call a
   fresh ``tools/eval_mir.py`` process, as a user would run them; and the one call again with
   ``--replay-mb 0`` (two forward passes per pair instead of one).

Every process runs with OMP_NUM_THREADS=1 (steady timings on a shared 2-core machine). Prints markdown
tables for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))

# Run in a child process: eval_mir's main(), then the peak RSS and wall time as the last stdout line.
_CHILD = r'''
import json, resource, runpy, sys, time
start = time.perf_counter()
sys.argv = ['tools/eval_mir.py'] + sys.argv[1:]
try:
    runpy.run_path('tools/eval_mir.py', run_name='__main__')
except SystemExit as exc:
    if exc.code:
        raise
print('BENCH ' + json.dumps(dict(maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                 wall_s=time.perf_counter() - start)))
'''


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10, 100], help='N values for the memory run')
    parser.add_argument('--series-n', type=int, default=20, help='N for the series timing (the demo uses 20)')
    parser.add_argument('--text-max-tokens', type=int, default=1024, help='passed to eval_mir')
    parser.add_argument('--keep', action='store_true', help='keep the temporary folder')
    return parser.parse_args()


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f'{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def _eval(args: list[str]) -> dict:
    proc = _run([sys.executable, '-c', _CHILD, *args, '--no-progress', '--no-plots'], 'eval_mir ' + ' '.join(args))
    line = [x for x in proc.stdout.splitlines() if x.startswith('BENCH ')][-1]
    return json.loads(line[len('BENCH '):])


def _texts_jsonl(path: Path, count: int) -> None:
    sentences = []
    for f in sorted((REPO / 'data' / 'mir_texts').glob('*.txt')):
        sentences += [s.strip() + '.' for s in f.read_text().split('. ') if s.strip()]
    rng = random.Random(0)
    with open(path, 'w') as out:
        for _ in range(count):
            out.write(json.dumps({'text': ' '.join(rng.sample(sentences, 24))}) + '\n')


def main() -> None:
    args = parse_args()
    from mllm_align.testing.tiny_assets import build_tiny_assets
    build_tiny_assets(REPO / 'data' / 'tiny')
    tmp = Path(tempfile.mkdtemp(prefix='bench_eval_mir_'))
    t_all = time.perf_counter()
    try:
        run = tmp / 'run'
        _run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(run), '--cfg-options',
              'train_cfg.max_epochs=None', 'train_cfg.max_iters=10', 'default_hooks.checkpoint.interval=2',
              'custom_hooks=[]'], 'training')
        ckpts = sorted(run.glob('iter_*.pth'), key=lambda p: int(p.stem.split('_')[1]))
        texts = tmp / 'texts.jsonl'
        _texts_jsonl(texts, max(args.sizes) + 20)

        hidden = json.loads((REPO / 'data' / 'tiny' / 'llm' / 'llama' / 'config.json').read_text())['hidden_size']
        mem_rows = []
        for n in args.sizes:
            common = [str(ckpts[-1]), '--config', CONFIG, '--eval-num', str(n), '--texts', str(texts),
                      '--text-max-tokens', str(args.text_max_tokens)]
            res = _eval([*common, '--replay-mb', '0', '--out', str(tmp / f'mem_{n}')])
            replayed = _eval([*common, '--out', str(tmp / f'mem_replay_{n}')])
            doc = json.loads((tmp / f'mem_{n}' / 'mir.json').read_text())['results'][0]
            same = json.loads((tmp / f'mem_replay_{n}' / 'mir.json').read_text())['results'][0]['mir'] == doc['mir']
            rows = doc['num_vision_rows'][0] + doc['num_text_rows'][0]
            kept_mib = rows * len(doc['layers']) * hidden * 4 / 2**20
            mem_rows.append((n, rows, kept_mib, res['maxrss_kb'] / 1024, res['wall_s'],
                             replayed['maxrss_kb'] / 1024, replayed['wall_s'], doc['mir'], same))

        series_args = ['--config', CONFIG, '--eval-num', str(args.series_n), '--text-max-tokens',
                       str(args.text_max_tokens)]
        one = _eval([str(run), *series_args, '--out', str(tmp / 'series_one')])
        rerun = _eval([str(run), *series_args, '--replay-mb', '0', '--out', str(tmp / 'series_rerun')])
        separate = [_eval([str(c), *series_args, '--out', str(tmp / f'series_{c.stem}')]) for c in ckpts]
        one_mirs = [r['mir'] for r in json.loads((tmp / 'series_one' / 'mir.json').read_text())['results']]
        sep_mirs = [json.loads((tmp / f'series_{c.stem}' / 'mir.json').read_text())['results'][0]['mir']
                    for c in ckpts]
    finally:
        if args.keep:
            print(f'kept {tmp}')
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    import torch
    print(f'- Command: `.venv/bin/python benchmarks/bench_eval_mir.py` ({time.perf_counter() - t_all:.0f} s in all)')
    print(f'- Machine: {os.cpu_count()}-core {platform.machine()} CPU, OMP_NUM_THREADS=1, torch {torch.__version__}')
    print(f'- Date: {datetime.date.today().isoformat()}\n')
    print('| N pairs | rows per layer (vision + text) | all rows kept, fp32 (MiB) | `--replay-mb 0`: peak RSS (MiB) '
          '| wall (s) | default (replay): peak RSS (MiB) | wall (s) | MIR (same both ways) |')
    print('|---|---|---|---|---|---|---|---|')
    for n, rows, kept, rss, wall, rss_r, wall_r, mir, same in mem_rows:
        print(f'| {n} | {rows} | {kept:.1f} | {rss:.0f} | {wall:.1f} | {rss_r:.0f} | {wall_r:.1f} | {mir:.4f} '
              f'({"yes" if same else "NO"}) |')
    total_sep = sum(r['wall_s'] for r in separate)
    print(f'\n| {len(ckpts)} checkpoints, N={args.series_n} | wall (s) | peak RSS (MiB) |')
    print('|---|---|---|')
    print(f'| one call (model built once) | {one["wall_s"]:.1f} | {one["maxrss_kb"] / 1024:.0f} |')
    print(f'| {len(ckpts)} separate calls | {total_sep:.1f} | {max(r["maxrss_kb"] for r in separate) / 1024:.0f} |')
    print(f'| one call, `--replay-mb 0` | {rerun["wall_s"]:.1f} | {rerun["maxrss_kb"] / 1024:.0f} |')
    print(f'\nratio separate / one call: {total_sep / one["wall_s"]:.2f}x; '
          f'max |MIR difference| one call vs separate: {max(abs(a - b) for a, b in zip(one_mirs, sep_mirs)):.2e}; '
          f'one call replayed / re-run: {one["wall_s"] / rerun["wall_s"]:.2f}')


if __name__ == '__main__':
    main()
