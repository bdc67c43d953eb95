"""The fault-injection hooks themselves (mllm_align/testing/fault_injection.py); the end-to-end
suite that uses them is tests/engine/test_fault_tolerance_e2e.py."""
from __future__ import annotations

import errno
import signal
import threading
from types import SimpleNamespace

import pytest

from mllm_align.testing import fault_injection as fi


def _kills(monkeypatch, target: str, rank: int, at_iter: int = 3, runner_iter: int = 2) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(fi.os, 'kill', lambda pid, sig: calls.append((pid, sig)))
    monkeypatch.setenv('RANK', str(rank))
    fi.SimulatedCrashHook(at_iter, target).after_train_iter(SimpleNamespace(iter=runner_iter), 0)
    return calls


def test_crash_hook_kills_the_chosen_process(monkeypatch):
    me, parent = fi.os.getpid(), fi.os.getppid()
    assert _kills(monkeypatch, 'all', 1) == [(me, signal.SIGKILL)]
    assert _kills(monkeypatch, 'all', 1, runner_iter=1) == []  # not yet: after iteration 3 only
    assert _kills(monkeypatch, '1', 1) == [(me, signal.SIGKILL)]
    assert _kills(monkeypatch, '1', 0) == []
    assert _kills(monkeypatch, 'launcher', 0) == [(parent, signal.SIGKILL)]
    assert _kills(monkeypatch, 'launcher', 1) == []


def test_crash_hook_from_env(monkeypatch):
    monkeypatch.delenv(fi.CRASH_ENV, raising=False)
    assert fi.crash_hook_from_env() is None
    monkeypatch.setenv(fi.CRASH_ENV, '5')
    monkeypatch.delenv(fi.CRASH_RANK_ENV, raising=False)
    assert fi.crash_hook_from_env() == dict(type='SimulatedCrashHook', at_iter=5, target='all')
    monkeypatch.setenv(fi.CRASH_RANK_ENV, 'launcher')
    assert fi.crash_hook_from_env()['target'] == 'launcher'
    assert fi.crash_hook_from_env({fi.CRASH_ENV: '2'}) == dict(type='SimulatedCrashHook', at_iter=2, target='all')
    monkeypatch.setenv(fi.CRASH_ENV, 'five')
    with pytest.raises(ValueError, match="MLLM_ALIGN_CRASH_AT_ITER='five'"):
        fi.crash_hook_from_env()
    with pytest.raises(ValueError, match="target='rank1' .MLLM_ALIGN_CRASH_RANK."):
        fi.SimulatedCrashHook(2, 'rank1')
    with pytest.raises(ValueError, match='>= 1'):
        fi.SimulatedCrashHook(0)


def test_checkpoint_fault_hook_from_env():
    assert fi.checkpoint_fault_hook_from_env({}) is None
    assert fi.checkpoint_fault_hook_from_env({fi.CKPT_FAULT_ENV: 'enospc:iter_4.pth', fi.FAULT_RANK_ENV: '0'}) == dict(
        type='CheckpointWriteFaultHook', action='enospc', pattern='iter_4.pth', fault_dir=None, rank=0)
    assert fi.checkpoint_fault_hook_from_env({fi.CKPT_FAULT_ENV: 'pause:iter_*.pth', fi.FAULT_DIR_ENV: '/f'}) == dict(
        type='CheckpointWriteFaultHook', action='pause', pattern='iter_*.pth', fault_dir='/f', rank=None)
    with pytest.raises(ValueError, match="'pause:PATTERN' or 'enospc:PATTERN'"):
        fi.checkpoint_fault_hook_from_env({fi.CKPT_FAULT_ENV: 'explode:iter_4.pth'})
    with pytest.raises(ValueError, match='needs MLLM_ALIGN_FAULT_DIR'):
        fi.checkpoint_fault_hook_from_env({fi.CKPT_FAULT_ENV: 'pause:iter_4.pth'})
    with pytest.raises(ValueError, match="MLLM_ALIGN_FAULT_RANK='r0'"):
        fi.checkpoint_fault_hook_from_env({fi.CKPT_FAULT_ENV: 'enospc:iter_4.pth', fi.FAULT_RANK_ENV: 'r0'})
    both = fi.fault_hooks_from_env({fi.CRASH_ENV: '3', fi.CKPT_FAULT_ENV: 'enospc:iter_4.pth'})
    assert [h['type'] for h in both] == ['SimulatedCrashHook', 'CheckpointWriteFaultHook']
    assert fi.fault_hooks_from_env({}) == []


def test_enospc_fault_on_matching_checkpoints_and_rank(monkeypatch, tmp_path):
    from mllm_align.engine.checkpoint import atomic_write, checkpoint_write_hook
    monkeypatch.setenv('RANK', '0')
    fault = fi.CheckpointWriteFault('enospc', 'iter_4.pth')
    fault(tmp_path / 'iter_2.pth')  # another file: no-op
    with pytest.raises(OSError) as info:
        fault(tmp_path / 'iter_4.pth')
    assert info.value.errno == errno.ENOSPC
    atomic_write(b'x', tmp_path / 'iter_4.pth')  # not registered: no fault
    (tmp_path / 'iter_4.pth').unlink()
    with checkpoint_write_hook(fault):
        with pytest.raises(OSError) as info:
            atomic_write(b'x' * 1000, tmp_path / 'iter_4.pth')
        assert info.value.errno == errno.ENOSPC and 'iter_4.pth' in str(info.value)
        assert list(tmp_path.iterdir()) == []  # the temp file is removed, nothing committed
        atomic_write(b'two', tmp_path / 'iter_2.pth')  # another name is written
    with checkpoint_write_hook(fi.CheckpointWriteFault('enospc', 'iter_4.pth', rank=1)):
        atomic_write(b'ok', tmp_path / 'iter_4.pth')  # rank 0 is spared
    assert (tmp_path / 'iter_4.pth').read_bytes() == b'ok' and (tmp_path / 'iter_2.pth').read_bytes() == b'two'
    with pytest.raises(ValueError, match="'pause:PATTERN' or 'enospc:PATTERN'"):
        fi.CheckpointWriteFault('explode', 'iter_4.pth')


def test_fault_hook_registers_for_the_run_only(monkeypatch, tmp_path):
    from mllm_align.engine import checkpoint
    monkeypatch.setenv('RANK', '0')
    hook = fi.CheckpointWriteFaultHook('enospc', 'iter_*.pth')
    checkpoint.run_checkpoint_write_hooks(tmp_path / 'iter_2.pth')  # before the run: nothing registered
    hook.before_run(None)
    hook.before_run(None)  # registering twice is a no-op
    assert checkpoint._write_hooks.count(hook.fault) == 1
    with pytest.raises(OSError):
        checkpoint.run_checkpoint_write_hooks(tmp_path / 'iter_2.pth')
    hook.after_run(None)
    assert hook.fault not in checkpoint._write_hooks
    checkpoint.run_checkpoint_write_hooks(tmp_path / 'iter_2.pth')


def test_pause_fault_holds_the_write_until_released(monkeypatch, tmp_path):
    from mllm_align.engine.checkpoint import atomic_write, checkpoint_write_hook
    work, faults = tmp_path / 'work', tmp_path / 'faults'
    with pytest.raises(ValueError, match='needs MLLM_ALIGN_FAULT_DIR'):
        fi.CheckpointWriteFault('pause', 'iter_*.pth')
    monkeypatch.setenv('RANK', '0')
    with checkpoint_write_hook(fi.CheckpointWriteFault('pause', 'iter_*.pth', fault_dir=faults)):
        writer = threading.Thread(target=atomic_write, args=(b'w' * 100, work / 'iter_2.pth'))
        writer.start()
        marker = faults / 'paused.iter_2.pth.rank0'
        for _ in range(200):
            if marker.exists():
                break
            writer.join(0.05)
        assert marker.exists() and writer.is_alive()
        # Mid-write: the bytes sit in a hidden temp file, the checkpoint does not exist yet.
        assert [p.name.endswith('.tmp') and p.name.startswith('.iter_2.pth.') for p in work.iterdir()] == [True]
        (faults / fi.RELEASE_FILE).touch()
        writer.join(10)
    assert not writer.is_alive()
    assert [p.name for p in work.iterdir()] == ['iter_2.pth']


def test_missing_image_lands_in_the_first_batch_of_one_rank(tiny_assets, tmp_path):
    import numpy as np
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    from mllm_align.data.llava_dataset import MissingImageError
    from mllm_align.testing.runs import REPO, TINY_CONFIG
    cfg = Config.fromfile(str(REPO / TINY_CONFIG))
    out = tmp_path / 'bad.jsonl'
    sample_id = fi.write_missing_image_on_rank(tiny_assets.pretrain_json, out,
                                               cfg.train_dataloader.dataset, rank=1, world_size=2,
                                               batch_size=8, seed=42)
    bad = DATASETS.build(dict(cfg.train_dataloader.dataset, data_path=str(out)))
    import json
    intact = tmp_path / 'intact.jsonl'
    intact.write_text(''.join(json.dumps(r) + '\n' for r in json.loads(tiny_assets.pretrain_json.read_text())))
    good = DATASETS.build(dict(cfg.train_dataloader.dataset, data_path=str(intact)))
    assert np.array_equal(bad.modality_lengths, good.modality_lengths)  # same sampler order
    index = next(i for i in range(len(bad)) if bad.get_record(i)['id'] == sample_id)
    with pytest.raises(MissingImageError, match=sample_id):
        bad[index]
    from unittest import mock

    from mllm_align.data import samplers
    with mock.patch.object(samplers, 'get_dist_info', lambda: (0, 2)):
        rank0_first_batch = list(samplers.LengthGroupedSampler(bad, 8, seed=42))[:8]
    assert index not in rank0_first_batch
