"""Tiny CPU twin of ``llava_v15_7b_law_pretrain.py``: the LLaVA tiny twin with the law's tiny vision settings.

    python tools/build_tiny_assets.py   # once: data/tiny/
    bash tools/dist.sh train projects/law/configs/pretrain/llava_v15_7b_law_pretrain_tiny_cpu.py 1 \\
        --cfg-options vision_setting=tiny_clip_dinov2

Settings over the tiny random towers: ``tiny_clip``, ``tiny_siglip``, ``tiny_dinov2`` (32 px, 4×4 grids) and
``tiny_clip_dinov2`` (CLIP + DINOv2, DINOv2 read at 64 px, its 8×8 grid resized onto CLIP's 4×4). The method
block is the recipe's, applied to these settings; the schedule is the tiny one, shortened for the law sweep's
twin (``projects/law/sweeps/tiny_cpu.py``): 12 iterations, the last one saved.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain)
from mmengine.config import read_base

from mllm_align.models import MultiTowerEncoder, MultiTowerImageProcessor, VisionTower, load_image_processor

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # the base recipe's tiny twin

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
vision_setting = 'tiny_clip'
tiny_vision = data_root + 'vision/'
max_iters = 12
save_steps = 12

tiny_tower = dict(type=VisionTower, select_layer=-2, select_feature='patch')
vision_settings = dict(
    tiny_clip=dict(table_name='tiny CLIP', num_image_tokens=16,
                   visual_encoder=dict(tiny_tower, path=tiny_vision + 'clip'),
                   image_processor=dict(type=load_image_processor, path=tiny_vision + 'clip')),
    tiny_siglip=dict(table_name='tiny SigLIP', num_image_tokens=16,
                     visual_encoder=dict(tiny_tower, path=tiny_vision + 'siglip'),
                     image_processor=dict(type=load_image_processor, path=tiny_vision + 'siglip')),
    tiny_dinov2=dict(table_name='tiny DINOv2', num_image_tokens=16,
                     visual_encoder=dict(tiny_tower, path=tiny_vision + 'dinov2'),
                     image_processor=dict(type=load_image_processor, path=tiny_vision + 'dinov2')),
    tiny_clip_dinov2=dict(
        table_name='tiny C+D', num_image_tokens=16,
        visual_encoder=dict(type=MultiTowerEncoder, towers=[
            dict(tiny_tower, path=tiny_vision + 'clip'),
            dict(tiny_tower, path=tiny_vision + 'dinov2', image_size=64)]),
        image_processor=dict(type=MultiTowerImageProcessor, processors=[
            dict(type=load_image_processor, path=tiny_vision + 'clip'),
            dict(type=load_image_processor, path=tiny_vision + 'dinov2', size=dict(shortest_edge=64),
                 crop_size=dict(height=64, width=64))])),
)

#######################################################################
#          The recipe's method block, on the tiny settings            #
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
train_cfg.update(max_iters=max_iters, max_epochs=None)  # counted in iterations (default_schedule.py)
default_hooks.checkpoint.update(interval=save_steps)
