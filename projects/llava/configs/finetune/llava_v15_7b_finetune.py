"""LLaVA-1.5-7B stage 2: visual instruction tuning on LLaVA-665K.

Starts from the stage-1 projector (``pretrained_pth``); the LLM and projector train, the CLIP
tower stays frozen. Global batch 128 (8 GPUs × 16), lr 2e-5, cosine with 3 % warm-up, 1 epoch
(≈5198 iterations), bf16, 2048 tokens, gradient checkpointing, vicuna_v1 template (Liu et al.,
"Improved Baselines with Visual Instruction Tuning", Table 9).

    bash tools/dist.sh train projects/llava/configs/finetune/llava_v15_7b_finetune.py 8 --deepspeed deepspeed_zero3

Written in full but for what every base recipe shares, taken from ``projects/_base_/``: the runtime
(``default_runtime.py``) and the schedule (``default_schedule.py``; this recipe sets its lr). The method
recipes (``projects/moca``, ``projects/cal``, ``projects/visual_words``) inherit it with ``read_base()``
and state only their own block. Edit PART 1 paths to your local
copies (see data/README.md). Tiny CPU twin:
``llava_v15_7b_finetune_tiny_cpu.py``.
"""
from mmengine.config import read_base

from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

with read_base():
    from ...._base_.default_loader import *  # noqa: F401,F403 (PART 3: DataLoader workers, pinning)
    from ...._base_.default_runtime import *  # noqa: F401,F403 (PART 5: hooks, env, logging)
    from ...._base_.default_schedule import *  # noqa: F401,F403 (PART 4: AdamW, warm-up + cosine)

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
lr = 2e-5  # the whole LLM trains
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log
# The rest of the schedule is LLaVA-1.5's, shared by the base recipes (PART 1 of projects/_base_/default_schedule.py:
# max_epochs 1, warmup_ratio 0.03, betas, weight_decay 0, max_norm 1, accumulative_counts 1);
# save_optimizer (True) is in projects/_base_/default_runtime.py.

save_steps = 1000
save_total_limit = 2  # full-LLM checkpoints are ~14 GB each

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

# num_workers, persistent_workers, prefetch_factor, pin_memory: projects/_base_/default_loader.py
train_dataloader.update(  # noqa: F405
    batch_size=batch_size, dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, per_device_batch_size=batch_size * accumulative_counts),  # noqa: F405
    collate_fn=dict(type=llava_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# optim_wrapper, param_scheduler, train_cfg: projects/_base_/default_schedule.py (AdamW, bf16 AMP, clipping,
# linear warm-up then cosine over max_epochs); the learning rate is this recipe's.
optim_wrapper.optimizer.update(lr=lr)  # noqa: F405

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# default_hooks, env_cfg, visualizer, log_processor, randomness: projects/_base_/default_runtime.py.
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)  # noqa: F405
custom_hooks = [
    dict(type=DatasetInfoHook),
    dict(type=EvaluateChatHook, image_processor=image_processor, evaluation_images=evaluation_images,
         evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq),
]
