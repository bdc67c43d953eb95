"""CoLVA stage 2 on Qwen2-VL-7B-Instruct: ``qwen2vl_2b_radio_match_sft.py`` with the 7B model and its stage-1 adapter.

The released 7B recipe keeps every setting of the 2B one (LoRA r=64/α=16, batch 2 × 8 accumulation, lr 2e-4, 1
epoch, bf16); the model directory and the pre-trained adapter change, so this file inherits the 2B recipe and writes
them into the fields built from them.

    bash tools/dist.sh train projects/colva/configs/finetune/qwen2vl_7b_radio_match_sft.py 8

Tiny CPU twin: ``qwen2vl_7b_radio_match_sft_tiny_cpu.py`` (the 2B twin: both are the same tiny model).
"""
# ruff: noqa: F403, F405 (names from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .qwen2vl_2b_radio_match_sft import *  # the 2B recipe

qwen2_vl_name_or_path = 'models/Qwen2-VL-7B-Instruct'  # hidden 3584, 28 layers
pretrained_adapter_pth = 'work_dirs/qwen2vl_7b_radio_align_pretrain/iter_23584.pth'  # the 7B stage 1's last one

tokenizer.update(path=qwen2_vl_name_or_path)
image_processor.update(path=qwen2_vl_name_or_path)
model.base.update(path=qwen2_vl_name_or_path, tokenizer=tokenizer, image_processor=image_processor)
model.update(adapter_pth=pretrained_adapter_pth)
match_dataset.update(tokenizer=tokenizer, image_processor=image_processor)
train_dataset.datasets[0].update(tokenizer=tokenizer, image_processor=image_processor)  # choice-only matching
train_dataset.datasets[1].update(tokenizer=tokenizer, image_processor=image_processor)  # reasoning matching
train_dataset.datasets[2].update(tokenizer=tokenizer, image_processor=image_processor)  # LLaVA instructions
train_dataloader.update(dataset=train_dataset)
