"""The fault-injection suite: kill -9 of one rank, of every rank or of the launcher after a seeded-random iteration,
and of all ranks, one rank or the launcher in the middle of a (seeded-random) checkpoint write, with 1
and 2 processes, plain DDP and DeepSpeed ZeRO-2; Ctrl-C of the launcher. After ``--resume`` the final
weights and optimizer state equal an uninterrupted run's bit for bit; a torn (uncommitted) checkpoint is
never used; no rank outlives its launcher, and no checkpoint appears after the launcher died.

The faults are config hooks of mllm_align/testing/fault_injection.py (a crash hook, and a checkpoint-write
fault registered at the engine's write-hook point), asked for through MLLM_ALIGN_CRASH_* / MLLM_ALIGN_CKPT_FAULT,
which tools/train.py turns into ``custom_hooks`` entries; the rank side of launcher ownership is in
mllm_align/engine/distributed.py. The iterations are drawn from
``random.Random(f'{MLLM_ALIGN_FAULT_SEED}-{test}')`` (seed 0 unless set) and shown in every failure.
A soak test (``-m soak``, not in the default run) trains 2,000 iterations with periodic kills.
"""
from __future__ import annotations

import importlib.util
import os
import random
import signal
import time
from pathlib import Path

import pytest

from mllm_align.engine.checkpoint import is_deepspeed_checkpoint, load_checkpoint_file
from mllm_align.testing import fault_injection as fi
from mllm_align.testing.runs import (
    alive,
    assert_bitwise_equal,
    checkpoints,
    rank_pids,
    rss_kib,
    run,
    run_env,
    start_run,
    train_command,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.slow
ITERS, INTERVAL = 8, 2  # checkpoints iter_2, 4, 6, 8
FINAL = f'iter_{ITERS}.pth'
GONE_WITHIN_S = 5.0  # ranks must be gone this long after their launcher
SEED = os.environ.get('MLLM_ALIGN_FAULT_SEED', '0')
HAS_DEEPSPEED = importlib.util.find_spec('deepspeed') is not None
DS = ('--deepspeed', 'deepspeed_zero2')
DS_ENV = dict(DS_ACCELERATOR='cpu')


def _rng(name: str) -> random.Random:
    return random.Random(f'{SEED}-{name}')


def _cmd(work: Path, nproc: int, *extra: str) -> list[str]:
    return train_command(work, nproc, ITERS, INTERVAL, *extra)


def _ok(code: int, out: str) -> None:
    assert code == 0, out[-4000:]


def _state(path: Path) -> dict:
    """What must match after resume: weights, and for plain runs the optimizer state and lr."""
    ckpt = load_checkpoint_file(path)
    if is_deepspeed_checkpoint(path):
        return {'state_dict': ckpt['state_dict'], 'optimizer': _deepspeed_optimizer_state(path)}
    return {'state_dict': ckpt['state_dict'], 'optimizer': ckpt['optimizer']['state'],
            'lr': [g['lr'] for g in ckpt['optimizer']['param_groups']]}


def _deepspeed_optimizer_state(path: Path) -> dict:
    """The fp32 partitions and Adam moments of every rank's ``*_optim_states.pt`` (this suite's own files)."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    from mmengine.config import ConfigDict
    out = {}
    for shard in sorted(path.glob('*_optim_states.pt')):  # weights_only, with DeepSpeed's plain records allowed
        with torch.serialization.safe_globals([ConfigDict, LossScaler, ZeroStageEnum, fragment_address]):
            sd = torch.load(shard, map_location='cpu', weights_only=True)['optimizer_state_dict']
        out[shard.name] = {'fp32': sd.get('single_partition_of_fp32_groups'),
                           'state': sd['base_optimizer_state']['state']}
    return out


def _assert_matches(reference: Path, resumed: Path, context: str) -> None:
    try:
        assert_bitwise_equal(_state(reference), _state(resumed))
    except AssertionError as exc:
        raise AssertionError(f'{context}: {resumed} differs from the uninterrupted {reference}: {exc}') from None


def _assert_committed_checkpoints_load(work: Path) -> None:
    """Every committed iter_N.pth loads whole, and last_checkpoint names one of them."""
    for name in checkpoints(work):
        load_checkpoint_file(work / name)
    pointer = work / 'last_checkpoint'
    if pointer.exists():
        assert Path(pointer.read_text().strip()).name in checkpoints(work)


def _ranks(proc, nproc: int) -> list[int]:
    """The launcher's ``nproc`` rank pids, once all are started."""
    def started() -> list[int] | None:
        pids = rank_pids(proc.pid)
        return pids if len(pids) == nproc else None
    pids = wait_for(started, timeout=120)
    assert pids, f'launcher {proc.pid} never started {nproc} ranks'
    return pids


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_exit(proc, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_ranks_gone(pids: list[int], context: str) -> None:
    took = wait_gone(pids, GONE_WITHIN_S)
    assert took is not None, f'{context}: ranks {[p for p in pids if alive(p)]} outlived their launcher'


def _resume_and_compare(work: Path, reference: Path, nproc: int, context: str, *extra: str,
                        env: dict | None = None) -> None:
    code, out = run(_cmd(work, nproc, '--resume', *extra), work.parent / f'{work.name}.resume.log',
                    run_env(**(env or {})))
    _ok(code, out)
    _assert_matches(reference / FINAL, work / FINAL, context)


@pytest.fixture(scope='module')
def refs(tiny_assets, tmp_path_factory):
    """Uninterrupted runs shared by the tests: 2 processes and 1 process, plain DDP."""
    root = tmp_path_factory.mktemp('fault_refs')
    for nproc in (2, 1):
        code, out = run(_cmd(root / f'ref{nproc}', nproc), root / f'ref{nproc}.log', run_env())
        _ok(code, out)
        assert checkpoints(root / f'ref{nproc}') == [f'iter_{i}.pth' for i in range(INTERVAL, ITERS + 1, INTERVAL)]
    return root


@pytest.fixture(scope='module')
def ds_ref(tiny_assets, tmp_path_factory):
    """The uninterrupted DeepSpeed ZeRO-2 run (2 processes)."""
    if not HAS_DEEPSPEED:
        pytest.skip('deepspeed is not installed (requirements-dev.txt pins it)')
    root = tmp_path_factory.mktemp('fault_ds_ref')
    code, out = run(_cmd(root / 'ref', 2, *DS), root / 'ref.log', run_env(**DS_ENV))
    _ok(code, out)
    assert is_deepspeed_checkpoint(root / 'ref' / FINAL)
    return root / 'ref'


@pytest.mark.parametrize('who', ['1', 'all'])
def test_kill_ranks_at_random_iteration_then_resume(refs, tmp_path, who):
    """Rank 1 alone is SIGKILLed (torchrun stops rank 0), or every rank is, as a node failure would."""
    at = _rng(f'kill-rank-{who}').randint(3, ITERS - 1)
    context = f'2 processes, SIGKILL of rank(s) {who} after iteration {at} (seed {SEED})'
    work = tmp_path / 'run'
    code, out = run(_cmd(work, 2), tmp_path / 'crash.log',
                    run_env(MLLM_ALIGN_CRASH_AT_ITER=str(at), MLLM_ALIGN_CRASH_RANK=who))
    assert code != 0, f'{context}: the run was not killed\n{out[-2000:]}'
    assert f'iter_{at + 1}.pth' not in checkpoints(work) and FINAL not in checkpoints(work), context
    _assert_committed_checkpoints_load(work)
    _resume_and_compare(work, refs / 'ref2', 2, context)


@pytest.mark.parametrize('nproc', [1, 2])
def test_kill_all_ranks_during_a_checkpoint_write_then_resume(refs, tmp_path, nproc):
    at = _rng(f'write-{nproc}').choice([4, 6])
    context = f'{nproc} process(es), SIGKILL of every rank while iter_{at}.pth is being written (seed {SEED})'
    work, faults = tmp_path / 'run', tmp_path / 'faults'
    proc = start_run(_cmd(work, nproc), tmp_path / 'crash.log',
                     run_env(MLLM_ALIGN_CKPT_FAULT=f'pause:iter_{at}.pth', MLLM_ALIGN_FAULT_DIR=str(faults)))
    try:
        pids = _ranks(proc, nproc)
        assert wait_for(lambda: list(faults.glob(f'paused.iter_{at}.pth.rank0')), timeout=180), context
        _kill(pids)
        assert _wait_exit(proc) != 0, context
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_ranks_gone(pids, context)
    assert list(work.glob(f'.iter_{at}.pth.*.tmp')), f'{context}: the half-written temp file should be left'
    assert f'iter_{at}.pth' not in checkpoints(work), context
    _assert_committed_checkpoints_load(work)
    _resume_and_compare(work, refs / f'ref{nproc}', nproc, context)  # the temp file is ignored
    assert checkpoints(work) == checkpoints(refs / f'ref{nproc}')


def test_launcher_killed_at_random_iteration_ranks_stop_then_resume(refs, tmp_path):
    at = _rng('launcher').randint(3, ITERS - 1)
    context = f'2 processes, SIGKILL of the launcher after iteration {at} (seed {SEED})'
    work = tmp_path / 'run'
    proc = start_run(_cmd(work, 2), tmp_path / 'crash.log',
                     run_env(MLLM_ALIGN_CRASH_AT_ITER=str(at), MLLM_ALIGN_CRASH_RANK='launcher'))
    pids = _ranks(proc, 2)
    assert _wait_exit(proc) == -signal.SIGKILL, context
    _assert_ranks_gone(pids, context)
    saved = checkpoints(work)
    time.sleep(2)
    assert checkpoints(work) == saved, f'{context}: a checkpoint appeared after the launcher died'
    assert FINAL not in saved, context
    _assert_committed_checkpoints_load(work)
    _resume_and_compare(work, refs / 'ref2', 2, context)


def test_launcher_killed_during_a_checkpoint_write_commits_nothing(refs, tmp_path):
    at = _rng('launcher-write').choice([4, 6])
    context = f'1 process, SIGKILL of the launcher while iter_{at}.pth is being written (seed {SEED})'
    work, faults = tmp_path / 'run', tmp_path / 'faults'
    proc = start_run(_cmd(work, 1), tmp_path / 'crash.log',
                     run_env(MLLM_ALIGN_CKPT_FAULT=f'pause:iter_{at}.pth', MLLM_ALIGN_FAULT_DIR=str(faults)))
    try:
        pids = _ranks(proc, 1)
        assert wait_for(lambda: list(faults.glob('paused.*')), timeout=180), context
        proc.kill()  # the launcher (dist.sh exec'd torchrun)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_ranks_gone(pids, context)
    (faults / fi.RELEASE_FILE).touch()  # a rank still alive would now finish and commit the file
    time.sleep(2)
    assert f'iter_{at}.pth' not in checkpoints(work), f'{context}: committed after the launcher died'
    _resume_and_compare(work, refs / 'ref1', 1, context)


def test_ctrl_c_of_the_launcher_stops_the_ranks(tiny_assets, tmp_path):
    """SIGINT (Ctrl-C) to torchrun: it sends SIGTERM to the ranks (SIGKILL after 30 s). SIGTERM to
    torchrun takes the same path (torch.distributed.elastic's ``_terminate_process_handler``)."""
    sig, nproc, work = signal.SIGINT, 2, tmp_path / 'run'
    proc = start_run(train_command(work, nproc, 1000, 2), tmp_path / 'run.log', run_env())
    try:
        pids = _ranks(proc, nproc)
        assert wait_for(lambda: checkpoints(work), timeout=180), 'no checkpoint was written'
        os.kill(proc.pid, sig)
        code = _wait_exit(proc, timeout=60)  # torchrun: SIGTERM to the ranks, SIGKILL after 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    _assert_ranks_gone(pids, f'{signal.Signals(sig).name} to the launcher')


@pytest.mark.skipif(not HAS_DEEPSPEED, reason='deepspeed is not installed (requirements-dev.txt pins it)')
def test_deepspeed_kill_one_rank_during_a_checkpoint_write_then_resume(ds_ref, tmp_path):
    at = _rng('ds-write').choice([4, 6])
    context = f'ZeRO-2, 2 processes, SIGKILL of rank 1 while iter_{at}.pth is being written (seed {SEED})'
    work, faults = tmp_path / 'run', tmp_path / 'faults'
    proc = start_run(_cmd(work, 2, *DS), tmp_path / 'crash.log',
                     run_env(**DS_ENV, MLLM_ALIGN_CKPT_FAULT=f'pause:iter_{at}.pth', MLLM_ALIGN_FAULT_DIR=str(faults)))
    try:
        pids = _ranks(proc, 2)
        paused = wait_for(lambda: sorted(faults.glob('paused.*')) if len(list(faults.glob('paused.*'))) == 2 else None,
                          timeout=240)
        assert paused, context
        rank1 = int((faults / f'paused.iter_{at}.pth.rank1').read_text())
        _kill([rank1])
        assert _wait_exit(proc) != 0, context
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_ranks_gone(pids, context)
    assert (work / f'.iter_{at}.pth.partial').is_dir(), f'{context}: the shards should sit in the hidden directory'
    assert f'iter_{at}.pth' not in checkpoints(work), context
    _assert_committed_checkpoints_load(work)
    _resume_and_compare(work, ds_ref, 2, context, *DS, env=DS_ENV)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason='deepspeed is not installed (requirements-dev.txt pins it)')
def test_deepspeed_launcher_killed_at_random_iteration_then_resume(ds_ref, tmp_path):
    at = _rng('ds-launcher').randint(3, ITERS - 1)
    context = f'ZeRO-2, 2 processes, SIGKILL of the launcher after iteration {at} (seed {SEED})'
    work = tmp_path / 'run'
    proc = start_run(_cmd(work, 2, *DS), tmp_path / 'crash.log',
                     run_env(**DS_ENV, MLLM_ALIGN_CRASH_AT_ITER=str(at), MLLM_ALIGN_CRASH_RANK='launcher'))
    pids = _ranks(proc, 2)
    assert _wait_exit(proc) == -signal.SIGKILL, context
    _assert_ranks_gone(pids, context)
    saved = checkpoints(work)
    time.sleep(2)
    assert checkpoints(work) == saved and FINAL not in saved, context
    _assert_committed_checkpoints_load(work)
    _resume_and_compare(work, ds_ref, 2, context, *DS, env=DS_ENV)


@pytest.mark.soak
def test_soak_periodic_kill_and_resume_keeps_memory_flat_and_matches(tiny_assets, tmp_path):
    """2,000 iterations (``MLLM_ALIGN_SOAK_ITERS``) of the tiny config on 2 processes; the interrupted run
    is SIGKILLed at a random iteration in every stretch of ~400 and resumed. Resident memory of each rank
    (VmRSS from /proc, sampled every second) must not grow beyond noise over the uninterrupted run, and the
    final weights and optimizer state must equal it."""
    iters = int(os.environ.get('MLLM_ALIGN_SOAK_ITERS', '2000'))
    interval = max(iters // 20, 1)
    rng = _rng('soak')

    def cmd(work: Path, *extra: str) -> list[str]:
        return train_command(work, 2, iters, interval, *extra, cfg_options=('default_hooks.logger.interval=50',))

    ref = tmp_path / 'ref'
    proc = start_run(cmd(ref), tmp_path / 'ref.log', run_env())
    samples: dict[int, list[int]] = {}
    try:
        pids = _ranks(proc, 2)
        while proc.poll() is None:
            if checkpoints(ref):  # warmed up: every hook (chat samples, MIR) has run at least once
                for pid in pids:
                    if (kib := rss_kib(pid)) is not None:
                        samples.setdefault(pid, []).append(kib)
            time.sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / 'ref.log').read_text()[-4000:]
    for pid, rss in samples.items():
        n = max(len(rss) // 5, 1)
        early, late = sorted(rss[:n])[n // 2], sorted(rss[-n:])[n // 2]  # medians of the first and last fifth
        print(f'soak: rank pid {pid}: RSS {early} KiB -> {late} KiB over {len(rss)} samples')
        assert late <= early * 1.05 + 20 * 1024, f'rank pid {pid}: RSS grew from {early} KiB to {late} KiB'
    work, done, kills = tmp_path / 'killed', 0, []
    while True:  # each stretch of iters/5 ends in a kill after at least one new checkpoint; the last one finishes
        stretch_end = done + max(iters // 5, interval + 1)
        at = rng.randint(done + interval, stretch_end) if stretch_end < iters else None
        env = run_env() if at is None else run_env(MLLM_ALIGN_CRASH_AT_ITER=str(at))
        code, out = run(cmd(work, *(['--resume'] if kills else [])), tmp_path / f'part{len(kills)}.log', env,
                        timeout=7200)
        if at is None:
            _ok(code, out)
            break
        assert code != 0, out[-2000:]
        kills.append(at)
        done = max([int(n[5:-4]) for n in checkpoints(work)] or [0])
    _assert_matches(ref / f'iter_{iters}.pth', work / f'iter_{iters}.pth', f'soak, killed after {kills}')
