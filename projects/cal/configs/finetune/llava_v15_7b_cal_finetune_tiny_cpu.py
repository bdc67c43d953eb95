"""Tiny CPU twin of ``llava_v15_7b_cal_finetune.py`` (loaded by tests/align/test_cal.py): CAL in tiny SFT.

    bash tools/dist.sh train projects/cal/configs/finetune/llava_v15_7b_cal_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_v15_7b_cal_pretrain_tiny_cpu/iter_75.pth

Without ``pretrained_pth`` the projector trains from its init as well.
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune_tiny_cpu import *  # tiny LLaVA-1.5 SFT
    from .llava_v15_7b_cal_finetune import cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window

model.plugins.update(cal_plugins)  # the answer tokens' loss, CAL-weighted
