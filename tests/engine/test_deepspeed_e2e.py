"""End to end under DeepSpeed ZeRO-3 (and ZeRO-2) on CPU: ``tools/dist.sh train CONFIG 2 --deepspeed deepspeed_zero3``
(mmengine FlexibleRunner + DeepSpeedStrategy, DeepSpeed's CPU accelerator, gloo) with visual words, MoCa
and CAL on. The run must train like the plain DDP run, resume exactly after a kill, and its checkpoint
directories must be readable by the MIR evaluation (DeepSpeed shards re-assembled)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_align.engine.checkpoint import is_deepspeed_checkpoint, load_checkpoint_file
from mllm_align.testing.net import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/visual_words/configs/pretrain/llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py'
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec('deepspeed') is None,
                                 reason='deepspeed is not installed (requirements-dev.txt pins it)')]


def _train(work_dir: Path, init: Path, *extra: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PORT=str(free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1',
               DS_ACCELERATOR='cpu')
    env.pop('MLLM_ALIGN_CRASH_AT_ITER', None)
    if crash_at is not None:
        env['MLLM_ALIGN_CRASH_AT_ITER'] = str(crash_at)
    cmd = ['bash', 'tools/dist.sh', 'train', CONFIG, '2', '--work-dir', str(work_dir),
           '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=6',
           'default_hooks.checkpoint.interval=2', f'model.pretrained_pth={init}', *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope='module')
def runs(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp('deepspeed_e2e')
    # Both runs start from the same weights: FlexibleRunner builds the model later than Runner (after
    # other seeded draws), so the same `randomness.seed` gives another random projector / MoCa init.
    from mmengine.config import Config
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(REPO / CONFIG)).model)
    with torch.no_grad():  # MoCa away from the identity, so that its gradients are exercised fully
        model.moca.u.add_(0.05 * torch.randn_like(model.moca.u))
    init = root / 'init.pth'
    torch.save({'state_dict': model.state_dict()}, init)
    _ok(_train(root / 'ddp', init))
    _ok(_train(root / 'zero3', init, '--deepspeed', 'deepspeed_zero3'))
    _ok(_train(root / 'zero2', init, '--deepspeed', 'deepspeed_zero2'))
    return root, init


@pytest.mark.parametrize('stage', ['zero3', 'zero2'])
def test_deepspeed_trains_like_ddp(runs, stage):
    root, _ = runs
    ckpt = root / stage / 'iter_6.pth'
    assert is_deepspeed_checkpoint(ckpt)
    assert not list((root / stage).glob('.*.partial'))  # shards written in a hidden dir, renamed when whole
    zero3 = load_checkpoint_file(ckpt)['state_dict']
    ddp = load_checkpoint_file(root / 'ddp' / 'iter_6.pth')['state_dict']
    assert set(zero3) == set(ddp)
    assert {k.split('.')[0] for k in ddp} == {'projector', 'moca', 'visual_words'}
    start = load_checkpoint_file(root / 'ddp' / 'iter_2.pth')['state_dict']
    for name in ddp:
        torch.testing.assert_close(zero3[name].float(), ddp[name].float(), rtol=1e-4, atol=1e-5, msg=name)
    assert any((ddp[k] - start[k]).abs().max() > 1e-3 for k in ddp)  # the weights did move


def test_zero3_kill_and_resume_matches_uninterrupted(runs):
    root, init = runs
    work = root / 'zero3_resumed'
    crashed = _train(work, init, '--deepspeed', 'deepspeed_zero3', crash_at=5)
    assert crashed.returncode != 0 and not (work / 'iter_6.pth').exists() and (work / 'iter_4.pth').exists()
    _ok(_train(work, init, '--deepspeed', 'deepspeed_zero3', '--resume'))
    full = load_checkpoint_file(root / 'zero3' / 'iter_6.pth')['state_dict']
    resumed = load_checkpoint_file(work / 'iter_6.pth')['state_dict']
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_eval_mir_reads_deepspeed_checkpoints(runs):
    from mllm_align.engine.mir_eval import discover_checkpoints
    root, _ = runs
    refs = discover_checkpoints(root / 'zero3')
    assert [r.iteration for r in refs] == [2, 4, 6]
    assert discover_checkpoints(root / 'zero3' / 'iter_4.pth')[0].iteration == 4
