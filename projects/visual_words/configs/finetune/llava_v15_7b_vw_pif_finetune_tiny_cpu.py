"""Tiny CPU twin of ``llava_v15_7b_vw_pif_finetune.py``: SFT with pseudo image features, tiny models.

Continue from the tiny pif stage 1 with

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_v15_7b_vw_pif_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_v15_7b_vw_pif_pretrain_tiny_cpu/iter_75.pth
"""
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune_tiny_cpu import *  # tiny LLaVA-1.5 SFT
    from .llava_v15_7b_vw_pif_finetune import (  # vw_pif = True, as the recipe
        vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight)

model.plugins.update(vw_plugins)
