"""LLaVA-1.5-7B stage 1 with three alignment plug-ins at once: MoCa + CAL + visual words.

``projects/cal/configs/pretrain/llava_v15_7b_moca_cal_pretrain.py`` (inherited: LLaVA-1.5
pre-training with MoCa and CAL) plus the visual-word loss with the settings of
``llava_v15_7b_vw_pretrain.py`` (imported). The three compose through ``LLaVAModel``'s plug-ins, in
the order moca, cal, visual_words: MoCa hooks the decoder layers, CAL replaces ``loss_lm``, visual
words add ``loss_vm``; deleting a plug-in line switches that method off. The projector, MoCa's u, v
and ``vm_head`` train; the LLM is frozen. Shows that the methods combine; it is not a published
recipe.

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_v15_7b_vw_moca_cal_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....cal.configs.pretrain.llava_v15_7b_moca_cal_pretrain import *  # LLaVA-1.5 + MoCa + CAL, PART 1-5
    from .llava_v15_7b_vw_pretrain import vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.plugins.update(vw_plugins)  # third, after moca and cal
