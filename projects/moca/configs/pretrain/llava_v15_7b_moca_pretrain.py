"""LLaVA-1.5-7B stage 1 with MoCa: projector + MoCa pre-training on LCS-558K.

The LLaVA-1.5 recipe (``projects/llava/configs/pretrain/llava_v15_7b_pretrain.py``, inherited) plus
MoCa (Huang et al., "Deciphering Cross-Modal Alignment in Large Vision-Language Models with Modality
Integration Rate", arXiv:2410.07167, MoCa): a per-layer affine map h ← u ⊙ h + v on vision tokens
at the end of every LLM layer (``mllm_align/align/moca.py``), identity at init (the paper's
``moca_std 0``). The LLM stays frozen; MoCa is not part of it and trains with the projector at lr
1e-3, without weight decay. Global batch 256 (8 GPUs × 32), cosine with 3 % warm-up, 1 epoch
(≈2181 iterations), bf16.

    bash tools/dist.sh train projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain.py 8 --deepspeed deepspeed_zero2

``iter_N.pth`` holds the projector and ``moca.u`` / ``moca.v``; the SFT config
(``../finetune/llava_v15_7b_moca_finetune.py``) starts from it. Edit the base recipe's PART 1 paths
(or pass them with ``--cfg-options``). Tiny CPU twin: ``llava_v15_7b_moca_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the base recipe's names come from the read_base() chain)
from mmengine.config import read_base

from mllm_align.align import MoCa

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain import *  # the base recipe, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# MoCa (mllm_align/align/moca.py)
moca_init_std = 0.0  # std of noise on the identity init (u = 1, v = 0); 0 = outputs unchanged at init

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
# The method's blocks, named so that the tiny twin and the recipes built on this one import them.
moca_plugins = dict(moca=dict(type=MoCa, init_std=moca_init_std))
model.plugins.update(moca_plugins)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# No weight decay on MoCa's u, v (moca.u, moca.v), whatever weight_decay is set to.
moca_paramwise_cfg = dict(custom_keys={'moca': dict(decay_mult=0.0)})
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)
