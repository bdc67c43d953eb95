"""CoLVA stage 1 on Qwen2-VL-7B-Instruct: ``qwen2vl_2b_radio_align_pretrain.py`` with the 7B model.

The released 7B recipe keeps every setting of the 2B one (batch 1 × 8 accumulation, lr 2e-4, 1 epoch, bf16); only
the model directory changes, so this file inherits the 2B recipe and writes the new directory into the fields
built from it.

    bash tools/dist.sh train projects/colva/configs/pretrain/qwen2vl_7b_radio_align_pretrain.py 8 \\
        --deepspeed deepspeed_zero3

Tiny CPU twin: ``qwen2vl_7b_radio_align_pretrain_tiny_cpu.py`` (the 2B twin: both are the same tiny model).
"""
# ruff: noqa: F403, F405 (names from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .qwen2vl_2b_radio_align_pretrain import *  # the 2B recipe

qwen2_vl_name_or_path = 'models/Qwen2-VL-7B-Instruct'  # hidden 3584, 28 layers

tokenizer.update(path=qwen2_vl_name_or_path)
image_processor.update(path=qwen2_vl_name_or_path)
model.base.update(path=qwen2_vl_name_or_path, tokenizer=tokenizer, image_processor=image_processor)
train_dataset.update(image_processor=image_processor)
train_dataloader.update(dataset=train_dataset)
