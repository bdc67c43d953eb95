"""LLaVA-1.5-7B stage 2 with visual words (VW-LMM): visual instruction tuning on LLaVA-665K.

The LLaVA-1.5 SFT recipe (``projects/llava/configs/finetune/llava_v15_7b_finetune.py``, inherited:
global batch 128, lr 2e-5, 1 epoch, bf16, gradient checkpointing, vicuna_v1) plus the visual-word
loss (Peng et al., arXiv:2403.07720), with the settings of the pre-training recipe
(``../pretrain/llava_v15_7b_vw_pretrain.py``, imported). Starts from the stage-1 output
(``pretrained_pth``: projector + ``vm_head``); the LLM, projector and ``vm_head`` train, the CLIP
tower stays frozen. VW-LMM-Vicuna-7B.

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_v15_7b_vw_finetune.py 8 --deepspeed deepspeed_zero3

ZeRO-3, as LLaVA's SFT (visual words gather ``vm_head`` and E under ZeRO-3: ``mllm_align/align/visual_words.py``;
tested on CPU, not yet at 7B on GPUs); ``--deepspeed deepspeed_zero2`` works too.

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_vw_finetune_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune import *  # the base recipe, PART 1-5
    from ..pretrain.llava_v15_7b_vw_pretrain import vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The stage-1 output this run starts from (projector + vm_head; saved by llava_v15_7b_vw_pretrain.py).
pretrained_pth = 'work_dirs/llava_v15_7b_vw_pretrain/iter_2181.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(pretrained_pth=pretrained_pth)
model.plugins.update(vw_plugins)
