"""LLaVA-1.5-7B stage 2 with visual words and pseudo image features (VW-LMM-Vicuna-pif-7B).

``llava_v15_7b_vw_finetune.py`` (inherited) with the visual-word block of the pif pre-training recipe
(``vw_pif = True``: F′ = softmax(vm_head(F)) · E replaces the projected features), starting from that
recipe's output (``pretrained_pth``: projector + ``vm_head``). ZeRO-2 works as well as ZeRO-3:

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_v15_7b_vw_pif_finetune.py 8 --deepspeed deepspeed_zero3

Paths are the LLaVA-1.5 SFT recipe's PART 1; the tiny CPU twin is ``llava_v15_7b_vw_pif_finetune_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from .llava_v15_7b_vw_finetune import *  # visual words on LLaVA-1.5 SFT, PART 1-5
    from ..pretrain.llava_v15_7b_vw_pif_pretrain import vw_pif, vw_plugins  # pif on, as in stage 1

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The stage-1 output this run starts from (projector + vm_head; saved by llava_v15_7b_vw_pif_pretrain.py).
pretrained_pth = 'work_dirs/llava_v15_7b_vw_pif_pretrain/iter_2181.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(pretrained_pth=pretrained_pth)
model.plugins.update(vw_plugins)
