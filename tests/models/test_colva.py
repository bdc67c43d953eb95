"""CoLVAModel on the tiny Qwen2-VL with the tiny remote-code RADIO stand-in as expert.

References are computed independently of the model's object path: the expert's features and the adapter
are run by hand and pooled with plain tensor sums (``Σ m·f / (Σ m + 1e-4)``), and the contrastive loss is
written out per anchor as ``log(1 + Σ_neg exp(a·n − a·p))``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mllm_align.constants import VPT_TOKEN
from mllm_align.data import encode_conversation, llava_collate_fn
from mllm_align.models.builders import load_tokenizer
from mllm_align.models.colva import ADAPTER_FILE, CoLVAModel, load_colva_export
from mllm_align.models.qwen2_vl import Qwen2VLModel
from mllm_align.models.vision_expert import HFVisionExpert


@pytest.fixture(scope='module')
def qwen_dir(tiny_assets) -> Path:
    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    return build_tiny_qwen2_vl(tiny_assets.root)


@pytest.fixture(scope='module')
def radio_dir(tiny_assets) -> Path:
    from mllm_align.testing.tiny_radio import build_tiny_radio
    return build_tiny_radio(tiny_assets.root)


def _expert_cfg(radio_dir: Path) -> dict:
    return dict(type=HFVisionExpert, path=str(radio_dir), trust_remote_code=True)


def _base_cfg(qwen_dir: Path, **kw) -> dict:
    tokenizer = dict(type=load_tokenizer, path=str(qwen_dir), extra_special_tokens=[VPT_TOKEN])
    return dict(type=Qwen2VLModel, path=str(qwen_dir), tokenizer=tokenizer, **kw)


@pytest.fixture(scope='module')
def sft_model(qwen_dir, radio_dir) -> CoLVAModel:
    torch.manual_seed(0)
    model = CoLVAModel(base=_base_cfg(qwen_dir), expert=_expert_cfg(radio_dir), stage='sft').eval()
    with torch.no_grad():  # a non-trivial adapter (it is randomly initialised anyway; make the scale visible)
        model.adapter.fc2.weight.mul_(3.0)
    return model


def _photo(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _disk(size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2


def _sft_item(model: CoLVAModel, k: int, num_candidates: int, E: int) -> dict:
    block = ('Objects in Image-1: <query object>' + VPT_TOKEN + '.\nObjects in Image-2: '
             + ', '.join(f'<object-{i + 1}>{VPT_TOKEN}' for i in range(num_candidates)))
    turns = [{'from': 'human', 'value': '<image>\n<image>\n' + block + '\nWhich object matches?'},
             {'from': 'gpt', 'value': 'B'}]
    ids, labels = encode_conversation(turns, model.tokenizer, model.template)
    images = [_photo(10 * k), _photo(10 * k + 1, (40, 24))]
    query = _disk(E, 20 + k, 24, 12)[None]
    cands = torch.stack([_disk(E, 16 + 12 * i, 40 - 6 * i, 10) for i in range(num_candidates)])
    clean = torch.rand(2, 3, E, E, generator=torch.Generator().manual_seed(k))
    return dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels), id=f'case{k}',
                expert_pixel_values=clean, expert_masks=[query, cands], **model.process_images(images))


def _sft_batch(model: CoLVAModel, counts=(2, 3)) -> dict:
    E = model.expert.image_size
    items = [_sft_item(model, k, n, E) for k, n in enumerate(counts)]
    data = llava_collate_fn(items, pad_token_id=model.pad_token_id)['data']
    data['expert_pixel_values'] = torch.cat([x['expert_pixel_values'] for x in items])
    data['expert_masks'] = [m for x in items for m in x['expert_masks']]
    data['expert_counts'] = torch.tensor([2] * len(items))
    return data


def _pooled_by_hand(model: CoLVAModel, pixels: torch.Tensor, masks: torch.Tensor, tau: float) -> torch.Tensor:
    feats = model.expert(pixels[None])[0]  # (g, g, C)
    adapted = model.adapter(feats)  # (g, g, D)
    g = feats.shape[0]
    w = (F.interpolate(masks[:, None].float(), size=(g, g), mode='bilinear', align_corners=False)[:, 0] > tau).float()
    return (w[..., None] * adapted[None]).sum((1, 2)) / (w.sum((1, 2))[:, None] + 1e-4)


@pytest.fixture(scope='module')
def internvl_sft_model(tiny_assets, radio_dir) -> CoLVAModel:
    from mllm_align.models.internvl import InternVLModel
    from mllm_align.testing.tiny_internvl import build_tiny_internvl2_remote
    path = build_tiny_internvl2_remote(tiny_assets.root)
    torch.manual_seed(0)
    tokenizer = dict(type=load_tokenizer, path=str(path), extra_special_tokens=[VPT_TOKEN])
    base = dict(type=InternVLModel, path=str(path), trust_remote_code=True, tokenizer=tokenizer, template='phi3',
                max_num_tiles=1)
    return CoLVAModel(base=base, expert=_expert_cfg(radio_dir), stage='sft').eval()


@pytest.mark.parametrize('which', ['qwen2_vl', 'internvl2'])
def test_vpt_rows_hold_the_pooled_embeddings_and_nothing_else_moves(which, request):
    model = request.getfixturevalue('sft_model' if which == 'qwen2_vl' else 'internvl_sft_model')
    data = _sft_batch(model)
    with torch.no_grad():
        plain = model.base.prepare_inputs(data)
        inputs = model.prepare_inputs(data)
        is_vpt = plain.input_ids == model.vpt_token_id
        assert is_vpt.sum(1).tolist() == [3, 4]
        torch.testing.assert_close(inputs.inputs_embeds[~is_vpt], plain.inputs_embeds[~is_vpt], rtol=0, atol=0)
        assert torch.equal(inputs.position_ids, plain.position_ids)
        assert torch.equal(inputs.image_mask, plain.image_mask)
        j = 0
        for b in range(2):
            want = torch.cat([_pooled_by_hand(model, data['expert_pixel_values'][j + i], data['expert_masks'][j + i],
                                              0.5) for i in range(2)])
            j += 2
            torch.testing.assert_close(inputs.inputs_embeds[b][is_vpt[b]], want, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(want, plain.inputs_embeds[b][is_vpt[b]])


def test_sft_loss_trains_lora_only_and_predict_answers(qwen_dir, radio_dir, sft_model):
    lora = dict(r=4, lora_alpha=8, target_modules=None)
    model = CoLVAModel(base=_base_cfg(qwen_dir, llm_lora=lora, freeze_projector=True),
                       expert=_expert_cfg(radio_dir), stage='sft')
    trainable = model.trainable_names()
    assert trainable and all('lora_' in n for n in trainable)
    data = _sft_batch(model)
    loss = model(data, mode='loss')['loss_lm']
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert model.adapter.fc1.weight.grad is None and not any(p.requires_grad for p in model.expert.parameters())
    model.eval()
    prompt = _sft_batch(sft_model)
    out = sft_model(prompt, mode='predict')
    assert len(out) == 2 and all(isinstance(o['prediction'], str) for o in out)


def test_training_the_expert_needs_an_expert_built_unfrozen(qwen_dir, radio_dir):
    with pytest.raises(ValueError, match=r'freeze_expert=False .* set model.expert.freeze=False too'):
        CoLVAModel(base=_base_cfg(qwen_dir), expert=_expert_cfg(radio_dir), stage='sft', freeze_expert=False)
    model = CoLVAModel(base=_base_cfg(qwen_dir), expert=dict(_expert_cfg(radio_dir), freeze=False), stage='sft',
                       freeze_expert=False).train()
    assert model.expert.training and all(p.requires_grad for p in model.expert.parameters())
    model(_sft_batch(model), mode='loss')['loss_lm'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())


def test_object_token_count_mismatch_and_vanishing_masks_name_the_sample(sft_model):
    data = _sft_batch(sft_model)
    data['expert_masks'][1] = data['expert_masks'][1][:1]
    with pytest.raises(ValueError, match=r"sample 'case0' has 3 <VPT_CONTEXT> tokens but 2 object masks"):
        sft_model.prepare_inputs(data)
    data = _sft_batch(sft_model)
    tiny = torch.zeros_like(data['expert_masks'][0])
    tiny[0, 0, 0] = True  # one pixel of 64×64: nothing left on the 4×4 grid
    data['expert_masks'][0] = tiny
    with pytest.raises(ValueError, match=r"sample 'case0', expert image 0: object mask\(s\) \[0\] vanish"):
        sft_model.prepare_inputs(data)
    data = _sft_batch(sft_model)
    data.pop('expert_pixel_values')
    with pytest.raises(ValueError, match='no expert images'):
        sft_model.prepare_inputs(data)


def _pretrain_batch(model: CoLVAModel) -> dict:
    """Two items; expert image j ↔ base image j. Base images 32×32 (4×4 tokens), 32×48 (4×6 tokens)."""
    E = model.expert.image_size
    base_images = [_photo(1), _photo(2, (48, 32))]
    masks_e = [torch.stack([_disk(E, 16, 16, 14), _disk(E, 46, 40, 14), _disk(E, 20, 50, 12)]),
               torch.stack([_disk(E, 30, 30, 20), _disk(E, 50, 12, 12)])]
    masks_b = [torch.stack([_disk(32, 8, 8, 8), _disk(32, 24, 20, 8), _disk(32, 8, 26, 7)]),
               torch.stack([_disk(48, 20, 16, 12)[:32], _disk(48, 40, 8, 9)[:32]])]
    proc = model.process_images(base_images)
    return dict(input_ids=torch.zeros(2, 0, dtype=torch.long), labels=torch.zeros(2, 0, dtype=torch.long),
                attention_mask=torch.zeros(2, 0, dtype=torch.bool), expert_counts=torch.tensor([1, 1]),
                expert_pixel_values=torch.rand(2, 3, E, E, generator=torch.Generator().manual_seed(3)),
                expert_masks=masks_e, base_masks=masks_b, **proc)


def test_pretrain_contrastive_loss_by_hand_and_only_the_adapter_trains(qwen_dir, radio_dir):
    torch.manual_seed(0)
    model = CoLVAModel(base=_base_cfg(qwen_dir, freeze_projector=True), expert=_expert_cfg(radio_dir),
                       stage='pretrain')
    assert model.mask_threshold == 0.55
    assert model.trainable_names() == {n for n, _ in model.named_parameters() if n.startswith('adapter.')}
    data = _pretrain_batch(model)
    out = model(data, mode='loss')
    with torch.no_grad():
        feats = model.base.encode_images(data['pixel_values'], image_grid_thw=data['image_grid_thw'])
        grids = [(int(t[1]) // 2, int(t[2]) // 2) for t in data['image_grid_thw']]
        total, n = 0.0, 0
        for j in range(2):
            a = _pooled_by_hand(model, data['expert_pixel_values'][j], data['expert_masks'][j], 0.55).double()
            gh, gw = grids[j]
            w = (F.interpolate(data['base_masks'][j][:, None].float(), size=(gh, gw), mode='bilinear',
                               align_corners=False)[:, 0] > 0.55).float()
            f = feats[j].reshape(gh, gw, -1)
            p = ((w[..., None] * f[None]).sum((1, 2)) / (w.sum((1, 2))[:, None] + 1e-4)).double()
            a_ok = _grid_valid(data['expert_masks'][j], model.expert.grid_size)
            p_ok = w.flatten(1).sum(1) > 0
            for k in range(a.shape[0]):
                if not (a_ok[k] and p_ok[k]):
                    continue
                negs = [float(a[k] @ p[m] - a[k] @ p[k]) for m in range(a.shape[0]) if m != k and p_ok[m]]
                total += math.log(1 + sum(math.exp(x) for x in negs))
                n += 1
    assert n == int(out['num_anchors']) and n >= 3
    assert abs(float(out['loss_contrastive']) - total / n) < 1e-4
    out['loss_contrastive'].backward()
    assert model.adapter.fc1.weight.grad is not None and model.adapter.fc1.weight.grad.abs().sum() > 0


def _grid_valid(masks: torch.Tensor, g: int) -> torch.Tensor:
    w = F.interpolate(masks[:, None].float(), size=(g, g), mode='bilinear', align_corners=False)[:, 0] > 0.55
    return w.flatten(1).any(1)


def test_pretrain_refuses_a_trainable_base_and_plugins(qwen_dir, radio_dir):
    with pytest.raises(ValueError, match='trains only the adapter'):
        CoLVAModel(base=_base_cfg(qwen_dir), expert=_expert_cfg(radio_dir), stage='pretrain')  # merger trainable
    with pytest.raises(ValueError, match="use 'pretrain'"):
        CoLVAModel(base=_base_cfg(qwen_dir), expert=_expert_cfg(radio_dir), stage='finetune')


def test_adapter_hand_off_and_export_round_trip(qwen_dir, radio_dir, sft_model, tmp_path):
    torch.save({'state_dict': {f'adapter.{k}': v for k, v in sft_model.adapter.state_dict().items()}},
               tmp_path / 'iter_3.pth')
    model = CoLVAModel(base=_base_cfg(qwen_dir), expert=_expert_cfg(radio_dir), stage='sft',
                       adapter_pth=str(tmp_path / 'iter_3.pth')).eval()
    for k, v in sft_model.adapter.state_dict().items():
        assert torch.equal(model.adapter.state_dict()[k], v)
    torch.save({'state_dict': {'base.x': torch.zeros(1)}}, tmp_path / 'iter_1.pth')
    with pytest.raises(KeyError, match='holds no adapter'):
        model.load_adapter(tmp_path / 'iter_1.pth')
    out_dir = model.export_hf(tmp_path / 'export')
    assert (out_dir / ADAPTER_FILE).is_file()
    with pytest.raises(ValueError, match=r'vision expert loaded with its own modelling code.*trust_remote_code=True'):
        load_colva_export(out_dir)  # the recorded RADIO stand-in runs remote code: only when the caller says so
    loaded = load_colva_export(out_dir, trust_remote_code=True)
    data = _sft_batch(model)
    with torch.no_grad():
        want = model(data, mode='tensor')
        got = loaded(data, mode='tensor')
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_round_trip_on_the_remote_code_internvl_base(internvl_sft_model, radio_dir, tmp_path):
    model = internvl_sft_model
    out_dir = model.export_hf(tmp_path / 'export')
    assert (out_dir / ADAPTER_FILE).is_file() and sorted(p.name for p in out_dir.glob('*.py')) == [
        'configuration_tiny_internvl.py', 'modeling_tiny_internvl.py']
    with pytest.raises(ValueError, match=r'load_colva_export\(path, trust_remote_code=True\)'):
        load_colva_export(out_dir)  # the base's code in the directory (and RADIO's) runs only when asked
    with pytest.raises(ValueError, match=r'ships its own modelling code.*trust_remote_code=True'):
        load_colva_export(out_dir, expert=_expert_cfg(radio_dir))  # the expert given: the base's code still asks
    loaded = load_colva_export(out_dir, trust_remote_code=True)
    assert loaded.base.format == 'remote' and loaded.vpt_token_id == model.vpt_token_id
    data = _sft_batch(model)
    with torch.no_grad():
        want = model(data, mode='tensor')
        got = loaded(data, mode='tensor')
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_predict_match_reads_the_answer_and_maps_it_to_a_candidate(sft_model, monkeypatch):
    images = [_photo(5), _photo(6, (40, 24))]
    query = np.zeros((32, 32), bool)
    query[4:28, 4:28] = True
    cands = [np.zeros((24, 40), bool) for _ in range(3)]
    cands[0][2:20, 2:12] = True
    cands[1][2:20, 14:26] = True
    cands[2][2:20, 28:38] = True
    out = sft_model.predict_match(images, query, cands, seed=3)
    assert set(out) == {'prediction', 'choice', 'candidate', 'options', 'ids'}
    assert sorted(out['ids']) == [1, 2, 3] and list(out['options']) == ['A', 'B', 'C', 'D']
    # a model that answers "B" chose ID 2: the candidate drawn with tag 2
    monkeypatch.setattr(type(sft_model), 'predict', lambda self, data: [{'prediction': 'B', 'token_ids': []}])
    out = sft_model.predict_match(images, query, cands, seed=3)
    assert out['choice'] == 'B' and out['ids'][out['candidate']] == 2
    monkeypatch.setattr(type(sft_model), 'predict', lambda self, data: [{'prediction': 'D', 'token_ids': []}])
    assert sft_model.predict_match(images, query, cands, seed=3)['candidate'] is None
    with pytest.raises(ValueError, match='candidate 1: the mask is empty'):
        sft_model.predict_match(images, query, [cands[0], np.zeros((24, 40), bool)])
    with pytest.raises(ValueError, match='query mask: 30×30 mask for a 32×32 image'):
        sft_model.predict_match(images, query[:30, :30], cands)
