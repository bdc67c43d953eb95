"""Launching and inspecting tiny ``tools/dist.sh`` training runs from end-to-end tests.

The fault-injection suite starts runs in the background (:func:`start_run`), finds the rank
processes of a launcher (:func:`rank_pids`), waits for them to be gone (:func:`wait_gone`) and compares
the checkpoints of two runs bit for bit (:func:`assert_bitwise_equal`). Nothing here is used in
training itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
FAULT_ENV_PREFIXES = ('MLLM_ALIGN_CRASH', 'MLLM_ALIGN_CKPT_FAULT', 'MLLM_ALIGN_FAULT', 'MLLM_ALIGN_LAUNCHER_PID')


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a test run: this interpreter, one thread per rank, no inherited fault
    settings, no ``PORT`` (``tools/dist.sh`` picks a free one), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FAULT_ENV_PREFIXES) and k != 'PORT'}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS='1')
    env.update(extra)
    return env


def train_command(work_dir: str | os.PathLike, nproc: int, max_iters: int, interval: int, *extra: str,
                  config: str = TINY_CONFIG, cfg_options: tuple[str, ...] = ()) -> list[str]:
    """``bash tools/dist.sh train CONFIG NPROC --work-dir W --cfg-options …`` for an iteration-based run
    of ``max_iters`` iterations with a checkpoint every ``interval``."""
    return ['bash', 'tools/dist.sh', 'train', config, str(nproc), '--work-dir', os.fspath(work_dir),
            '--cfg-options', 'train_cfg.max_epochs=None', f'train_cfg.max_iters={max_iters}',
            f'default_hooks.checkpoint.interval={interval}', *cfg_options, *extra]


def start_run(cmd: list[str], log: str | os.PathLike, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in the repository root with stdout and stderr going to the file ``log``.

    ``tools/dist.sh`` ``exec``\\ s torchrun, so the returned process *is* the launcher.
    """
    out = open(log, 'w')  # noqa: SIM115 - closed by the child's exit; kept by the Popen
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def run(cmd: list[str], log: str | os.PathLike, env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``cmd`` to the end (:func:`start_run`); returns the exit status and the output."""
    proc = start_run(cmd, log, env)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, Path(log).read_text()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f'/proc/{pid}/task').glob('*'):
        try:
            kids += [int(x) for x in (task / 'children').read_text().split()]
        except OSError:
            pass
    return kids


def rank_pids(launcher_pid: int) -> list[int]:
    """The pids of the ``tools/train.py`` processes started by a launcher (its children)."""
    pids = []
    for pid in _children(launcher_pid):
        try:
            if b'train.py' in Path(f'/proc/{pid}/cmdline').read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith('State:')), 'X')
    return state not in ('Z', 'X')


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval)


def wait_gone(pids: list[int], timeout: float) -> float | None:
    """Seconds until every pid in ``pids`` is gone, or None if some still ran after ``timeout`` s."""
    start = time.monotonic()
    ok = wait_for(lambda: not any(alive(p) for p in pids), timeout)
    return time.monotonic() - start if ok else None


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (``VmRSS`` in ``/proc/<pid>/status``), or None if it is gone."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def checkpoints(work_dir: str | os.PathLike) -> list[str]:
    """The committed ``iter_N.pth`` names of a work dir (files or DeepSpeed directories), in iteration order."""
    names = [p.name for p in Path(work_dir).glob('iter_*.pth')]
    return sorted(names, key=lambda n: int(n[len('iter_'):-len('.pth')]))


def assert_bitwise_equal(a: Any, b: Any, where: str = '') -> None:
    """Assert two nested containers of tensors and plain values are identical, bit for bit.

    Raises:
        AssertionError: naming the first path (``.state.0.exp_avg``) that differs.
    """
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)):
            raise AssertionError(f'tensors differ at {where or "<root>"}')
    elif isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise AssertionError(f'keys differ at {where or "<root>"}')
        for k in a:
            assert_bitwise_equal(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise AssertionError(f'lengths differ at {where or "<root>"}')
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f'{where}[{i}]')
    elif a != b:
        raise AssertionError(f'{a!r} != {b!r} at {where or "<root>"}')


def write_perturbed_checkpoints(model: Any, work_dir: str | os.PathLike, iterations: tuple[int, ...] = (2, 4),
                                prefix: str = 'projector', scale: float = 0.5) -> list[Path]:
    """A checkpoint series without training: ``work_dir/iter_N.pth`` per N, each the model's trained weights
    with seeded noise (``scale`` · N(0, 1), seed N) added to the parameters under ``prefix``, in the layout the
    runner reads (``{'state_dict', 'meta': {'iter': N}}``). For evaluator tests, which need distinct checkpoints,
    not good ones."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for it in iterations:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        gen = torch.Generator().manual_seed(it)
        for k in state:
            if k.startswith(prefix):
                state[k] += scale * torch.randn(state[k].shape, generator=gen)
        torch.save({'state_dict': state, 'meta': {'iter': it}}, work / f'iter_{it}.pth')
        paths.append(work / f'iter_{it}.pth')
    return paths
