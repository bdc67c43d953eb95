"""The Law of Vision Representation's settings (arXiv 2408.16357, v3 Table 6) by name, for the law recipes.

Each entry: ``visual_encoder`` (a ``model.visual_encoder`` config), ``image_processor`` (the dataset's), the
``num_image_tokens`` that makes, and ``table_name`` (the row label in ``data/law/v3_table6.csv``). Paths are
under ``vision_root``: edit it (or a path) to your local copies of the HF checkpoints named in the comments.
Combinations ("C+D" = CLIP + DINOv2) are a ``MultiTowerEncoder`` whose towers each keep their own processor,
on the first tower's token grid.

Not here (the toolkit loads HF vision models, not diffusion U-Nets/DiTs as feature extractors): SD1.5 @768,
SD2.1 @768, SD-ImVar @768, SDXL @512, DiT-XL/2 @512, SD3 @512 — their rows of the paper's table stay usable
for the AC law fit (``tools/ac_law.py``), not for training here. SigLIP2-L/16 @256 needs transformers' Siglip2
vision model, which ``VisionTower`` does not load yet.
"""
from mllm_align.models import MultiTowerEncoder, MultiTowerImageProcessor, VisionTower, load_image_processor

vision_root = 'models/'

clip_l14_336 = vision_root + 'clip-vit-large-patch14-336'  # openai/clip-vit-large-patch14-336
clip_l14_224 = vision_root + 'clip-vit-large-patch14'  # openai/clip-vit-large-patch14
openclip_l14_224 = vision_root + 'CLIP-ViT-L-14-laion2B-s32B-b82K'  # laion/CLIP-ViT-L-14-laion2B-s32B-b82K
siglip_b16_224 = vision_root + 'siglip-base-patch16-224'  # google/siglip-base-patch16-224
siglip_l16_256 = vision_root + 'siglip-large-patch16-256'  # google/siglip-large-patch16-256
dinov2_l14 = vision_root + 'dinov2-large'  # facebook/dinov2-large

vision_settings = dict(
    clip_l14_336=dict(
        table_name='CLIP-L/14 @336', num_image_tokens=576,
        visual_encoder=dict(type=VisionTower, path=clip_l14_336, select_layer=-2, select_feature='patch'),
        image_processor=dict(type=load_image_processor, path=clip_l14_336)),
    clip_l14_224=dict(
        table_name='CLIP-L/14 @224', num_image_tokens=256,
        visual_encoder=dict(type=VisionTower, path=clip_l14_224, select_layer=-2, select_feature='patch'),
        image_processor=dict(type=load_image_processor, path=clip_l14_224)),
    openclip_l14_224=dict(
        table_name='OpenCLIP-L/14 @224', num_image_tokens=256,
        visual_encoder=dict(type=VisionTower, path=openclip_l14_224, select_layer=-2, select_feature='patch'),
        image_processor=dict(type=load_image_processor, path=openclip_l14_224)),
    siglip_b16_224=dict(
        table_name='SigLIP-B/16 @224', num_image_tokens=196,
        visual_encoder=dict(type=VisionTower, path=siglip_b16_224, select_layer=-2, select_feature='patch'),
        image_processor=dict(type=load_image_processor, path=siglip_b16_224)),
    siglip_l16_256=dict(
        table_name='SigLIP-L/16 @256', num_image_tokens=256,
        visual_encoder=dict(type=VisionTower, path=siglip_l16_256, select_layer=-2, select_feature='patch'),
        image_processor=dict(type=load_image_processor, path=siglip_l16_256)),
    dinov2_l14_224=dict(
        table_name='DINOv2-L/14 @224', num_image_tokens=256,
        visual_encoder=dict(type=VisionTower, path=dinov2_l14, select_layer=-2, select_feature='patch',
                            image_size=224),
        image_processor=dict(type=load_image_processor, path=dinov2_l14)),
    clip_dinov2_224=dict(
        table_name='C+D @224', num_image_tokens=256,
        visual_encoder=dict(type=MultiTowerEncoder, towers=[
            dict(type=VisionTower, path=clip_l14_224, select_layer=-2, select_feature='patch'),
            dict(type=VisionTower, path=dinov2_l14, select_layer=-2, select_feature='patch', image_size=224)]),
        image_processor=dict(type=MultiTowerImageProcessor, processors=[
            dict(type=load_image_processor, path=clip_l14_224),
            dict(type=load_image_processor, path=dinov2_l14)])),
    clip_dinov2_336=dict(
        table_name='C+D @336', num_image_tokens=576,
        visual_encoder=dict(type=MultiTowerEncoder, towers=[
            dict(type=VisionTower, path=clip_l14_336, select_layer=-2, select_feature='patch'),
            dict(type=VisionTower, path=dinov2_l14, select_layer=-2, select_feature='patch', image_size=336)]),
        image_processor=dict(type=MultiTowerImageProcessor, processors=[
            dict(type=load_image_processor, path=clip_l14_336),
            dict(type=load_image_processor, path=dinov2_l14, size=dict(shortest_edge=336),
                 crop_size=dict(height=336, width=336))])),
)
