"""InternVLModel on both tiny InternVL formats against the underlying model's own forward, and the tiling.

References are computed by the loaded model itself on its own inputs: every placeholder expanded as InternVL's
processor does (``<img>`` + 256·T_i ``<IMG_CONTEXT>`` + ``</img>``) and the tiles' ``pixel_values``; the model
writes its own features over the ``<IMG_CONTEXT>`` rows (the remote stand-in's ``forward``, transformers'
``InternVLForConditionalGeneration.forward``). One batch holds a 1-tile image and a 3-tile one (a 2×1 grid +
thumbnail) of different sizes.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import encode_conversation, llava_collate_fn
from mllm_align.data.internvl_tiles import IMAGENET_MEAN, IMAGENET_STD, InternVLTileProcessor, candidate_grids
from mllm_align.engine.checkpoint import add_trust_remote_code_argument
from mllm_align.models.hf_llava import TRUST_REMOTE_CODE_ENV
from mllm_align.models.internvl import InternVLModel

QUESTIONS = ('What is it?', 'Describe the picture in detail.')
P = 256  # tokens per 448-px tile: (448 / 14)² · 0.5²


@pytest.fixture(scope='module')
def dirs(tiny_assets) -> dict[str, Path]:
    from mllm_align.testing.tiny_internvl import build_tiny_internvl
    return build_tiny_internvl(tiny_assets.root)


@pytest.fixture(scope='module')
def models(dirs) -> dict[str, InternVLModel]:
    torch.manual_seed(0)
    kw = dict(max_num_tiles=4, max_new_tokens=4)  # short replies keep predict fast on CPU
    return {'remote': InternVLModel(path=str(dirs['remote']), trust_remote_code=True, **kw).eval(),
            'hf': InternVLModel(path=str(dirs['hf']), **kw).eval()}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)),   # 1×1 grid → 1 tile
            Image.fromarray(rng.integers(0, 255, (200, 500, 3), dtype=np.uint8))]   # 2×1 grid + thumbnail → 3 tiles


def _batch(model: InternVLModel, images=None, answer: str | None = 'A red circle.') -> dict:
    images = _images() if images is None else images
    items = []
    for k, (image, question) in enumerate(zip(images, QUESTIONS)):
        turns = [{'from': 'human', 'value': '<image>\n' + question}]
        if answer is not None:
            turns.append({'from': 'gpt', 'value': answer})
        ids, labels = encode_conversation(turns, model.tokenizer, model.template)
        items.append(dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels), id=f's{k}',
                          **model.process_images([image])))
    return llava_collate_fn(items, pad_token_id=model.pad_token_id)['data']


def _expanded_ids(model: InternVLModel, batch: dict, padding_side: str = 'right') -> tuple[torch.Tensor, torch.Tensor]:
    """InternVL's own input_ids: each placeholder → <img> + 256·T_i <IMG_CONTEXT> + </img>."""
    tiles = iter(batch['num_tiles'].tolist())
    rows = []
    for ids, mask in zip(batch['input_ids'], batch['attention_mask']):
        row = []
        for t in ids[mask].tolist():
            if t == IMAGE_TOKEN_INDEX:
                row += [model.img_start_token_id] + [model.img_context_token_id] * P * next(tiles) + \
                       [model.img_end_token_id]
            else:
                row.append(t)
        rows.append(row)
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), model.pad_token_id)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, row in enumerate(rows):
        sl = slice(0, len(row)) if padding_side == 'right' else slice(L - len(row), L)
        ids[b, sl], mask[b, sl] = torch.tensor(row), 1
    return ids, mask


def _own_forward(model: InternVLModel, ids: torch.Tensor, mask: torch.Tensor, pixel_values: torch.Tensor):
    if model.format == 'remote':
        return model.vlm(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
    return model.vlm(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits


# ------------------------------------------------------------------------------ remote code
def test_remote_code_loads_only_when_trusted(dirs):
    from transformers import AutoModel

    with pytest.raises(ValueError, match='trust_remote_code'):
        AutoModel.from_pretrained(str(dirs['remote']), trust_remote_code=False)
    loaded = AutoModel.from_pretrained(str(dirs['remote']), trust_remote_code=True)
    assert type(loaded).__name__ == 'TinyInternVLChatModel' and loaded.num_image_token == P
    assert loaded.extract_feature(torch.zeros(2, 3, 448, 448)).shape == (2, P, 64)
    with pytest.raises(ValueError, match=r'ships its own modelling code.*`model\.trust_remote_code=True`'):
        InternVLModel(path=str(dirs['remote']))
    with pytest.raises(ValueError, match=r"`model\.trust_remote_code=True` but '.*internvl_hf' holds no remote "
                                         r'modelling code.*trust_remote_code=False'):
        InternVLModel(path=str(dirs['hf']), trust_remote_code=True)


def test_wrong_model_type_and_unknown_keys_fail_naming_the_fix(dirs, tiny_assets):
    with pytest.raises(ValueError, match=r"holds a 'llama' model, not InternVL.*model\.path"):
        InternVLModel(path=str(tiny_assets.llm('llama')))
    with pytest.raises(ValueError, match=r"Unknown InternVLModel setting\(s\) \['max_tiles'\]; valid keys: .*"
                                         r"'max_num_tiles'"):
        InternVLModel(path=str(dirs['hf']), max_tiles=4)
    with pytest.raises(ValueError, match=r'model\.projector is not an InternVLModel setting.*mlp1'):
        InternVLModel(path=str(dirs['hf']), projector=dict(type='mlp2x_gelu'))


# ------------------------------------------------------------------------------ against the model's own forward
@pytest.mark.parametrize('fmt', ['remote', 'hf'])
def test_logits_equal_the_models_own_forward_on_expanded_ids(models, fmt):
    model = models[fmt]
    batch = _batch(model)
    assert batch['num_tiles'].tolist() == [1, 3] and batch['pixel_values'].shape == (4, 3, 448, 448)
    ids, mask = _expanded_ids(model, batch)
    with torch.no_grad():
        inputs = model.prepare_inputs(batch)
        logits = model(batch, mode='tensor')
        ref = _own_forward(model, ids, mask, batch['pixel_values'])
    valid = mask.bool()
    assert torch.equal(inputs.attention_mask, valid)
    assert torch.equal(inputs.image_mask, ids == model.img_context_token_id)  # feature rows only
    assert inputs.image_mask.sum(1).tolist() == [P, 3 * P]
    text = inputs.input_ids.masked_fill(inputs.image_mask, 0)
    assert torch.equal(text[valid & ~inputs.image_mask], ids[valid & ~inputs.image_mask])  # <img>, </img> in place
    assert (inputs.labels[inputs.image_mask] == IGNORE_INDEX).all()
    assert (inputs.labels[ids == model.img_start_token_id] == IGNORE_INDEX).all()
    assert inputs.position_ids.shape == ids.shape
    assert torch.equal(inputs.position_ids[valid], (mask.cumsum(1) - 1)[valid])
    torch.testing.assert_close(logits[valid], ref[valid], rtol=1e-5, atol=1e-5)
    feats = model.encode_images(batch['pixel_values'], num_tiles=batch['num_tiles'])
    assert [tuple(f.shape) for f in feats] == [(P, 64), (3 * P, 64)]


@pytest.mark.parametrize('fmt', ['remote', 'hf'])
def test_loss_backward_and_predict(models, fmt):
    model = models[fmt]
    batch = _batch(model)
    loss = model(batch, mode='loss')['loss_lm']
    ids, mask = _expanded_ids(model, batch)
    inputs = model.prepare_inputs(batch)
    with torch.no_grad():
        logits = _own_forward(model, ids, mask, batch['pixel_values'])
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs.labels[:, 1:].flatten(),
                                            ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    grads = [p.grad for p in model._projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.zero_grad(set_to_none=True)
    prompts = _batch(model, answer=None)
    out = model(prompts, mode='predict')
    assert len(out) == 2 and all(0 < len(o['token_ids']) <= model.max_new_tokens for o in out)
    inputs = model.prepare_inputs(prompts, padding_side='left')
    assert [o['token_ids'] for o in out] == model.generate_ids(inputs, prompts, model.stop_token_ids(),
                                                               model.max_new_tokens).tolist()


# ------------------------------------------------------------------------------ tiling
def test_tiling_against_a_hand_worked_case():
    proc = InternVLTileProcessor(max_num_tiles=4)
    assert candidate_grids(1, 4) == [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    # 500×200: W/H = 2.5, equally far from 2×1 and 3×1 (0.5); the image (100,000 px) is smaller than half of three
    # tiles (½·448²·3 = 301,056 px), so the tie keeps 2×1: two tiles + the thumbnail.
    assert proc.grid(500, 200) == (2, 1) and proc.num_tiles(500, 200) == 3
    # 1500×600: the same tie, but 900,000 px > 301,056: the tie moves to 3×1 (+ thumbnail = 4).
    assert proc.grid(1500, 600) == (3, 1) and proc.num_tiles(1500, 600) == 4
    assert proc.grid(300, 300) == (1, 1) and proc.num_tiles(300, 300) == 1  # one tile, no thumbnail
    assert proc.grid(400, 900) == (1, 2)  # H/W = 2.25: 1×2 (0.5 vs 0.444) is closer than 1×3 (0.333)
    assert InternVLTileProcessor(max_num_tiles=1).num_tiles(500, 200) == 1
    assert InternVLTileProcessor(max_num_tiles=4, use_thumbnail=False).num_tiles(500, 200) == 2
    image = _images()[1]  # 500×200
    tiles = proc.tile_image(image)
    resized = image.resize((896, 448), Image.Resampling.BICUBIC)
    assert [t.size for t in tiles] == [(448, 448)] * 3
    assert np.array_equal(np.asarray(tiles[1]), np.asarray(resized)[:, 448:])  # row-major: the right half second
    assert np.array_equal(np.asarray(tiles[2]), np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC)))
    out = proc([image])
    assert out['num_tiles'].tolist() == [3] and out['pixel_values'].shape == (3, 3, 448, 448)
    x = np.asarray(tiles[0], dtype=np.float32)[5, 7] / 255  # pixel (y=5, x=7) of tile 0
    expected = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(out['pixel_values'][0, :, 5, 7].numpy(), expected, rtol=0, atol=1e-6)
    assert proc.image_token_counts(out) == [3 * P + 2]  # feature rows + <img> + </img>


def test_grid_choice_matches_transformers_got_ocr2_canvas():
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    proc = InternVLTileProcessor(max_num_tiles=12)
    for w, h in [(500, 200), (1500, 600), (300, 300), (1024, 768), (640, 1920), (3000, 400), (448, 447), (90, 1000)]:
        assert proc.grid(w, h) == get_optimal_tiled_canvas((h, w), (448, 448), 1, 12), (w, h)


def test_tile_processor_works_through_the_dataset(models, tmp_path):
    from mllm_align.data.llava_dataset import LLaVADataset

    model = models['hf']
    for k, image in enumerate(_images()):
        image.save(tmp_path / f'{k}.png')
    records = [{'id': f's{k}', 'image': f'{k}.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nWhat is it?'}, {'from': 'gpt', 'value': 'A red circle.'}]} for k in (0, 1)]
    (tmp_path / 'data.json').write_text(json.dumps(records))
    proc = InternVLTileProcessor.from_pretrained(model_dir := Path(model.vlm.config._name_or_path), max_num_tiles=4)
    assert proc.to_dict() == model.image_processor.to_dict() and model_dir.is_dir()
    ds = LLaVADataset(tmp_path / 'data.json', tmp_path, model.tokenizer, 'chatml', image_processor=proc,
                      pad_image_to_square=False, num_image_tokens=P)
    items = [ds[0], ds[1]]
    assert [it['num_tiles'].tolist() for it in items] == [[1], [3]]
    batch = llava_collate_fn(items, pad_token_id=model.pad_token_id)['data']
    assert batch['num_tiles'].tolist() == [1, 3] and batch['pixel_values'].shape == (4, 3, 448, 448)
    with torch.no_grad():
        assert torch.isfinite(model(batch, mode='loss')['loss_lm'])
    # the length rule counts 256·T + 2 positions per image: a max_length between the two samples' sizes
    short = LLaVADataset(tmp_path / 'data.json', tmp_path, model.tokenizer, 'chatml', image_processor=proc,
                         pad_image_to_square=False, max_length=3 * P, num_image_tokens=P)
    assert len(short[0]['input_ids']) == len(items[0]['input_ids'])
    with pytest.raises(Exception, match='max_length=768'):
        short[1]


# ------------------------------------------------------------------------------ token grids
def test_image_token_grids(models):
    model = models['remote']
    one = model.process_images([_images()[0]])
    assert model.image_token_grids(one) == [(16, 16)]
    with pytest.raises(ValueError, match=r"image 0 has 3 tiles.*CoLVA's pre-training.*max_num_tiles=1"):
        model.image_token_grids(model.process_images([_images()[1]]))
    single = InternVLTileProcessor.from_pretrained(model.vlm.config._name_or_path, max_num_tiles=1)
    assert models['hf'].image_token_grids(single(_images())) == [(16, 16), (16, 16)]


# ------------------------------------------------------------------------------ what trains
def _trainable(m: InternVLModel) -> set[str]:
    projector = {id(p) for p in m._projector.parameters()}
    vision = {id(p) for p in m._vision.parameters()}
    return {'lora' if 'lora_' in name else 'projector' if id(p) in projector else 'visual' if id(p) in vision
            else 'llm' for name, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('fmt', ['remote', 'hf'])
def test_frozen_full_and_lora_trainable_sets(dirs, fmt):
    kw = dict(path=str(dirs[fmt]), trust_remote_code=fmt == 'remote')
    assert _trainable(InternVLModel(**kw)) == {'projector'}
    full = InternVLModel(**kw, freeze_llm=False, freeze_visual_encoder=False)
    assert _trainable(full) == {'llm', 'projector', 'visual'} and all(p.requires_grad for p in full.vlm.parameters())
    target = 'qkv_proj' if fmt == 'remote' else 'q_proj'
    lora = InternVLModel(**kw, llm_lora=dict(r=4, lora_alpha=8, target_modules=[target]),
                         visual_encoder_lora=dict(r=2, lora_alpha=4), freeze_projector=True)
    assert _trainable(lora) == {'lora'}
    names = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any(f'layers.1.self_attn.{target}.lora_A' in n for n in names)
    assert any('encoder.layer' in n and 'lora_A' in n for n in names)
    assert not any('mlp1' in n or 'multi_modal_projector' in n or 'lm_head' in n for n in names)
    assert set(lora.state_dict()) == names
    with pytest.raises(ValueError, match=r"llm_lora\.target_modules = \['fc1'\]"):
        InternVLModel(**kw, llm_lora=dict(r=4, target_modules=['fc1']))


# ------------------------------------------------------------------------------ plug-ins
def test_moca_attaches_and_changes_the_logits(dirs):
    from mllm_align.align.moca import MoCa

    torch.manual_seed(0)
    m = InternVLModel(path=str(dirs['remote']), trust_remote_code=True, max_num_tiles=4,
                      plugins=dict(moca=dict(type=MoCa))).eval()
    batch = _batch(m)
    with torch.no_grad():
        before = m(batch, mode='tensor')
        m.moca.u.add_(0.1 * torch.randn_like(m.moca.u))
        after = m(batch, mode='tensor')
    inputs = m.prepare_inputs(batch)
    first_image = int(inputs.image_mask[0].nonzero()[0])
    assert torch.equal(before[0, :first_image], after[0, :first_image])  # text before the image is untouched
    assert not torch.allclose(before[inputs.attention_mask], after[inputs.attention_mask])
    losses = m(batch, mode='loss')
    losses['loss_lm'].backward()
    assert m.moca.u.grad is not None and m.moca.u.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_sample_and_the_fix(models):
    model = models['hf']
    batch = _batch(model)
    one = dict(batch, num_tiles=batch['num_tiles'][:1], pixel_values=batch['pixel_values'][:1])
    with pytest.raises(ValueError, match=r"2 image placeholders \(sample 's0': 1, sample 's1': 1\) but 1 images"):
        model.prepare_inputs(one)
    with pytest.raises(ValueError, match=r'num_tiles \[1, 3\] adds up to 4 tiles but pixel_values has 3'):
        model.prepare_inputs(dict(batch, pixel_values=batch['pixel_values'][:3]))
    ids = batch['input_ids'].clone()
    ids[1, 2] = model.img_start_token_id
    with pytest.raises(ValueError, match=r"sample 's1': the text holds <img>.*adds those tokens itself"):
        model.prepare_inputs(dict(batch, input_ids=ids))


# ------------------------------------------------------------------------------ export
def _trained_lora_model(**kw) -> InternVLModel:
    """A LoRA model whose adapters changed the logits (LoRA B starts at 0, so the merge would not matter)."""
    torch.manual_seed(0)
    m = InternVLModel(max_num_tiles=4, **kw).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if 'lora_B' in name:
                p.normal_(0, 0.05)
    return m


def test_export_round_trip_gives_the_same_logits(dirs, tmp_path):
    from transformers import InternVLForConditionalGeneration

    from mllm_align.models import load_hf_dir

    m = _trained_lora_model(path=str(dirs['hf']), llm_lora=dict(r=4, lora_alpha=8))
    batch = _batch(m)
    ids, mask = _expanded_ids(m, batch)
    out = m.export_hf(tmp_path / 'export')
    info = json.loads((out / 'mllm_align_export.json').read_text())
    assert info['lora_merged'] == ['llm'] and info['template'] == 'chatml' and info['tiling']['max_num_tiles'] == 4
    hf = InternVLForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        ours = m(batch, mode='tensor')
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=batch['pixel_values']).logits
        again = load_hf_dir(out)(batch, mode='tensor')
    valid = mask.bool()
    torch.testing.assert_close(theirs[valid], ours[valid], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again[valid], ours[valid], rtol=1e-4, atol=1e-4)


def test_remote_export_loads_with_its_own_code_and_gives_the_same_logits(dirs, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModel

    from mllm_align.data.hf_chat_template import chat_template_jinja
    from mllm_align.models import load_hf_dir

    m = _trained_lora_model(path=str(dirs['remote']), trust_remote_code=True, llm_lora=dict(r=4, lora_alpha=8),
                            visual_encoder_lora=dict(r=2, lora_alpha=4))
    batch = _batch(m)
    ids, mask = _expanded_ids(m, batch)
    out = m.export_hf(tmp_path / 'export')
    source_config = json.loads((dirs['remote'] / 'config.json').read_text())
    config = json.loads((out / 'config.json').read_text())
    assert config['auto_map'] == source_config['auto_map'] and config['max_dynamic_patch'] == 4
    for code in dirs['remote'].glob('*.py'):
        assert (out / code.name).read_bytes() == code.read_bytes()
    info = json.loads((out / 'mllm_align_export.json').read_text())
    assert info['lora_merged'] == ['llm', 'visual'] and info['template'] == 'phi3' and info['trust_remote_code']
    assert info['saved'] == ['model', 'tokenizer', 'code'] and info['tiling']['max_num_tiles'] == 4
    stops = [m.tokenizer.convert_tokens_to_ids(t) for t in ('<|end|>', '<|endoftext|>')]
    generation = json.loads((out / 'generation_config.json').read_text())
    assert sorted(generation['eos_token_id']) == sorted(stops) and generation['pad_token_id'] == m.pad_token_id
    assert (out / 'chat_template.jinja').read_text() == chat_template_jinja('phi3', '<image>')  # InternVL's chat()
    with safe_open(str(out / 'model.safetensors'), 'pt') as f:
        keys = set(f.keys())
    assert keys == set(AutoModel.from_pretrained(str(dirs['remote']), trust_remote_code=True).state_dict())
    with pytest.raises(ValueError, match=r"ships its own modelling code.*pass trust_remote_code=True: "
                                         r'load_hf_dir\(path, trust_remote_code=True\)'):
        load_hf_dir(out)
    theirs_model = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    theirs_model.img_context_token_id = m.img_context_token_id  # InternVL's chat() sets it; its forward reads it
    again = load_hf_dir(out, trust_remote_code=True)
    assert again.format == 'remote' and again.image_processor.to_dict() == m.image_processor.to_dict()
    parser = argparse.ArgumentParser()  # the tools' --trust-remote-code: the same permission, for every process
    add_trust_remote_code_argument(parser)
    assert TRUST_REMOTE_CODE_ENV not in os.environ
    try:
        assert parser.parse_args(['--trust-remote-code']).trust_remote_code and os.environ[TRUST_REMOTE_CODE_ENV] == '1'
        assert load_hf_dir(out).format == 'remote'
    finally:
        del os.environ[TRUST_REMOTE_CODE_ENV]
    with torch.no_grad():
        ours = m(batch, mode='tensor')
        theirs = theirs_model(pixel_values=batch['pixel_values'], input_ids=ids, attention_mask=mask).logits
        reloaded = again(batch, mode='tensor')
    valid = mask.bool()
    torch.testing.assert_close(theirs[valid], ours[valid], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reloaded[valid], ours[valid], rtol=1e-4, atol=1e-4)


def test_internvl_hf_dir_loaders_are_registered_by_dotted_path():
    from mllm_align.models import hf_llava  # so load_hf_dir (tools/eval_mir.py) finds them without importing internvl

    for model_type in ('internvl', 'internvl_chat'):
        assert hf_llava._HF_DIR_LOADERS[model_type] == 'mllm_align.models.internvl:load_internvl_dir'
