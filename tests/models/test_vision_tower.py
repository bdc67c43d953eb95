"""VisionTower's input-size override and patch-grid pooling, checked against the encoder called directly."""
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Dinov2Model

from mllm_align.engine.config_checks import ConfigMismatchError, processor_output_size, tower_tokens
from mllm_align.engine.launch import prepare_config
from mllm_align.models import VisionTower

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')


@pytest.fixture()
def dinov2(tiny_assets):
    return str(tiny_assets.vision_dinov2)


def _pool_reference(tokens: np.ndarray, grid: int, k: int) -> np.ndarray:
    """Mean of each k×k window of the row-major grid, with explicit loops (float64)."""
    n, _, c = tokens.shape
    side = grid // k
    out = np.zeros((n, side * side, c))
    for i in range(side):
        for j in range(side):
            cells = [tokens[:, (i * k + a) * grid + (j * k + b)] for a in range(k) for b in range(k)]
            out[:, i * side + j] = np.mean(cells, axis=0)
    return out


def test_image_size_override_runs_the_encoder_at_that_size(dinov2):
    tower = VisionTower(dinov2, image_size=64)  # config: 32 px, patch 8
    assert tower.grid_size == 8 and tower.num_tokens == 64
    x = torch.randn(2, 3, 64, 64)
    direct = Dinov2Model.from_pretrained(dinov2)(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tower(x), direct[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize('select_feature', ['patch', 'cls_patch'])
def test_pool_averages_each_window_of_the_patch_grid(dinov2, select_feature):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    full = VisionTower(dinov2, image_size=64, select_feature=select_feature)(x).detach().double().numpy()
    pooled_tower = VisionTower(dinov2, image_size=64, pool=2, select_feature=select_feature)
    pooled = pooled_tower(x).detach().double().numpy()
    prefix = 1 if select_feature == 'cls_patch' else 0
    assert pooled.shape == (3, prefix + 16, 64) and pooled_tower.num_tokens == prefix + 16
    np.testing.assert_allclose(pooled[:, prefix:], _pool_reference(full[:, prefix:], 8, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pooled[:, :prefix], full[:, :prefix])  # CLS untouched


def test_pool_that_does_not_divide_the_grid_names_the_fix(dinov2):
    with pytest.raises(ValueError, match=r'pool=3: the 4×4 patch grid.*not divisible'):
        VisionTower(dinov2, pool=3)


def test_wrong_input_size_names_the_expected_size(dinov2):
    with pytest.raises(ValueError, match=r'expected 64: check that the image processor outputs 64×64'):
        VisionTower(dinov2, image_size=64)(torch.randn(1, 3, 32, 32))


def test_config_check_follows_image_size_pool_and_processor_overrides(dinov2):
    assert tower_tokens(dinov2, 'patch', image_size=64, pool=2) == (16, 64)
    assert processor_output_size(dinov2) == 32
    assert processor_output_size(dinov2, {'crop_size': {'height': 64, 'width': 64}}) == 64
    opts = {'visual_encoder_name_or_path': dinov2, 'model.visual_encoder.image_size': 64,
            'model.visual_encoder.pool': 2}
    with pytest.raises(ConfigMismatchError, match=r'outputs 32×32 images but the vision tower.*image_size=64'):
        prepare_config(TINY, cfg_options=opts)
    big = {'size': {'shortest_edge': 64}, 'crop_size': {'height': 64, 'width': 64}}
    opts.update({f'custom_hooks.{i}.image_processor.{k}': v for i in (1, 2) for k, v in big.items()})
    opts.update({f'train_dataloader.dataset.image_processor.{k}': v for k, v in big.items()})
    prepare_config(TINY, cfg_options=opts)  # 64 px in, 8×8 grid pooled to 4×4 = 16 tokens: consistent


def test_hf_llava_export_refuses_a_pooled_tower(tiny_assets, tmp_path):
    from mllm_align.models import LLaVAModel, load_llm
    from mllm_align.models.export import export_llava_to_hf
    model = LLaVAModel(llm=load_llm(str(tiny_assets.llm('llama'))),
                       visual_encoder=VisionTower(str(tiny_assets.vision_dinov2), pool=2),
                       projector=dict(type='linear'))
    with pytest.raises(ValueError, match=r'pools its patch grid \(pool=2\).*cannot do'):
        export_llava_to_hf(model, tmp_path / 'out')
