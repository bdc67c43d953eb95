"""Tiny CPU config with both issue-4 plug-ins on: MoCa + CAL (pre-training).

Same as ``projects/visual_words/configs/pretrain/llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py`` without
the visual-word loss: MoCa (u ⊙ h + v at vision positions after every decoder layer) and CAL (token
re-weighting from a no-image pass) switched on together. Deleting either block in PART 2 switches it off.

    bash tools/dist.sh train projects/cal/configs/pretrain/llava_v15_7b_moca_cal_pretrain_tiny_cpu.py 2
"""
from mmengine.config import read_base
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW

from mllm_align.align import CAL, MoCa
from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook, MIRHook
from mllm_align.engine.loops import TrainLoop
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

with read_base():
    from ...._base_.default_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
data_root = 'data/tiny/'  # built by tools/build_tiny_assets.py
llm_name_or_path = data_root + 'llm/llama'
visual_encoder_name_or_path = data_root + 'vision/clip'
data_path = data_root + 'shapes/pretrain.json'
image_folder = data_root + 'shapes'
template = 'plain'  # pre-training: image then caption, no chat scaffolding
max_length = 256  # tokens after splicing (16 image tokens + text)
num_image_tokens = 16  # (32 / 8) ** 2 patch tokens of the tiny CLIP; CLS dropped
llm_dtype = 'float32'
attn_implementation = 'sdpa'


# MoCa (mllm_align/align/moca.py)
moca_init_std = 0.0  # std of noise on the identity init (u = 1, v = 0); 0 = outputs unchanged at init

# CAL (mllm_align/align/cal.py): token weights w = AvgPool_window(clamp(Δ, alpha, beta)), Δ the gold-token
# logit with the image minus without it.
cal_alpha = 1.0  # weight floor: tokens the image does not help keep weight 1
cal_beta = 5.0  # weight cap: limits how much one visually grounded token can dominate
cal_window = 3  # centred average over neighbouring targets (1 = no pooling)
cal_pooling = 'sample'  # per sample, supervised tokens; 'flat' = the seed (whole batch, all positions)
cal_no_image_pass = 'drop'  # image tokens dropped, positions kept; 'mask' = the seed's masked pass

batch_size = 8  # per process; 2 processes → global 16
accumulative_counts = 1
dataloader_num_workers = 0
max_epochs = 1
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
warmup_ratio = 0.1  # ≥ 2 warm-up iterations at 38 iterations per epoch (2 processes)
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log

save_steps = 5
save_total_limit = -1  # keep every iteration: the demo scores each with MIR
save_optimizer = True  # needed for exact --resume

# Chat samples during training (EvaluateChatHook): local images and questions.
evaluation_freq = 40
evaluation_images = [data_root + 'shapes/images/eval_000000.png', data_root + 'shapes/images/eval_000001.png']
evaluation_inputs = ['Describe the image.', 'What colour is the shape?']

# MIR tracked during training (MIRHook): probe size and frequency.
mir_interval = 25
mir_eval_num = 8

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
    max_new_tokens=16,  # chat samples: short answers keep the CPU run quick
    freeze_llm=True,
    freeze_visual_encoder=True,
    moca=dict(type=MoCa, init_std=moca_init_std),
    cal=dict(type=CAL, alpha=cal_alpha, beta=cal_beta, window=cal_window, pooling=cal_pooling,
             no_image_pass=cal_no_image_pass))

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
    type=OptimWrapper,  # fp32 on CPU (AmpOptimWrapper refuses CPU)
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    # No weight decay on MoCa's u, v (moca.u, moca.v), whatever weight_decay is set to.
    paramwise_cfg=dict(custom_keys={'moca': dict(decay_mult=0.0)}))

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
    dict(type=MIRHook, interval=mir_interval, eval_num=mir_eval_num, images=data_path,
         image_folder=image_folder, image_processor=image_processor),
]
