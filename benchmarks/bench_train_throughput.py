"""Training throughput of the tiny LLaVA pre-training config, 1 vs 2 CPU processes, against a bare compute step.

    python benchmarks/bench_train_throughput.py [--iters 60] [--config CONFIG] [--bare-steps 30] \
        [--cfg-option dataloader_num_workers=0 ...]

Each run goes through ``tools/dist.sh`` exactly as a user launches it (chat-sample hooks off,
checkpoints only at the end, a log line every iteration). From mmengine's own scalars
(``vis_data/scalars.json``), skipping the first 5 iterations:

* ``time``: median seconds per iteration (the loop's wall clock from one iteration's end to the next, data
  included); throughput = samples per optimiser step (per-process batch × processes) / that median;
* ``data_time``: median seconds of it spent waiting for the DataLoader's next batch (rank 0).

``first iter``: wall-clock seconds from starting ``tools/dist.sh`` to the first iteration's row appearing in
``scalars.json`` (the file is polled every 10 ms; imports, config checks, model and dataset build, DataLoader
worker start and iteration 1 itself are all inside it).

``bare step``: the same config's model and optimiser wrapper built in this process (one process, no DDP, no
DataLoader), the first ``--bare-batches`` batches of the config's sampler (the same length-grouped batches a
1-process run starts with; batch lengths differ, hence 8 by default) collated in memory from the config's dataset,
then ``model.train_step(batch, optim_wrapper)`` (forward, loss, backward, gradient clipping, optimiser
step) timed ``--bare-steps`` times after 3 warm-up steps; median. Torch threads = cores // processes, the
``OMP_NUM_THREADS`` dist.sh gives each rank, so the 1-process row compares like with like; the 2-process row's
bare step leaves out DDP's gradient all-reduce and the other rank on the second core. ``overhead`` = ``time`` /
bare step - 1: what the loop, data loading, hooks and (2 processes) communication add to the compute.

The 2-process throughput is also reported as a ratio over the 1-process run of the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
SKIP = 5  # warm-up iterations left out of the medians


def _scalar_rows(work_dir: str) -> list[dict]:
    files = list(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not files:
        return []
    return [json.loads(x) for x in files[0].read_text().splitlines() if x.strip().endswith('}')]


def run(config: str, nproc: int, iters: int, batch: int, port: int, extra: tuple[str, ...] = ()) -> dict:
    """One ``tools/dist.sh`` run: median ``time`` / ``data_time`` and the wall clock to the first iteration."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ['bash', 'tools/dist.sh', 'train', config, str(nproc), '--work-dir', tmp, '--cfg-options',
               'train_cfg.max_epochs=None', f'train_cfg.max_iters={iters}', 'custom_hooks=[]',
               f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
               f'batch_size={batch}', *extra]  # PART 1: the dataloader and its length-grouped sampler
        env = dict(os.environ, PORT=str(port), PYTHON=sys.executable)
        start = time.perf_counter()
        first_iter = None
        with open(Path(tmp) / 'stderr.txt', 'w+') as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
            while proc.poll() is None:
                if first_iter is None and any('time' in r for r in _scalar_rows(tmp)):
                    first_iter = time.perf_counter() - start
                time.sleep(0.01)
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f'{" ".join(cmd)} failed:\n{err.read()[-3000:]}')
        rows = [r for r in _scalar_rows(tmp) if 'time' in r]
    t = statistics.median(r['time'] for r in rows[SKIP:])
    data_t = statistics.median(r['data_time'] for r in rows[SKIP:])
    return dict(nproc=nproc, iters=iters, s_per_iter=t, data_time=data_t, samples_per_s=batch * nproc / t,
                first_iter=first_iter)


def bare_step(config: str, batch: int, threads: int, steps: int, num_batches: int) -> float:
    """Median seconds of ``model.train_step`` on in-memory batches (see the module docstring)."""
    import torch
    from mmengine.optim import build_optim_wrapper

    from mllm_align.data.llava_dataset import build_from_cfg
    from mllm_align.engine.build import build_model_from_config, load_config

    torch.set_num_threads(threads)
    cfg = load_config(config, {'batch_size': batch})
    torch.manual_seed(0)
    model = build_model_from_config(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader_cfg = cfg.train_dataloader
    dataset = build_from_cfg(loader_cfg.dataset)
    sampler_cfg = dict(loader_cfg.sampler)
    order = list(sampler_cfg.pop('type')(dataset=dataset, seed=cfg.randomness.seed, **sampler_cfg))  # 1 process
    collate_cfg = dict(loader_cfg.collate_fn)
    collate = collate_cfg.pop('type')
    batches = [collate([dataset[order[k * batch + i]] for i in range(batch)], **collate_cfg)
               for k in range(num_batches)]
    for k in range(3):
        model.train_step(batches[k % num_batches], optim_wrapper)
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        model.train_step(batches[k % num_batches], optim_wrapper)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--iters', type=int, default=60)
    parser.add_argument('--batch', type=int, default=8, help='per-process batch size')
    parser.add_argument('--bare-steps', type=int, default=30)
    parser.add_argument('--bare-batches', type=int, default=8)
    parser.add_argument('--cfg-option', action='append', default=[], metavar='KEY=VALUE',
                        help='extra --cfg-options for both runs, e.g. dataloader_num_workers=0')
    args = parser.parse_args()
    from mllm_align.testing.tiny_assets import build_tiny_assets
    build_tiny_assets(REPO / 'data' / 'tiny')
    one = run(args.config, 1, args.iters, args.batch, 29611, tuple(args.cfg_option))
    two = run(args.config, 2, args.iters, args.batch, 29621, tuple(args.cfg_option))
    cores = os.cpu_count() or 1
    # in a subprocess each: torch's thread count is best set once, before the first op
    bare = {}
    for r in (one, two):
        threads = max(1, cores // r['nproc'])
        code = (f'import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.bench_train_throughput import '
                f'bare_step; print(bare_step({args.config!r}, {args.batch}, {threads}, {args.bare_steps}, '
                f'{args.bare_batches}))')
        out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True,
                             env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        bare[r['nproc']] = float(out.stdout.strip().splitlines()[-1])
    print('| processes | s / iteration (median) | data_time (median) | bare step | overhead vs bare | '
          'first iter (s) | samples / s | ratio vs 1 process |')
    print('|---|---|---|---|---|---|---|---|')
    for r in (one, two):
        b = bare[r['nproc']]
        print(f"| {r['nproc']} | {r['s_per_iter']:.4f} | {r['data_time']:.4f} | {b:.4f} | "
              f"{r['s_per_iter'] / b - 1:+.1%} | {r['first_iter']:.1f} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / one['samples_per_s']:.2f}x |")


if __name__ == '__main__':
    main()
