"""Qwen2VLModel against transformers' own Qwen2VLForConditionalGeneration on the tiny random Qwen2-VL.

References are computed by HF directly on its own inputs: the ``<|image_pad|>`` ids expanded as its
processor would (P_i = t·h·w / 4 per image), ``pixel_values`` and ``image_grid_thw``. Two images of
different sizes (16 and 15 tokens) share one batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import encode_conversation, llava_collate_fn
from mllm_align.models.qwen2_vl import EXPORT_INFO_NAME, Qwen2VLModel
from mllm_align.testing.runs import assert_bitwise_equal, checkpoints, run, run_env, train_command

TWIN = 'projects/qwen2_vl/configs/finetune/qwen2_vl_2b_instruct_finetune_tiny_cpu.py'
QUESTIONS = ('What is it?', 'Describe the picture in detail.')


@pytest.fixture(scope='module')
def qwen_dir(tiny_assets) -> Path:
    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    return build_tiny_qwen2_vl(tiny_assets.root)


@pytest.fixture(scope='module')
def model(qwen_dir) -> Qwen2VLModel:
    torch.manual_seed(0)
    return Qwen2VLModel(path=str(qwen_dir)).eval()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),   # 8×8 patches → 16 tokens
            Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))]   # 6×10 patches → 15 tokens


def _batch(model: Qwen2VLModel, images=None) -> dict:
    images = _images() if images is None else images
    items = []
    for k, (image, question) in enumerate(zip(images, QUESTIONS)):
        turns = [{'from': 'human', 'value': '<image>\n' + question}, {'from': 'gpt', 'value': 'A red circle.'}]
        ids, labels = encode_conversation(turns, model.tokenizer, 'qwen2_vl')
        items.append(dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels), id=f's{k}',
                          **model.process_images([image])))
    return llava_collate_fn(items, pad_token_id=model.pad_token_id)['data']


def _hf_inputs(model: Qwen2VLModel, batch: dict, padding_side: str = 'right') -> tuple[torch.Tensor, torch.Tensor]:
    """HF's own input_ids: each placeholder expanded to P_i × <|image_pad|>, padded on ``padding_side``."""
    grids = iter(batch['image_grid_thw'])
    rows = []
    for ids, mask in zip(batch['input_ids'], batch['attention_mask']):
        row = []
        for t in ids[mask].tolist():
            row += [model.image_token_id] * int(next(grids).prod() // 4) if t == IMAGE_TOKEN_INDEX else [t]
        rows.append(row)
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), model.pad_token_id)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, row in enumerate(rows):
        sl = slice(0, len(row)) if padding_side == 'right' else slice(L - len(row), L)
        ids[b, sl], mask[b, sl] = torch.tensor(row), 1
    return ids, mask


# ------------------------------------------------------------------------------ against HF
def test_images_of_different_sizes_give_their_own_token_counts(model):
    batch = _batch(model)
    assert batch['image_grid_thw'].tolist() == [[1, 8, 8], [1, 6, 10]]
    assert batch['pixel_values'].shape == (64 + 60, 3 * 2 * 4 * 4)  # Σ t·h·w patches of C·T·p·p
    with torch.no_grad():
        feats = model.encode_images(batch['pixel_values'], image_grid_thw=batch['image_grid_thw'])
        ref = model.vlm.get_image_features(batch['pixel_values'], batch['image_grid_thw'])
    assert [tuple(f.shape) for f in feats] == [(16, 64), (15, 64)]
    for ours, theirs in zip(feats, ref):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_logits_and_mrope_positions_equal_hf_forward(model):
    batch = _batch(model)
    hf_ids, hf_mask = _hf_inputs(model, batch)
    with torch.no_grad():
        inputs = model.prepare_inputs(batch)
        logits = model(batch, mode='tensor')
        ref = model.vlm(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=batch['pixel_values'],
                        image_grid_thw=batch['image_grid_thw']).logits
        ref_pos, _ = model.vlm.model.get_rope_index(hf_ids, batch['image_grid_thw'], None, hf_mask)
    valid = hf_mask.bool()
    assert torch.equal(inputs.attention_mask, valid)
    assert torch.equal(inputs.image_mask, hf_ids == model.image_token_id)
    assert inputs.position_ids.shape == (3, 2, hf_ids.shape[1])
    assert torch.equal(inputs.position_ids[:, valid], ref_pos[:, valid])
    # M-RoPE by hand for sample 0: <|vision_start|> at s, then an 8×8 patch grid merged to 4×4 at s+1 + (0, y, x)
    s = int((hf_ids[0] == model.vision_start_token_id).nonzero()[0])
    img = inputs.position_ids[:, 0, s + 1:s + 17]
    assert torch.equal(img[0], torch.full((16,), s + 1))
    assert torch.equal(img[1], s + 1 + torch.arange(4).repeat_interleave(4))
    assert torch.equal(img[2], s + 1 + torch.arange(4).repeat(4))
    assert int(inputs.position_ids[0, 0, s + 17]) == s + 1 + 4  # text continues after max + 1
    torch.testing.assert_close(logits[valid], ref[valid], rtol=1e-5, atol=1e-5)


def test_image_token_grids_are_the_rows_and_columns_of_hf_mrope_positions(model):
    """CoLVA pools masks over ``image_token_grids``: (h, w) must be how HF itself lays the image tokens out."""
    batch = _batch(model)
    grids = model.image_token_grids(batch)
    assert grids == [(4, 4), (3, 5)]  # 8×8 and 6×10 patches, merged 2×2
    hf_ids, hf_mask = _hf_inputs(model, batch)
    with torch.no_grad():
        pos, _ = model.vlm.model.get_rope_index(hf_ids, batch['image_grid_thw'], None, hf_mask)
    for b, (h, w) in enumerate(grids):
        img = pos[:, b, hf_ids[b] == model.image_token_id]  # [3, P_b]: (t, row, column) + offset, in token order
        assert img.shape[1] == h * w
        rows, cols = img[1] - img[1].min(), img[2] - img[2].min()
        assert torch.equal(rows, torch.arange(h).repeat_interleave(w)) and torch.equal(cols, torch.arange(w).repeat(h))
    video = dict(batch, image_grid_thw=torch.tensor([[2, 8, 8]]))
    with pytest.raises(ValueError, match='t = 2'):
        model.image_token_grids(video)


def test_loss_matches_cross_entropy_and_keeps_only_supervised_logits(model):
    batch = _batch(model)
    hf_ids, hf_mask = _hf_inputs(model, batch)
    inputs = model.prepare_inputs(batch)
    with torch.no_grad():
        loss = model(batch, mode='loss')['loss_lm']
        logits = model.vlm(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=batch['pixel_values'],
                           image_grid_thw=batch['image_grid_thw']).logits
    labels = inputs.labels
    assert (labels[inputs.image_mask] == IGNORE_INDEX).all()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                            ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_generate_equals_hf_generate(model):
    batch = _batch(model)
    hf_ids, hf_mask = _hf_inputs(model, batch, padding_side='left')
    eos = model.tokenizer.convert_tokens_to_ids('<|im_end|>')
    inputs = model.prepare_inputs(batch, padding_side='left')
    ours = model.generate_ids(inputs, batch, [eos], max_new_tokens=6)
    ref = model.vlm.generate(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=batch['pixel_values'],
                             image_grid_thw=batch['image_grid_thw'], max_new_tokens=6, do_sample=False,
                             eos_token_id=[eos], pad_token_id=model.pad_token_id)
    assert torch.equal(ours, ref[:, hf_ids.shape[1]:])
    from mllm_align.data.templates import get_template
    stops = get_template('qwen2_vl').stop_token_ids(model.tokenizer)
    expected = model.generate_ids(inputs, batch, stops, model.max_new_tokens).tolist()
    assert [o['token_ids'] for o in model(batch, mode='predict')] == expected


# ------------------------------------------------------------------------------ what trains
def _trainable(m: Qwen2VLModel) -> set[str]:
    parts = set()
    for name, p in m.named_parameters():
        if p.requires_grad:
            parts.add('lora' if 'lora_' in name else 'merger' if '.merger.' in name else
                      'visual' if '.visual.' in name else 'llm')
    return parts


def test_frozen_full_and_lora_trainable_sets(qwen_dir):
    assert _trainable(Qwen2VLModel(path=str(qwen_dir))) == {'merger'}
    full = Qwen2VLModel(path=str(qwen_dir), freeze_llm=False, freeze_visual_encoder=False)
    assert _trainable(full) == {'llm', 'merger', 'visual'}
    assert all(p.requires_grad for p in full.vlm.parameters())
    lora = Qwen2VLModel(path=str(qwen_dir), llm_lora=dict(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj']),
                        visual_encoder_lora=dict(r=2, lora_alpha=4))
    assert _trainable(lora) == {'lora', 'merger'}
    names = {n for n, p in lora.named_parameters() if p.requires_grad and 'lora_' in n}
    assert any('.language_model.layers.0.self_attn.q_proj.lora_A' in n for n in names)
    assert not any('k_proj' in n or 'mlp' in n and 'language_model' in n for n in names)
    assert any('.visual.blocks.1.attn.qkv.lora_A' in n for n in names)
    assert not any('merger' in n for n in names)  # vision LoRA stays in the blocks
    assert set(lora.state_dict()) == {n for n, p in lora.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize('key, match', [
    ('projector', r'model\.projector is a LLaVAModel setting.*merger'),
    ('visual_encoder', r'model\.visual_encoder is a LLaVAModel setting'),
    ('moca', r'plugins=dict\(moca='),
    ('projecter', r"Unknown Qwen2VLModel setting\(s\) \['projecter'\]"),
])
def test_llava_only_or_unknown_keys_fail_at_build_naming_the_key(qwen_dir, key, match):
    with pytest.raises(ValueError, match=match):
        Qwen2VLModel(path=str(qwen_dir), **{key: dict(type='mlp2x_gelu')})


def test_lora_targets_that_match_nothing_name_the_key(qwen_dir):
    with pytest.raises(ValueError, match=r"llm_lora\.target_modules = \['fc1'\].*\['down_proj'.*'v_proj'\]"):
        Qwen2VLModel(path=str(qwen_dir), llm_lora=dict(r=4, target_modules=['fc1']))  # a vision layer name
    with pytest.raises(ValueError, match=r"visual_encoder_lora\.target_modules = \['q_proj'\].*\['fc1', 'fc2', 'proj'"):
        Qwen2VLModel(path=str(qwen_dir), visual_encoder_lora=dict(r=4, target_modules=['q_proj']))


def test_placeholder_image_count_mismatch_names_samples_and_counts(model):
    batch = _batch(model)
    one_grid = dict(batch, image_grid_thw=batch['image_grid_thw'][:1], pixel_values=batch['pixel_values'][:64])
    with pytest.raises(ValueError, match=r"2 image placeholders \(sample 's0': 1, sample 's1': 1\) but 1 images"):
        model.prepare_inputs(one_grid)
    with pytest.raises(ValueError, match=r'describes 124 patches'):
        model.prepare_inputs(dict(batch, pixel_values=batch['pixel_values'][:100]))
    ids = batch['input_ids'].clone()
    ids[ids == model.vision_start_token_id] = model.tokenizer.convert_tokens_to_ids('<|im_start|>')
    with pytest.raises(ValueError, match=r"sample 's0': image placeholder at token \d+ does not follow "
                                         r"<\|vision_start\|>.*template='qwen2_vl'"):
        model.prepare_inputs(dict(batch, input_ids=ids))


# ------------------------------------------------------------------------------ plug-ins
def test_moca_cal_and_visual_words_attach_and_train(qwen_dir):
    from mllm_align.align.cal import CAL
    from mllm_align.align.moca import MoCa
    from mllm_align.align.visual_words import VisualWords

    torch.manual_seed(0)
    m = Qwen2VLModel(path=str(qwen_dir), plugins=dict(moca=dict(type=MoCa), cal=dict(type=CAL),
                                                      visual_words=dict(type=VisualWords)))
    assert list(m.plugins) == ['moca', 'cal', 'visual_words']
    with torch.no_grad():
        m.moca.u.add_(0.1 * torch.randn_like(m.moca.u))  # away from the identity, so MoCa changes the logits
    batch = _batch(m)
    losses = m(batch, mode='loss')
    assert {'loss_lm', 'loss_vm'} <= set(losses)
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    assert torch.isfinite(total)
    total.backward()
    for name in ('moca.u', 'moca.v'):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    merger_grad = m.vlm.model.visual.merger.mlp[0].weight.grad
    assert merger_grad is not None and merger_grad.abs().sum() > 0


# ------------------------------------------------------------------------------ export
def test_export_round_trip_gives_the_same_logits(qwen_dir, tmp_path):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from mllm_align.align.moca import MoCa

    torch.manual_seed(0)
    m = Qwen2VLModel(path=str(qwen_dir), llm_lora=dict(r=4, lora_alpha=8),
                     visual_encoder_lora=dict(r=2, lora_alpha=4), plugins=dict(moca=dict(type=MoCa))).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if 'lora_B' in name:
                p.normal_(0, 0.05)  # LoRA B starts at 0: make the merge matter
    batch = _batch(m)
    hf_ids, hf_mask = _hf_inputs(m, batch)
    out = m.export_hf(tmp_path / 'export')
    info = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert info['template'] == 'qwen2_vl' and info['lora_merged'] == ['llm', 'visual']
    assert [p['name'] for p in info['plugins']] == ['moca'] and info['plugins'][0]['class'].endswith('MoCa')
    assert all((out / f).is_file() for p in info['plugins'] for f in p['files'])
    hf = Qwen2VLForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        m.notify_plugins(m.prepare_inputs(batch))  # MoCa is the identity at init: plain logits compare
        ours = m(batch, mode='tensor')
        theirs = hf(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=batch['pixel_values'],
                    image_grid_thw=batch['image_grid_thw']).logits
    valid = hf_mask.bool()
    torch.testing.assert_close(theirs[valid], ours[valid], rtol=1e-4, atol=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': QUESTIONS[0]}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert '<|vision_start|><|image_pad|><|vision_end|>\nWhat is it?<|im_end|>' in prompt
    with pytest.raises(FileExistsError, match='not empty'):
        m.export_hf(out)
    # the HF-directory loader (MIR, evaluation) rebuilds it with MoCa re-attached
    from mllm_align.models import load_hf_dir
    loaded = load_hf_dir(out)
    assert isinstance(loaded, Qwen2VLModel) and list(loaded.plugins) == ['moca'] and loaded.template == 'qwen2_vl'
    with torch.no_grad():
        again = loaded(batch, mode='tensor')
    torch.testing.assert_close(again[valid], ours[valid], rtol=1e-4, atol=1e-4)


def test_eval_mir_scores_a_qwen2_vl_export_as_the_source_model(qwen_dir, tmp_path):
    """tools/eval_mir.py on an exported Qwen2-VL directory (MoCa re-attached) gives the MIR of the model that
    was exported, computed in-process with the same probe."""
    import importlib.util

    from mllm_align.align.moca import MoCa
    from mllm_align.data.mir_probe import build_mir_probe
    from mllm_align.models.hidden_states import compute_model_mir

    torch.manual_seed(0)
    m = Qwen2VLModel(path=str(qwen_dir), plugins=dict(moca=dict(type=MoCa))).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking MoCa, so a lost calibration would show
        m.moca.u.add_(torch.randn(m.moca.u.shape, generator=gen) * 0.3)
        m.moca.v.add_(torch.randn(m.moca.v.shape, generator=gen) * 0.3)
    out = m.export_hf(tmp_path / 'export')
    repo = Path(__file__).resolve().parents[2]
    images = repo / 'data' / 'tiny' / 'shapes' / 'pretrain.json'
    spec = importlib.util.spec_from_file_location('eval_mir_tool', repo / 'tools' / 'eval_mir.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(out), '--images', str(images), '--eval-num', '4', '--out', str(tmp_path / 'mir'),
                      '--no-plots', '--no-progress']) == 0
    scored = json.loads((tmp_path / 'mir' / 'mir.json').read_text())
    (record,) = scored['results']
    probe = build_mir_probe(images, eval_num=4, image_processor=m.image_processor)
    expected = compute_model_mir(m, probe)
    assert record['mir'] == pytest.approx(expected.mir, rel=1e-4)
    plain = Qwen2VLModel(path=str(qwen_dir)).eval()  # control: without MoCa the score differs
    assert compute_model_mir(plain, probe).mir != pytest.approx(expected.mir, rel=1e-3)


# ------------------------------------------------------------------------------ e2e: train, kill, resume
@pytest.mark.slow
def test_tiny_twin_trains_is_killed_and_resumes_bitwise(qwen_dir, tmp_path):
    # Killed during iteration 3: iter_2.pth is committed by then (rank 0 writes it before the all-reduce of
    # iteration 3 that rank 1 waits on). Killing right after iteration 2 would race rank 0's write.
    iters, interval, at = 4, 2, 3
    ref, work = tmp_path / 'ref', tmp_path / 'run'
    code, out = run(train_command(ref, 2, iters, interval, config=TWIN), tmp_path / 'ref.log', run_env())
    assert code == 0, out[-4000:]
    code, out = run(train_command(work, 2, iters, interval, config=TWIN), tmp_path / 'crash.log',
                    run_env(MLLM_ALIGN_CRASH_AT_ITER=str(at)))
    assert code != 0 and f'iter_{iters}.pth' not in checkpoints(work), out[-2000:]
    assert 'iter_2.pth' in checkpoints(work)
    code, out = run(train_command(work, 2, iters, interval, '--resume', config=TWIN), tmp_path / 'resume.log',
                    run_env())
    assert code == 0, out[-4000:]
    from mllm_align.engine.checkpoint import load_checkpoint_file
    a, b = load_checkpoint_file(ref / f'iter_{iters}.pth'), load_checkpoint_file(work / f'iter_{iters}.pth')
    assert any('merger' in k for k in a['state_dict']) and any('lora_' in k for k in a['state_dict'])
    assert_bitwise_equal(a['state_dict'], b['state_dict'], 'weights')
    assert_bitwise_equal(a['optimizer']['state'], b['optimizer']['state'], 'optimizer')
