"""Qwen2-VL-2B-Instruct: supervised fine-tuning on LLaVA-format data (LoRA on the LLM, merger trained).

Qwen2-VL (Wang et al., arXiv:2409.12191) is used as transformers ships it
(``Qwen2VLForConditionalGeneration``, loaded from a local directory): native-resolution images within
[min_pixels, max_pixels] (each image becomes h·w / 28² tokens), M-RoPE positions, its own vision
transformer. The vision transformer stays frozen; the merger (its projector) trains fully and the LLM
through LoRA r=64, α=16 (the Qwen2-VL SFT setting of CoLVA). Global batch 128 (8 GPUs × 16), lr
1e-4, cosine with 3 % warm-up, 1 epoch, bf16, gradient checkpointing, the
``qwen2_vl`` chat template (token ids equal to Qwen2-VL-Instruct's own template).

    bash tools/dist.sh train projects/qwen2_vl/configs/finetune/qwen2_vl_2b_instruct_finetune.py 8

Written in full but for the runtime and the schedule every base recipe takes from ``projects/_base_/``
(``default_runtime.py``, ``default_schedule.py``; this recipe sets its lr). Method recipes inherit it with
``read_base()`` and add their block to ``model.plugins`` (``moca``, ``cal``, ``visual_words``). Edit the PART 1
paths to your local copies
(``huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir models/Qwen2-VL-2B-Instruct`` on a
machine with network access; see data/README.md for the data). Tiny CPU twin:
``qwen2_vl_2b_instruct_finetune_tiny_cpu.py``.
"""
from mmengine.config import read_base
from peft import LoraConfig

from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook
from mllm_align.models import load_tokenizer
from mllm_align.models.qwen2_vl import Qwen2VLModel, load_qwen2_vl_image_processor

with read_base():
    from ...._base_.default_loader import *  # noqa: F401,F403 (PART 3: DataLoader workers, pinning)
    from ...._base_.default_runtime import *  # noqa: F401,F403 (PART 5: hooks, env, logging)
    from ...._base_.default_schedule import *  # noqa: F401,F403 (PART 4: AdamW, warm-up + cosine)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
qwen2_vl_name_or_path = 'models/Qwen2-VL-2B-Instruct'  # LLM, vision transformer, merger, tokenizer, processor
data_root = 'data/llava_data/'
data_path = data_root + 'LLaVA-Instruct-665K/llava_v1_5_mix665k.json'
image_folder = data_root + 'llava_images'  # coco/ gqa/ ocr_vqa/ textvqa/ vg/
template = 'qwen2_vl'  # <|vision_start|><image><|vision_end|> in ChatML, as Qwen2-VL-Instruct's template
pretrained_pth = None  # an iter_N.pth of this model to start from (e.g. a MoCa pre-training run)
min_pixels = 256 * 28 * 28  # ≥ 256 tokens per image (Qwen2-VL's recommended range)
max_pixels = 1280 * 28 * 28  # ≤ 1280 tokens per image: the memory knob
max_length = 4096  # tokens after splicing (image tokens + text)
num_image_tokens = 400  # length estimate per image for the sampler only (a 640×480 photo ≈ 391 tokens)
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed
lora_r = 64  # LoRA rank on every linear layer of the decoder
lora_alpha = 16
lora_dropout = 0.0  # > 0 draws from the RNG, which checkpoints do not hold: resume would no longer be bitwise

batch_size = 16  # per device; 8 devices → global 128
lr = 1e-4  # LoRA and merger
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log
# The rest of the schedule is LLaVA-1.5's, shared by the base recipes (PART 1 of projects/_base_/default_schedule.py:
# max_epochs 1, warmup_ratio 0.03, betas, weight_decay 0, max_norm 1, accumulative_counts 1);
# save_optimizer (True) is in projects/_base_/default_runtime.py.

save_steps = 500
save_total_limit = 2  # LoRA + merger checkpoints are small; raise to keep more for MIR scoring

# Chat samples during training (EvaluateChatHook): local images and questions.
evaluation_freq = 500
evaluation_images = [data_root + 'eval_images/view.jpg']
evaluation_inputs = ['Please describe this picture.', 'What is unusual about this image?']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=qwen2_vl_name_or_path)
image_processor = dict(type=load_qwen2_vl_image_processor, path=qwen2_vl_name_or_path, min_pixels=min_pixels,
                       max_pixels=max_pixels)

model = dict(
    type=Qwen2VLModel,
    path=qwen2_vl_name_or_path,
    dtype=llm_dtype,
    attn_implementation=attn_implementation,
    tokenizer=tokenizer,
    image_processor=image_processor,
    template=template,
    freeze_llm=True,
    freeze_visual_encoder=True,
    freeze_projector=False,
    llm_lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias='none'),
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
    pad_image_to_square=False,  # Qwen2-VL keeps the aspect ratio
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
         evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq,
         pad_image_to_square=False),  # as the training images: aspect ratio kept
]
