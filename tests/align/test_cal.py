"""CAL (mllm_align/align/cal.py): token weights and loss by hand, drop == mask, any LLM, train/eval, e2e."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM

from mllm_align.align import CAL, cal_loss, cal_token_weights, cal_token_weights_from_gold
from mllm_align.align.cal import drop_image_tokens, gather_gold_logits
from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import AlignPlugin, LLaVAModel, MultimodalInputs, VisionTower, load_llm, supervised_positions

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / 'projects' / 'cal' / 'configs').glob('*/*.py'))

# ---------------------------------------------------------------- hand-computed example
# Two samples, L = 6, shifted targets t = 0..4 (position t predicts labels[:, t + 1]).
LABELS = torch.tensor([[IGN, IGN, 5, 6, IGN, 7],    # valid targets at t = 1, 2, 4
                       [IGN, 3, 4, 2, IGN, IGN]])   # valid targets at t = 0, 1, 2
DELTA = torch.tensor([[9.0, 0.5, 3.0, 7.0, 4.5],
                      [4.0, 6.0, -1.0, 2.5, 1.5]])
# clamp(Δ, 1, 5):     [[5, 1, 3, 5, 4.5], [4, 5, 1, 2.5, 1.5]]
# 'sample', window 3, valid neighbours only, no zero padding averaged in:
#   s0: t0 ignored → 0; t1 {1,2} (1+3)/2 = 2; t2 {1,2} = 2; t3 ignored → 0; t4 {4} = 4.5
#   s1: t0 {0,1} (4+5)/2 = 4.5; t1 {0,1,2} (4+5+1)/3 = 10/3; t2 {1,2} (5+1)/2 = 3; t3, t4 → 0
EXPECTED_SAMPLE = torch.tensor([[0.0, 2.0, 2.0, 0.0, 4.5],
                                [4.5, 10 / 3, 3.0, 0.0, 0.0]])
# 'flat' (the original): one sequence c = [5, 1, 3, 5, 4.5 | 4, 5, 1, 2.5, 1.5], AvgPool1d(3, padding=1,
# count_include_pad=False), ignored positions included, windows cross the sample boundary:
#   [(5+1)/2, (5+1+3)/3, (1+3+5)/3, (3+5+4.5)/3, (5+4.5+4)/3 | (4.5+4+5)/3, (4+5+1)/3, (5+1+2.5)/3, ...]
#   = [3, 3, 3, 12.5/3, 4.5 | 4.5, 10/3, 8.5/3, 5/3, 2], then 0 at ignored targets.
EXPECTED_FLAT = torch.tensor([[0.0, 3.0, 3.0, 0.0, 4.5],
                              [4.5, 10 / 3, 8.5 / 3, 0.0, 0.0]])


def _logits_with_gold(gold: torch.Tensor, labels: torch.Tensor, vocab: int = 9, seed: int = 0):
    """Random [B, L, V] logits whose gold-token entry (id 0 at ignored targets) at t is gold[:, t]."""
    g = torch.Generator().manual_seed(seed)
    B, L = labels.shape
    logits = torch.randn(B, L, vocab, generator=g)
    ids = labels[:, 1:].masked_fill(labels[:, 1:] == IGN, 0)
    logits[:, :-1].scatter_(-1, ids[..., None], gold[..., None])
    return logits


def _seed_weights(logits_img, logits_noimg, labels):
    """The original code's computation (reference repo @ 633a06c), written out for the comparison."""
    V = logits_img.shape[-1]
    shift_labels = labels[:, 1:].reshape(-1).clone()
    shift_labels[shift_labels == IGN] = 0
    w_img = torch.gather(logits_img[:, :-1].float().reshape(-1, V).clone(), 1, shift_labels[:, None])
    wo_img = torch.gather(logits_noimg[:, :-1].float().reshape(-1, V), 1, shift_labels[:, None])
    sub = torch.clamp(w_img - wo_img, min=1, max=5)
    sub = torch.nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)(sub[:, 0][None, None])[0, 0]
    return sub.reshape(labels.shape[0], -1)


@pytest.mark.parametrize('pooling,expected', [('sample', EXPECTED_SAMPLE), ('flat', EXPECTED_FLAT)])
def test_weights_match_hand_computation(pooling, expected):
    gold_noimg = torch.randn(DELTA.shape)
    w = cal_token_weights_from_gold(gold_noimg + DELTA, gold_noimg, LABELS, pooling=pooling)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-5)
    # The logits-level function gathers the gold token (id 0 at ignored targets) itself.
    logits_noimg = _logits_with_gold(gold_noimg, LABELS, seed=1)
    logits_img = _logits_with_gold(gold_noimg + DELTA, LABELS, seed=2)
    w2 = cal_token_weights(logits_img, logits_noimg, LABELS, pooling=pooling)
    torch.testing.assert_close(w2, expected, rtol=0, atol=1e-5)


def test_flat_pooling_reproduces_the_original_code():
    torch.manual_seed(0)
    labels = torch.tensor([[IGN, IGN, 4, 5, 6, IGN, IGN], [IGN, 7, IGN, 2, 3, 3, 1],
                           [IGN, 1, 2, IGN, IGN, IGN, IGN]])
    logits_img, logits_noimg = torch.randn(3, 7, 11) * 3, torch.randn(3, 7, 11)
    ref = _seed_weights(logits_img, logits_noimg, labels)
    w = cal_token_weights(logits_img, logits_noimg, labels, pooling='flat')
    valid = labels[:, 1:] != IGN
    torch.testing.assert_close(w[valid], ref[valid])
    assert (w[~valid] == 0).all()


def test_sample_pooling_missing_no_image_logit_and_other_windows():
    # Sample 1, t0 has no image-free logit (no text before the image): it contributes nothing and
    # takes the mean of its contributing neighbours: t0 {1} = 5; t1 {1,2} (5+1)/2 = 3; t2 {1,2} = 3.
    gold_noimg = torch.zeros(DELTA.shape)
    has = torch.ones_like(DELTA, dtype=torch.bool)
    has[1, 0] = False
    w = cal_token_weights_from_gold(DELTA, gold_noimg, LABELS, has_noimg=has)
    torch.testing.assert_close(w[1], torch.tensor([5.0, 3.0, 3.0, 0.0, 0.0]))
    # window 1 = no pooling: clamp(Δ, 1, 5) at valid targets.
    w1 = cal_token_weights_from_gold(DELTA, gold_noimg, LABELS, window=1)
    torch.testing.assert_close(w1, torch.tensor([[0, 1, 3, 0, 4.5], [4, 5, 1, 0, 0]]).float())
    # alpha/beta: clamp(Δ, 2, 4) with window 5 on sample 1: c = [4, 4, 2], each mean over all 3 → 10/3.
    w5 = cal_token_weights_from_gold(DELTA, gold_noimg, LABELS, alpha=2, beta=4, window=5)
    torch.testing.assert_close(w5[1], torch.tensor([10 / 3, 10 / 3, 10 / 3, 0, 0]))


@pytest.mark.parametrize('kwargs', [dict(window=2), dict(window=0), dict(alpha=3.0, beta=2.0),
                                    dict(pooling='batch')])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        cal_token_weights_from_gold(DELTA, DELTA, LABELS, **kwargs)
    with pytest.raises(ValueError):
        CAL(**kwargs)
    with pytest.raises(ValueError, match='no_image_pass'):
        CAL(no_image_pass='zero')


def test_loss_matches_hand_computation():
    # B = 1, L = 4, V = 3: targets t0 → id 0, t1 ignored, t2 → id 1.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]],
                          requires_grad=True)
    labels = torch.tensor([[IGN, 0, IGN, 1]])
    weights = torch.tensor([[2.0, 7.0, 0.5]])  # the weight at the ignored target is not used
    ce0 = math.log(3.0)  # logsumexp(0, 0, 0) - 0
    ce2 = math.log(2.0 + math.exp(2.0)) - 2.0  # 0.2395...
    expected = (2.0 * ce0 + 0.5 * ce2) / (2.0 + 0.5)  # 0.92680...
    loss = cal_loss(logits, labels, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0
    # No supervised target: a zero loss that still has a graph.
    empty = cal_loss(logits, torch.full((1, 4), IGN), weights)
    assert empty.item() == 0.0 and empty.requires_grad


# ---------------------------------------------------------------- drop == mask
def _llama(attn: str = 'eager') -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2)  # large enough weights that positions and masks matter
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def _spliced_batch(D: int) -> MultimodalInputs:
    """Sample 0: text, 4 image slots, text; sample 1: 3 image slots first, text, then right padding."""
    torch.manual_seed(3)
    B, L = 2, 11
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[0, 2:6] = True
    image_mask[1, 0:3] = True
    attention_mask = torch.ones(B, L, dtype=torch.bool)
    attention_mask[1, 8:] = False
    position_ids = torch.arange(L)[None].expand(B, -1).clone()
    return MultimodalInputs(torch.randn(B, L, D), attention_mask, position_ids, image_mask)


@pytest.mark.parametrize('mask_kind', ['2d', '4d'])
def test_dropping_image_tokens_equals_masking_them(mask_kind):
    llm = _llama('eager')
    inputs = _spliced_batch(llm.config.hidden_size)
    keep = inputs.attention_mask & ~inputs.image_mask  # (B, L) text keys
    B, L = keep.shape
    if mask_kind == '2d':  # the original's formulation: image keys (and padding) masked for every query
        attn = keep
    else:  # explicit 4-D additive mask: causal, text keys only
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        allowed = causal[None] & keep[:, None, :]  # (B, Lq, Lk)
        attn = torch.zeros(B, 1, L, L).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    with torch.no_grad():
        full = llm(inputs_embeds=inputs.inputs_embeds, attention_mask=attn,
                   position_ids=inputs.position_ids).logits  # (B, L, V)
        compact, dest = drop_image_tokens(inputs)
        dropped = llm(inputs_embeds=compact.inputs_embeds, attention_mask=compact.attention_mask,
                      position_ids=compact.position_ids).logits  # (B, Lc, V)
    assert compact.inputs_embeds.shape[1] == int(keep.sum(1).max()) + 1  # one padding slot (see docstring)
    assert not compact.image_mask.any()
    b, t = keep.nonzero(as_tuple=True)
    torch.testing.assert_close(compact.position_ids[b, dest[b, t]], inputs.position_ids[b, t])
    torch.testing.assert_close(dropped[b, dest[b, t]], full[b, t], rtol=0, atol=1e-5)
    # Controls: the image matters, and so do the kept position ids.
    with torch.no_grad():
        with_image = llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                         position_ids=inputs.position_ids).logits
        renumbered = llm(inputs_embeds=compact.inputs_embeds, attention_mask=compact.attention_mask).logits
    assert (with_image[b, t] - full[b, t]).abs().max() > 0.1
    assert (renumbered[b, dest[b, t]] - full[b, t]).abs().max() > 0.1


def test_drop_pass_with_sdpa_and_batch_of_one():
    """SDPA and a single sample (no padding before the extra slot) give the same text logits."""
    eager, sdpa = _llama('eager'), _llama('sdpa')
    inputs = _spliced_batch(eager.config.hidden_size)
    one = MultimodalInputs(*(x[:1] for x in (inputs.inputs_embeds, inputs.attention_mask,
                                             inputs.position_ids, inputs.image_mask)))
    with torch.no_grad():
        ref = eager(inputs_embeds=one.inputs_embeds, attention_mask=one.attention_mask & ~one.image_mask,
                    position_ids=one.position_ids).logits
        compact, dest = drop_image_tokens(one)
        out = sdpa(inputs_embeds=compact.inputs_embeds, attention_mask=compact.attention_mask,
                   position_ids=compact.position_ids).logits
    t = (~one.image_mask[0]).nonzero()[:, 0]
    torch.testing.assert_close(out[0, dest[0, t]], ref[0, t], rtol=0, atol=1e-5)


def test_drop_keeps_opaque_multi_axis_positions():
    """M-RoPE positions [3, B, L] (Qwen2-VL): each axis is compacted as a 1-D [B, L] would be."""
    inputs = _spliced_batch(8)
    B, L = inputs.attention_mask.shape
    gen = torch.Generator().manual_seed(4)
    pos3 = torch.randint(0, 50, (3, B, L), generator=gen)
    multi = MultimodalInputs(inputs.inputs_embeds, inputs.attention_mask, pos3, inputs.image_mask)
    compact3, dest3 = drop_image_tokens(multi, rows=torch.tensor([0, B - 1]))
    assert compact3.position_ids.shape[0] == 3
    for axis in range(3):
        one = MultimodalInputs(inputs.inputs_embeds, inputs.attention_mask, pos3[axis], inputs.image_mask)
        compact1, dest1 = drop_image_tokens(one, rows=torch.tensor([0, B - 1]))
        assert torch.equal(compact3.position_ids[axis], compact1.position_ids) and torch.equal(dest3, dest1)
        assert torch.equal(compact3.inputs_embeds, compact1.inputs_embeds)


# ---------------------------------------------------------------- CAL inside LLaVAModel
@pytest.fixture(scope='module')
def extra_llms(tmp_path_factory):
    """Tiny Mistral and Phi-3 saved with save_pretrained (LLaMA and Qwen2 come from tiny_assets)."""
    root = tmp_path_factory.mktemp('cal_llms')
    common = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**common)).save_pretrained(root / 'mistral')
    Phi3ForCausalLM(Phi3Config(**common)).save_pretrained(root / 'phi3')
    return root


def _model(llm_path, cal=None, attn='eager', moca=None, **kwargs) -> LLaVAModel:
    torch.manual_seed(0)
    tiny = REPO / 'data' / 'tiny'
    plugins = {} if moca is None else {'moca': moca}
    plugins['cal'] = cal if cal is not None else dict(type=CAL)
    return LLaVAModel(llm=dict(type=load_llm, path=str(llm_path), attn_implementation=attn),
                      visual_encoder=dict(type=VisionTower, path=str(tiny / 'vision' / 'clip')),
                      plugins=plugins, **kwargs)


def _batch(bos: bool = True) -> dict:
    """Image after BOS (sample 0), no image (sample 1, padded), image first without BOS (sample 2)."""
    torch.manual_seed(1)
    b = [1] if bos else [5]
    return dict(
        input_ids=torch.tensor([b + [IMG, 5, 6, 7, 8, 9], b + [8, 9, 10, 11, 0, 0], [IMG, 5, 6, 7, 8, 9, 0]]),
        attention_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 6 + [0]]).bool(),
        labels=torch.tensor([[IGN, IGN, IGN, 6, 7, 8, 9], [IGN, IGN, 9, 10, 11, IGN, IGN],
                             [IGN, 5, 6, 7, 8, 9, IGN]]),
        pixel_values=torch.randn(2, 3, 32, 32))


def _check_drop_equals_mask(model: LLaVAModel) -> None:
    """CAL's dropped pass equals the original's masked pass wherever the predictor is a text token."""
    inputs = model.prepare_inputs(_batch())
    gold_drop, has_drop = CAL(no_image_pass='drop').no_image_gold_logits(model, inputs)
    gold_mask, _ = CAL(no_image_pass='mask').no_image_gold_logits(model, inputs)
    text_pred = inputs.attention_mask[:, :-1] & ~inputs.image_mask[:, :-1]  # predictor t is text
    text_tgt = inputs.attention_mask[:, 1:] & ~inputs.image_mask[:, 1:]
    both = text_pred & text_tgt & inputs.image_mask.any(1, keepdim=True)
    assert both.sum() >= 6 and has_drop[both].all()
    torch.testing.assert_close(gold_drop[both], gold_mask[both], rtol=0, atol=1e-5)
    with torch.no_grad():  # control: the image does change these logits
        gold_img = gather_gold_logits(model.run_llm(inputs).logits, inputs.labels)
    assert (gold_img - gold_drop)[both].abs().max() > 1e-2
    # After the image: the first text token is predicted by the last text token before the image
    # (sample 0: BOS); without text before the image (sample 2) it has no image-free logit.
    first = inputs.image_mask[0].nonzero()[-1, 0]  # last image slot of sample 0 predicts target first+1
    assert has_drop[0, first] and not has_drop[2, inputs.image_mask[2].nonzero()[-1, 0]]


@pytest.mark.parametrize('llm', ['llama', 'qwen2', 'mistral', 'phi3'])
def test_cal_on_every_llm_family(tiny_assets, extra_llms, llm):
    path = extra_llms / llm if llm in ('mistral', 'phi3') else REPO / 'data' / 'tiny' / 'llm' / llm
    model = _model(path)
    _check_drop_equals_mask(model)
    losses = model(_batch(), mode='loss')
    assert set(losses) == {'loss_lm', 'cal/weight_mean', 'cal/delta_mean'}
    assert torch.isfinite(losses['loss_lm']) and losses['loss_lm'].requires_grad
    assert not losses['cal/weight_mean'].requires_grad and losses['cal/weight_mean'] >= 1.0


def test_samples_without_image_get_weight_alpha(tiny_assets):
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama', cal=dict(type=CAL, alpha=1.5))
    inputs = model.prepare_inputs(_batch())
    logits = model.run_llm(inputs).logits
    cal = model.cal
    gold_noimg, has = cal.no_image_gold_logits(model, inputs)
    assert has[1].all()  # sample 1 has no image: Δ = 0 exactly, from the with-image pass itself
    out = cal.compute_loss(model, inputs, logits)
    valid = inputs.labels[1, 1:] != IGN
    # Re-derive the weights of sample 1: clamp(0, 1.5, 5) = 1.5 everywhere.
    gold_img = gather_gold_logits(logits.detach(), inputs.labels)
    gold_noimg[1] = gold_img[1]
    w = cal_token_weights_from_gold(gold_img, gold_noimg, inputs.labels, alpha=1.5, has_noimg=has)
    torch.testing.assert_close(w[1][valid], torch.full((int(valid.sum()),), 1.5))
    torch.testing.assert_close(out['loss_lm'], cal_loss(logits, inputs.labels, w))


def test_eval_mode_gives_the_train_mode_loss(tiny_assets):
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama')
    data = _batch()
    train_losses = model(data, mode='loss')
    model.eval()  # the original crashes here (its no-image logits exist only in training)
    with torch.no_grad():
        eval_losses = model(data, mode='loss')
    for k in train_losses:
        torch.testing.assert_close(eval_losses[k], train_losses[k].detach())


def test_gradient_flows_only_through_the_with_image_pass(tiny_assets):
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama', freeze_llm=False)
    grad_enabled = []
    handle = model.llm.register_forward_pre_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    data = _batch()
    loss = model(data, mode='loss')['loss_lm']
    handle.remove()
    assert grad_enabled == [True, False]  # with-image pass, then the no-grad no-image pass
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    # The same loss with the weights computed separately and held constant gives the same gradient.
    inputs = model.prepare_inputs(data)
    logits = model.run_llm(inputs).logits
    with torch.no_grad():
        weights_loss_free = model.cal.compute_loss(model, inputs, logits.detach())
    gold_noimg, has = model.cal.no_image_gold_logits(model, inputs)
    gold_img = gather_gold_logits(logits.detach(), inputs.labels)
    gold_noimg = torch.where(inputs.image_mask.any(1)[:, None], gold_noimg, gold_img)
    w = cal_token_weights_from_gold(gold_img, gold_noimg, inputs.labels, has_noimg=has)
    ref = cal_loss(logits, inputs.labels, w)
    torch.testing.assert_close(ref.detach(), weights_loss_free['loss_lm'])
    for g, g_ref in zip(grads, torch.autograd.grad(ref, params)):
        torch.testing.assert_close(g, g_ref)
    assert any(g.abs().sum() > 0 for g in grads)


def test_cal_with_lora_on_qwen2(tiny_assets):
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias='none', task_type='CAUSAL_LM')
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'qwen2', llm_lora=lora)
    _check_drop_equals_mask(model)
    loss = model(_batch(bos=False), mode='loss')['loss_lm']
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if 'lora_' in n and p.requires_grad]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert any(g.abs().sum() > 0 for g in lora_grads)


def _ragged_batch(bos: bool = True) -> dict:
    """Five samples of different lengths, right-padded: image after BOS; no image; image first; an image
    but no supervised token; text, image, text (image mid-sequence)."""
    torch.manual_seed(2)
    b = [1] if bos else [5]
    rows = [(b + [IMG, 5, 6, 7, 8, 9], [IGN, IGN, IGN, 6, 7, 8, 9]),
            (b + [8, 9, 10, 11], [IGN, IGN, 9, 10, 11]),
            ([IMG, 5, 6, 7], [IGN, 5, 6, 7]),
            (b + [IMG, 5, 6], [IGN] * 4),
            (b + [12, 13, IMG, 14, 15, 16, 17, 18], [IGN, IGN, IGN, IGN, 14, 15, IGN, 17, 18])]
    L = max(len(ids) for ids, _ in rows)
    pad = lambda x, v: x + [v] * (L - len(x))  # noqa: E731
    return dict(input_ids=torch.tensor([pad(ids, 0) for ids, _ in rows]),
                attention_mask=torch.tensor([pad([1] * len(ids), 0) for ids, _ in rows]).bool(),
                labels=torch.tensor([pad(lab, IGN) for _, lab in rows]),
                pixel_values=torch.randn(4, 3, 32, 32))


def _cal_loss_and_grads(model: LLaVAModel, data: dict) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    losses = model(data, mode='loss')
    losses['loss_lm'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize('llm,setup,cal', [
    ('llama', 'frozen', {}), ('qwen2', 'frozen', {}), ('llama', 'unfrozen', {}), ('qwen2', 'lora', {}),
    ('llama', 'lora', dict(no_image_pass='mask')), ('qwen2', 'frozen', dict(window=5, alpha=0.5)),
    ('mistral', 'frozen', {}), ('phi3', 'frozen', {})])
def test_kept_logits_cal_equals_full_logits_cal(tiny_assets, extra_llms, llm, setup, cal):
    """Both CAL passes on kept logits: the loss, diagnostics and gradients of the full-logits path, and
    the LLM computes [B, P, V] (with image) and [B', P', V] (without) logits."""
    path = extra_llms / llm if llm in ('mistral', 'phi3') else REPO / 'data' / 'tiny' / 'llm' / llm
    kwargs = {'unfrozen': dict(freeze_llm=False), 'frozen': {},
              'lora': dict(llm_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias='none',
                                         task_type='CAUSAL_LM'))}[setup]
    model = _model(path, cal=dict(type=CAL, **cal), **kwargs)
    assert model.supports_logits_to_keep
    data = _ragged_batch(bos=llm != 'qwen2')
    inputs = model.prepare_inputs(data)
    B, L = inputs.labels.shape
    seen = []
    model.llm.register_forward_hook(lambda m, a, out: seen.append(tuple(out.logits.shape)))
    kept, kept_grads = _cal_loss_and_grads(model, data)
    model.supports_logits_to_keep = False
    full, full_grads = _cal_loss_and_grads(model, data)
    positions = supervised_positions(inputs.labels)
    V = seen[-1][-1]
    with_image = int(inputs.image_mask.any(1).sum())
    assert seen[0] == (B, positions.numel(), V) and positions.numel() < L - 1
    if cal.get('no_image_pass') == 'mask':
        assert seen[1] == (B, positions.numel(), V) and seen[3] == (B, L, V)
    else:  # compact: the slots predicting a supervised target in some sample with an image
        Lc = seen[3][1]
        assert seen[1][0] == with_image == seen[3][0] and 0 < seen[1][1] < Lc - 1
    assert seen[2] == (B, L, V) and len(seen) == 4
    assert kept.keys() == full.keys() == {'loss_lm', 'cal/weight_mean', 'cal/delta_mean'}
    for k in kept:
        torch.testing.assert_close(kept[k], full[k], rtol=1e-6, atol=1e-6)
    assert kept['cal/weight_mean'] > cal.get('alpha', 1.0)  # the image matters: not all weights at alpha
    assert kept_grads.keys() == full_grads.keys()
    assert any(n.startswith('projector.') for n in kept_grads)
    if setup != 'frozen':
        assert any(n.startswith('llm.') for n in kept_grads)
    for n in kept_grads:
        torch.testing.assert_close(kept_grads[n], full_grads[n], rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for n, g in kept_grads.items() if n.startswith('llm.') or setup == 'frozen')


def test_kept_logits_cal_pieces_and_flat_pooling(tiny_assets):
    """gather_gold_logits/cal_loss at positions equal the full versions; 'flat' keeps full logits."""
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama')
    inputs = model.prepare_inputs(_ragged_batch())
    labels = inputs.labels
    with torch.no_grad():
        logits = model.run_llm(inputs).logits  # (B, L, V)
    positions = supervised_positions(labels)
    valid = labels[:, 1:] != IGN
    gold = gather_gold_logits(logits, labels)
    gold_kept = gather_gold_logits(logits[:, positions], labels, positions)
    assert (gold_kept[valid] == gold[valid]).all() and (gold_kept[:, ~valid.any(0)] == 0).all()
    w = torch.rand(valid.shape) + 0.5
    torch.testing.assert_close(cal_loss(logits[:, positions], labels, w, positions),
                               cal_loss(logits, labels, w))
    # A batch without any supervised target: a zero loss with a graph, no no-image pass needed.
    none = torch.full_like(labels, IGN)
    empty = torch.zeros(labels.shape[0], 0, logits.shape[-1], requires_grad=True)
    out = cal_loss(empty, none, w, supervised_positions(none))
    assert out.item() == 0.0 and out.requires_grad
    seen = []
    handle = model.llm.register_forward_hook(lambda m, a, out: seen.append(tuple(out.logits.shape)))
    data = _ragged_batch()
    data['labels'][:] = IGN
    out = model(data, mode='loss')
    handle.remove()
    assert out['loss_lm'].item() == 0.0 and out['loss_lm'].requires_grad and seen == [(5, 0, logits.shape[-1])]
    # 'flat' pooling reads every position: no positions, full logits, and positions are rejected.
    flat = CAL(pooling='flat')
    assert flat.logits_positions(inputs, positions) is None
    assert model.cal.logits_positions(inputs, positions) is positions
    with pytest.raises(ValueError, match='flat'):
        flat.compute_loss(model, inputs, logits[:, positions], positions)
    model_flat = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama', cal=dict(type=CAL, pooling='flat'))
    seen = []
    model_flat.llm.register_forward_hook(lambda m, a, out: seen.append(tuple(out.logits.shape)))
    kept = model_flat(_ragged_batch(), mode='loss')
    model_flat.supports_logits_to_keep = False
    full = model_flat(_ragged_batch(), mode='loss')
    assert seen[0] == seen[2] == tuple(logits.shape) and seen[1] == seen[3]
    for k in kept:
        torch.testing.assert_close(kept[k], full[k])


class _FullLogitsPlugin(AlignPlugin):
    """A CAL-style plug-in that replaces the LM loss and asks for every position: it gets full logits."""

    replaces_lm_loss = True

    def logits_positions(self, inputs, lm_positions):
        return None

    def loss(self, model, inputs, logits, positions):
        self.shape = tuple(logits.shape)
        assert positions is None
        return {'loss_lm': logits.float().mean()}


def test_plugin_asking_for_every_position_gets_full_logits(tiny_assets):
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama', cal=dict(type=_FullLogitsPlugin))
    data = _ragged_batch()
    model(data, mode='loss')
    B, L = model.prepare_inputs(data).labels.shape
    assert model.supports_logits_to_keep and model.cal.shape[:2] == (B, L)


class _RecordingPlugin(AlignPlugin):
    """A plug-in that records the image mask of every LLM pass it is told about (MoCa keeps the last one)."""

    def __init__(self) -> None:
        super().__init__()
        self.masks = []

    def before_llm_pass(self, inputs) -> None:
        self.masks.append(inputs.image_mask)


def test_moca_mask_is_restored_after_the_no_image_pass(tiny_assets):
    # CAL never names MoCa: the base tells every plug-in about CAL's extra pass, then the main pass again.
    model = _model(REPO / 'data' / 'tiny' / 'llm' / 'llama', moca=dict(type=_RecordingPlugin))
    model(_batch(), mode='loss')
    with_image, no_image, restored = model.moca.masks
    assert with_image.any() and not no_image.any()
    assert restored is with_image  # activation checkpointing re-runs layers with this mask in backward


# ---------------------------------------------------------------- configs and the e2e run
@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_load_with_cal_on(path):
    cfg = Config.fromfile(str(path))
    assert cfg.model.plugins.cal.type is CAL
    assert (cfg.model.plugins.cal.alpha, cfg.model.plugins.cal.beta, cfg.model.plugins.cal.window) == (1.0, 5.0, 3)
    assert cfg.model.plugins.cal.pooling == 'sample' and cfg.model.plugins.cal.no_image_pass == 'drop'


def test_tiny_finetune_twin_builds_and_steps(tiny_assets):
    from mmengine.registry import MODELS
    cfg = Config.fromfile(str(REPO / 'projects/cal/configs/finetune/llava_v15_7b_cal_finetune_tiny_cpu.py'))
    cwd = os.getcwd()
    os.chdir(REPO)  # the tiny configs name data/tiny/ relative to the repository
    try:
        model = MODELS.build(cfg.model)
    finally:
        os.chdir(cwd)
    losses = model(_batch(), mode='loss')
    losses['loss_lm'].backward()  # gradient checkpointing + CAL (LLM trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.llm.parameters())


@pytest.mark.slow
def test_tiny_cal_twin_trains_with_dist_sh(tiny_assets, tmp_path, free_port):
    env = dict(os.environ, PORT=str(free_port), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    config = 'projects/cal/configs/pretrain/llava_v15_7b_cal_pretrain_tiny_cpu.py'
    cmd = ['bash', 'tools/dist.sh', 'train', config, '2', '--work-dir', str(tmp_path),
           '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=4', 'custom_hooks=[]',
           'default_hooks.logger.interval=1']
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert 'Iter(train) [4/4]' in log and 'cal/weight_mean' in log
    assert (tmp_path / 'iter_4.pth').exists()
