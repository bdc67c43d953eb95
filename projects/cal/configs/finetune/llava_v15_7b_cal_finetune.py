"""LLaVA-1.5-7B stage 2 with CAL: visual instruction tuning on LLaVA-665K, CAL-weighted answer loss.

CAL (Xiao et al., NeurIPS 2024, arXiv:2405.17871; ``mllm_align/align/cal.py``) is active in both
stages, as in the seed; start from the CAL pre-training output. Otherwise the LLaVA-1.5 recipe of
``projects/llava/configs/finetune/llava_v15_7b_finetune.py`` (inherited): the LLM and projector
train, the CLIP tower stays frozen; global batch 128 (8 GPUs × 16), lr 2e-5, cosine with 3 %
warm-up, 1 epoch (≈5198 iterations), bf16, 2048 tokens, gradient checkpointing, vicuna_v1 template.

    bash tools/dist.sh train projects/cal/configs/finetune/llava_v15_7b_cal_finetune.py 8 --deepspeed deepspeed_zero3

CAL's settings (PART 1) are the pre-training recipe's, imported from it. Edit the base recipe's PART 1
paths (or pass them with ``--cfg-options``). Tiny CPU twin: ``llava_v15_7b_cal_finetune_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune import *  # the base recipe, PART 1-5
    from ..pretrain.llava_v15_7b_cal_pretrain import (  # CAL's settings (PART 1) and its plug-in block
        cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The stage-1 output this run starts from (the projector; saved by the CAL pretrain config).
pretrained_pth = 'work_dirs/llava_v15_7b_cal_pretrain/iter_2181.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(pretrained_pth=pretrained_pth)
model.plugins.update(cal_plugins)
