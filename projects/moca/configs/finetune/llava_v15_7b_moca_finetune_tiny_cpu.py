"""Tiny CPU twin of ``llava_v15_7b_moca_finetune.py``: the tiny LLaVA SFT twin with MoCa.

The LLM, projector and MoCa train on the multi-turn shapes Q&A; pass the tiny MoCa stage-1 output to start
from its projector and u, v:

    bash tools/dist.sh train projects/moca/configs/finetune/llava_v15_7b_moca_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_v15_7b_moca_pretrain_tiny_cpu/iter_75.pth
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune_tiny_cpu import *  # tiny LLaVA-1.5 SFT
    from .llava_v15_7b_moca_finetune import moca_init_std, moca_paramwise_cfg, moca_plugins  # MoCa, as the recipe

model.plugins.update(moca_plugins)
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)  # no weight decay on u, v
