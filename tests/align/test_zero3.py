"""The alignment plug-ins under DeepSpeed ZeRO-3 (visual words, pif, MoCa, CAL), on CPU.

The DeepSpeed runs compare a ZeRO-3 engine (DeepSpeed's CPU accelerator, gloo, fp32, SGD, every
parameter released after use, DeepSpeed's own parameter discovery off) with the same model trained
plainly: losses, full gradients and updated weights over two steps (mllm_align/testing/zero3.py,
tools/check_zero3.py). They need ``deepspeed`` (pinned in requirements-dev.txt); without it they
are skipped. The tests at the top run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_align.align import VisualWords
from mllm_align.testing.zero3 import build_check_model, check_batch

REPO = Path(__file__).resolve().parents[2]
HAS_DEEPSPEED = importlib.util.find_spec('deepspeed') is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason='deepspeed is not installed (requirements-dev.txt pins it); '
    'run the tests from the project venv (bash tools/test.sh)')


@pytest.fixture(scope='module')
def assets(tiny_assets):
    return tiny_assets


def test_without_partitioned_parameters_deepspeed_is_never_imported(assets, monkeypatch):
    # A plain (CPU/DDP) run must not touch deepspeed even where it is installed: `import deepspeed` fails here.
    monkeypatch.setitem(sys.modules, 'deepspeed', None)
    model = build_check_model(REPO / 'data' / 'tiny', ('pif', 'moca', 'cal'))
    losses = model(check_batch(0), mode='loss')
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.visual_words.vm_head.weight.grad.abs().sum() > 0
    assert model.moca.u.grad.abs().sum() > 0


def test_visual_words_forward_rejects_an_unknown_op():
    vw = VisualWords(hidden_size=4, vocab_size=8)
    with pytest.raises(ValueError, match="unknown op 'kl'"):
        vw('kl', torch.zeros(1, 2, 8))


def _check(args: list[str], tmp_path: Path, port: int, nproc: int = 1) -> dict:
    out_json = tmp_path / 'zero3.json'
    env = dict(os.environ, DS_ACCELERATOR='cpu', OMP_NUM_THREADS='1', MASTER_PORT=str(port))
    if nproc == 1:
        cmd = [sys.executable, 'tools/check_zero3.py']
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               f'--master_port={port}', 'tools/check_zero3.py']
    proc = subprocess.run(cmd + args + ['--json', str(out_json)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out_json.read_text())


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize('plugins', [['pif', 'moca', 'cal', 'gc'], ['detach', 'moca']])
def test_zero3_trains_like_the_plain_model(assets, tmp_path, free_port, plugins):
    result = _check(['--plugins', *plugins], tmp_path, free_port)
    assert result['ok'] and result['strict']
    assert result['grad'] < 1e-5 and result['param'] < 1e-5 and result['loss'] < 1e-5
    assert result['num_params'] >= 27  # the LLM, projector, vm_head and MoCa's u, v are all compared


@needs_deepspeed
@pytest.mark.slow
def test_zero3_two_processes_and_vm_head_gathered_only_by_visual_words(assets, tmp_path, free_port):
    # With DeepSpeed's own discovery on, vm_head must not be left to it (gathered for the whole step).
    result = _check(['--plugins', 'pif', 'moca', '--no-strict'], tmp_path, free_port, nproc=2)
    assert result['ok'] and result['world_size'] == 2
    assert 'visual_words.vm_head.weight' not in result['root_external']
