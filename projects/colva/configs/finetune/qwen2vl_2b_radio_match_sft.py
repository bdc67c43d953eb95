"""CoLVA stage 2 on Qwen2-VL-2B-Instruct: LoRA SFT on object matching (MMVM-style) mixed with LLaVA instructions.

CoLVA (Zhou et al., arXiv:2501.04670): the object adapter pre-trained in stage 1 (``pretrained_adapter_pth``,
frozen here) turns RADIO's features under each object's mask into one embedding that replaces a
``<VPT_CONTEXT>`` token of "Objects in Image-1: <query object><VPT_CONTEXT>.\\nObjects in Image-2:
<object-1><VPT_CONTEXT>, …"; Qwen2-VL sees the images with the query's contour and the candidates' contours and ID
tags drawn, RADIO the clean images. The LLM trains through LoRA r=64, α=16 on every linear layer of its decoder
(the released setting); vision transformer, merger, RADIO and adapter are frozen. Data: the MMVMData choice-only
and reasoning sets (``zhouyik/MMVMData``) mixed with LLaVA-665K. Batch 2 per device × 8 accumulation (× 8 GPUs),
lr 2e-4, AdamW, no weight decay, clipping 1, 3 % warm-up then cosine, 1 epoch, bf16, gradient checkpointing.

    bash tools/dist.sh train projects/colva/configs/finetune/qwen2vl_2b_radio_match_sft.py 8

Where this differs from the released config, on purpose: LoRA dropout 0 (0.1 there: dropout draws from the RNG,
which checkpoints do not hold, so resume would not be exact); the released mixture also has ShareGPT-4o and
subsamples the whole mixture to 30 % (``repeat_time=0.3``): add datasets to ``train_dataset.datasets`` to match.
The adapter is frozen, as the README says (one released SFT config leaves it trainable). Edit the PART 1 paths;
``pretrained_adapter_pth`` is the stage-1 checkpoint. Tiny CPU twin: ``qwen2vl_2b_radio_match_sft_tiny_cpu.py``.
"""
from mmengine.config import read_base
from peft import LoraConfig

from mllm_align.data import LengthGroupedSampler, LLaVADataset
from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.llava_dataset import ConcatDataset
from mllm_align.data.mmvm_sft import MMVMSFTDataset
from mllm_align.engine.hooks import DatasetInfoHook
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
radio_name_or_path = 'models/RADIO'  # nvidia/RADIO: the vision expert
radio_trust_remote_code = True  # RADIO ships its modelling code in the directory
vpt_token = '<VPT_CONTEXT>'  # CoLVA's object token (mllm_align.constants.VPT_TOKEN), added to the tokenizer
pretrained_adapter_pth = 'work_dirs/qwen2vl_2b_radio_align_pretrain/iter_15728.pth'  # stage 1's last checkpoint
expert_image_size = 1024  # RADIO's input side: a 64×64 grid at patch 16
expert_grid = 64
mask_threshold = 0.5  # SFT's τ on the expert grid (the released code's value)
data_root = 'data/'
data_path = data_root + 'llava_data/LLaVA-Instruct-665K/llava_v1_5_mix665k.json'
llava_image_folder = data_root + 'llava_data/llava_images'
match_choice_data_path = data_root + 'cross_image_reasoning/mllm_match_choices_sft.json'  # MMVMData
match_reasoning_data_path = data_root + 'cross_image_reasoning/mllm_match_reasoning_sft.json'
match_image_root = data_root  # the MMVMData file names are relative to the data/ folder
template = 'qwen2_vl'
min_pixels = 256 * 28 * 28
max_pixels = 1280 * 28 * 28  # ≤ 1280 tokens per image: the memory knob
max_length = 4096
num_image_tokens = 400  # length estimate per image for the sampler only
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed
lora_r = 64
lora_alpha = 16
lora_dropout = 0.0  # > 0 draws from the RNG, which checkpoints do not hold: resume would no longer be bitwise
pretrained_pth = None  # an iter_N.pth of this model to start from

batch_size = 2  # per device (the released recipe); 8 devices × 8 accumulation → 128 samples per step
accumulative_counts = 8
lr = 2e-4  # LoRA
on_bad_sample = 'skip'  # matching cases whose objects vanish on the expert grid are skipped and counted

save_steps = 1000
save_total_limit = 5

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=qwen2_vl_name_or_path, extra_special_tokens=[vpt_token])
image_processor = dict(type=load_qwen2_vl_image_processor, path=qwen2_vl_name_or_path, min_pixels=min_pixels,
                       max_pixels=max_pixels)

model = dict(
    type=CoLVAModel,
    stage='sft',
    base=dict(
        type=Qwen2VLModel,
        path=qwen2_vl_name_or_path,
        dtype=llm_dtype,
        attn_implementation=attn_implementation,
        tokenizer=tokenizer,
        image_processor=image_processor,
        template=template,
        freeze_llm=True,
        freeze_visual_encoder=True,
        freeze_projector=True,
        llm_lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias='none'),
        gradient_checkpointing=True),
    expert=dict(type=HFVisionExpert, path=radio_name_or_path, image_size=expert_image_size,
                trust_remote_code=radio_trust_remote_code, dtype=llm_dtype),
    mask_threshold=mask_threshold,
    freeze_adapter=True,
    adapter_pth=pretrained_adapter_pth,
    pretrained_pth=pretrained_pth,
    plugins=dict())

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
match_dataset = dict(
    type=MMVMSFTDataset,
    tokenizer=tokenizer,
    template=template,
    image_processor=image_processor,
    expert_image_size=expert_image_size,
    expert_grid=expert_grid,
    image_root=match_image_root,
    mask_threshold=mask_threshold,
    max_length=max_length,
    num_image_tokens=num_image_tokens,
    pad_image_to_square=False,  # Qwen2-VL keeps the aspect ratio
    on_bad_sample=on_bad_sample)
train_dataset = dict(
    type=ConcatDataset,
    datasets=[
        dict(match_dataset, data_path=match_choice_data_path, form='choice'),
        dict(match_dataset, data_path=match_reasoning_data_path, form='reasoning'),
        dict(type=LLaVADataset, data_path=data_path, image_folder=llava_image_folder, tokenizer=tokenizer,
             template=template, image_processor=image_processor, max_length=max_length,
             num_image_tokens=num_image_tokens, pad_image_to_square=False, on_bad_sample=on_bad_sample),
    ])

# num_workers, persistent_workers, prefetch_factor, pin_memory: projects/_base_/default_loader.py
train_dataloader.update(  # noqa: F405
    batch_size=batch_size, dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, per_device_batch_size=batch_size * accumulative_counts),  # noqa: F405
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
custom_hooks = [dict(type=DatasetInfoHook)]
