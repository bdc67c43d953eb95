"""LLaVA-1.5-7B stage 1: projector pre-training on LCS-558K.

Vicuna-7B-v1.5 + CLIP ViT-L/14-336 (penultimate layer, patch tokens) + mlp2x_gelu projector;
only the projector trains. Global batch 256 (8 GPUs × 32), lr 1e-3, cosine with 3 % warm-up,
1 epoch (≈2181 iterations), bf16, 2048 tokens (Liu et al., "Improved Baselines with Visual
Instruction Tuning", Table 9).

    bash tools/dist.sh train projects/llava/configs/pretrain/llava_v15_7b_pretrain.py 8 --deepspeed deepspeed_zero2

Written in full but for what every base recipe shares, taken from ``projects/_base_/``: the runtime
(``default_runtime.py``) and the schedule (``default_schedule.py``; this recipe sets its lr). The method
recipes (``projects/moca``, ``projects/cal``, ``projects/visual_words``) inherit it with ``read_base()``
and state only their own block. Edit PART 1 paths to your local
copies (see data/README.md). Tiny CPU twin:
``llava_v15_7b_pretrain_tiny_cpu.py``.
"""
from mmengine.config import read_base

from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook, MIRHook
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
data_path = data_root + 'LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = data_root + 'LLaVA-Pretrain/images'
template = 'plain'  # pre-training: image then caption, no chat scaffolding
max_length = 2048  # tokens after splicing (576 image tokens + text)
num_image_tokens = 576  # (336 / 14) ** 2 patch tokens per image; CLS dropped
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed

batch_size = 32  # per device; 8 devices → global 256
lr = 1e-3  # the projector alone trains
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log
# The rest of the schedule is LLaVA-1.5's, shared by the base recipes (PART 1 of projects/_base_/default_schedule.py:
# max_epochs 1, warmup_ratio 0.03, betas, weight_decay 0, max_norm 1, accumulative_counts 1);
# save_optimizer (True) is in projects/_base_/default_runtime.py.

save_steps = 500
save_total_limit = -1  # keep every iteration: MIR scores them later (a few MB each)

# Chat samples during training (EvaluateChatHook): any local images and questions.
evaluation_freq = 500
evaluation_images = [data_root + 'eval_images/view.jpg']
evaluation_inputs = ['Please describe this picture.', 'What is unusual about this image?']

# MIR tracked during training (MIRHook): probe images from the training data, text from
# data/mir_texts/ (or point `texts` at CNN/DailyMail .story files as in the paper).
mir_interval = 500
mir_eval_num = 20

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
    freeze_llm=True,
    freeze_visual_encoder=True,
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
    dict(type=MIRHook, interval=mir_interval, eval_num=mir_eval_num, images=data_path,
         image_folder=image_folder, image_processor=image_processor),
]
