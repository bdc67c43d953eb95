"""Tiny CPU twin of ``llava_v15_7b_vw_finetune.py``: visual words in the tiny LLaVA SFT twin.

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_v15_7b_vw_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_v15_7b_vw_pretrain_tiny_cpu/iter_75.pth

The option loads the tiny stage-1 projector and ``vm_head``; without it both start from their init.
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune_tiny_cpu import *  # tiny LLaVA-1.5 SFT
    from .llava_v15_7b_vw_finetune import vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight

model.plugins.update(vw_plugins)
