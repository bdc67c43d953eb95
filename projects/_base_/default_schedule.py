"""PART 4 shared by the base recipes: AdamW under bf16 mixed precision, clipped, linear warm-up then cosine to 0.

LLaVA-1.5's schedule (Liu et al., "Improved Baselines with Visual Instruction Tuning", Table 9), which the
Qwen2-VL SFT recipe follows too. Every knob of it is a PART 1 variable below, and the dicts are built from
those only. A base recipe imports this file in its ``read_base()`` block and sets the learning rate, the one
value that differs between recipes (there is no ``lr`` here on purpose: a recipe that forgets it fails
``tests/test_configs.py`` instead of training at AdamW's default)::

    with read_base():
        from ...._base_.default_runtime import *
        from ...._base_.default_schedule import *
    lr = 1e-3  # PART 1
    optim_wrapper.optimizer.update(lr=lr)  # PART 4

``--cfg-options warmup_ratio=0.1`` (or any name below) rewrites the assignment here and re-evaluates the
chain (``mllm_align/engine/config_overrides.py``), so every field built from it follows. A config that
wants another value in its file sets the fields themselves, since rebinding a name after ``read_base()``
does not reach dicts already built: ``max_epochs`` → ``train_cfg.max_epochs``, ``param_scheduler[1].end``
and both warm-up bounds; ``accumulative_counts`` → ``optim_wrapper.accumulative_counts`` and the
sampler's ``per_device_batch_size``; ``train_cfg.update(max_iters=N, max_epochs=None)`` for a run counted
in iterations.
"""
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from mllm_align.engine.loops import TrainLoop

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
accumulative_counts = 1  # micro-batches per optimiser step; the recipes reach their global batch with GPUs
max_epochs = 1  # one pass over the data (TrainLoop counts it in iterations)
betas = (0.9, 0.999)  # AdamW's defaults, as LLaVA-1.5
weight_decay = 0  # LLaVA-1.5 trains without weight decay
max_norm = 1  # gradient clipping
warmup_ratio = 0.03  # share of max_epochs spent in the linear warm-up

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=AdamW, betas=betas, weight_decay=weight_decay),  # lr: set by the recipe
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='bfloat16')

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)
