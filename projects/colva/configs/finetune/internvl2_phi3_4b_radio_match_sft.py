"""CoLVA stage 2 on InternVL2-4B: LoRA SFT on object matching (MMVMData) mixed with LLaVA instructions.

The method is the Qwen2-VL recipe's (``qwen2vl_2b_radio_match_sft.py``): the stage-1 adapter (frozen) fills each
``<VPT_CONTEXT>`` token with its object's RADIO embedding; InternVL2 sees the drawn images (dynamic 448-px tiles,
at most 6 + a thumbnail, ``<img>`` + 256 tokens a tile + ``</img>`` placed by the base, not the template), RADIO the
clean ones. LoRA r=128, α=256 on every linear layer of the Phi-3 decoder (``qkv_proj``, ``o_proj``,
``gate_up_proj``, ``down_proj``; the released setting), InternViT, ``mlp1``, RADIO and the adapter frozen, the
``phi3`` chat template (the released code formats Phi-3 data with InternLM2's template through an always-true
condition; not here). Batch 4 per device × 4 accumulation (× 8 GPUs), lr 2e-4, 8192 tokens, 1 epoch, bf16.

    bash tools/dist.sh train projects/colva/configs/finetune/internvl2_phi3_4b_radio_match_sft.py 8

Where this differs from the released config, on purpose: LoRA dropout 0 (0.05 there) so that resume is exact; the
loss is the LM loss (the released config sets ``contras_loss=True``, whose forward returns None); no ShareGPT-4o
part (add it to ``train_dataset.datasets``). Tiny CPU twin: ``internvl2_phi3_4b_radio_match_sft_tiny_cpu.py``.
"""
from mmengine.config import read_base
from peft import LoraConfig

from mllm_align.data import LengthGroupedSampler, LLaVADataset
from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.internvl_tiles import InternVLTileProcessor
from mllm_align.data.llava_dataset import ConcatDataset
from mllm_align.data.mmvm_sft import MMVMSFTDataset
from mllm_align.engine.hooks import DatasetInfoHook
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
radio_trust_remote_code = True
vpt_token = '<VPT_CONTEXT>'  # CoLVA's object token (mllm_align.constants.VPT_TOKEN), added to the tokenizer
pretrained_adapter_pth = 'work_dirs/internvl2_phi3_4b_radio_align_pretrain/iter_11792.pth'  # stage 1's last one
expert_image_size = 1024
expert_grid = 64
mask_threshold = 0.5  # SFT's τ on the expert grid
data_root = 'data/'
data_path = data_root + 'llava_data/LLaVA-Instruct-665K/llava_v1_5_mix665k.json'  # LLaVA instructions mixed in
llava_image_folder = data_root + 'llava_data/llava_images'
match_choice_data_path = data_root + 'cross_image_reasoning/mllm_match_choices_sft.json'  # MMVMData
match_reasoning_data_path = data_root + 'cross_image_reasoning/mllm_match_reasoning_sft.json'
match_image_root = data_root
template = 'phi3'
max_num_tiles = 6  # dynamic tiles per image (+ a thumbnail), the released SFT's range
max_length = 8192
num_image_tokens = 1792  # length estimate per image for the sampler: 6 tiles + thumbnail × 256
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'
lora_r = 128
lora_alpha = 256
lora_dropout = 0.0  # > 0 draws from the RNG, which checkpoints do not hold: resume would no longer be bitwise
pretrained_pth = None

batch_size = 4  # per device (the released recipe); 8 devices × 4 accumulation → 128 samples per step
accumulative_counts = 4
lr = 2e-4  # LoRA
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
    stage='sft',
    base=dict(
        type=InternVLModel,
        path=internvl_name_or_path,
        trust_remote_code=internvl_trust_remote_code,
        dtype=llm_dtype,
        attn_implementation=attn_implementation,
        tokenizer=tokenizer,
        template=template,
        max_num_tiles=max_num_tiles,
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
    pad_image_to_square=False,  # InternVL tiles at the image's own aspect ratio
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
