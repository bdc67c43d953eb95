"""Visual words (mllm_align/align/visual_words.py): the loss, its slots and memory, pif, resize, configs, e2e.

Expected numbers are computed independently in float64 numpy from the definitions
(q = softmax(W x_t), p = softmax(logits_{t-1}), KL(q ‖ p) = Σ q log(q / p)).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mllm_align.align import VisualWords, pseudo_image_features, visual_word_loss, visual_word_slots
from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import LLaVAModel, VisionTower, load_llm

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'projects' / 'visual_words' / 'configs'
VW_TWIN = 'projects/visual_words/configs/pretrain/llava_v15_7b_vw_pretrain_tiny_cpu.py'
PIF_TWIN = 'projects/visual_words/configs/pretrain/llava_v15_7b_vw_pif_pretrain_tiny_cpu.py'
MOCA_CAL_TWIN = 'projects/visual_words/configs/pretrain/llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py'


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_reference(logits, embeds, weight, pairs) -> float:
    """Mean over (b, t) in ``pairs`` of KL(softmax(W x[b, t]) ‖ softmax(logits[b, t - 1])), float64."""
    kls = []
    for b, t in pairs:
        q = _np_softmax(weight @ embeds[b, t])
        p = _np_softmax(logits[b, t - 1])
        kls.append(float(np.sum(q * np.log(q / p))))
    return float(np.mean(kls))


# ----------------------------------------------------------------------------------------------- loss
def test_loss_matches_hand_computed_reference():
    # B=2, L=5, V=4, D=3. Sample 0: image slots 2, 3; sample 1: image slots 0, 1 (slot 0 has no t-1).
    logits = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0], [0.3, 0.3, -0.2, 2.0],
                            [0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 1.0, 1.0]],
                           [[-1.0, 2.0, 0.0, 0.5], [0.2, 0.1, 0.0, -0.3], [1.5, 1.5, 0.0, 0.0],
                            [0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 9.0]]])
    embeds = torch.tensor([[[9.0, 9.0, 9.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [7.0, 7.0, 7.0]],
                           [[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0], [7.0, 7.0, 7.0], [7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]])
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, -0.5, 0.25]])
    image_mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    loss = visual_word_loss(logits, embeds, weight, image_mask)
    # Supervised: (0,2) by logits[0,1], (0,3) by logits[0,2], (1,1) by logits[1,0]; (1,0) skipped.
    expected = _np_reference(logits.double().numpy(), embeds.double().numpy(), weight.double().numpy(),
                             [(0, 2), (0, 3), (1, 1)])
    assert loss.dtype == torch.float32
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    # Chunking does not change the value; float64 inputs are computed in float64.
    for chunk in (1, 2):
        np.testing.assert_allclose(float(visual_word_loss(logits, embeds, weight, image_mask, chunk_size=chunk)),
                                   expected, rtol=1e-6)
    loss64 = visual_word_loss(logits.double(), embeds.double(), weight.double(), image_mask)
    np.testing.assert_allclose(float(loss64), expected, rtol=1e-12)


def test_slot_t_is_predicted_by_logits_at_t_minus_1():
    torch.manual_seed(0)
    B, L, V, D = 2, 6, 7, 4
    embeds = torch.randn(B, L, D)
    weight = torch.randn(V, D)
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[0, 1:4] = True
    image_mask[1, 2:6] = True
    # Logits at t-1 equal the target logits of slot t: p = q, so the loss is exactly zero.
    logits = torch.randn(B, L, V)
    for b, t in image_mask.nonzero().tolist():
        logits[b, t - 1] = weight @ embeds[b, t]
    assert float(visual_word_loss(logits, embeds, weight, image_mask)) == pytest.approx(0.0, abs=1e-6)
    # The same rows placed at t (no shift) give a positive loss.
    shifted = torch.randn(B, L, V)
    for b, t in image_mask.nonzero().tolist():
        shifted[b, t] = weight @ embeds[b, t]
    assert float(visual_word_loss(shifted, embeds, weight, image_mask)) > 0.1


def test_slot_rule_skips_position_zero_and_padding_before_the_slot():
    image_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)  # sample 1 left-padded
    b, t, keep = visual_word_slots(image_mask)
    assert list(zip(b.tolist(), t.tolist(), keep.tolist())) == [(0, 0, False), (0, 1, True), (1, 2, True),
                                                                (1, 3, True)]
    _, _, keep = visual_word_slots(image_mask, attention_mask)
    assert keep.tolist() == [False, True, False, True]


def test_gradients_match_autograd_of_the_plain_formula():
    torch.manual_seed(1)
    B, L, V, D = 2, 7, 11, 5
    logits = torch.randn(B, L, V, dtype=torch.float64, requires_grad=True)
    embeds = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[0, 2:5] = True
    image_mask[1, 0:3] = True
    loss = visual_word_loss(logits, embeds, weight, image_mask, chunk_size=2)
    grads = torch.autograd.grad(loss, (logits, embeds, weight))
    b, t = image_mask.nonzero(as_tuple=True)
    keep = t > 0
    b, t = b[keep], t[keep]
    log_q = torch.log_softmax(embeds[b, t] @ weight.T, -1)
    plain = (log_q.exp() * (log_q - torch.log_softmax(logits[b, t - 1], -1))).sum(-1).mean()
    for got, want in zip(grads, torch.autograd.grad(plain, (logits, embeds, weight))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda lg, e, w: visual_word_loss(lg, e, w, image_mask, chunk_size=2), (logits, embeds, weight),
        fast_mode=True)


def _dense_reference(logits, embeds, weight, image_mask):
    """The reference code's layout: targets scattered into a dense [B, L, V] tensor, KL at all positions, masked."""
    q = torch.softmax(embeds[image_mask] @ weight.T, -1)
    labels = torch.zeros_like(logits)
    labels[image_mask] = q  # (B, L, V)
    log_p = torch.log_softmax(logits[:, :-1], -1)  # (B, L-1, V)
    kl = torch.nn.functional.kl_div(log_p, labels[:, 1:], reduction='none').sum(-1)
    mask = image_mask[:, 1:]
    return (kl * mask).sum() / mask.sum()


class _AllocationRecorder(TorchDispatchMode):
    """Records the size of every tensor an aten op allocates (outputs aliasing no input nor ``base``)."""

    def __init__(self, base: torch.Tensor) -> None:
        super().__init__()
        self.base_ptr = base.untyped_storage().data_ptr()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seen = {self.base_ptr} | {t.untyped_storage().data_ptr()
                                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:  # new storages only (not views, not in-place results)
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append((str(func), t.numel()))
        return out


@pytest.mark.parametrize('logits_grad', [False, True])
def test_no_dense_tensor_besides_the_logits(logits_grad):
    torch.manual_seed(2)
    B, L, V, D, chunk = 2, 96, 512, 8, 4
    logits = torch.randn(B, L, V, requires_grad=logits_grad)
    embeds = torch.randn(B, L, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[:, 3:35] = True  # M = 64 supervised slots
    with _AllocationRecorder(logits) as rec:
        visual_word_loss(logits, embeds, weight, image_mask, chunk_size=chunk).backward()
    dense = [(f, n) for f, n in rec.sizes if n >= B * L * V // 4]
    # The only [B, L, V]-sized tensor is the gradient of the logits (when they need one).
    assert len(dense) == (1 if logits_grad else 0), dense
    # Everything else is at most a chunk of rows × V, or a [V, D] gradient.
    assert max(n for f, n in rec.sizes if n < B * L * V // 4) <= max(chunk * V, V * D)
    # The detector is not blind: the dense formulation trips it several times.
    with _AllocationRecorder(logits) as rec_dense:
        _dense_reference(logits, embeds, weight, image_mask).backward()
    assert sum(n >= B * L * V // 4 for _, n in rec_dense.sizes) >= 3


def test_dense_reference_agrees():
    torch.manual_seed(3)
    B, L, V, D = 2, 9, 13, 4
    logits, embeds, weight = torch.randn(B, L, V), torch.randn(B, L, D), torch.randn(V, D)
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[0, 1:5] = True
    image_mask[1, 3:8] = True
    torch.testing.assert_close(visual_word_loss(logits, embeds, weight, image_mask),
                               _dense_reference(logits, embeds, weight, image_mask))


def test_detach_target_blocks_the_gradient_into_vm_head():
    torch.manual_seed(4)
    B, L, V, D = 1, 6, 9, 4
    logits = torch.randn(B, L, V, requires_grad=True)
    embeds = torch.randn(B, L, D, requires_grad=True)
    image_mask = torch.tensor([[0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    vw = VisualWords(hidden_size=D, vocab_size=V)
    inputs = type('Inputs', (), dict(inputs_embeds=embeds, image_mask=image_mask,
                                     attention_mask=torch.ones(B, L, dtype=torch.bool)))()
    vw.compute_loss(None, inputs, logits)['loss_vm'].backward()
    assert vw.vm_head.weight.grad.abs().sum() > 0 and embeds.grad.abs().sum() > 0
    logits.grad = embeds.grad = vw.vm_head.weight.grad = None
    vw.detach_target = True
    out = vw.compute_loss(None, inputs, logits)
    out['loss_vm'].backward()
    assert vw.vm_head.weight.grad is not None and torch.count_nonzero(vw.vm_head.weight.grad) == 0
    assert embeds.grad is None  # no gradient reaches the features through q
    assert logits.grad.abs().sum() > 0  # the prediction side still learns
    # Pure function: nothing upstream of q gets a gradient.
    w = torch.randn(V, D, requires_grad=True)
    e = embeds.detach().requires_grad_()
    visual_word_loss(logits, e, w, image_mask, detach_target=True).backward()
    assert w.grad is None and e.grad is None


def test_vocabulary_mismatch_is_an_error():
    with pytest.raises(ValueError, match='resize_token_embeddings'):
        visual_word_loss(torch.randn(1, 4, 10), torch.randn(1, 4, 3), torch.randn(9, 3),
                         torch.tensor([[0, 1, 1, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match='vm_head_init'):
        VisualWords(hidden_size=3, vocab_size=5, vm_head_init='zeros')


def test_no_image_slot_gives_a_zero_loss_that_reaches_vm_head():
    vw = VisualWords(hidden_size=3, vocab_size=5)
    logits = torch.randn(2, 4, 5, requires_grad=True)
    inputs = type('Inputs', (), dict(inputs_embeds=torch.randn(2, 4, 3), image_mask=torch.zeros(2, 4, dtype=torch.bool),
                                     attention_mask=torch.ones(2, 4, dtype=torch.bool)))()
    out = vw.compute_loss(None, inputs, logits)
    assert out['loss_vm'].item() == 0.0
    out['loss_vm'].backward()
    assert vw.vm_head.weight.grad is not None  # DDP without find_unused_parameters sees it used


# ------------------------------------------------------------------------------------------------ pif
def _convex_weights(out: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Solve out = w E for w (E has independent rows: V <= D), in float64."""
    sol = torch.linalg.lstsq(embed.double().T, out.double().reshape(-1, out.shape[-1]).T).solution  # (V, R)
    return sol.T  # (R, V)


@pytest.mark.parametrize('shape', [(1, 4), (3, 4)])  # one image / several images of 4 tokens
def test_pif_features_are_convex_combinations_of_token_embeddings(shape):
    torch.manual_seed(5)
    V, D = 6, 10
    feats = torch.randn(*shape, D, dtype=torch.float64)
    weight = torch.randn(V, D, dtype=torch.float64)
    embed = torch.randn(V, D, dtype=torch.float64)
    out = pseudo_image_features(feats, weight, embed, chunk_size=3)  # chunks cross image boundaries
    assert out.shape == feats.shape
    w = _convex_weights(out, embed)
    assert (w > -1e-9).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.softmax(feats.reshape(-1, D) @ weight.T, -1))


@pytest.fixture(scope='module')
def assets(tiny_assets):
    return tiny_assets


def _model(llm: str = 'llama', **vw_kwargs) -> LLaVAModel:
    root = REPO / 'data' / 'tiny'
    return LLaVAModel(llm=dict(type=load_llm, path=str(root / 'llm' / llm)),
                      visual_encoder=dict(type=VisionTower, path=str(root / 'vision' / 'clip')),
                      plugins=dict(visual_words=dict(type=VisualWords, **vw_kwargs)))


def _batch(pixel_seed: int = 0) -> dict:
    # Sample 0: BOS, image, text, image, text; sample 1: an image at position 0 (no BOS), then text, padded.
    ids = torch.tensor([[1, IMG, 5, IMG, 6, 7], [IMG, 8, 9, 10, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    labels = ids.masked_fill((ids == IMG) | ~attention_mask, IGN)
    g = torch.Generator().manual_seed(pixel_seed)
    return dict(input_ids=ids, attention_mask=attention_mask, labels=labels,
                pixel_values=torch.randn(3, 3, 32, 32, generator=g))


def test_pif_in_the_model_multi_image_samples(assets):
    torch.manual_seed(6)
    model = _model(pif=True)
    data = _batch()
    inputs = model.prepare_inputs(data)
    E = model.embed_tokens.weight.detach()
    feats = model.projector(model.visual_encoder(data['pixel_values']))  # (N=3, P=16, D): F before pif
    expected = torch.softmax(feats @ model.visual_words.vm_head.weight.T, -1) @ E
    # Images in batch order: sample 0's two images, then sample 1's.
    torch.testing.assert_close(inputs.inputs_embeds[inputs.image_mask].reshape(3, 16, -1), expected,
                               rtol=1e-5, atol=1e-6)
    # The loss target is q(F), from the features before the replacement (as the reference).
    model.zero_grad()
    logits = model.run_llm(inputs).logits
    loss = model.visual_words.compute_loss(model, inputs, logits)['visual_words/kl']
    ref = visual_word_loss(logits, torch.zeros_like(inputs.inputs_embeds).masked_scatter(
        inputs.image_mask[..., None], feats.reshape(-1, feats.shape[-1])), model.visual_words.vm_head.weight,
        inputs.image_mask, attention_mask=inputs.attention_mask)
    torch.testing.assert_close(loss, ref.detach())


@pytest.fixture(scope='module')
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every LLM family the toolkit supports: LLaMA and Qwen2 from the tiny assets, Mistral and Phi-3 saved here."""
    from transformers import MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM
    root = tmp_path_factory.mktemp('vw_llms')
    common = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**common)).save_pretrained(root / 'mistral')
    Phi3ForCausalLM(Phi3Config(**common)).save_pretrained(root / 'phi3')
    tiny = REPO / 'data' / 'tiny' / 'llm'
    return {'llama': tiny / 'llama', 'qwen2': tiny / 'qwen2', 'mistral': root / 'mistral', 'phi3': root / 'phi3'}


@pytest.mark.parametrize('llm', ['llama', 'qwen2', 'mistral', 'phi3'])
@pytest.mark.parametrize('pif', [False, True])
def test_model_loss_equals_the_pure_function_and_trains_the_head(assets, family_dirs, llm, pif):
    torch.manual_seed(7)
    model = LLaVAModel(llm=dict(type=load_llm, path=str(family_dirs[llm])),
                       visual_encoder=dict(type=VisionTower, path=str(REPO / 'data' / 'tiny' / 'vision' / 'clip')),
                       plugins=dict(visual_words=dict(type=VisualWords, weight=0.5, pif=pif)))
    data = _batch()
    losses = model(data, mode='loss')
    assert {'loss_lm', 'loss_vm', 'visual_words/kl', 'visual_words/target_entropy'} <= set(losses)
    inputs = model.prepare_inputs(data)
    logits = model.run_llm(inputs).logits
    # the targets come from the projected features F (before pif replaces them)
    feats = model.projector(model.visual_encoder(data['pixel_values']))  # (N, P, D)
    targets_at = torch.zeros_like(inputs.inputs_embeds).masked_scatter(inputs.image_mask[..., None],
                                                                       feats.reshape(-1, feats.shape[-1]))
    ref = visual_word_loss(logits, targets_at, model.visual_words.vm_head.weight, inputs.image_mask,
                           attention_mask=inputs.attention_mask)
    torch.testing.assert_close(losses['loss_vm'], 0.5 * ref)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.visual_words.vm_head.weight.grad.abs().sum() > 0
    assert 'visual_words.vm_head.weight' in model.state_dict()


def test_vm_head_init_copies_the_llm_matrix(assets):
    model = _model(vm_head_init='lm_head')
    torch.testing.assert_close(model.visual_words.vm_head.weight, model.llm.get_output_embeddings().weight)
    model = _model(vm_head_init='embed_tokens')
    torch.testing.assert_close(model.visual_words.vm_head.weight, model.embed_tokens.weight)


# --------------------------------------------------------------------------------------------- resize
def test_resize_keeps_old_rows_and_shapes():
    vw = VisualWords(hidden_size=4, vocab_size=6)
    old = vw.vm_head.weight.detach().clone()
    vw.resize(9)
    assert vw.vm_head.weight.shape == (9, 4) and vw.vm_head.out_features == 9 == vw.vocab_size
    torch.testing.assert_close(vw.vm_head.weight[:6], old)
    torch.testing.assert_close(vw.vm_head.weight[6:], old.mean(0).expand(3, 4))
    assert vw.vm_head(torch.randn(2, 4)).shape == (2, 9)
    vw.resize(5)
    torch.testing.assert_close(vw.vm_head.weight, old[:5])


def test_model_resize_token_embeddings_resizes_vm_head(assets):
    model = _model()
    V = model.embed_tokens.weight.shape[0]
    old = model.visual_words.vm_head.weight.detach().clone()
    model.resize_token_embeddings(V + 3)
    assert model.embed_tokens.weight.shape[0] == V + 3 == model.llm.get_output_embeddings().weight.shape[0]
    assert model.visual_words.vm_head.weight.shape[0] == V + 3
    assert model.visual_words.vm_head.weight.requires_grad and not model.embed_tokens.weight.requires_grad
    torch.testing.assert_close(model.visual_words.vm_head.weight[:V], old)
    losses = model(_batch(), mode='loss')
    assert torch.isfinite(losses['loss_vm'])


# -------------------------------------------------------------------------------------------- configs
def test_every_config_loads_and_the_tiny_twins_build(assets):
    from mmengine.config import Config
    from mmengine.registry import MODELS
    configs = sorted(CONFIG_DIR.rglob('*.py'))
    assert len(configs) == 14  # 7 real recipes (one combining MoCa, CAL and visual words) and their twins
    for path in configs:
        cfg = Config.fromfile(str(path))
        assert cfg.model.plugins.visual_words.weight == 1.0
        if path.name.endswith('_tiny_cpu.py'):
            model = MODELS.build(cfg.model)
            assert isinstance(model.visual_words, VisualWords)
            assert model.visual_words.pif == ('_pif_' in path.name)


# ------------------------------------------------------------------------------------------------ e2e
def _run(cmd: list[str], port: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    if port is not None:
        env['PORT'] = str(port)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _train_args(work_dir: Path, iters: int) -> list[str]:
    return ['--work-dir', str(work_dir), '--cfg-options', 'train_cfg.max_epochs=None',
            f'train_cfg.max_iters={iters}', f'default_hooks.checkpoint.interval={iters}',
            'default_hooks.logger.interval=1']


@pytest.mark.slow
def test_tiny_twin_trains_through_dist_sh_on_two_processes(assets, tmp_path, free_port):
    out = _run(['bash', 'tools/dist.sh', 'train', VW_TWIN, '2', *_train_args(tmp_path, 3)], port=free_port)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert 'loss_vm' in out.stdout + out.stderr
    from mllm_align.engine.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(tmp_path / 'iter_3.pth')['state_dict']
    assert 'visual_words.vm_head.weight' in state


@pytest.mark.slow
def test_visual_words_moca_and_cal_train_together(assets, tmp_path):
    out = _run([sys.executable, 'tools/train.py', MOCA_CAL_TWIN, *_train_args(tmp_path, 2)])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert 'loss_vm' in log and 'cal/' in log
    from mllm_align.engine.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(tmp_path / 'iter_2.pth')['state_dict']
    assert {'moca.u', 'moca.v', 'visual_words.vm_head.weight'} <= set(state)


@pytest.mark.slow
def test_visualisation_on_a_tiny_trained_checkpoint(assets, tmp_path):
    train = _run([sys.executable, 'tools/train.py', PIF_TWIN, *_train_args(tmp_path / 'run', 2)])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    image = REPO / 'data' / 'tiny' / 'shapes' / 'images' / 'eval_000000.png'
    viz = _run([sys.executable, 'tools/visualize_visual_words.py', str(image), '--config', PIF_TWIN,
                '--checkpoint', str(tmp_path / 'run' / 'iter_2.pth'), '--out-dir', str(tmp_path / 'viz'),
                '--top-k', '3', '--cell-size', '48'])
    assert viz.returncode == 0, viz.stdout[-3000:] + viz.stderr[-3000:]
    from PIL import Image
    with Image.open(tmp_path / 'viz' / 'eval_000000_visual_words.png') as png:
        assert png.size == (4 * 48, 4 * 48)  # the tiny CLIP's 4 × 4 patch grid
    record = json.loads((tmp_path / 'viz' / 'eval_000000_visual_words.json').read_text())
    assert record['grid'] == 4 and len(record['patches']) == 16
    for patch in record['patches']:
        probs = [t['prob'] for t in patch['topk']]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert patch['topk'][0]['id'] == patch['argmax_id'] and patch['argmax_token']


def test_hf_export_drops_the_training_only_head_and_refuses_pif(assets, tmp_path):
    from mllm_align.models.export import compare_logits, export_llava_to_hf
    torch.manual_seed(8)
    model = _model().eval()
    with torch.no_grad():  # a trained-looking head: the export must not depend on it
        model.visual_words.vm_head.weight.normal_()
    out = export_llava_to_hf(model, tmp_path / 'hf')
    assert compare_logits(model, out) < 1e-5
    from safetensors import safe_open
    keys = [k for f in out.glob('*.safetensors') for k in safe_open(str(f), 'pt').keys()]
    assert keys and not any('vm_head' in k or 'visual_words' in k for k in keys)
    with pytest.raises(ValueError, match='pif=True.*cannot compute'):
        export_llava_to_hf(_model(pif=True).eval(), tmp_path / 'hf_pif')
