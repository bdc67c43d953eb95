"""LLaVAModel on tiny random HF models saved with save_pretrained (the real loading path)."""
import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import LLaVAModel, VisionTower, load_llm


@pytest.fixture(scope='module')
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('models')
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(LlamaConfig(**common)).save_pretrained(root / 'llama')
    Qwen2ForCausalLM(Qwen2Config(**common)).save_pretrained(root / 'qwen2')
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=16, patch_size=8)).save_pretrained(root / 'clip')
    SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=16,
                                         patch_size=8)).save_pretrained(root / 'siglip')
    return root


def _model(model_dirs, llm='llama', tower='clip', **kwargs):
    return LLaVAModel(llm=dict(type=load_llm, path=str(model_dirs / llm), attn_implementation='eager'),
                      visual_encoder=dict(type=VisionTower, path=str(model_dirs / tower)), **kwargs)


def _batch():
    torch.manual_seed(1)
    return dict(input_ids=torch.tensor([[1, IMG, 5, 6, 7], [1, 8, 9, 0, 0]]),
                attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool(),
                labels=torch.tensor([[IGN, IGN, IGN, 6, 7], [IGN, IGN, 9, IGN, IGN]]),
                pixel_values=torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize('llm,tower', [('llama', 'clip'), ('qwen2', 'siglip')])
def test_loss_equals_manual_cross_entropy(model_dirs, llm, tower):
    model = _model(model_dirs, llm, tower)
    data = _batch()
    losses = model(data, mode='loss')
    assert set(losses) == {'loss_lm'}
    # Independent computation: run the LLM on hand-spliced embeddings.
    emb = model.llm.get_input_embeddings()
    feats = model.get_image_features(data['pixel_values'])[0]  # (P=4, D)
    seq0 = torch.cat([emb(torch.tensor([1])), feats, emb(torch.tensor([5, 6, 7]))])
    logits0 = model.llm(inputs_embeds=seq0[None]).logits[0]
    logits1 = model.llm(inputs_embeds=emb(torch.tensor([[1, 8, 9]]))).logits[0]
    # Targets: sample 0 predicts 6 (from pos of 5) and 7; sample 1 predicts 9.
    n0 = 1 + 4  # index of token 5
    ce = torch.nn.functional.cross_entropy(
        torch.stack([logits0[n0], logits0[n0 + 1], logits1[1]]), torch.tensor([6, 7, 9]))
    torch.testing.assert_close(losses['loss_lm'], ce, rtol=1e-5, atol=1e-5)


def test_input_batch_is_not_mutated(model_dirs):
    model = _model(model_dirs)
    data = _batch()
    before = {k: v.clone() for k, v in data.items()}
    model(data, mode='loss')
    assert all(torch.equal(before[k], data[k]) for k in data)


def test_state_dict_holds_only_trained_parts_and_round_trips(model_dirs):
    model = _model(model_dirs)
    sd = model.state_dict()
    assert sd and all(k.startswith('projector.') for k in sd)
    other = _model(model_dirs)
    result = other.load_state_dict(sd, strict=True)  # frozen base keys are not reported missing
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in sd.items():
        assert torch.equal(other.state_dict()[k], v)


def test_missing_trainable_key_is_still_reported(model_dirs):
    model = _model(model_dirs)
    sd = model.state_dict()
    sd.pop(next(iter(sd)))
    with pytest.raises(RuntimeError, match='Missing key'):
        model.load_state_dict(sd, strict=True)


def test_lora_on_llm_trains_only_adapters_and_projector(model_dirs):
    from peft import LoraConfig
    model = _model(model_dirs, llm_lora=dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0))
    names = model.trainable_names()
    assert any('lora_A' in n for n in names) and any(n.startswith('projector.') for n in names)
    assert all('lora_' in n or n.startswith('projector.') for n in names)
    loss = model(_batch(), mode='loss')['loss_lm']
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if 'lora_B' in n]
    assert grads and all(g is not None for g in grads)


def test_unfrozen_llm_and_gradient_checkpointing(model_dirs):
    model = _model(model_dirs, freeze_llm=False, gradient_checkpointing=True)
    model.train()
    loss = model(_batch(), mode='loss')['loss_lm']
    loss.backward()
    assert model.llm.get_input_embeddings().weight.grad is not None
    assert any(k.startswith('llm.') for k in model.state_dict())


def test_unknown_mode_lists_valid_modes(model_dirs):
    with pytest.raises(ValueError, match="'loss', 'predict' or 'tensor'"):
        _model(model_dirs)(_batch(), mode='train')


def test_missing_model_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='llm_name_or_path'):
        load_llm(str(tmp_path / 'nope'))


def test_tensor_mode_returns_logits_over_spliced_sequence(model_dirs):
    model = _model(model_dirs)
    logits = model(_batch(), mode='tensor')
    assert logits.shape == (2, 5 - 1 + 4, 64)


def test_vision_tower_prefix_tokens(model_dirs):
    clip = VisionTower(str(model_dirs / 'clip'))
    siglip = VisionTower(str(model_dirs / 'siglip'))
    x = torch.randn(2, 3, 16, 16)
    assert clip(x).shape == (2, 4, 16) and clip.num_prefix_tokens == 1
    assert siglip(x).shape == (2, 4, 16) and siglip.num_prefix_tokens == 0
    assert VisionTower(str(model_dirs / 'clip'), select_feature='cls_patch')(x).shape == (2, 5, 16)
    with pytest.raises(ValueError, match='out of range'):
        VisionTower(str(model_dirs / 'clip'), select_layer=7)


def test_predict_batched_left_padding_equals_one_by_one(tiny_assets):
    from PIL import Image

    from mllm_align.data.collate import llava_collate_fn
    from mllm_align.data.image_processing import process_images
    from mllm_align.data.templates import build_generation_prompt
    from mllm_align.models import load_tokenizer
    model = LLaVAModel(llm=dict(type=load_llm, path=str(tiny_assets.llm_qwen2)),
                       visual_encoder=dict(type=VisionTower, path=str(tiny_assets.vision_clip)),
                       tokenizer=dict(type=load_tokenizer, path=str(tiny_assets.llm_qwen2)),
                       template='qwen2', max_new_tokens=6)
    from mllm_align.models import load_image_processor
    proc = load_image_processor(str(tiny_assets.vision_clip))
    questions = ['What colour is the shape?', 'Where is the shape in this picture, please?']
    items = []
    for i, q in enumerate(questions):
        ids = build_generation_prompt([{'from': 'human', 'value': '<image>\n' + q}], model.tokenizer, 'qwen2')
        img = Image.open(tiny_assets.image_folder / 'images' / f'eval_{i:06d}.png')
        items.append(dict(input_ids=torch.tensor(ids), labels=torch.full((len(ids),), IGN),
                          pixel_values=process_images([img], proc)))
    batched = model(llava_collate_fn(items)['data'], mode='predict')
    single = [model(llava_collate_fn([it])['data'], mode='predict')[0] for it in items]
    assert [b['token_ids'] for b in batched] == [s['token_ids'] for s in single]
    assert all(isinstance(b['prediction'], str) and b['token_ids'] for b in batched)


def test_dinov2_tower_drops_cls(tiny_assets):
    tower = VisionTower(str(tiny_assets.vision_dinov2))
    assert tower.num_prefix_tokens == 1
    assert tower(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)


def _loss_and_grads(model, data):
    model.zero_grad()
    loss = model(data, mode='loss')['loss_lm']
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('lora', [False, True])
def test_kept_logits_path_equals_full_logits(model_dirs, lora):
    """logits_to_keep at supervised positions: same loss and gradients as full [B, L, V] logits."""
    kwargs = dict(llm_lora=dict(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'])) if lora else {}
    torch.manual_seed(0)
    model = _model(model_dirs, **kwargs)
    assert model.supports_logits_to_keep
    data = _batch()
    seen = []
    model.llm.register_forward_hook(lambda m, a, kw, out: seen.append(out.logits.shape), with_kwargs=True)
    fast, fast_grads = _loss_and_grads(model, data)
    model.supports_logits_to_keep = False
    full, full_grads = _loss_and_grads(model, data)
    # positions 5, 6 (sample 0 predicts 6, 7) and 1 (sample 1 predicts 9) of the 8-long spliced batch
    assert seen == [(2, 3, 64), (2, 8, 64)]
    torch.testing.assert_close(fast, full, rtol=1e-6, atol=1e-6)
    assert fast_grads.keys() == full_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-5, atol=1e-7)


def test_causal_lm_loss_against_float64_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, dtype=torch.bfloat16)
    labels = torch.tensor([[IGN, IGN, 3, 4, IGN, IGN], [IGN, 7, IGN, IGN, IGN, 10]])
    terms = [-torch.log_softmax(logits[b, t].double(), -1)[labels[b, t + 1]]
             for b in range(2) for t in range(5) if labels[b, t + 1] != IGN]
    ref = torch.stack(terms).mean()
    from mllm_align.models import causal_lm_loss, supervised_positions
    full = causal_lm_loss(logits, labels)
    positions = supervised_positions(labels)
    assert positions.tolist() == [0, 1, 2, 4]
    kept = causal_lm_loss(logits[:, positions], labels, positions)
    assert full.dtype == torch.float32
    torch.testing.assert_close(full.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kept, full)
    # no supervised token: a zero that still reaches the graph
    empty = torch.full_like(labels, IGN)
    w = torch.ones((), requires_grad=True)
    zero = causal_lm_loss(logits.float() * w, empty, supervised_positions(empty))
    zero.backward()
    assert zero.item() == 0.0 and w.grad is not None
