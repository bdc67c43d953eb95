"""LLaVA-1.5-7B stage 1 with visual words (VW-LMM): projector + vm_head pre-training on LCS-558K.

The LLaVA-1.5 pre-training recipe (``projects/llava/configs/pretrain/llava_v15_7b_pretrain.py``,
inherited: Vicuna-7B-v1.5 + CLIP ViT-L/14-336, mlp2x_gelu, global batch 256, lr 1e-3, 1 epoch, bf16)
plus the visual-word loss (Peng et al., "Multi-modal Auto-regressive Modeling via Visual Words",
arXiv:2403.07720): total = CE_text + vw_weight · mean KL(q_t ‖ p_{t-1}) over the 576 image slots.
The LLM stays frozen; the projector and ``vm_head`` (V × D = 32000 × 4096) train and are saved.
The reference publishes no training script: the schedule is LLaVA-1.5's.

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_v15_7b_vw_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_vw_pretrain_tiny_cpu.py``. Pseudo-image-feature variant: ``llava_v15_7b_vw_pif_pretrain.py``;
on Mistral-7B: ``llava_mistral_7b_vw_pretrain.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the base recipe's names come from the read_base() chain)
from mmengine.config import read_base

from mllm_align.align import VisualWords

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain import *  # the base recipe, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Visual words (mllm_align/align/visual_words.py): vm_head maps each image slot's projected feature to a
# distribution q over the vocabulary; the LLM's logits one position earlier predict it (KL(q || p)).
vw_weight = 1.0  # L = CE_text + vw_weight * L_vm (the reference adds them with 1.0)
vw_detach_target = False  # as the reference; True: no gradient through the target q (see VisualWords)
vw_pif = False  # True: pseudo image features F' = softmax(vm_head(F)) E replace F (VW-LMM-pif)
vw_vm_head_init = 'normal'  # the reference's init N(0, 0.02); 'lm_head'/'embed_tokens' copy the LLM matrix

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
# The method's block, named so that the tiny twin and the recipes built on this one import it.
vw_plugins = dict(visual_words=dict(type=VisualWords, weight=vw_weight, detach_target=vw_detach_target, pif=vw_pif,
                                    vm_head_init=vw_vm_head_init))
model.plugins.update(vw_plugins)
