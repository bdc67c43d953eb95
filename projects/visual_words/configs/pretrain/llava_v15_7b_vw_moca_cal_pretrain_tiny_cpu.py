"""Tiny CPU twin of ``llava_v15_7b_vw_moca_cal_pretrain.py``: all three plug-ins (moca, cal, visual_words).

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py 2

What it shows is that the methods compose on one tiny model; it is not a published recipe.
"""
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_v15_7b_vw_moca_cal_pretrain import (  # every method's settings and block, from the recipe
        cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window, moca_init_std,
        moca_paramwise_cfg, moca_plugins, vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight)

model.plugins.update(**moca_plugins, **cal_plugins, **vw_plugins)  # in this order
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)
