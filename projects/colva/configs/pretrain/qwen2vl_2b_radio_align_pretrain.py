"""CoLVA stage 1 on Qwen2-VL-2B-Instruct: pre-train the object adapter on RADIO features (SA-1B pseudo videos).

CoLVA (Zhou et al., arXiv:2501.04670): RADIO (``nvidia/RADIO``, remote code, 1024² input → 64×64 grid of
1280-d features) is the vision expert; an adapter LayerNorm → Linear → GELU → Linear maps its features to the
LLM width. Each SA-1B image gives two augmented views; an object's adapter embedding in one view (its mask
average-pooled on the expert grid, τ = 0.55) is pulled towards Qwen2-VL's own embedding of the same object in
the other view (its merger tokens pooled under the mask) and pushed from the other objects there:
L = log(1 + Σ_neg exp(a·n − a·p)). Only the adapter trains; the LLM never runs. The released recipe's
settings: batch 1 per device × 8 accumulation (× 8 GPUs), lr 2e-4, AdamW, no weight decay, clipping 1,
3 % warm-up then cosine, 1 epoch, bf16.

    bash tools/dist.sh train projects/colva/configs/pretrain/qwen2vl_2b_radio_align_pretrain.py 8
    bash tools/dist.sh train projects/colva/configs/pretrain/qwen2vl_2b_radio_align_pretrain.py 8 \\
        --deepspeed deepspeed_zero3

The SFT recipe (``../finetune/qwen2vl_2b_radio_match_sft.py``) names the last ``iter_N.pth`` of this run as
its ``pretrained_adapter_pth``. Edit the PART 1 paths to your local copies (``huggingface-cli download
Qwen/Qwen2-VL-2B-Instruct`` and ``nvidia/RADIO`` on a machine with network access; SA-1B from Meta's site,
any subset of its ``sa_*.jpg`` + ``sa_*.json``). RADIO runs its own code: ``radio_trust_remote_code`` says
so; read that code before you set it. Tiny CPU twin: ``qwen2vl_2b_radio_align_pretrain_tiny_cpu.py``.
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler

from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.sa1b import SA1BPseudoVideoDataset
from mllm_align.models import load_tokenizer
from mllm_align.models.colva import CoLVAModel
from mllm_align.models.qwen2_vl import Qwen2VLModel, load_qwen2_vl_image_processor
from mllm_align.models.vision_expert import HFVisionExpert

with read_base():
    from ...._base_.default_loader import *  # noqa: F401,F403 (PART 3: DataLoader workers, pinning)
    from ...._base_.default_runtime import *  # noqa: F401,F403 (PART 5: hooks, env, logging)
    from ...._base_.default_schedule import *  # noqa: F401,F403 (PART 4: AdamW, warm-up + cosine)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
qwen2_vl_name_or_path = 'models/Qwen2-VL-2B-Instruct'  # LLM, vision transformer, merger, tokenizer, processor
radio_name_or_path = 'models/RADIO'  # nvidia/RADIO (v2.5-H family): the vision expert
radio_trust_remote_code = True  # RADIO ships its modelling code in the directory
vpt_token = '<VPT_CONTEXT>'  # CoLVA's object token (mllm_align.constants.VPT_TOKEN), added to the tokenizer
expert_image_size = 1024  # RADIO's input side in CoLVA: a 64×64 grid at patch 16
expert_grid = 64  # expert_image_size / RADIO's patch 16
data_path = 'data/sa1b/'  # SA-1B folder: sa_<n>.jpg + sa_<n>.json (SA-1B layout, RLE masks)
mask_threshold = 0.55  # pre-training's τ on both grids (the released code's value)
min_object_pixels = 16  # objects smaller than this in a view are dropped (and counted)
max_objects = 64  # objects per image pair at most (a seeded choice)
min_pixels = 256 * 28 * 28  # Qwen2-VL's pixel budget for the 1024² view: ≥ 256 tokens
max_pixels = 1369 * 28 * 28  # ≤ 1369 tokens: a 1024² view at its native resolution
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed
pretrained_pth = None  # an iter_N.pth of this model to start from

batch_size = 1  # per device (the released recipe); 8 devices × 8 accumulation → 64 images per step
accumulative_counts = 8
lr = 2e-4  # the adapter only
on_bad_sample = 'skip'  # SA-1B has images whose objects all vanish after augmentation: skipped and counted

save_steps = 1000
save_total_limit = 5  # adapter checkpoints are a few MB

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=qwen2_vl_name_or_path, extra_special_tokens=[vpt_token])
image_processor = dict(type=load_qwen2_vl_image_processor, path=qwen2_vl_name_or_path, min_pixels=min_pixels,
                       max_pixels=max_pixels)

model = dict(
    type=CoLVAModel,
    stage='pretrain',
    base=dict(
        type=Qwen2VLModel,
        path=qwen2_vl_name_or_path,
        dtype=llm_dtype,
        attn_implementation=attn_implementation,
        tokenizer=tokenizer,
        image_processor=image_processor,
        freeze_llm=True,
        freeze_visual_encoder=True,
        freeze_projector=True),  # pre-training trains the adapter only
    expert=dict(type=HFVisionExpert, path=radio_name_or_path, image_size=expert_image_size,
                trust_remote_code=radio_trust_remote_code, dtype=llm_dtype),
    mask_threshold=mask_threshold,
    base_mask_threshold=mask_threshold,
    pretrained_pth=pretrained_pth)

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset = dict(
    type=SA1BPseudoVideoDataset,
    data_root=data_path,
    image_processor=image_processor,
    expert_image_size=expert_image_size,
    expert_grid=expert_grid,
    mask_threshold=mask_threshold,
    min_object_pixels=min_object_pixels,
    max_objects=max_objects,
    on_bad_sample=on_bad_sample)

# num_workers, persistent_workers, prefetch_factor, pin_memory: projects/_base_/default_loader.py
train_dataloader.update(  # noqa: F405
    batch_size=batch_size, dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=colva_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# optim_wrapper, param_scheduler, train_cfg: projects/_base_/default_schedule.py; this recipe's lr and accumulation.
optim_wrapper.optimizer.update(lr=lr)  # noqa: F405
optim_wrapper.update(accumulative_counts=accumulative_counts)  # noqa: F405

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)  # noqa: F405
custom_hooks = []  # no text to show: pre-training items hold images and masks only
