"""The issue-4 combined tiny config (MoCa + CAL) trains through tools/dist.sh with 2 processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mllm_align.engine.checkpoint import load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/cal/configs/pretrain/llava_v15_7b_moca_cal_pretrain_tiny_cpu.py'


@pytest.mark.slow
def test_moca_and_cal_train_together_through_dist_sh(tiny_assets, tmp_path, free_port):
    env = dict(os.environ, PORT=str(free_port), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    env.pop('MLLM_ALIGN_CRASH_AT_ITER', None)
    proc = subprocess.run(['bash', 'tools/dist.sh', 'train', CONFIG, '2', '--work-dir', str(tmp_path),
                           '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=4',
                           'custom_hooks=[]', 'default_hooks.checkpoint.interval=4',
                           'default_hooks.logger.interval=1'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint_file(tmp_path / 'iter_4.pth')['state_dict']
    assert {'moca.u', 'moca.v'} <= set(state)
    assert any(k.startswith('projector.') for k in state)
    # MoCa trained: it left the identity init.
    assert not bool((state['moca.u'] == 1).all()) or not bool((state['moca.v'] == 0).all())
    log = next(tmp_path.glob('*/*.log')).read_text()
    assert 'cal/weight_mean' in log and 'loss_lm' in log


def _combo_model(order, gradient_checkpointing=False):
    import torch

    from mllm_align.align import CAL, MoCa, VisualWords
    from mllm_align.models import LLaVAModel, VisionTower, load_llm
    cfgs = dict(moca=dict(type=MoCa, init_std=0.1), cal=dict(type=CAL), visual_words=dict(type=VisualWords))
    root = REPO / 'data' / 'tiny'
    torch.manual_seed(0)
    return LLaVAModel(llm=dict(type=load_llm, path=str(root / 'llm' / 'llama')),
                      visual_encoder=dict(type=VisionTower, path=str(root / 'vision' / 'clip')), freeze_llm=False,
                      gradient_checkpointing=gradient_checkpointing, plugins={k: cfgs[k] for k in order})


def _combo_batch():
    import torch

    from mllm_align.constants import IGNORE_INDEX as IGN
    from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
    g = torch.Generator().manual_seed(5)
    ids = torch.tensor([[1, IMG, 10, 11, 12, 13, 14], [1, 20, IMG, 21, 22, IMG, 23]])
    labels = ids.clone()
    labels[:, :2] = IGN
    labels[labels == IMG] = IGN
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones(2, 7, dtype=torch.bool),
                pixel_values=torch.randn(3, 3, 32, 32, generator=g))


@pytest.mark.parametrize('gc', [False, True], ids=['plain', 'grad_ckpt'])
def test_plugin_order_does_not_change_losses_or_gradients(tiny_assets, gc):
    """MoCa calibrates CAL's no-image pass and the backward recomputation whichever plug-in comes first."""
    import torch
    first = _combo_model(['moca', 'cal', 'visual_words'], gc)
    last = _combo_model(['cal', 'visual_words', 'moca'], gc)
    last.load_state_dict(first.state_dict())  # same weights (the trainable state: LLM, projector, u, v, vm_head)
    results = []
    for model in (first, last):
        losses = model(_combo_batch(), mode='loss')
        sum(v for k, v in losses.items() if k.startswith('loss_')).backward()
        results.append((losses, model.moca.u.grad.clone(), model.projector[0].weight.grad.clone()))
    (l1, u1, p1), (l2, u2, p2) = results
    assert set(l1) == set(l2) == {'loss_lm', 'loss_vm', 'cal/weight_mean', 'cal/delta_mean', 'visual_words/kl',
                                  'visual_words/target_entropy'}
    for key in l1:
        torch.testing.assert_close(l1[key], l2[key], rtol=0, atol=0)
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)
    torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert u1.abs().sum() > 0
    # Control: without MoCa on CAL's no-image pass the CAL weights differ (MoCa is not a no-op here).
    plain = _combo_model(['cal', 'visual_words'], gc)
    plain.load_state_dict({k: v for k, v in first.state_dict().items() if not k.startswith('moca.')}, strict=False)
    assert plain(_combo_batch(), mode='loss')['loss_lm'].item() != l1['loss_lm'].item()
