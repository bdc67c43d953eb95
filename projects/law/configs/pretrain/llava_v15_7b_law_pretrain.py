"""Law of Vision Representation, stage 1: LLaVA-1.5 projector pre-training on one vision setting.

The LLaVA-1.5 pre-training recipe with its vision representation taken from the catalogue
``projects/law/_base_/vision_settings.py`` (the paper's settings by name). Pick one per run:

    bash tools/dist.sh train projects/law/configs/pretrain/llava_v15_7b_law_pretrain.py 8 \\
        --cfg-options vision_setting=clip_dinov2_224

``--cfg-options vision_setting=NAME`` re-derives the encoder, every image processor and the image-token
count together. A whole table (stage 1 of each setting, then A and C) is one command:
``python tools/law_sweep.py projects/law/sweeps/<sweep>.py``. Tiny CPU twin:
``llava_v15_7b_law_pretrain_tiny_cpu.py``.
"""
# ruff: noqa: F403, F405 (names from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain import *  # the base recipe
    from ..._base_.vision_settings import *  # the catalogue

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
vision_setting = 'clip_l14_336'  # a name in vision_settings

#######################################################################
#                  The method: the chosen representation              #
#######################################################################
law_vision = vision_settings[vision_setting]
num_image_tokens = law_vision['num_image_tokens']
image_processor = law_vision['image_processor']
model['visual_encoder'] = dict(law_vision['visual_encoder'], dtype=llm_dtype)
train_dataset.update(num_image_tokens=num_image_tokens)
train_dataset['image_processor'] = image_processor
custom_hooks[1]['image_processor'] = image_processor  # EvaluateChatHook
custom_hooks[2]['image_processor'] = image_processor  # MIRHook
train_dataloader['dataset'] = train_dataset
