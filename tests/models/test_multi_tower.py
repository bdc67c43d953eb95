"""MultiTowerEncoder / MultiTowerImageProcessor against towers run alone; config checks; export refuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_align.models import MultiTowerEncoder, MultiTowerImageProcessor, VisionTower, load_image_processor

REPO = Path(__file__).resolve().parents[2]
TWIN = REPO / 'projects/law/configs/pretrain/llava_v15_7b_law_pretrain_tiny_cpu.py'


@pytest.fixture(scope='module')
def parts(tiny_assets):
    clip, dino = tiny_assets.vision('clip'), tiny_assets.vision('dinov2')
    procs = [load_image_processor(str(clip)),
             load_image_processor(str(dino), size=dict(shortest_edge=64), crop_size=dict(height=64, width=64))]
    towers = [VisionTower(str(clip)), VisionTower(str(dino), image_size=64)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    return procs, towers, images


def test_processor_packs_each_towers_own_preprocessing(parts):
    procs, _, images = parts
    multi = MultiTowerImageProcessor(procs)
    packed = multi(images=images, return_tensors='pt')['pixel_values']
    assert packed.shape == (3, 3 * 32 * 32 + 3 * 64 * 64) and multi.sizes == [32, 64]
    for alone, part in zip(procs, multi.unpack(packed)):
        assert torch.equal(part, torch.as_tensor(alone(images=images, return_tensors='np')['pixel_values']))
    assert multi.image_mean == procs[0].image_mean


def test_encoder_equals_towers_alone_resized_and_concatenated(parts):
    procs, towers, images = parts
    enc = MultiTowerEncoder(towers)
    packed = MultiTowerImageProcessor(procs)(images=images)['pixel_values']
    out = enc(packed)
    assert out.shape == (3, 16, 128) and enc.hidden_size == 128 and enc.num_tokens == 16
    with torch.no_grad():
        a = towers[0](torch.as_tensor(procs[0](images=images, return_tensors='np')['pixel_values']))
        b = towers[1](torch.as_tensor(procs[1](images=images, return_tensors='np')['pixel_values']))  # (3, 64, 64)
    b_map = b.transpose(1, 2).reshape(3, 64, 8, 8)
    b_small = torch.nn.functional.interpolate(b_map, size=(4, 4), mode='bilinear', align_corners=False,
                                              antialias=True).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.detach(), torch.cat([a, b_small], dim=-1))
    # nearest: cell (i, j) of the 4×4 grid takes cell (2i, 2j) of the 8×8 one
    near = MultiTowerEncoder(towers, mode='nearest')(packed).detach()
    torch.testing.assert_close(near[0, 5, 64:], b[0, 2 * 8 + 2])


def test_bad_input(parts):
    procs, towers, _ = parts
    with pytest.raises(ValueError, match='two or more'):
        MultiTowerEncoder(towers[:1])
    with pytest.raises(ValueError, match='must be \\[N, 15360\\]'):
        MultiTowerEncoder(towers)(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="select_feature='patch'"):
        MultiTowerEncoder([towers[0], VisionTower(model=towers[1].model, select_feature='cls_patch')])


def test_config_check_and_export(tiny_assets, tmp_path):
    from mllm_align.engine.build import build_model_from_config
    from mllm_align.engine.config_checks import ConfigMismatchError, check_settings_agree
    from mllm_align.engine.config_overrides import load_config

    cfg = load_config(str(TWIN), {'vision_setting': 'tiny_clip_dinov2'})
    check_settings_agree(cfg)
    bad = load_config(str(TWIN), {'vision_setting': 'tiny_clip_dinov2'})
    bad.train_dataloader.dataset.num_image_tokens = 64
    with pytest.raises(ConfigMismatchError, match='4×4 grid: 16 tokens'):
        check_settings_agree(bad)
    bad = load_config(str(TWIN), {'vision_setting': 'tiny_clip_dinov2'})
    for proc in [bad.train_dataloader.dataset.image_processor, bad.custom_hooks[1].image_processor,
                 bad.custom_hooks[2].image_processor]:  # the same (wrong) processor everywhere
        proc.processors[1].update(size=dict(shortest_edge=32), crop_size=dict(height=32, width=32))
    with pytest.raises(ConfigMismatchError, match=r'processors\[1\] outputs 32×32 images but tower 1'):
        check_settings_agree(bad)
    from mllm_align.engine.build import image_processor_from_config
    from mllm_align.models import MultiTowerImageProcessor
    proc = image_processor_from_config(cfg)  # what the chat/MIR hooks and the eval tools read
    assert isinstance(proc, MultiTowerImageProcessor) and len(proc.processors) == 2
    model = build_model_from_config(cfg)
    with pytest.raises(ValueError, match='combines 2 vision towers'):
        model.export_hf(tmp_path / 'hf')
