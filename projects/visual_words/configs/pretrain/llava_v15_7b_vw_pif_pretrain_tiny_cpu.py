"""Tiny CPU twin of ``llava_v15_7b_vw_pif_pretrain.py``: visual words with pseudo image features.

F' = softmax(vm_head(F)) E replaces the projected features of the tiny LLaVA pre-training twin:

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_v15_7b_vw_pif_pretrain_tiny_cpu.py 2
"""
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_v15_7b_vw_pif_pretrain import (  # vw_pif = True there
        vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight)

model.plugins.update(vw_plugins)
