"""Start-up of ``tools/train.py``: the time to the first training iteration, against an import floor.

    python benchmarks/bench_startup.py                  # 1 process, 3 repeats of everything, interleaved
    python benchmarks/bench_startup.py --procs 1 2 --repeats 5
    python benchmarks/bench_startup.py --procs 1 2 --baseline /tmp/base   # before/after: another checkout

Every measurement is a fresh process, timed from just before it is started (the parent's clock):

* ``floor: import torch`` and ``floor: import transformers.modeling_utils`` (torch included): what any
  run of a transformers model pays before it does anything;
* ``train.py, N proc``: the tool's own code path (its module loaded as ``tools/train.py`` loads, then
  ``prepare_config``, ``build_runner``, ``runner.train()``) on the tiny LLaVA pre-training twin, with a
  hook that reports the end of the first iteration (rank 0; after the gradient all-reduce with 2
  processes) and ends the process there. The stages are printed too: module imports, ``prepare_config``,
  ``build_runner``, first iteration (its ``before_train`` hooks, the data loader's start and the step);
* ``cpu s``: CPU time (user + system) of that process (rank 0 for ``train.py`` rows), or of all the processes a
  command ran (both ranks and torchrun for ``wall, 2 proc``): less disturbed than wall time by other load;
* ``wall, N proc``: the whole 1-iteration command a user types (``python tools/train.py CONFIG
  --cfg-options train_cfg.max_iters=1 default_hooks.checkpoint.interval=1000``, or ``bash tools/dist.sh
  train CONFIG 2 ...``), including what runs after the iteration (the chat samples, the last checkpoint).

With ``--baseline DIR`` the train.py and wall rows are measured in that checkout too (``baseline ...`` rows;
``git worktree add --detach DIR REV`` and ``ln -s "$PWD/data/tiny" DIR/data/tiny``). The kinds are
interleaved repeat by repeat (machine load then hits them alike) and the median is printed,
also as a ratio to the transformers floor. Needs the tiny assets (``python tools/build_tiny_assets.py``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
OPTIONS = ['--cfg-options', 'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1000']
START_ENV = 'BENCH_STARTUP_T0'
TAG = 'STARTUP '


def _since_start() -> float:
    return time.time() - float(os.environ[START_ENV])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(repo: Path, work_dir: str, launcher: str) -> None:
    """Run ``repo``'s tools/train.py steps in this process and print the stage times (seconds since the start)."""
    stages = {}
    spec = importlib.util.spec_from_file_location('train_tool', repo / 'tools' / 'train.py')
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    stages['imports'], stages['cpu_imports'] = _since_start(), _cpu()
    cfg = train.prepare_config(CONFIG, work_dir=work_dir, launcher=launcher,
                               cfg_options={'train_cfg.max_iters': 1, 'default_hooks.checkpoint.interval': 1000})
    stages['prepare_config'], stages['cpu_prepare_config'] = _since_start(), _cpu()
    runner = train.build_runner(cfg)
    stages['build_runner'], stages['cpu_build_runner'] = _since_start(), _cpu()
    from mmengine.hooks import Hook

    class FirstIteration(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            stages['first_iteration'] = _since_start()
            stages['cpu'] = stages['cpu_first_iteration'] = _cpu()
            if runner.rank == 0:
                stages['modules'] = len(sys.modules)
                stages['deepspeed_imported'] = 'deepspeed' in sys.modules
                print(TAG + json.dumps(stages), flush=True)
            os._exit(0)  # the rest of the run is not measured

    runner.register_hook(FirstIteration(), priority='HIGHEST')  # before the checkpoint hook's save
    runner.train()


def _timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, dict]:
    """Run ``cmd``; return its wall time, and what a child printed (or the CPU time of all the processes)."""
    env = dict(env, **{START_ENV: repr(time.time())})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(TAG)]
    if lines:
        return wall, json.loads(lines[-1][len(TAG):])
    return wall, {'cpu': after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--procs', type=int, nargs='+', default=[1], help='process counts to measure (1 and/or 2)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, help='OMP_NUM_THREADS per process (default: cores / processes, as '
                                                    'tools/dist.sh); 1 makes CPU times robust to other load')
    parser.add_argument('--baseline', metavar='DIR',
                        help='another checkout (e.g. `git worktree add --detach /tmp/base HEAD`, with data/tiny '
                             'linked in) whose train.py rows are measured too, interleaved with this one\'s')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--repo', default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument('--work-dir', help=argparse.SUPPRESS)
    parser.add_argument('--launcher', default='none', help=argparse.SUPPRESS)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.repo), args.work_dir, args.launcher)
        return
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLLM_ALIGN_CRASH', 'MLLM_ALIGN_CKPT_FAULT'))}
    tmp = tempfile.mkdtemp(prefix='bench_startup_')
    kinds: dict[str, tuple[Path, list[str]]] = {
        'floor: import torch': (REPO, [py, '-c', 'import torch']),
        'floor: import transformers.modeling_utils': (REPO, [py, '-c', 'import transformers.modeling_utils']),
    }
    trees = [('', REPO)] if args.baseline is None else [('baseline ', Path(args.baseline).resolve()), ('', REPO)]
    for n in args.procs:
        for label, repo in trees:
            me = [str(Path(__file__).resolve()), '--child', '--repo', str(repo), '--work-dir', f'{tmp}/{label}c{n}']
            if n == 1:
                kinds[f'{label}train.py, 1 proc: first iteration'] = (repo, [py, *me])
                kinds[f'{label}wall, 1 proc: python tools/train.py'] = (repo, [
                    py, 'tools/train.py', CONFIG, '--work-dir', f'{tmp}/{label}w1', *OPTIONS])
            else:
                kinds[f'{label}train.py, {n} proc: first iteration'] = (repo, [
                    py, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', *me,
                    '--launcher', 'pytorch'])
                kinds[f'{label}wall, {n} proc: bash tools/dist.sh'] = (repo, [
                    'bash', 'tools/dist.sh', 'train', CONFIG, str(n), '--work-dir', f'{tmp}/{label}w{n}', *OPTIONS])
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    stages: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind, (repo, cmd) in kinds.items():
            procs = int(kind.split(' proc')[0].rsplit(' ', 1)[-1]) if ' proc' in kind else 1
            threads = args.threads or max(1, (os.cpu_count() or 1) // procs)  # as tools/dist.sh sets it
            wall, st = _timed(cmd, repo, dict(env, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(repo)))
            walls[kind].append(st.get('first_iteration', wall))
            stages[kind].append(st)
            print(f'  repeat {r + 1}: {kind}: {walls[kind][-1]:.2f} s, cpu {st["cpu"]:.2f} s', file=sys.stderr,
                  flush=True)
    shutil.rmtree(tmp, ignore_errors=True)  # the runs' work dirs
    floor = statistics.median(walls['floor: import transformers.modeling_utils'])
    print(f'# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, '
          f'median of {args.repeats}, interleaved')
    print(f'{"measurement":52s} {"median s":>9s} {"÷ floor":>8s} {"cpu s":>6s}   runs (s)')
    for kind, values in walls.items():
        med = statistics.median(values)
        cpu = statistics.median(s['cpu'] for s in stages[kind])
        print(f'{kind:52s} {med:9.2f} {med / floor:8.2f} {cpu:6.2f}   {" ".join(f"{v:.2f}" for v in values)}')
        if 'imports' in stages[kind][0]:
            keys = ('imports', 'prepare_config', 'build_runner', 'first_iteration')
            for what, prefix in (('wall', ''), ('cpu', 'cpu_')):
                ends = [statistics.median(s[prefix + k] for s in stages[kind]) for k in keys]
                parts = [ends[0]] + [b - a for a, b in zip(ends, ends[1:])]
                print(f'    stages, {what} s (from median end times): ' + ', '.join(
                    f'{k} {p:.2f}' for k, p in zip(keys, parts)))
            print(f'    deepspeed imported: {stages[kind][-1]["deepspeed_imported"]}, '
                  f'{stages[kind][-1]["modules"]} modules at the first iteration')


if __name__ == '__main__':
    main()
