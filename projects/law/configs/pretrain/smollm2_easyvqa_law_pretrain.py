"""Law of Vision Representation, stage 1 on small real models: SmolLM2-135M + one of four vision settings.

The LLaVA-1.5 pre-training recipe (``projects/llava/configs/pretrain/llava_v15_7b_pretrain.py``: only the
projector trains, no alignment plug-in) with the demo's small real models and data
(``projects/demo/_base_/easyvqa_real.py``: SmolLM2-135M-Instruct, frozen; one caption per easy-VQA training
image) and its vision representation taken from the catalogue below, so that the law's sweep
(``projects/law/sweeps/easyvqa_real.py``) can train all four on a laptop:

    python data/prepare_real.py   # once: data/real/
    bash tools/dist.sh train projects/law/configs/pretrain/smollm2_easyvqa_law_pretrain.py 2 \\
        --cfg-options vision_setting=dinov2_small_efficientnet_lite0

Settings (``vision_setting``), all at 112 px on a 4×4 grid, 16 image tokens:

- ``random_vit``: DINOv2-S/14's architecture with random weights (``data/real/vit_small_random``, seeded) and
  DINOv2-S's processor; 8×8 patches average-pooled 2×2, 384 channels. The "no representation" baseline.
- ``efficientnet_lite0``: EfficientNet-Lite0 (ImageNet), its final 1×1-conv map (``CNNFeatureMapTower``,
  1280 channels); five stride-2 stages turn 112 px into 4×4 (112 → 56 → 28 → 14 → 7 → 4).
- ``dinov2_small``: DINOv2-S/14, layer −2, pooled as ``random_vit``.
- ``dinov2_small_efficientnet_lite0``: both towers, each on its own preprocessing (``MultiTowerEncoder``),
  already on the same 4×4 grid (no resizing), channels concatenated: 384 + 1280 = 1664.

Why 112 px and 16 tokens for every setting: a CPU step is dominated by the LLM pass over the image tokens
(about 1.4 s per iteration at 16 tokens on 2 cores), and one grid for all keeps the settings comparable
(the LLM sees the same number of tokens; only the representation changes). The sweep trains four runs
back to back, so each is 120 iterations (about 3 minutes on 2 cores; global batch 16, about half an epoch of
the 4,000 captions) and only the last checkpoint is saved (the sweep scores the final one). The C score of
this config as it trains reads the same 4×4 grid (what the projector sees), too coarse to rank the towers
(2026-12-02, PCK@0.10 on data/real/correspondence: random 8.9 %, EfficientNet 16.7 %, DINOv2 15.6 %,
both 18.9 %); ``--cfg-options vision_image_size=224 vision_pool=1`` re-derives every setting on the towers'
native grids (DINOv2 16×16, EfficientNet 7×7, the pair on DINOv2's 16×16), which is where the sweep scores C
(``c_score.cfg_options`` of ``projects/law/sweeps/easyvqa_real.py``): random 30.0 %, EfficientNet 42.2 %,
DINOv2 54.4 %, both 76.7 % (the paper's order; three pairs, 90 keypoints; the table: docs/design.md).
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then the demo's values)
from mmengine.config import read_base

from mllm_align.models import (CNNFeatureMapTower, MultiTowerEncoder, MultiTowerImageProcessor, VisionTower,
                               load_image_processor)

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain import *  # LLaVA-1.5 stage 1, PART 1-5
    from ....demo._base_.easyvqa_real import *  # SmolLM2-135M, easy-VQA, CPU sizes (rebinds PART 1)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
vision_setting = 'dinov2_small'  # a name in vision_settings below
data_path = data_root + 'pretrain.json'  # one caption per training image (4,000)
template = 'plain'  # pre-training: image then caption
max_length = 64  # 16 image tokens + a caption of a few words
lr = 1e-3  # LLaVA-1.5's projector lr
max_iters = 120  # 1,920 captions at global batch 16 (2 processes): each of the sweep's four runs ~3 min on 2 cores
warmup_iters = max(1, min(5, max_iters // 20))  # 5, or fewer in a shortened run
save_steps = max_iters  # the last iteration only: the sweep scores the final checkpoint
evaluation_freq = max_iters
evaluation_inputs = ['', '']  # the plain template keeps only the image: the model writes its caption

# The catalogue: every setting reads 112 px images (easy-VQA's are 64 px) and yields a 4×4 grid.
vision_image_size = 112  # --cfg-options vision_image_size=224 vision_pool=1: the towers' native grids (C score)
vision_pool = 2  # ViT-S/14 at 112 px: 8×8 patches, 2×2 average pooling -> 4×4
vit_tokens = (vision_image_size // 14 // vision_pool) ** 2  # 16 (the multi-tower grid is the ViT's)
cnn_tokens = (-(-vision_image_size // 32)) ** 2  # EfficientNet: five ceil-halvings = ceil(side / 32); 16
law_image_processor = dict(type=load_image_processor, size=dict(shortest_edge=vision_image_size),
                           crop_size=dict(height=vision_image_size, width=vision_image_size))
law_vit = dict(type=VisionTower, select_layer=select_layer, select_feature='patch', image_size=vision_image_size,
               pool=vision_pool)
law_cnn = dict(type=CNNFeatureMapTower, path=real_root + 'efficientnet_lite0', image_size=vision_image_size)
vision_settings = dict(
    random_vit=dict(
        table_name='random ViT-S/14', num_image_tokens=vit_tokens,
        visual_encoder=dict(law_vit, path=real_root + 'vit_small_random'),
        image_processor=dict(law_image_processor, path=real_root + 'vit_small_random')),
    efficientnet_lite0=dict(
        table_name='EfficientNet-Lite0', num_image_tokens=cnn_tokens,
        visual_encoder=law_cnn,
        image_processor=dict(law_image_processor, path=real_root + 'efficientnet_lite0')),
    dinov2_small=dict(
        table_name='DINOv2-S/14', num_image_tokens=vit_tokens,
        visual_encoder=dict(law_vit, path=real_root + 'dinov2_small'),
        image_processor=dict(law_image_processor, path=real_root + 'dinov2_small')),
    dinov2_small_efficientnet_lite0=dict(
        table_name='DINOv2-S + EfficientNet-Lite0', num_image_tokens=vit_tokens,
        visual_encoder=dict(type=MultiTowerEncoder, towers=[dict(law_vit, path=real_root + 'dinov2_small'), law_cnn]),
        image_processor=dict(type=MultiTowerImageProcessor, processors=[
            dict(law_image_processor, path=real_root + 'dinov2_small'),
            dict(law_image_processor, path=real_root + 'efficientnet_lite0')])),
)

#######################################################################
#     The law recipe's method block: the chosen representation        #
#######################################################################
law_vision = vision_settings[vision_setting]
num_image_tokens = law_vision['num_image_tokens']
image_processor = law_vision['image_processor']
tokenizer.update(path=llm_name_or_path)
model.update(demo_model, tokenizer=tokenizer, template=template)
model['visual_encoder'] = dict(law_vision['visual_encoder'], dtype=llm_dtype)
train_dataset.update(data_path=data_path, image_folder=image_folder, tokenizer=tokenizer, template=template,
                     max_length=max_length, num_image_tokens=num_image_tokens)
# Assigned, not update()d: update merges dicts, and a setting's processor must replace the recipe's whole.
train_dataset['image_processor'] = image_processor
train_dataloader.update(demo_loader)
train_dataloader['dataset'] = train_dataset

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper.update(demo_optim_wrapper)
optim_wrapper.optimizer.update(lr=lr)
if not gpu:
    optim_wrapper.pop('loss_scale')
    optim_wrapper.pop('dtype')
param_scheduler = [dict(demo_warmup, end=warmup_iters), dict(demo_cosine, begin=warmup_iters, end=max_iters)]
train_cfg.update(max_iters=max_iters, max_epochs=None)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)
default_hooks.logger.update(interval=5)
custom_hooks[1].update(evaluation_images=evaluation_images, evaluation_inputs=evaluation_inputs,  # EvaluateChatHook
                       every_n_iters=evaluation_freq)
custom_hooks[1]['image_processor'] = image_processor
custom_hooks = custom_hooks[:2]  # no MIRHook: the law scores A and C on the final checkpoint (tools/law_sweep.py)
