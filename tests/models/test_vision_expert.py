"""CoLVA's vision expert (mllm_align/models/vision_expert.py) and its tiny remote-code RADIO stand-in.

References are computed independently of the expert: the raw remote model's ``features`` reshaped row-major,
and for HF models the model's ``last_hidden_state`` (or ``hidden_states[k]``) without its CLS/register tokens,
fed the image processor's own normalisation.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoModel,
    BitImageProcessor,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionModel,
)

from mllm_align.models.base import build_module
from mllm_align.models.object_adapter import mask_pool, masks_to_grid
from mllm_align.models.vision_expert import HFVisionExpert, VisionExpert, build_vision_expert, resize_for_expert
from mllm_align.testing.real_assets import REAL_ROOT
from mllm_align.testing.tiny_radio import (
    TINY_RADIO_HIDDEN_SIZE,
    TINY_RADIO_IMAGE_SIZE,
    TINY_RADIO_MEAN,
    TINY_RADIO_NUM_CLS_TOKENS,
    TINY_RADIO_STD,
    build_tiny_radio,
)

TINY_ROOT = Path(__file__).resolve().parents[2] / 'data' / 'tiny'
DINO_MEAN, DINO_STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # not ImageNet's: a wrong source would show
DINO_SIZE, DINO_PATCH = 56, 14  # a 4×4 grid


@pytest.fixture(scope='module')
def radio_dir() -> Path:
    return build_tiny_radio(TINY_ROOT)


@pytest.fixture(scope='module')
def raw_radio(radio_dir):
    return AutoModel.from_pretrained(str(radio_dir), trust_remote_code=True).eval()


def _save_dinov2(out: Path, registers: int) -> Path:
    common = dict(image_size=DINO_SIZE, patch_size=DINO_PATCH, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, mlp_ratio=2)
    torch.manual_seed(5)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.save_pretrained(out, safe_serialization=True)
    BitImageProcessor(size={'shortest_edge': DINO_SIZE}, crop_size={'height': DINO_SIZE, 'width': DINO_SIZE},
                      image_mean=list(DINO_MEAN), image_std=list(DINO_STD), do_convert_rgb=True).save_pretrained(out)
    return out


@pytest.fixture(scope='module', params=[0, 2], ids=['dinov2', 'dinov2_registers'])
def dinov2_dir(request, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp(f'dinov2_reg{request.param}') / 'dinov2'
    return _save_dinov2(out, request.param), request.param


def _images(n: int, size=(40, 30), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------
# The stand-in
# ---------------------------------------------------------------------------------------------------------
def test_stand_in_loads_only_with_trust_remote_code(radio_dir):
    config = json.loads((radio_dir / 'config.json').read_text())
    assert set(config['auto_map']) == {'AutoConfig', 'AutoModel'}
    with pytest.raises(ValueError, match='custom code'):
        AutoModel.from_pretrained(str(radio_dir), trust_remote_code=False)
    model = AutoModel.from_pretrained(str(radio_dir), trust_remote_code=True)
    assert type(model).__name__ == 'TinyRadioModel'
    assert sum(p.stat().st_size for p in radio_dir.iterdir()) < 1024 ** 2
    assert (radio_dir / 'model.safetensors').is_file() and (radio_dir / 'modeling_tiny_radio.py').is_file()


def test_stand_in_returns_summary_and_patch_features_at_any_multiple_of_16(raw_radio):
    c = TINY_RADIO_HIDDEN_SIZE
    with torch.no_grad():
        summary, features = raw_radio(torch.rand(2, 3, 48, 80))
    assert summary.shape == (2, TINY_RADIO_NUM_CLS_TOKENS * c)  # summary tokens, flattened
    assert features.shape == (2, 3 * 5, c)  # patch tokens only: registers and summary stripped
    with pytest.raises(ValueError, match='multiples of 16'):
        raw_radio(torch.rand(1, 3, 40, 48))


def test_stand_in_rebuild_is_a_no_op(radio_dir):
    before = (radio_dir / '.complete').stat().st_mtime_ns
    assert build_tiny_radio(TINY_ROOT) == radio_dir
    assert (radio_dir / '.complete').stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------------------
# RADIO-style expert
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('image_size', [None, 96])
def test_radio_expert_equals_raw_features_reshaped(radio_dir, raw_radio, image_size):
    expert = HFVisionExpert(str(radio_dir), image_size=image_size, trust_remote_code=True)
    e = image_size or TINY_RADIO_IMAGE_SIZE  # None → preferred_resolution
    g = e // 16
    assert isinstance(expert, VisionExpert)
    assert (expert.hidden_size, expert.image_size, expert.patch_size, expert.grid_size) == (
        TINY_RADIO_HIDDEN_SIZE, e, 16, g)
    x = torch.rand(3, 3, e, e)
    with torch.no_grad():
        out = expert(x)
        ref = raw_radio(x)[1].reshape(3, g, g, TINY_RADIO_HIDDEN_SIZE)  # row-major patches
    assert out.shape == (3, g, g, TINY_RADIO_HIDDEN_SIZE)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_radio_expert_normalises_exactly_once(radio_dir, raw_radio):
    """RADIO conditions its input itself: the expert adds nothing, and the model's conditioner runs once."""
    expert = HFVisionExpert(str(radio_dir), trust_remote_code=True)
    assert not expert.normalize
    mean = torch.tensor(TINY_RADIO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TINY_RADIO_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(raw_radio.input_conditioner.norm_mean, mean.view(3, 1, 1))
    x = torch.rand(2, 3, 64, 64)
    conditioner = raw_radio.input_conditioner
    try:  # the same network with the conditioner removed, fed (x − μ)/σ by hand
        raw_radio.input_conditioner = torch.nn.Identity()
        with torch.no_grad():
            once = raw_radio((x - mean) / std)[1].reshape(2, 4, 4, -1)
            twice = raw_radio((((x - mean) / std) - mean) / std)[1].reshape(2, 4, 4, -1)
    finally:
        raw_radio.input_conditioner = conditioner
    with torch.no_grad():
        out = expert(x)
    torch.testing.assert_close(out, once, rtol=1e-5, atol=1e-5)
    assert (out - twice).abs().max() > 1e-2


class _ObjectOutputRadio(torch.nn.Module):
    """Wraps the stand-in so it answers like RADIO's ``RadioOutput`` (``.summary`` / ``.features``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        summary, features = self.inner(x)
        return type('RadioOutput', (), {'summary': summary, 'features': features})()


def test_radio_expert_reads_summary_features_objects(radio_dir, raw_radio):
    expert = HFVisionExpert(str(radio_dir), trust_remote_code=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = expert(x)
        expert.model = _ObjectOutputRadio(expert.model)
        torch.testing.assert_close(expert(x), ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Plain HF experts
# ---------------------------------------------------------------------------------------------------------
def test_dinov2_expert_equals_model_after_processor_normalisation(dinov2_dir):
    path, registers = dinov2_dir
    expert = build_vision_expert(str(path))
    assert (expert.image_size, expert.patch_size, expert.grid_size, expert.hidden_size) == (56, 14, 4, 32)
    images = _images(2)
    pixels = resize_for_expert(images, 56)
    processor = BitImageProcessor.from_pretrained(str(path))
    # the processor's own rescale + normalisation on the already-resized images
    resized = [Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for p in pixels]
    normalised = processor(resized, do_resize=False, do_center_crop=False, return_tensors='pt')['pixel_values']
    model = AutoModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        tokens = model(pixel_values=normalised).last_hidden_state  # (N, 1 + registers + 16, C)
        ref = tokens[:, 1 + registers:].reshape(2, 4, 4, 32)
        out = expert(pixels)
    assert tokens.shape[1] == 1 + registers + 16
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # normalised twice is something else
        twice = model(pixel_values=(normalised - torch.tensor(DINO_MEAN).view(1, 3, 1, 1))
                      / torch.tensor(DINO_STD).view(1, 3, 1, 1)).last_hidden_state[:, 1 + registers:]
    assert (out.reshape(2, 16, 32) - twice).abs().max() > 1e-2


def test_dinov2_expert_select_layer_and_other_size(dinov2_dir):
    path, registers = dinov2_dir
    model = AutoModel.from_pretrained(str(path)).eval()
    mean, std = torch.tensor(DINO_MEAN).view(1, 3, 1, 1), torch.tensor(DINO_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 112, 112)
    expert = HFVisionExpert(str(path), image_size=112, select_layer=-2)
    with torch.no_grad():
        ref = model(pixel_values=(x - mean) / std, output_hidden_states=True).hidden_states[-2]
        out = expert(x)
    assert out.shape == (2, 8, 8, 32)
    torch.testing.assert_close(out, ref[:, 1 + registers:].reshape(2, 8, 8, 32), rtol=1e-4, atol=1e-4)


def test_clip_and_siglip_experts_interpolate_and_drop_their_prefix(radio_dir):
    """The tiny-assets CLIP (1 CLS) and SigLIP (none) at 48 px, off their native 32."""
    x = torch.rand(1, 3, 48, 48)
    for kind, cls, prefix in (('clip', CLIPVisionModel, 1), ('siglip', SiglipVisionModel, 0)):
        path = TINY_ROOT / 'vision' / kind
        expert = HFVisionExpert(str(path), image_size=48)
        model = cls.from_pretrained(str(path)).eval()
        mean, std = expert.image_mean, expert.image_std
        saved = json.loads((path / 'preprocessor_config.json').read_text())  # the directory's processor config
        torch.testing.assert_close(mean.flatten(), torch.tensor(saved['image_mean'], dtype=torch.float32))
        torch.testing.assert_close(std.flatten(), torch.tensor(saved['image_std'], dtype=torch.float32))
        with torch.no_grad():
            ref = model(pixel_values=(x - mean) / std, interpolate_pos_encoding=True).last_hidden_state
            out = expert(x)
        assert out.shape == (1, 6, 6, 64), kind
        torch.testing.assert_close(out, ref[:, prefix:].reshape(1, 6, 6, 64), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Frozen, dtype, config building
# ---------------------------------------------------------------------------------------------------------
def test_expert_is_frozen_and_stays_in_eval(radio_dir, dinov2_dir):
    for expert in (HFVisionExpert(str(radio_dir), trust_remote_code=True), HFVisionExpert(str(dinov2_dir[0]))):
        assert not any(p.requires_grad for p in expert.parameters())
        expert.train()
        assert not expert.training and not any(m.training for m in expert.modules())
        x = torch.rand(1, 3, expert.image_size, expert.image_size)
        torch.testing.assert_close(expert(x), expert(x), rtol=0, atol=0)
    trainable = HFVisionExpert(str(dinov2_dir[0]), freeze=False)
    trainable.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_expert_dtype_and_mmengine_type(dinov2_dir):
    expert = HFVisionExpert(str(dinov2_dir[0]), dtype='bfloat16')
    assert expert.dtype == torch.bfloat16
    assert expert(torch.rand(1, 3, 56, 56)).dtype == torch.bfloat16
    assert isinstance(build_module(dict(type=HFVisionExpert, path=str(dinov2_dir[0]))), HFVisionExpert)
    assert isinstance(build_module(dict(type='HFVisionExpert', path=str(dinov2_dir[0]))), HFVisionExpert)


def test_expert_features_pool_under_object_masks(radio_dir):
    expert = HFVisionExpert(str(radio_dir), trust_remote_code=True)
    masks = torch.zeros(2, 30, 40, dtype=torch.bool)
    masks[0, :15, :20] = True
    masks[1, 15:, 20:] = True
    weights, valid = masks_to_grid(masks, expert.grid_size)
    with torch.no_grad():
        feats = expert(resize_for_expert(_images(1), expert.image_size))[0]  # (g, g, C)
    pooled = mask_pool(feats, weights)
    assert valid.all() and pooled.shape == (2, expert.hidden_size)
    torch.testing.assert_close(pooled[0], feats[:2, :2].reshape(4, -1).mean(0) * 4 / (4 + 1e-4))


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------
def test_remote_code_errors(radio_dir, dinov2_dir, tmp_path):
    with pytest.raises(ValueError, match=r'model\.expert\.trust_remote_code=True'):
        HFVisionExpert(str(radio_dir))
    with pytest.raises(ValueError, match='holds no \\*.py modelling code'):
        HFVisionExpert(str(dinov2_dir[0]), trust_remote_code=True)
    broken = tmp_path / 'radio'
    shutil.copytree(radio_dir, broken)
    (broken / 'modeling_tiny_radio.py').unlink()
    with pytest.raises(ValueError, match='needs modeling_tiny_radio.py'):
        HFVisionExpert(str(broken), trust_remote_code=True)
    config = json.loads((broken / 'config.json').read_text())
    config['auto_map']['AutoModel'] = 'nvidia/RADIO--hf_model.RADIOModel'
    (broken / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='another repository'):
        HFVisionExpert(str(broken), trust_remote_code=True)
    with pytest.raises(FileNotFoundError, match=r'model\.expert\.path'):
        HFVisionExpert(str(tmp_path / 'missing'))


def test_size_layer_and_input_errors(radio_dir, dinov2_dir, tmp_path):
    with pytest.raises(ValueError, match=r'image_size=72` is not a multiple .* 16.*use 64 or 80'):
        HFVisionExpert(str(radio_dir), image_size=72, trust_remote_code=True)
    with pytest.raises(ValueError, match=r'image_size=60` is not a multiple .* 14'):
        HFVisionExpert(str(dinov2_dir[0]), image_size=60)
    with pytest.raises(ValueError, match='max_resolution'):
        HFVisionExpert(str(radio_dir), image_size=1024, trust_remote_code=True)
    with pytest.raises(ValueError, match='select_layer=-1'):
        HFVisionExpert(str(radio_dir), select_layer=-2, trust_remote_code=True)
    with pytest.raises(ValueError, match='out of range'):
        HFVisionExpert(str(dinov2_dir[0]), select_layer=5)
    bare = tmp_path / 'bare'
    shutil.copytree(dinov2_dir[0], bare)
    (bare / 'preprocessor_config.json').unlink()
    with pytest.raises(ValueError, match='no usable image processor'):
        HFVisionExpert(str(bare))
    expert = HFVisionExpert(str(dinov2_dir[0]))
    with pytest.raises(ValueError, match=r'\[N, 3, 56, 56\].*resize_for_expert'):
        expert(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        expert(torch.rand(1, 3, 56, 56) * 255)
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        expert(torch.randn(1, 3, 56, 56))  # already normalised


# ---------------------------------------------------------------------------------------------------------
# resize_for_expert
# ---------------------------------------------------------------------------------------------------------
def test_resize_for_expert_is_pil_bilinear_without_aspect():
    images = _images(2, size=(40, 30)) + [Image.new('L', (10, 20), color=128)]
    out = resize_for_expert(images, 16)
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
    ref = np.asarray(images[0].resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), ref)
    torch.testing.assert_close(out[2], torch.full((3, 16, 16), 128 / 255))
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert resize_for_expert([], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match='positive int'):
        resize_for_expert(images, 0)
    with pytest.raises(TypeError, match='not a PIL image'):
        resize_for_expert([np.zeros((4, 4, 3))], 8)


# ---------------------------------------------------------------------------------------------------------
# Real weights
# ---------------------------------------------------------------------------------------------------------
def _photo() -> Image.Image:
    for candidate in sorted((REAL_ROOT / 'correspondence' / 'JPEGImages').glob('*/*.jpg'))[:1]:
        return Image.open(candidate).convert('RGB')
    image = Image.new('RGB', (224, 224), (200, 180, 150))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 30, 110, 120), fill=(200, 30, 30))
    draw.rectangle((130, 100, 210, 200), fill=(30, 60, 200))
    return image


@pytest.mark.real_assets
def test_real_dinov2_features_follow_a_flip():
    """DINOv2-S: each cell of an image matches the mirrored cell of its flipped copy better than a random cell."""
    path = REAL_ROOT / 'dinov2_small'
    if not (path / 'config.json').is_file():
        pytest.skip(f'{path} absent: run `python data/prepare_real.py --only dinov2_small`')
    expert = HFVisionExpert(str(path))
    image = _photo()
    pixels = resize_for_expert([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], expert.image_size)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(expert(pixels), dim=-1)  # (2, g, g, C)
    a, b = feats[0].reshape(-1, expert.hidden_size), feats[1].flip(1).reshape(-1, expert.hidden_size)
    matched = (a * b).sum(-1).mean()
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = (a * b[perm]).sum(-1).mean()
    assert expert.grid_size == 16 and expert.hidden_size == 384
    print(f'flip-matched cosine {float(matched):.3f}, shuffled {float(shuffled):.3f}')
    assert matched > shuffled + 0.1, (float(matched), float(shuffled))
