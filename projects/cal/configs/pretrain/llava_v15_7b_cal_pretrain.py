"""LLaVA-1.5-7B stage 1 with CAL: projector pre-training on LCS-558K, CAL-weighted caption loss.

CAL (Xiao et al., "Seeing the Image: Prioritizing Visual Correlation by Contrastive Alignment",
NeurIPS 2024, arXiv:2405.17871; ``mllm_align/align/cal.py``) re-weights each caption token by how much
the image raises its logit (a second, no-grad LLM pass without the image). Otherwise the LLaVA-1.5
recipe of ``projects/llava/configs/pretrain/llava_v15_7b_pretrain.py`` (inherited): only the
projector trains; global batch 256 (8 GPUs × 32), lr 1e-3, cosine with 3 % warm-up, 1 epoch
(≈2181 iterations), bf16, 2048 tokens.

    bash tools/dist.sh train projects/cal/configs/pretrain/llava_v15_7b_cal_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_cal_pretrain_tiny_cpu.py``. With MoCa as well: ``llava_v15_7b_moca_cal_pretrain.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the base recipe's names come from the read_base() chain)
from mmengine.config import read_base

from mllm_align.align import CAL

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain import *  # the base recipe, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# CAL (mllm_align/align/cal.py): token weights w = AvgPool_window(clamp(Δ, alpha, beta)), Δ the gold-token
# logit with the image minus without it. Paper/seed values; active in both stages as in the seed.
cal_alpha = 1.0  # weight floor: tokens the image does not help keep weight 1
cal_beta = 5.0  # weight cap: limits how much one visually grounded token can dominate
cal_window = 3  # centred average over neighbouring targets (1 = no pooling)
cal_pooling = 'sample'  # per sample, supervised tokens; 'flat' = the seed (whole batch, all positions)
cal_no_image_pass = 'drop'  # image tokens dropped, positions kept; 'mask' = the seed's masked pass

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
# The method's block, named so that the tiny twin and the recipes built on this one import it.
cal_plugins = dict(cal=dict(type=CAL, alpha=cal_alpha, beta=cal_beta, window=cal_window, pooling=cal_pooling,
                            no_image_pass=cal_no_image_pass))
model.plugins.update(cal_plugins)
