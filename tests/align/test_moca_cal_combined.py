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
