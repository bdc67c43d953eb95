"""LLaVA-1.5-7B stage 2: visual instruction tuning on LLaVA-665K.

Starts from the stage-1 projector (``pretrained_pth``); the LLM and projector train, the CLIP
tower stays frozen. Global batch 128 (8 GPUs × 16), lr 2e-5, cosine with 3 % warm-up, 1 epoch
(≈5198 iterations), bf16, 2048 tokens, gradient checkpointing, vicuna_v1 template (Liu et al.,
"Improved Baselines with Visual Instruction Tuning", Table 9).

    bash tools/dist.sh train projects/llava/configs/finetune/llava_v15_7b_finetune.py 8 --deepspeed deepspeed_zero3

Written in full: the method recipes (``projects/moca``, ``projects/cal``, ``projects/visual_words``)
inherit it with ``read_base()`` and state only their own block. Edit PART 1 paths to your local
copies (see data/README.md). Tiny CPU twin:
``llava_v15_7b_finetune_tiny_cpu.py``.
"""
from mmengine.config import read_base
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook
from mllm_align.engine.loops import TrainLoop
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

with read_base():
    from ...._base_.default_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm_name_or_path = 'models/vicuna-7b-v1.5'
visual_encoder_name_or_path = 'models/clip-vit-large-patch14-336'
data_root = 'data/llava_data/'
data_path = data_root + 'LLaVA-Instruct-665K/llava_v1_5_mix665k.json'
image_folder = data_root + 'llava_images'  # coco/ gqa/ ocr_vqa/ textvqa/ vg/
template = 'vicuna_v1'
# The stage-1 output this run starts from (the projector; saved by the pretrain config).
pretrained_pth = 'work_dirs/llava_v15_7b_pretrain/iter_2181.pth'
max_length = 2048  # tokens after splicing (576 image tokens + text)
num_image_tokens = 576  # (336 / 14) ** 2 patch tokens per image; CLS dropped
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed

batch_size = 16  # per device; 8 devices → global 128
accumulative_counts = 1
dataloader_num_workers = 4
max_epochs = 1
lr = 2e-5
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
warmup_ratio = 0.03
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log

save_steps = 1000
save_total_limit = 2  # full-LLM checkpoints are ~14 GB each
save_optimizer = True  # needed for exact --resume

# Chat samples during training (EvaluateChatHook): any local images and questions.
evaluation_freq = 500
evaluation_images = [data_root + 'eval_images/view.jpg']
evaluation_inputs = ['Please describe this picture.', 'What is unusual about this image?']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=llm_name_or_path)
image_processor = dict(type=load_image_processor, path=visual_encoder_name_or_path)

model = dict(
    type=LLaVAModel,
    llm=dict(type=load_llm, path=llm_name_or_path, dtype=llm_dtype,
             attn_implementation=attn_implementation),
    visual_encoder=dict(type=VisionTower, path=visual_encoder_name_or_path, select_layer=-2,
                        select_feature='patch', dtype=llm_dtype),
    projector=dict(type='mlp2x_gelu'),
    tokenizer=tokenizer,
    template=template,
    freeze_llm=False,
    freeze_visual_encoder=True,
    gradient_checkpointing=True,
    pretrained_pth=pretrained_pth,
    plugins=dict())  # alignment plug-ins, applied in this order; method recipes add theirs (MoCa, CAL, …)

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset = dict(
    type=LLaVADataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    template=template,
    image_processor=image_processor,
    max_length=max_length,
    num_image_tokens=num_image_tokens,
    on_bad_sample=on_bad_sample)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    persistent_workers=dataloader_num_workers > 0,
    dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=llava_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='bfloat16')

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.update(  # noqa: F405
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps,  # noqa: F405
                    max_keep_ckpts=save_total_limit, save_optimizer=save_optimizer))
custom_hooks = [
    dict(type=DatasetInfoHook),
    dict(type=EvaluateChatHook, image_processor=image_processor, evaluation_images=evaluation_images,
         evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq),
]
