"""LLaVA-1.5-7B stage 1 with visual words and pseudo image features (VW-LMM-pif).

``llava_v15_7b_vw_pretrain.py`` (inherited) with ``vw_pif = True``: the projected features F are
replaced by F′ = softmax(vm_head(F)) · E (E the LLM input embedding matrix), so the LLM sees convex
combinations of its own token embeddings; the visual-word target q is computed from F before the
replacement, as in the reference (``vw_pif_arch.py``). The LLM stays frozen; the projector and
``vm_head`` train.

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_v15_7b_vw_pif_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_vw_pif_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the recipe's names come from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .llava_v15_7b_vw_pretrain import *  # visual words on LLaVA-1.5, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
vw_pif = True  # pseudo image features F' = softmax(vm_head(F)) E replace F

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
vw_plugins.visual_words.update(pif=vw_pif)  # the block the twin and the pif SFT recipe import
model.plugins.update(vw_plugins)
