"""Does a LLaVAModel train the same under DeepSpeed ZeRO-3 as without it? A CPU check.

ZeRO-3 partitions every parameter and gathers a module's own parameters only around that module's
forward and backward, so a plug-in that reads a parameter elsewhere sees an empty tensor. This check
builds the same tiny model twice (same seed), trains one plainly and one through a DeepSpeed ZeRO-3
engine (fp32, plain SGD, DeepSpeed's CPU accelerator and gloo), on the same batches, and reports the
largest differences of the losses, the full gradients and the updated weights.

Two settings make the check bite on a tiny model:

* ``stage3_param_persistence_threshold=0`` and ``stage3_max_reuse_distance=0``: no parameter stays
  gathered because it is small or reused soon, so every one is released after its module runs;
* ``strict=True`` switches off DeepSpeed's own discovery of parameters read through a module
  attribute during the engine's forward (DeepSpeed 0.19 gathers such a parameter, and keeps it
  gathered for the rest of the step at the top-level module). What remains is the documented
  contract (own parameters + ``register_external_parameter``), which the plug-ins must satisfy.

Run it with ``tools/check_zero3.py`` (one or more processes); ``tests/align/test_zero3.py`` runs it
when deepspeed is installed. Needs ``deepspeed`` (``pip install deepspeed==0.19.8``; on CPU set
``DS_ACCELERATOR=cpu``) and the tiny assets (``python tools/build_tiny_assets.py``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

__all__ = ['build_check_model', 'check_batch', 'zero3_config', 'run_zero3_check']

PLUGINS = ('vw', 'pif', 'moca', 'cal', 'detach', 'gc')


def build_check_model(tiny_root: str | os.PathLike, plugins: tuple[str, ...] = ('pif', 'moca', 'cal'),
                      seed: int = 0) -> Any:
    """The tiny LLaMA + CLIP ``LLaVAModel`` with the LLM trainable and the chosen plug-ins.

    ``plugins``: any of ``'vw'`` (visual words), ``'pif'`` (visual words with pseudo image features),
    ``'detach'`` (visual words with ``detach_target``), ``'moca'`` (MoCa, ``init_std=0.1`` so u, v
    are not the identity), ``'cal'``, and ``'gc'`` (gradient checkpointing in the LLM, as the
    fine-tuning recipes).
    """
    from ..align import CAL, MoCa, VisualWords
    from ..models import LLaVAModel, VisionTower, load_llm

    unknown = set(plugins) - set(PLUGINS)
    if unknown:
        raise ValueError(f'Unknown plug-in(s) {sorted(unknown)}; choose from {PLUGINS}.')
    root = Path(tiny_root)
    vw = None
    if {'vw', 'pif', 'detach'} & set(plugins):
        vw = dict(type=VisualWords, pif='pif' in plugins, detach_target='detach' in plugins)
    torch.manual_seed(seed)
    return LLaVAModel(llm=dict(type=load_llm, path=str(root / 'llm' / 'llama')),
                      visual_encoder=dict(type=VisionTower, path=str(root / 'vision' / 'clip')),
                      freeze_llm=False, gradient_checkpointing='gc' in plugins,
                      plugins={name: cfg for name, cfg in (('moca', dict(type=MoCa, init_std=0.1) if 'moca' in plugins
                                                            else None),
                                                           ('cal', dict(type=CAL) if 'cal' in plugins else None),
                                                           ('visual_words', vw)) if cfg is not None})


def check_batch(seed: int) -> dict[str, torch.Tensor]:
    """Two samples, three 32-px images (sample 0 has two), one padded position; a new image per ``seed``."""
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, IMAGE_TOKEN_INDEX, 6, 7],
                        [1, IMAGE_TOKEN_INDEX, 8, 9, 10, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    labels = ids.masked_fill((ids == IMAGE_TOKEN_INDEX) | ~attention_mask, IGNORE_INDEX)
    g = torch.Generator().manual_seed(seed)
    return dict(input_ids=ids, attention_mask=attention_mask, labels=labels,
                pixel_values=torch.randn(3, 3, 32, 32, generator=g))


def zero3_config(micro_batch: int = 2) -> dict[str, Any]:
    """fp32 ZeRO-3 that releases every parameter after use (no persistence, no reuse window, no prefetch)."""
    return dict(
        train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=1,
        gradient_clipping=0.0,  # DeepSpeed's default is 1.0; the reference does not clip
        zero_allow_untested_optimizer=True,  # plain torch SGD: the same update as the reference
        zero_optimization=dict(stage=3, stage3_param_persistence_threshold=0, stage3_max_reuse_distance=0,
                               stage3_prefetch_bucket_size=0, stage3_max_live_parameters=0),
        steps_per_print=1 << 30)


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if 'loss' in k)  # mmengine's parse_losses rule


def _strict_forward(engine: Any) -> None:
    """Turn off DeepSpeed's discovery of partitioned parameters read through module attributes."""
    prologue = engine._forward_prologue

    def prologue_without_discovery(inputs: Any, kwargs: Any) -> Any:
        out = prologue(inputs, kwargs)
        for module in engine.module.modules():
            module._parameters._in_forward = False
        return out

    engine._forward_prologue = prologue_without_discovery


def run_zero3_check(tiny_root: str | os.PathLike, plugins: tuple[str, ...] = ('pif', 'moca', 'cal'),
                    steps: int = 2, lr: float = 0.5, strict: bool = True) -> dict[str, Any]:
    """Train the tiny model ``steps`` SGD steps with and without ZeRO-3; return the largest differences.

    Uses the process group of the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``, e.g. from torchrun); without one it starts a single-process gloo group. Rank r
    gets batch ``check_batch(world · step + r)``; the reference model runs all ranks' batches and
    averages their gradients, as ZeRO's data parallelism does.

    Returns:
        ``{'loss': max |Δ loss|, 'grad': max |Δ grad|, 'param': max |Δ weight| after the last step,
        'grad_scale': max |grad|, 'num_params': trained parameters compared, 'world_size': …,
        'root_external': names of parameters DeepSpeed registered on the top-level module}``.
    """
    os.environ.setdefault('DS_ACCELERATOR', 'cpu')
    for key, value in (('MASTER_ADDR', '127.0.0.1'), ('MASTER_PORT', '29511'), ('RANK', '0'),
                       ('LOCAL_RANK', '0'), ('WORLD_SIZE', '1')):
        os.environ.setdefault(key, value)
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    deepspeed.init_distributed(dist_backend='gloo')
    rank, world = dist.get_rank(), dist.get_world_size()

    ref = build_check_model(tiny_root, plugins)
    model = build_check_model(tiny_root, plugins)
    trained = [n for n, p in ref.named_parameters() if p.requires_grad]
    ref_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=zero3_config(),
                                      optimizer=torch.optim.SGD(params, lr=lr))
    if strict:
        _strict_forward(engine)
    names = {id(p): n for n, p in engine.module.named_parameters()}
    ref_params = dict(ref.named_parameters())
    worst = dict(loss=0.0, grad=0.0, grad_scale=0.0)
    for step in range(steps):
        ref_opt.zero_grad()
        ref_loss = None
        for r in range(world):
            total = _total(ref(check_batch(world * step + r), mode='loss'))
            (total / world).backward()
            if r == rank:
                ref_loss = total.detach()
        loss = _total(engine(check_batch(world * step + rank), mode='loss'))
        worst['loss'] = max(worst['loss'], (loss.detach() - ref_loss).abs().item())
        engine.backward(loss)
        for name in trained:
            grad = safe_get_full_grad(dict(engine.module.named_parameters())[name])
            expected = ref_params[name].grad
            if grad is None or expected is None:
                raise RuntimeError(f'No gradient for {name} (zero3: {grad is None}, reference: {expected is None}).')
            worst['grad'] = max(worst['grad'], (grad - expected).abs().max().item())
            worst['grad_scale'] = max(worst['grad_scale'], expected.abs().max().item())
        engine.step()
        ref_opt.step()
    param_diff = 0.0
    for name in trained:
        value = safe_get_full_fp32_param(dict(engine.module.named_parameters())[name])
        param_diff = max(param_diff, (value - ref_params[name].detach()).abs().max().item())
    root_external = sorted(names.get(key, '?') for key, _ in engine.module.ds_external_parameters())
    return dict(worst, param=param_diff, num_params=len(trained), world_size=world,
                root_external=root_external, steps=steps, plugins=list(plugins), strict=strict)
