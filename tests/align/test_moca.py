"""MoCa (mllm_align/align/moca.py) on tiny random HF LLMs loaded with from_pretrained.

LLaMA and Qwen2 come from the tiny assets (data/tiny); Mistral and Phi-3 are built here with
save_pretrained. Expected values are structural (exact identity, exact zeros, causality) or
recomputed independently (no-cache greedy decoding, fp32 formula, an uninterrupted run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM

from mllm_align.align import MoCa
from mllm_align.align.moca import (
    MOCA_CONFIG_NAME,
    MOCA_WEIGHTS_NAME,
    attach_moca_to_hf,
    find_decoder_layers,
    load_moca,
    save_moca_for_hf,
)
from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.testing.net import free_port as find_free_port

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_TINY = 'projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain_tiny_cpu.py'
FINETUNE_TINY = 'projects/moca/configs/finetune/llava_v15_7b_moca_finetune_tiny_cpu.py'
PRETRAIN_7B = 'projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain.py'
FINETUNE_7B = 'projects/moca/configs/finetune/llava_v15_7b_moca_finetune.py'
FAMILIES = ['llama', 'qwen2', 'mistral', 'phi3']
L, FIRST_IMG, LAST_IMG = 12, 3, 8  # sequence length; vision tokens at positions 3..8


@pytest.fixture(scope='module')
def llm_dirs(tiny_assets, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('moca_llms')
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    MistralForCausalLM(MistralConfig(**common)).save_pretrained(root / 'mistral')
    Phi3ForCausalLM(Phi3Config(**common)).save_pretrained(root / 'phi3')
    tiny = REPO / 'data' / 'tiny' / 'llm'
    return {'llama': tiny / 'llama', 'qwen2': tiny / 'qwen2', 'mistral': root / 'mistral', 'phi3': root / 'phi3'}


def _llm(path: Path, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _moca(llm, perturb: bool = False, seed: int = 0) -> MoCa:
    moca = MoCa(llm.config.num_hidden_layers, llm.config.hidden_size).attach(llm)
    if perturb:  # trained-looking u, v so that the tests can fail
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            moca.u.add_(torch.randn(moca.u.shape, generator=gen) * 0.3)
            moca.v.add_(torch.randn(moca.v.shape, generator=gen) * 0.3)
    return moca


def _inputs(vocab: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, L), generator=gen)
    mask = torch.zeros(batch, L, dtype=torch.bool)
    mask[:, FIRST_IMG:LAST_IMG + 1] = True
    mask[-1, LAST_IMG] = False  # samples need not share the same image span
    return ids, mask


def _run(llm, ids: torch.Tensor, **kwargs):
    with torch.no_grad():
        return llm(input_ids=ids, output_hidden_states=True, use_cache=False, **kwargs)


# ---------------------------------------------------------------------------------------- identity & causality
@pytest.mark.parametrize('family', FAMILIES)
def test_identity_at_init_then_changes_only_from_first_vision_position(llm_dirs, family):
    llm = _llm(llm_dirs[family])
    ids, mask = _inputs(llm.config.vocab_size)
    plain = _run(llm, ids)

    moca = _moca(llm)
    assert len(find_decoder_layers(llm)) == llm.config.num_hidden_layers
    moca.set_image_mask(mask)
    at_init = _run(llm, ids)
    assert torch.equal(at_init.logits, plain.logits)
    assert len(at_init.hidden_states) == llm.config.num_hidden_layers + 1
    assert all(torch.equal(a, b) for a, b in zip(at_init.hidden_states, plain.hidden_states))

    with torch.no_grad():
        moca.u.add_(torch.randn(moca.u.shape) * 0.3)
        moca.v.add_(torch.randn(moca.v.shape) * 0.3)
    calibrated = _run(llm, ids)
    # Causal: text before the image is untouched (bitwise); every later position changes.
    assert torch.equal(calibrated.logits[:, :FIRST_IMG], plain.logits[:, :FIRST_IMG])
    for a, b in zip(calibrated.hidden_states, plain.hidden_states):
        assert torch.equal(a[:, :FIRST_IMG], b[:, :FIRST_IMG])
    diff = (calibrated.logits - plain.logits).abs().amax(-1)  # (B, L)
    assert (diff[:, FIRST_IMG:] > 0).all()
    # The hidden states transformers reports are the calibrated ones the next layer sees.
    layer0 = moca.calibrate(plain.hidden_states[1], 0, mask)
    assert torch.equal(calibrated.hidden_states[1], layer0)
    assert not torch.equal(layer0, plain.hidden_states[1])

    wrapper = type(find_decoder_layers(llm)[0].forward)
    moca.detach()  # restores the layers
    assert not any(isinstance(layer.forward, wrapper) for layer in find_decoder_layers(llm))
    assert torch.equal(_run(llm, ids).logits, plain.logits)


def test_gradients_reach_u_v_only_through_vision_positions(llm_dirs):
    llm = _llm(llm_dirs['llama'])
    llm.requires_grad_(False)
    moca = _moca(llm, perturb=True)
    ids, mask = _inputs(llm.config.vocab_size)

    def grads(image_mask, positions=slice(None)):
        moca.zero_grad(set_to_none=True)
        moca.set_image_mask(image_mask)
        llm(input_ids=ids, use_cache=False).logits[:, positions].float().pow(2).mean().backward()
        return moca.u.grad, moca.v.grad

    # Text-only sequences: u, v are in the graph (DDP needs that) but get exactly zero gradient.
    gu, gv = grads(torch.zeros_like(mask))
    assert gu is not None and gv is not None and not gu.any() and not gv.any()
    # A loss on the text before the image: zero too (causal).
    gu, gv = grads(mask, slice(0, FIRST_IMG))
    assert not gu.any() and not gv.any()
    # With the image in the loss: every layer's u and v get a gradient.
    gu, gv = grads(mask)
    assert (gu.abs().sum(-1) > 0).all() and (gv.abs().sum(-1) > 0).all()


@pytest.mark.parametrize('inplace', [True, False])
def test_affine_backward_matches_numerical_gradients(inplace):
    from mllm_align.align.moca import _VisionAffine
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([1, 2, 3, 6, 7])  # sample 0 positions 1..3, sample 1 positions 1..2
    # h * 1: a fresh non-leaf, as a decoder layer's output is (the in-place path overwrites it).
    assert torch.autograd.gradcheck(lambda h, u, v: _VisionAffine.apply(h * 1, u, v, rows, inplace), (h, u, v))
    out = _VisionAffine.apply(h * 1, u, v, rows, inplace)
    expected = h.detach().clone().view(-1, 3)
    expected[rows] = expected[rows] * u.detach() + v.detach()
    torch.testing.assert_close(out.detach(), expected.view(2, 5, 3))  # (addcmul may fuse: not bitwise)


# ---------------------------------------------------------------------------------------- skip rules
def test_decode_steps_skipped_generate_matches_no_cache_recompute(llm_dirs):
    llm = _llm(llm_dirs['qwen2'])
    moca = _moca(llm, perturb=True)
    ids, mask = _inputs(llm.config.vocab_size)
    steps = 5
    moca.set_image_mask(mask)  # the prefill's mask
    with torch.no_grad():
        out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                           min_new_tokens=steps, do_sample=False, use_cache=True, output_logits=True,
                           return_dict_in_generate=True, pad_token_id=0)
    # Without a cache the whole generated sequence reruns at once; new tokens are text (mask False).
    assert out.sequences.shape == (2, L + steps)
    moca.set_image_mask(torch.cat([mask, torch.zeros(2, steps - 1, dtype=torch.bool)], 1))
    with torch.no_grad():
        logits = llm(input_ids=out.sequences[:, :-1], use_cache=False).logits[:, L - 1:]  # (B, steps, V)
    torch.testing.assert_close(torch.stack(out.logits, 1), logits, rtol=1e-5, atol=1e-5)

    # A 1-token step is never modified, whatever mask is set.
    moca.set_image_mask(torch.ones(2, 1, dtype=torch.bool))
    one = _run(llm, ids[:, :1]).logits
    moca.detach()
    assert torch.equal(one, _run(llm, ids[:, :1]).logits)


def test_no_mask_passes_through_and_mismatched_mask_raises(llm_dirs):
    llm = _llm(llm_dirs['llama'])
    ids, mask = _inputs(llm.config.vocab_size)
    plain = _run(llm, ids).logits
    moca = _moca(llm, perturb=True)
    assert torch.equal(_run(llm, ids).logits, plain)  # no mask set: skipped
    moca.set_image_mask(mask[:, :7])
    with pytest.raises(ValueError, match=r'\(2, 7\).*\(2, 12\)'):
        _run(llm, ids)
    # use_image_mask restores the previous mask after an extra pass.
    moca.set_image_mask(mask)
    with moca.use_image_mask(None):
        assert torch.equal(_run(llm, ids).logits, plain)
    assert moca.image_mask is not None and torch.equal(moca.image_mask, mask)


def test_attach_errors(llm_dirs):
    llm = _llm(llm_dirs['llama'])
    with pytest.raises(ValueError, match='num_layers=5 but LlamaForCausalLM has 2'):
        MoCa(5, llm.config.hidden_size).attach(llm)
    with pytest.raises(ValueError, match='hidden_size=8'):
        MoCa(llm.config.num_hidden_layers, 8).attach(llm)
    moca = _moca(llm)
    with pytest.raises(RuntimeError, match='already attached'):
        moca.attach(llm)
    with pytest.raises(ValueError, match='Cannot find the decoder layers'):
        find_decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='init_std'):
        MoCa(2, 4, init_std=-1.0)
    noisy = MoCa(2, 4, init_std=0.1)
    assert not torch.equal(noisy.u, torch.ones(2, 4)) and noisy.u.dtype == torch.float32


def test_other_errors(llm_dirs, tmp_path):
    llm = _llm(llm_dirs['llama'])
    moca = _moca(llm)
    with pytest.raises(ValueError, match=r'must be \[B, L\]'):
        moca.set_image_mask(torch.zeros(2, 3, 1, dtype=torch.bool))
    moca.set_image_mask(torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match='decoder layer 1 to return a \\[B, L, D\\] tensor'):
        moca.calibrate_output(torch.zeros(4, 8), 1)
    layer = find_decoder_layers(llm)[0]
    layer.forward = lambda *a, **k: None  # someone wrapped the layer again after MoCa
    with pytest.raises(RuntimeError, match='could not unwrap 1 decoder layer'):
        moca.detach()
    with pytest.raises(FileNotFoundError, match='No MoCa export'):
        load_moca(tmp_path)
    save_moca_for_hf(MoCa(2, 4), tmp_path, image_token_id=7)
    with pytest.raises(TypeError, match='expects a transformers LlavaForConditionalGeneration'):
        attach_moca_to_hf(llm, tmp_path)
    (tmp_path / MOCA_CONFIG_NAME).write_text(json.dumps({'format': 'other'}))
    with pytest.raises(ValueError, match='format'):
        load_moca(tmp_path)


def test_fp32_compute_in_bf16_model(llm_dirs):
    llm = _llm(llm_dirs['llama'], dtype=torch.bfloat16)
    moca = _moca(llm)
    assert moca.u.dtype == moca.v.dtype == torch.float32
    scale = 1.0035  # rounds to exactly 1 in bf16: a bf16 computation would change nothing
    assert torch.tensor(scale).to(torch.bfloat16).item() == 1.0
    with torch.no_grad():
        moca.u.fill_(scale)
    ids, mask = _inputs(llm.config.vocab_size)
    h = torch.randn(2, L, llm.config.hidden_size).to(torch.bfloat16)
    out = moca.calibrate(h, 0, mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.where(mask[..., None], (h.float() * scale).to(torch.bfloat16), h))
    assert not torch.equal(out, h)
    moca.set_image_mask(mask)
    logits = llm(input_ids=ids, use_cache=False).logits
    assert logits.dtype == torch.bfloat16
    logits.float().pow(2).mean().backward()
    assert moca.u.grad.dtype == torch.float32 and moca.u.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- with LLaVAModel
def _llava(tiny_assets, **kwargs):
    from mllm_align.models import LLaVAModel, VisionTower, load_llm
    root = REPO / 'data' / 'tiny'
    torch.manual_seed(0)
    return LLaVAModel(llm=dict(type=load_llm, path=str(root / 'llm' / 'llama'), attn_implementation='eager'),
                      visual_encoder=dict(type=VisionTower, path=str(root / 'vision' / 'clip')),
                      plugins=dict(moca=dict(type=MoCa)), **kwargs)


def _batch() -> dict:
    gen = torch.Generator().manual_seed(2)
    return dict(input_ids=torch.tensor([[1, 5, IMG, 6, 7, 8], [1, IMG, 9, 10, 0, 0]]),
                attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool(),
                labels=torch.tensor([[IGN, IGN, IGN, 6, 7, 8], [IGN, IGN, 9, 10, IGN, IGN]]),
                pixel_values=torch.randn(2, 3, 32, 32, generator=gen))


def test_lora_and_gradient_checkpointing(tiny_assets):
    model = _llava(tiny_assets, llm_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0), gradient_checkpointing=True)
    with torch.no_grad():
        model.moca.u.add_(torch.randn(model.moca.u.shape) * 0.3)
        model.moca.v.add_(torch.randn(model.moca.v.shape) * 0.3)
    assert {'moca.u', 'moca.v'} <= set(model.state_dict())  # trainable beside projector and LoRA
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        model(_batch(), mode='loss')['loss_lm'].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_ckpt = step()
    assert with_ckpt['moca.u'].abs().sum() > 0 and with_ckpt['moca.v'].abs().sum() > 0
    assert any('lora_B' in n for n in with_ckpt)
    model.llm.gradient_checkpointing_disable()
    without = step()  # layers recomputed in backward saw the same mask: same gradients
    assert with_ckpt.keys() == without.keys()
    for name in with_ckpt:
        torch.testing.assert_close(with_ckpt[name], without[name], rtol=1e-5, atol=1e-6)


def test_optimizer_excludes_moca_from_weight_decay(tiny_assets):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS

    for config, llm_trains in [(PRETRAIN_TINY, False), (FINETUNE_TINY, True)]:
        cfg = Config.fromfile(REPO / config)
        cfg.model.llm.path = str(REPO / cfg.model.llm.path)
        cfg.model.visual_encoder.path = str(REPO / cfg.model.visual_encoder.path)
        cfg.model.tokenizer.path = str(REPO / cfg.model.tokenizer.path)
        cfg.model.gradient_checkpointing = False
        model = MODELS.build(cfg.model)
        cfg.optim_wrapper.optimizer.weight_decay = 0.1  # the recipes use 0; any decay must skip MoCa
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        decay = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
        names = dict(model.named_parameters())
        assert decay[id(names['moca.u'])] == decay[id(names['moca.v'])] == 0.0
        assert decay[id(names['projector.0.weight'])] == pytest.approx(0.1)
        assert MoCa.no_decay_names() == ['moca.u', 'moca.v']
        assert names['moca.u'].requires_grad and names['projector.0.weight'].requires_grad
        assert names['llm.lm_head.weight'].requires_grad is llm_trains


def test_configs_follow_the_paper():
    from mmengine.config import Config
    pre, sft = Config.fromfile(REPO / PRETRAIN_7B), Config.fromfile(REPO / FINETUNE_7B)
    for cfg in (pre, sft, Config.fromfile(REPO / PRETRAIN_TINY), Config.fromfile(REPO / FINETUNE_TINY)):
        assert cfg.model.plugins.moca.type is MoCa and cfg.model.plugins.moca.init_std == 0.0
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys['moca'].decay_mult == 0.0
    assert pre.model.freeze_llm and pre.optim_wrapper.optimizer.lr == 1e-3
    assert not sft.model.freeze_llm and sft.optim_wrapper.optimizer.lr == 2e-5
    assert sft.model.pretrained_pth == sft.pretrained_pth == 'work_dirs/llava_v15_7b_moca_pretrain/iter_2181.pth'


# ---------------------------------------------------------------------------------------- HF export
def test_export_round_trip_reproduces_logits(tiny_assets, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mllm_align.models import load_tokenizer
    from mllm_align.models.export import EXPORT_INFO_NAME, compare_logits, export_llava_to_hf

    root = REPO / 'data' / 'tiny'
    model = _llava(tiny_assets, tokenizer=dict(type=load_tokenizer, path=str(root / 'llm' / 'llama'))).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained-looking projector and MoCa
        for name, p in model.named_parameters():
            if name.startswith(('projector.', 'moca.')):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    out = export_llava_to_hf(model, tmp_path / 'hf')
    assert (out / MOCA_WEIGHTS_NAME).is_file() and (out / MOCA_CONFIG_NAME).is_file()
    assert json.loads((out / EXPORT_INFO_NAME).read_text())['plugins'] == [
        {'name': 'moca', 'class': 'mllm_align.align.moca.MoCa', 'files': [MOCA_WEIGHTS_NAME, MOCA_CONFIG_NAME]}]
    assert torch.equal(load_moca(out).u, model.moca.u) and torch.equal(load_moca(out).v, model.moca.v)

    assert compare_logits(model, out) < 1e-5  # compare_logits loads the export and attaches MoCa
    hf = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation='eager').eval()
    assert compare_logits(model, out, hf_model=hf) > 1e-3  # without MoCa: different logits
    moca = attach_moca_to_hf(hf, out)
    assert compare_logits(model, out, hf_model=hf) < 1e-5
    # Generation through the HF model: the prefill is calibrated, decode steps skipped.
    ids = torch.tensor([[1] + [hf.config.image_token_id] * hf.config.image_seq_length + [5, 6]])
    pixels = torch.randn(1, 3, 32, 32, generator=gen)
    with torch.no_grad():
        generated = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
        full = hf(input_ids=generated.sequences[:, :-1], pixel_values=pixels, use_cache=False).logits  # no cache
    torch.testing.assert_close(torch.stack(generated.logits, 1), full[:, ids.shape[1] - 1:], rtol=1e-5, atol=1e-5)
    moca.detach()
    assert compare_logits(model, out, hf_model=hf) > 1e-3
    info = json.loads((out / MOCA_CONFIG_NAME).read_text())
    (out / MOCA_CONFIG_NAME).write_text(json.dumps({**info, 'image_token_id': info['image_token_id'] + 1}))
    with pytest.raises(ValueError, match='image_token_id'):
        attach_moca_to_hf(hf, out)


# ---------------------------------------------------------------------------------------- training runs
def _train(work_dir: Path, port: int, *extra: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    env.pop('MLLM_ALIGN_CRASH_AT_ITER', None)
    if crash_at is not None:
        env['MLLM_ALIGN_CRASH_AT_ITER'] = str(crash_at)
    cmd = ['bash', 'tools/dist.sh', 'train', PRETRAIN_TINY, '2', '--work-dir', str(work_dir),
           '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=4',
           'default_hooks.checkpoint.interval=2', 'custom_hooks.2.evaluate_before_train=False', *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_twin_trains_on_two_processes_and_resumes_exactly(tiny_assets, tmp_path, free_port):
    from mllm_align.engine.checkpoint import load_checkpoint_file

    # The uninterrupted run and the run killed after iteration 3 are independent: run them together.
    with ThreadPoolExecutor(2) as pool:
        futures = {'full': pool.submit(_train, tmp_path / 'full', free_port),
                   'crashed': pool.submit(_train, tmp_path / 'resumed', find_free_port(), crash_at=3)}
        results = {k: f.result() for k, f in futures.items()}
    assert results['full'].returncode == 0, results['full'].stdout[-3000:] + results['full'].stderr[-3000:]
    assert results['crashed'].returncode != 0
    assert (tmp_path / 'resumed' / 'iter_2.pth').exists() and not (tmp_path / 'resumed' / 'iter_4.pth').exists()
    resumed = _train(tmp_path / 'resumed', find_free_port(), '--resume')
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    a = load_checkpoint_file(tmp_path / 'full' / 'iter_4.pth')
    b = load_checkpoint_file(tmp_path / 'resumed' / 'iter_4.pth')
    weights = a['state_dict']
    assert {'moca.u', 'moca.v'} <= set(weights) and all(k.startswith(('projector.', 'moca.')) for k in weights)
    assert weights.keys() == b['state_dict'].keys()
    for k in weights:
        assert torch.equal(weights[k], b['state_dict'][k]), k
    for i, state in a['optimizer']['state'].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b['optimizer']['state'][i][k])), (i, k)
    # MoCa trained: it left the identity.
    assert not torch.equal(weights['moca.u'], torch.ones_like(weights['moca.u']))
    assert not torch.equal(weights['moca.v'], torch.zeros_like(weights['moca.v']))

    # The SFT twin starts from it through `pretrained_pth` and trains MoCa with the LLM.
    from mmengine.config import Config
    from mmengine.registry import MODELS
    cfg = Config.fromfile(REPO / FINETUNE_TINY)
    for part in (cfg.model.llm, cfg.model.visual_encoder, cfg.model.tokenizer):
        part.path = str(REPO / part.path)
    cfg.model.pretrained_pth = str(tmp_path / 'full' / 'iter_4.pth')
    sft = MODELS.build(cfg.model).train()
    assert torch.equal(sft.moca.u, weights['moca.u']) and torch.equal(sft.moca.v, weights['moca.v'])
    sft(_batch(), mode='loss')['loss_lm'].backward()  # gradient checkpointing on, as configured
    assert sft.moca.u.grad.abs().sum() > 0 and sft.llm.lm_head.weight.grad is not None
