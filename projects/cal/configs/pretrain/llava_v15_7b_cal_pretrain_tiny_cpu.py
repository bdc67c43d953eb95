"""Tiny CPU twin of ``llava_v15_7b_cal_pretrain.py``; tests/align/test_cal.py trains it.

CAL re-weights the caption loss of the tiny LLaVA pre-training twin (projector only):

    bash tools/dist.sh train projects/cal/configs/pretrain/llava_v15_7b_cal_pretrain_tiny_cpu.py 2
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_v15_7b_cal_pretrain import cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window

model.plugins.update(cal_plugins)
