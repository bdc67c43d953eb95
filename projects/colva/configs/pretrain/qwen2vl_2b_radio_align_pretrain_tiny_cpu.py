"""Tiny CPU twin of ``qwen2vl_2b_radio_align_pretrain.py``: that recipe with the tiny Qwen2-VL and tiny RADIO, fp32.

    python tools/build_tiny_assets.py  # data/tiny/qwen2_vl, data/tiny/radio, data/tiny/colva
    bash tools/dist.sh train projects/colva/configs/pretrain/qwen2vl_2b_radio_align_pretrain_tiny_cpu.py 2

Differences from the real recipe (shared values in ``projects/_base_/tiny_cpu.py``, CoLVA ones here): the tiny
random Qwen2-VL, the tiny remote-code RADIO stand-in (patch 16) read at 128 px (an 8×8 grid), the tiny SA-1B folder
(48 drawn 64² images, 3–5 objects each), a 64²-pixel budget for the base's view (8×8 merged tokens), fp32, plain
OptimWrapper, no accumulation, checkpoints every 5 iterations. ``tests/test_configs.py``
checks that nothing else differs.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base

with read_base():
    from .qwen2vl_2b_radio_align_pretrain import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

qwen2_vl_name_or_path = data_root + 'qwen2_vl'  # built by tools/build_tiny_assets.py (build_tiny_qwen2_vl)
radio_name_or_path = data_root + 'radio'  # the remote-code RADIO stand-in (build_tiny_radio)
expert_image_size = 128  # an 8×8 grid at patch 16: the tiny objects survive it
expert_grid = 8
data_path = data_root + 'colva/sa1b'  # build_tiny_colva_data
min_pixels = 16 * 16
max_pixels = 64 * 64  # the 128² view → 64² → 8×8 merged tokens
batch_size = 1  # as the recipe (tiny_cpu.py's 8 would leave 3 iterations an epoch)
accumulative_counts = 1
lr = 1e-3  # a tiny random adapter

optim_wrapper.optimizer.update(lr=lr)  # into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=qwen2_vl_name_or_path)
image_processor.update(path=qwen2_vl_name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
model.base.update(path=qwen2_vl_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation,
                  tokenizer=tokenizer, image_processor=image_processor)
model.expert.update(path=radio_name_or_path, image_size=expert_image_size, dtype=llm_dtype)
train_dataset.update(data_root=data_path, image_processor=image_processor, expert_image_size=expert_image_size,
                     expert_grid=expert_grid)
train_dataloader.update(batch_size=batch_size, pin_memory=False, dataset=train_dataset)
