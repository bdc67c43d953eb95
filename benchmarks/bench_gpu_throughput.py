"""Training throughput of LLaVA-1.5-7B-shaped steps on one GPU, with and without each alignment plug-in.

    python benchmarks/bench_gpu_throughput.py --device cuda --shape llava7b --time-limit 270 --json out.json
    python benchmarks/bench_gpu_throughput.py   # no GPU: the tiny shape on CPU (the code path the tests run)

What runs. Nothing is downloaded: the LLM (``LlamaForCausalLM``) and the vision tower (``CLIPVisionModel``) are
built from their HF configs with random weights, directly on the device and in its dtype (bf16 on CUDA, fp32 on
CPU), once; each configuration then wraps them in the project's own :class:`~mllm_align.models.LLaVAModel` +
:class:`~mllm_align.models.VisionTower`, with everything of the recipe's ``model`` but its paths (freezing,
``gradient_checkpointing``, projector, ``plugins``) and the recipe's ``optim_wrapper`` (AdamW, clipping; bf16
``AmpOptimWrapper`` on CUDA, the tiny twins' fp32 ``OptimWrapper`` on CPU). A step is mmengine's
``model.train_step(batch, optim_wrapper)``, the call ``TrainLoop`` makes: forward, loss, backward, clipping,
AdamW step, zero_grad. The recipes (read with ``Config.fromfile``, see :data:`RECIPES`):

* ``pretrain``: ``projects/llava/configs/pretrain/llava_v15_7b_pretrain.py`` and the MoCa, CAL and visual-words
  pre-training recipes built on it: LLM and CLIP frozen, the projector (and the plug-in's parameters) train, the
  gradient runs back through the frozen LLM to the projector; no gradient checkpointing.
* ``sft``: ``projects/llava/configs/finetune/llava_v15_7b_finetune.py`` and its three method recipes: the whole
  LLM and the projector train, CLIP frozen, gradient checkpointing on. ZeRO-3 is left out (one GPU).

Configurations, in this order on each stage: ``baseline`` (no plug-in) then ``moca``, ``cal``, ``visual_words``,
each measured in the same run on the same weights; every figure is also printed as a ratio to the baseline of its
stage. The learning rate is 0: AdamW does all of its arithmetic, but the weights stay as built, so no
configuration trains on another's updates and the order does not matter.

Batches: every sample is exactly ``seq_len`` spliced tokens (2048 for ``llava7b``), one image each (576 image
tokens), no padding. ``pretrain``: ``<s> <image>`` + a caption filling the rest, every caption token supervised.
``sft``: ``<s>`` + prompt + ``<image>`` + text of alternating question (not supervised) and answer (supervised)
spans. Per-GPU batch 8 by default (``--batch-pretrain``, ``--batch-sft``).

Optimizer (printed): torch ``AdamW`` as the recipes build it (foreach), whose states take the parameters' dtype:
bf16 for the LLM, fp32 for projector and plug-ins. Full-LLM SFT holds 6.74 B × (2 weights + 2 gradients + 4 AdamW
states) bytes ≈ 54 GB, plus a transient bf16 copy of one state (≈ 13.5 GB) inside the foreach step and the
activations: well inside a 139 GB H200 without ZeRO or offload (on an 80 GB GPU lower ``--batch-sft``).
``--optimizer adamw_fused`` runs torch's fused kernel instead (no foreach temporaries, usually faster); it is not
what the recipes run.

Measured per configuration: ``warmup`` steps (2) then ``steps`` (5) timed steps, each ended by a device
synchronisation (the loss is read, as the log does). step_s = mean time of a timed step; samples/s = B / step_s;
tokens/s = B·S / step_s (all spliced tokens, image tokens included); peak memory =
``torch.cuda.max_memory_allocated()`` over the warm-up and timed steps (reset after the configuration's model is
built; weights included), not measured on CPU ("n/a"); MFU = model FLOPs of the step / step_s / peak dense bf16
FLOP/s of the device (NVIDIA data sheets by ``torch.cuda.get_device_name``: H100/H200 SXM 989.4 TFLOP/s,
H100 PCIe 756, H100/H200 NVL 835, A100 312; ``--peak-tflops`` overrides, and is the only source on CPU).

Model FLOPs of a step (:func:`step_flops`; PaLM's convention, Chowdhery et al. 2022, App. B). A matmul with n
weights applied to t rows costs 2·n·t forward, + 2·n·t in backward for the gradient of its input when anything
upstream needs one, + 2·n·t for its weight gradient when the weight trains. With B samples, S tokens each, P image
tokens per image, one image per sample:

* LLM, N = L·(2·D² + 2·D·D_kv + 3·D·F) matmul weights (q, o; k, v; gate, up, down): c·N·B·S with c = 6 in SFT
  (LLM trains) and c = 4 in pre-training (frozen, but the gradient passes through it to the projector);
* attention scores and values (QKᵀ, AV): 12·L·D·S² per sample, full (non-causal) count as in PaLM;
* lm_head, V·D weights, on the K rows whose logits the plain LM loss reads (the toolkit computes logits only
  there: ``logits_to_keep`` = the positions that predict a supervised label, here the same in every sample):
  c·V·D·K, same c as the LLM;
* projector (mlp2x_gelu, trains, its input needs no gradient): (4·C·D + 6·D·D)·B·P;
* vision tower (frozen, forward only) up to the selected layer (L_v' = 23 of 24 for ``select_layer=-2``; HF runs
  the last one too, uncounted), on S_v = P + 1 tokens: B·(2·L_v'·(4·C² + 2·C·F_v)·S_v + 4·L_v'·C·S_v² + 2·3·p²·C·P)
  (the last term: the p×p patch embedding).

Embedding look-ups, norms, activations, softmax, RoPE, the loss and the optimizer are not counted, nor the
recomputed forward of gradient checkpointing (that is hardware, not model, FLOPs). The plug-ins' own work (CAL's
no-image pass, the visual-word head and loss, MoCa's map) is not counted either: every configuration of a stage is
divided by the baseline's FLOPs, so its MFU ratio equals its throughput ratio and a plug-in's cost shows as lost
MFU.

Time limit (``--time-limit``, 270 s by default; the clock starts after the imports): a configuration is skipped,
saying so, when the time left is less than 1.25 × the longest configuration of its stage so far, and one is cut
short (and reported as skipped) before a step that would not end in time. The JSON (``--json``) is rewritten
after every configuration, so a run killed from outside keeps what it measured. Out-of-memory in one
configuration is reported and the next one runs.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from mllm_align.models import LLaVAModel, VisionTower  # noqa: E402

STAGES = ('pretrain', 'sft')
METHODS = ('baseline', 'moca', 'cal', 'visual_words')
#: stage -> configuration -> the recipe whose ``model`` (minus paths) and ``optim_wrapper`` it runs.
RECIPES = {
    'pretrain': {
        'baseline': 'projects/llava/configs/pretrain/llava_v15_7b_pretrain.py',
        'moca': 'projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain.py',
        'cal': 'projects/cal/configs/pretrain/llava_v15_7b_cal_pretrain.py',
        'visual_words': 'projects/visual_words/configs/pretrain/llava_v15_7b_vw_pretrain.py',
    },
    'sft': {
        'baseline': 'projects/llava/configs/finetune/llava_v15_7b_finetune.py',
        'moca': 'projects/moca/configs/finetune/llava_v15_7b_moca_finetune.py',
        'cal': 'projects/cal/configs/finetune/llava_v15_7b_cal_finetune.py',
        'visual_words': 'projects/visual_words/configs/finetune/llava_v15_7b_vw_finetune.py',
    },
}
#: Keys of a recipe's ``model`` not passed on: the class, the parts built here, file paths and text handling.
_NOT_PASSED = ('type', 'llm', 'visual_encoder', 'tokenizer', 'image_processor', 'template', 'pretrained_pth')
#: Dense bf16 tensor-core peak per GPU, TFLOP/s (NVIDIA data sheets, without sparsity); first match wins.
PEAK_BF16_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H200 NVL', 835.0), ('H100', 989.4),
                    ('H200', 989.4), ('H800', 989.4), ('A100', 312.0), ('A800', 312.0))
BUDGET_MARGIN = 1.25  # a configuration may cost this much more than the longest one before it (CAL's extra pass)


@dataclass(frozen=True)
class Shape:
    """Sizes of the LLM (LLaMA), the vision tower (CLIP ViT), the batches and the SFT text layout."""

    name: str
    layers: int  # L
    hidden: int  # D
    intermediate: int  # F
    heads: int
    kv_heads: int
    vocab: int  # V
    v_layers: int
    v_hidden: int  # C
    v_intermediate: int  # F_v
    v_heads: int
    image_size: int
    patch: int  # p
    seq_len: int  # S, spliced tokens per sample
    batch_pretrain: int
    batch_sft: int
    sft_prompt: int  # text tokens between <s> and <image>
    sft_question: int  # tokens of each unsupervised question span
    sft_answer: int  # tokens of each supervised answer span

    @property
    def image_tokens(self) -> int:
        """P, patch tokens per image (CLS dropped)."""
        return (self.image_size // self.patch) ** 2

    @property
    def kv_dim(self) -> int:
        """D_kv = kv heads × head dim (D when there is no grouped-query attention)."""
        return self.kv_heads * (self.hidden // self.heads)


#: LLaVA-1.5-7B: Vicuna-7B-v1.5 (LLaMA-2-7B shapes) + CLIP ViT-L/14 at 336 px (576 image tokens).
LLAVA7B = Shape('llava7b', layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000,
                v_layers=24, v_hidden=1024, v_intermediate=4096, v_heads=16, image_size=336, patch=14,
                seq_len=2048, batch_pretrain=8, batch_sft=8, sft_prompt=40, sft_question=20, sft_answer=50)
#: The CPU smoke shape: the same code path in a second (grouped-query attention, so the FLOPs count sees D_kv).
TINY = Shape('tiny', layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=320,
             v_layers=2, v_hidden=32, v_intermediate=64, v_heads=2, image_size=56, patch=14,
             seq_len=64, batch_pretrain=2, batch_sft=2, sft_prompt=4, sft_question=3, sft_answer=7)
SHAPES = {s.name: s for s in (LLAVA7B, TINY)}


# ---------------------------------------------------------------------------------------------- FLOPs
def step_flops(shape: Shape, stage: str, batch: int, head_rows: int, select_layer: int = -2) -> dict[str, int]:
    """Model FLOPs of one training step by part (module docstring for the formula) and their ``total``.

    ``head_rows``: K, the rows lm_head runs on (batch × positions whose logits the LM loss reads).
    """
    D, F, L, V, S, P = shape.hidden, shape.intermediate, shape.layers, shape.vocab, shape.seq_len, shape.image_tokens
    C, Fv = shape.v_hidden, shape.v_intermediate
    c = 6 if stage == 'sft' else 4  # SFT: the LLM trains; pre-training: frozen, gradient passes through
    n_llm = L * (2 * D * D + 2 * D * shape.kv_dim + 3 * D * F)
    lv = select_layer % (shape.v_layers + 1)  # layers up to the selected hidden state (index 0 = embeddings)
    sv = P + 1  # CLS + patches
    flops = dict(
        llm=c * n_llm * batch * S,
        attention=12 * L * D * S * S * batch,
        lm_head=c * V * D * head_rows,
        projector=(4 * C * D + 6 * D * D) * batch * P,
        vision=batch * (2 * lv * (4 * C * C + 2 * C * Fv) * sv + 4 * lv * C * sv * sv
                        + 2 * 3 * shape.patch ** 2 * C * P),  # blocks, attention, patch embedding
    )
    flops['total'] = sum(flops.values())
    return flops


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in TFLOP/s and where it came from (None: unknown, MFU not reported)."""
    if override is not None:
        return override, '--peak-tflops'
    if device.type != 'cuda':
        return None, 'unknown on CPU (pass --peak-tflops)'
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f'data sheet, {key}'
    return None, f'unknown for {name!r} (pass --peak-tflops)'


# ---------------------------------------------------------------------------------------------- model
def attention_implementation(device: torch.device) -> str:
    """``flash_attention_2`` on CUDA when transformers can use ``flash_attn`` (installed, importable, a supported
    version), else ``sdpa`` (the recipes' own fallback)."""
    from transformers.utils import is_flash_attn_2_available
    return 'flash_attention_2' if device.type == 'cuda' and is_flash_attn_2_available() else 'sdpa'


def build_parts(shape: Shape, device: torch.device, dtype: torch.dtype, attn: str) -> tuple[Any, Any]:
    """The random LLM and CLIP vision model, built on ``device`` in ``dtype`` (``'meta'``: shapes only)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    llm_config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(4096, shape.seq_len), rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision_config = CLIPVisionConfig(
        hidden_size=shape.v_hidden, intermediate_size=shape.v_intermediate, num_hidden_layers=shape.v_layers,
        num_attention_heads=shape.v_heads, image_size=shape.image_size, patch_size=shape.patch,
        hidden_act='quick_gelu', layer_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where they run: seconds for 7 B parameters on a GPU
        llm = LlamaForCausalLM._from_config(llm_config, dtype=dtype, attn_implementation=attn)
        clip = CLIPVisionModel._from_config(vision_config, dtype=dtype, attn_implementation='sdpa')
    return llm, clip


def recipe(stage: str, method: str) -> Any:
    from mmengine.config import Config
    return Config.fromfile(str(REPO / RECIPES[stage][method]))


def build_model(llm: Any, clip: Any, model_cfg: dict, device: torch.device) -> LLaVAModel:
    """``LLaVAModel`` around the shared LLM and CLIP with the recipe's model settings (paths left out)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in _NOT_PASSED}
    encoder = model_cfg['visual_encoder']
    tower = VisionTower(model=clip, select_layer=encoder.get('select_layer', -2),
                        select_feature=encoder.get('select_feature', 'patch'))
    if not kwargs.get('gradient_checkpointing') and llm.is_gradient_checkpointing:
        llm.gradient_checkpointing_disable()  # LLaVAModel only switches it on
    torch.manual_seed(0)  # the same projector (and plug-in) initialisation in every configuration
    with torch.device(device):
        model = LLaVAModel(llm=llm, visual_encoder=tower, **kwargs)
    return model.to(device)  # parameters are there already; this points the data preprocessor at the device


def build_optim_wrapper(model: LLaVAModel, optim_cfg: dict, device: torch.device, optimizer: str) -> Any:
    """The recipe's ``optim_wrapper`` at lr 0 (fp32 ``OptimWrapper`` off CUDA, as the tiny twins)."""
    from mmengine.optim import OptimWrapper
    from mmengine.optim import build_optim_wrapper as build

    cfg = copy.deepcopy(optim_cfg)
    cfg['optimizer'] = dict(cfg['optimizer'], lr=0.0)
    if optimizer == 'adamw_fused':
        cfg['optimizer']['fused'] = True
    if device.type != 'cuda':  # AmpOptimWrapper refuses CPU
        cfg['type'] = OptimWrapper
        cfg.pop('dtype', None)
        cfg.pop('loss_scale', None)
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('ERROR')  # with a paramwise_cfg (MoCa) mmengine warns once per frozen parameter
    try:
        return build(model, cfg)
    finally:
        logger.setLevel(level)


def release(model: LLaVAModel) -> None:
    """Take the plug-ins out and undo their hooks on the shared LLM (MoCa wraps its layers' forward)."""
    for name in list(model.plugins):
        plugin = model.remove_plugin(name)
        if callable(getattr(plugin, 'detach', None)):
            plugin.detach()


# ---------------------------------------------------------------------------------------------- data
def make_batch(shape: Shape, stage: str, batch: int) -> dict:
    """A collated batch (``llava_collate_fn``'s form) of ``batch`` samples of exactly ``seq_len`` spliced tokens."""
    g = torch.Generator().manual_seed(0)
    S, P, V = shape.seq_len, shape.image_tokens, shape.vocab
    ids, labels = [], []
    for _ in range(batch):
        if stage == 'pretrain':  # <s> <image> caption, every caption token supervised
            text = torch.randint(3, V, (S - 1 - P,), generator=g)
            ids.append(torch.cat([torch.tensor([1, IMAGE_TOKEN_INDEX]), text]))
            labels.append(torch.cat([torch.tensor([IGNORE_INDEX, IGNORE_INDEX]), text]))
        else:  # <s> prompt <image> then question / answer spans, answers supervised
            prompt = torch.randint(3, V, (shape.sft_prompt,), generator=g)
            text = torch.randint(3, V, (S - 1 - shape.sft_prompt - P,), generator=g)
            lab = text.clone()
            for start in range(0, len(text), shape.sft_question + shape.sft_answer):
                lab[start:start + shape.sft_question] = IGNORE_INDEX
            ids.append(torch.cat([torch.tensor([1]), prompt, torch.tensor([IMAGE_TOKEN_INDEX]), text]))
            labels.append(torch.cat([torch.full((shape.sft_prompt + 2,), IGNORE_INDEX), lab]))
    input_ids, label_t = torch.stack(ids), torch.stack(labels)
    data = dict(input_ids=input_ids, labels=label_t, attention_mask=torch.ones_like(input_ids, dtype=torch.bool),
                pixel_values=torch.randn(batch, 3, shape.image_size, shape.image_size, generator=g))
    return {'data': data, 'data_samples': None}


def head_rows(batch: dict) -> int:
    """K: batch × positions that predict a supervised label in some sample (``supervised_positions``). Every
    sample has the same layout, so positions before the placeholder's expansion count the same as after it."""
    labels = batch['data']['labels']
    return labels.shape[0] * int((labels[:, 1:] != IGNORE_INDEX).any(0).sum())


# ---------------------------------------------------------------------------------------------- running
class OutOfTime(Exception):
    """The next step would end after the deadline."""


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_config(stage: str, method: str, parts: tuple[Any, Any], shape: Shape, batch_size: int,
               args: argparse.Namespace, device: torch.device, deadline: float) -> dict:
    """Build one configuration, run its warm-up and timed steps; its measurements (``status`` ``ok``)."""
    cfg = recipe(stage, method)
    model_cfg = cfg.model.to_dict()
    model = build_model(*parts, model_cfg, device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper.to_dict(), device, args.optimizer)
    n_steps = args.warmup + args.steps
    optim_wrapper.initialize_count_status(model, 0, n_steps)
    batch = make_batch(shape, stage, batch_size)
    rows = head_rows(batch)
    select_layer = model_cfg['visual_encoder'].get('select_layer', -2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device.type == 'cuda':
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == 'cuda' else None
    times: list[float] = []
    loss = math.nan
    try:
        for i in range(n_steps):
            if times and time.perf_counter() + max(times) > deadline:
                raise OutOfTime(f'time limit reached after {i} of {n_steps} steps')
            sync(device)
            start = time.perf_counter()
            log_vars = model.train_step(batch, optim_wrapper)
            loss = float(log_vars['loss'].detach())  # reading the loss synchronises, as the logger does
            sync(device)
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None
    finally:
        release(model)
        del model, optim_wrapper
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    timed = times[args.warmup:]
    step_s = sum(timed) / len(timed)
    return dict(status='ok', batch=batch_size, seq_len=shape.seq_len, image_tokens=shape.image_tokens,
                head_rows=rows, trainable_params=trainable, step_s=step_s, step_times=timed,
                warmup_times=times[:args.warmup], samples_per_s=batch_size / step_s,
                tokens_per_s=batch_size * shape.seq_len / step_s, peak_mem_bytes=peak, resident_bytes=resident,
                loss=loss, flops=step_flops(shape, stage, batch_size, rows, select_layer),
                recipe=RECIPES[stage][method])


def add_ratios(results: list[dict], peak: float | None) -> None:
    """MFU (with the baseline's FLOPs of the stage) and every figure's ratio to the stage's baseline."""
    base = {r['stage']: r for r in results if r['config'] == 'baseline' and r['status'] == 'ok'}
    for r in results:
        if r['status'] != 'ok':
            continue
        ref = base.get(r['stage'])
        flops = (ref or r)['flops']['total']
        r['model_flops_per_step'] = flops
        r['mfu'] = flops / r['step_s'] / (peak * 1e12) if peak else None
        r['vs_baseline'] = None if ref is None else {
            key: (r[key] / ref[key] if r[key] is not None and ref[key] else None)
            for key in ('samples_per_s', 'tokens_per_s', 'peak_mem_bytes', 'mfu', 'step_s')}


def _fmt(value: float | None, spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def _count(n: int) -> str:
    return f'{n / 1e9:.3f} B' if n >= 1e9 else f'{n / 1e6:.2f} M' if n >= 1e6 else f'{n:,}'


def report(results: list[dict], meta: dict) -> None:
    for stage in meta['stages']:
        rows = [r for r in results if r['stage'] == stage]
        ok = next((r for r in rows if r['status'] == 'ok'), None)
        what = ('projector (+ plug-in) trains; LLM frozen, gradient through it' if stage == 'pretrain' else
                'LLM + projector (+ plug-in) train; gradient checkpointing')
        print(f'\n{stage}: {what}')
        if ok is not None:
            print(f"B = {ok['batch']} × {ok['seq_len']} tokens ({ok['image_tokens']} image tokens each); "
                  f"model FLOPs per step {ok['model_flops_per_step']:.3e} (baseline's)")
        print('| config | samples/s | vs base | tokens/s | vs base | peak mem (GiB) | vs base | MFU | vs base '
              '| step (s) | trainable | loss |')
        print('|---|---|---|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            if r['status'] != 'ok':
                print(f"| {r['config']} | {r['status']}: {r['reason']} |" + ' |' * 10)
                continue
            v = r['vs_baseline'] or {}
            mem = None if r['peak_mem_bytes'] is None else r['peak_mem_bytes'] / 2 ** 30
            print(f"| {r['config']} | {r['samples_per_s']:.3f} | {_fmt(v.get('samples_per_s'), '.3f')} "
                  f"| {r['tokens_per_s']:.1f} | {_fmt(v.get('tokens_per_s'), '.3f')} "
                  f"| {_fmt(mem, '.2f')} | {_fmt(v.get('peak_mem_bytes'), '.3f')} "
                  f"| {_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.2f')}"
                  f"{'' if r['mfu'] is None else ' %'} | {_fmt(v.get('mfu'), '.3f')} "
                  f"| {r['step_s']:.4f} | {_count(r['trainable_params'])} | {r['loss']:.4f} |")
    skipped = [r for r in results if r['status'] != 'ok']
    if skipped:
        print('\nNot measured: ' + ', '.join(f"{r['stage']}/{r['config']} ({r['reason']})" for r in skipped))
    print(f"\nwall {meta['elapsed_s']:.1f} s of the {meta['time_limit_s']:g} s limit (model build "
          f"{meta['build_s']:.1f} s); {meta['memory_note']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto',
                        help='auto: cuda when available (default)')
    parser.add_argument('--shape', choices=list(SHAPES), default=None,
                        help='model and batch shape (default: llava7b on CUDA, tiny on CPU)')
    parser.add_argument('--time-limit', type=float, default=270.0,
                        help='seconds for the whole run, model build included (default 270)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per configuration (default 2)')
    parser.add_argument('--steps', type=int, default=5, help='timed steps per configuration (default 5)')
    parser.add_argument('--stages', nargs='+', choices=STAGES, default=list(STAGES))
    parser.add_argument('--batch-pretrain', type=int, default=None, help="per-GPU batch (default: the shape's, 8)")
    parser.add_argument('--batch-sft', type=int, default=None, help="per-GPU batch (default: the shape's, 8)")
    parser.add_argument('--optimizer', choices=['adamw', 'adamw_fused'], default='adamw',
                        help="adamw: the recipes' torch AdamW (foreach); adamw_fused: torch's fused kernel")
    parser.add_argument('--peak-tflops', type=float, default=None,
                        help='peak dense bf16 TFLOP/s for MFU (default: by GPU name; none on CPU)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: 1 on CPU, where the tiny steps are Python-bound and extra '
                             'threads on a shared machine only wait; untouched on CUDA)')
    parser.add_argument('--json', type=Path, default=None, help='write the results here')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error('--steps must be >= 1 and --warmup >= 0')
    return args


def describe(args: argparse.Namespace, device: torch.device, shape: Shape, attn: str, peak: float | None,
             peak_source: str, batches: dict[str, int]) -> dict:
    """The run's settings, as printed and written to the JSON's ``meta``."""
    import transformers
    if device.type == 'cuda':
        name, wrapper = torch.cuda.get_device_name(device), ('mmengine AmpOptimWrapper (bf16 autocast, dynamic loss '
                                                             'scale, clip_grad max_norm 1), as the recipes')
    else:
        name = f'CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)'
        wrapper = 'mmengine OptimWrapper fp32 (clip_grad max_norm 1), as the tiny twins'
    kind = 'fused' if args.optimizer == 'adamw_fused' else 'foreach, as the recipes'
    return dict(date=str(datetime.date.today()), host=platform.node(), python=platform.python_version(),
                torch=torch.__version__, transformers=transformers.__version__, device=name, shape=asdict(shape),
                dtype='bfloat16' if device.type == 'cuda' else 'float32', attn_implementation=attn,
                peak_tflops=peak, peak_source=peak_source, warmup=args.warmup, steps=args.steps, stages=args.stages,
                batch=batches, time_limit_s=args.time_limit, lr=0.0,
                optimizer=f'torch AdamW ({kind}), states in the parameter dtype, lr 0, betas and weight decay of the '
                          f'recipe; {wrapper}')


def write_json(path: Path, out: dict) -> None:
    """Replace ``path`` atomically: a run killed while writing leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)


def progress(stage: str, method: str, entry: dict, took: float) -> None:
    if entry['status'] != 'ok':
        print(f"{stage}/{method}: {entry['status']}, {entry['reason']}", flush=True)
        return
    mem = 'n/a' if entry['peak_mem_bytes'] is None else f"{entry['peak_mem_bytes'] / 2 ** 30:.2f} GiB"
    print(f"{stage}/{method}: {entry['samples_per_s']:.3f} samples/s, {entry['tokens_per_s']:.1f} tokens/s, "
          f"peak memory {mem}, step {entry['step_s']:.4f} s ({took:.1f} s in all)", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    deadline = t0 + args.time_limit
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is visible')
    device = torch.device(args.device)
    if args.threads is not None or device.type == 'cpu':
        torch.set_num_threads(args.threads or 1)
    shape = SHAPES[args.shape or ('llava7b' if device.type == 'cuda' else 'tiny')]
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # the recipes' llm_dtype / the tiny twins'
    attn = attention_implementation(device)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    batches = dict(pretrain=args.batch_pretrain or shape.batch_pretrain, sft=args.batch_sft or shape.batch_sft)
    meta = describe(args, device, shape, attn, peak, peak_source, batches)
    print(f"device {meta['device']}; shape {shape.name}; {meta['dtype']}; attention {attn} (vision tower: sdpa); "
          f"peak {_fmt(peak, '.1f')} TFLOP/s ({peak_source})", flush=True)
    print(f"optimizer: {meta['optimizer']}; {args.warmup} warm-up + {args.steps} timed steps per configuration; "
          f"time limit {args.time_limit:g} s", flush=True)

    parts = build_parts(shape, device, dtype, attn)
    sync(device)
    meta['build_s'] = time.perf_counter() - t0
    meta['params'] = dict(llm=sum(p.numel() for p in parts[0].parameters()),
                          vision=sum(p.numel() for p in parts[1].parameters()))
    print(f"built LLM {_count(meta['params']['llm'])} + vision tower {_count(meta['params']['vision'])} parameters "
          f"in {meta['build_s']:.1f} s", flush=True)

    results: list[dict] = []
    out = dict(meta=meta, results=results)

    def save() -> None:
        add_ratios(results, peak)
        meta['elapsed_s'] = time.perf_counter() - t0
        meta['memory_note'] = ('peak memory: torch.cuda.max_memory_allocated per configuration' if device.type == 'cuda'
                               else 'peak memory n/a on CPU (process RSS high-water mark '
                               f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)')
        if args.json is not None:
            write_json(args.json, out)

    for stage in args.stages:
        longest: float | None = None
        for method in METHODS:
            entry = dict(stage=stage, config=method)
            start = time.perf_counter()
            left = deadline - start
            if left <= 0 or (longest is not None and BUDGET_MARGIN * longest > left):
                need = '' if longest is None or left <= 0 else f', {BUDGET_MARGIN:g} × {longest:.1f} s needed'
                entry.update(status='skipped', reason=f'time limit: {max(left, 0):.1f} s left{need}')
            else:
                try:
                    entry.update(run_config(stage, method, parts, shape, batches[stage], args, device, deadline))
                except OutOfTime as exc:
                    entry.update(status='skipped', reason=str(exc))
                except torch.OutOfMemoryError as exc:
                    entry.update(status='oom', reason=str(exc).splitlines()[0][:200])
                if entry['status'] == 'oom' and device.type == 'cuda':  # the traceback's frames are gone now
                    gc.collect()
                    torch.cuda.empty_cache()
                longest = max(longest or 0.0, time.perf_counter() - start)
            results.append(entry)
            save()
            progress(stage, method, entry, time.perf_counter() - start)
    report(results, meta)
    return out


if __name__ == '__main__':
    main()
