"""LLaVA-1.5-7B stage 1 with MoCa and CAL together: projector + MoCa, CAL-weighted caption loss.

``projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain.py`` (inherited: LLaVA-1.5 pre-training
plus MoCa, u ⊙ h + v at vision positions after every decoder layer, no weight decay on u, v) with CAL
(``mllm_align/align/cal.py``: each caption token re-weighted by how much the image raises its logit,
from a second, no-grad pass without the image) switched on as well, with the settings of
``llava_v15_7b_cal_pretrain.py`` (imported). Plug-ins run in the order moca, cal; deleting either
plug-in line switches that method off. Shows that the methods combine; it is not a published
recipe.

    bash tools/dist.sh train projects/cal/configs/pretrain/llava_v15_7b_moca_cal_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_v15_7b_moca_cal_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....moca.configs.pretrain.llava_v15_7b_moca_pretrain import *  # LLaVA-1.5 + MoCa, PART 1-5
    from .llava_v15_7b_cal_pretrain import cal_alpha, cal_beta, cal_no_image_pass, cal_plugins, cal_pooling, cal_window

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.plugins.update(cal_plugins)  # after moca: plug-ins run in the order they were added
