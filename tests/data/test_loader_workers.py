"""default_num_workers: the recipes' DataLoader workers per rank."""
from __future__ import annotations

import pytest

from mllm_align.data import available_cpus, default_num_workers


@pytest.mark.parametrize('cpus, ranks, cap, want', [
    (2, 2, 4, 1), (2, 1, 4, 1), (1, 1, 4, 1), (16, 1, 4, 4), (16, 8, 4, 1), (96, 8, 4, 4), (96, 8, 16, 11),
    (12, 2, 4, 4), (6, 2, 4, 2),
])
def test_rule(cpus, ranks, cap, want):
    assert default_num_workers(cap=cap, local_world_size=ranks, cpus=cpus, accelerator=True) == want
    assert default_num_workers(cap=cap, local_world_size=ranks, cpus=cpus, accelerator=False) == 0  # CPU step


def test_reads_the_launch_and_the_affinity_mask(monkeypatch):
    import torch
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert default_num_workers(cpus=20, accelerator=True) == 4 and default_num_workers(cpus=8, accelerator=True) == 1
    monkeypatch.delenv('LOCAL_WORLD_SIZE')
    assert default_num_workers(accelerator=True) == max(1, min(4, available_cpus() - 1))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # detected when not given
    assert default_num_workers() == max(1, min(4, available_cpus() - 1))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert default_num_workers() == 0


def test_recipes_and_twins_use_it(monkeypatch):
    from mmengine.config import Config
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
    for path in ['projects/llava/configs/pretrain/llava_v15_7b_pretrain.py',
                 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py']:
        loader = Config.fromfile(path).train_dataloader
        workers = default_num_workers()
        assert loader.num_workers == workers, path
        assert loader.persistent_workers is (workers > 0) and loader.prefetch_factor == (2 if workers else None), path
