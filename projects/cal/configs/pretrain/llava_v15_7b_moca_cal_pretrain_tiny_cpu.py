"""Tiny CPU twin of ``llava_v15_7b_moca_cal_pretrain.py``: MoCa then CAL on one tiny model.

Checks on a laptop that the two plug-ins combine (order moca, cal):

    bash tools/dist.sh train projects/cal/configs/pretrain/llava_v15_7b_moca_cal_pretrain_tiny_cpu.py 2
"""
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_v15_7b_moca_cal_pretrain import (  # both methods' settings and blocks, as in the recipe
        cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window,
        moca_init_std, moca_paramwise_cfg, moca_plugins)

model.plugins.update(**moca_plugins, **cal_plugins)
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)
