"""CoLVA stage 1 on InternVL2-4B (InternViT-300M + MLP + Phi-3-mini): pre-train the object adapter on RADIO features.

The method is the Qwen2-VL recipe's (``qwen2vl_2b_radio_align_pretrain.py``): two augmented views of each SA-1B
image, the adapter's embedding of an object in one view (RADIO at 1024², 64×64 grid, τ = 0.55) pulled towards
InternVL2's own embedding of the same object in the other view (its ``mlp1`` tokens pooled under the mask on the
16×16 token grid of one 448-px tile) and pushed from the other objects there. Only the adapter trains; the LLM
never runs. Pre-training reads each view as a single tile (``max_num_tiles = 1``): a mask needs one token grid to
pool over. The original remote-code checkpoint (``OpenGVLab/InternVL2-4B``) runs its own modelling code:
``internvl_trust_remote_code`` says so. The released settings: batch 1 per device × 8 accumulation (× 8 GPUs),
lr 2e-4, AdamW, no weight decay, clipping 1, 3 % warm-up then cosine, 1 epoch, bf16.

    bash tools/dist.sh train projects/colva/configs/pretrain/internvl2_phi3_4b_radio_align_pretrain.py 8
    bash tools/dist.sh train projects/colva/configs/pretrain/internvl2_phi3_4b_radio_align_pretrain.py 8 \\
        --deepspeed deepspeed_zero3

Edit the PART 1 paths (``huggingface-cli download OpenGVLab/InternVL2-4B`` and ``nvidia/RADIO``; SA-1B from Meta).
Tiny CPU twin: ``internvl2_phi3_4b_radio_align_pretrain_tiny_cpu.py``.
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler

from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.internvl_tiles import InternVLTileProcessor
from mllm_align.data.sa1b import SA1BPseudoVideoDataset
from mllm_align.models import load_tokenizer
from mllm_align.models.colva import CoLVAModel
from mllm_align.models.internvl import InternVLModel
from mllm_align.models.vision_expert import HFVisionExpert

with read_base():
    from ...._base_.default_loader import *  # noqa: F401,F403 (PART 3: DataLoader workers, pinning)
    from ...._base_.default_runtime import *  # noqa: F401,F403 (PART 5: hooks, env, logging)
    from ...._base_.default_schedule import *  # noqa: F401,F403 (PART 4: AdamW, warm-up + cosine)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
internvl_name_or_path = 'models/InternVL2-4B'  # remote-code checkpoint: InternViT + mlp1 + Phi-3, tokenizer
internvl_trust_remote_code = True  # InternVL2's chat model ships its modelling code in the directory
radio_name_or_path = 'models/RADIO'  # nvidia/RADIO: the vision expert
radio_trust_remote_code = True  # RADIO ships its modelling code in the directory
vpt_token = '<VPT_CONTEXT>'  # CoLVA's object token (mllm_align.constants.VPT_TOKEN), added to the tokenizer
expert_image_size = 1024  # RADIO's input side: a 64×64 grid at patch 16
expert_grid = 64
data_path = 'data/sa1b/'  # SA-1B folder: sa_<n>.jpg + sa_<n>.json (RLE masks)
mask_threshold = 0.55  # pre-training's τ on both grids
min_object_pixels = 16
max_objects = 64
max_num_tiles = 1  # one 448-px tile per view: the 16×16 token grid the base's object embeddings pool over
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed
pretrained_pth = None

batch_size = 1  # per device; 8 devices × 8 accumulation → 64 image pairs per step
accumulative_counts = 8
lr = 2e-4  # the adapter only
on_bad_sample = 'skip'

save_steps = 1000
save_total_limit = 2

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=internvl_name_or_path, trust_remote_code=internvl_trust_remote_code,
                 extra_special_tokens=[vpt_token])
image_processor = dict(type=InternVLTileProcessor.from_pretrained, path=internvl_name_or_path,
                       max_num_tiles=max_num_tiles)

model = dict(
    type=CoLVAModel,
    stage='pretrain',
    base=dict(
        type=InternVLModel,
        path=internvl_name_or_path,
        trust_remote_code=internvl_trust_remote_code,
        dtype=llm_dtype,
        attn_implementation=attn_implementation,
        tokenizer=tokenizer,
        template='phi3',
        max_num_tiles=max_num_tiles,
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
optim_wrapper.optimizer.update(lr=lr)  # noqa: F405
optim_wrapper.update(accumulative_counts=accumulative_counts)  # noqa: F405

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)  # noqa: F405
custom_hooks = []  # no text to show: pre-training items hold images and masks only
