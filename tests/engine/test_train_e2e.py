"""End to end: tools/dist.sh trains the tiny config on 2 CPU processes, is killed, resumes, and
ends with exactly the weights (and optimiser state) of an uninterrupted run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_align.engine.checkpoint import load_checkpoint_file
from mllm_align.testing.net import free_port as find_free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
pytestmark = pytest.mark.slow


def _train(work_dir: Path, port: int, *extra: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    env.pop('MLLM_ALIGN_CRASH_AT_ITER', None)
    if crash_at is not None:
        env['MLLM_ALIGN_CRASH_AT_ITER'] = str(crash_at)
    cmd = ['bash', 'tools/dist.sh', 'train', CONFIG, '2', '--work-dir', str(work_dir),
           '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=6',
           'default_hooks.checkpoint.interval=2', *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _state(path: Path) -> tuple[dict, dict]:
    ckpt = load_checkpoint_file(path)
    return ckpt['state_dict'], ckpt['optimizer']


def _assert_bitwise_equal(a, b, where=''):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'tensors differ at {where}'
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def test_kill_and_resume_matches_uninterrupted_run(tiny_assets, tmp_path, free_port):
    full = _train(tmp_path / 'full', free_port)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / 'full').glob('iter_*.pth'))
    assert ckpts == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']

    crashed = _train(tmp_path / 'resumed', find_free_port(), crash_at=5)
    assert crashed.returncode != 0  # killed after iteration 5, before iteration 6 was saved
    assert not (tmp_path / 'resumed' / 'iter_6.pth').exists()
    assert (tmp_path / 'resumed' / 'iter_4.pth').exists()

    resumed = _train(tmp_path / 'resumed', find_free_port(), '--resume')
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    weights_a, optim_a = _state(tmp_path / 'full' / 'iter_6.pth')
    weights_b, optim_b = _state(tmp_path / 'resumed' / 'iter_6.pth')
    assert weights_a and all(k.startswith('projector.') for k in weights_a)
    _assert_bitwise_equal(weights_a, weights_b, 'state_dict')
    _assert_bitwise_equal(optim_a['state'], optim_b['state'], 'optimizer')
    # The run trained: the projector moved away from its iteration-2 value.
    weights_2, _ = _state(tmp_path / 'full' / 'iter_2.pth')
    assert any(not torch.equal(weights_2[k], weights_a[k]) for k in weights_a)
