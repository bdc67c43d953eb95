"""Tiny CPU twin of ``internvl2_phi3_4b_radio_align_pretrain.py``: the tiny remote-code InternVL2 and tiny RADIO, fp32.

    python tools/build_tiny_assets.py  # data/tiny/internvl2_remote, data/tiny/radio, data/tiny/colva
    bash tools/dist.sh train projects/colva/configs/pretrain/internvl2_phi3_4b_radio_align_pretrain_tiny_cpu.py 2

Differences from the real recipe (shared values in ``projects/_base_/tiny_cpu.py``, CoLVA ones here): the tiny
remote-code InternVL2 stand-in (its own ``modeling_*.py``, a tiny Phi-3, 448-px tiles → 256 tokens), the tiny RADIO
stand-in at 128 px (8×8 grid), the tiny SA-1B folder, fp32, plain OptimWrapper, no accumulation, checkpoints every
5 iterations. ``tests/test_configs.py`` checks that nothing else differs.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base

with read_base():
    from .internvl2_phi3_4b_radio_align_pretrain import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

internvl_name_or_path = data_root + 'internvl2_remote'  # built by tools/build_tiny_assets.py (build_tiny_internvl)
radio_name_or_path = data_root + 'radio'  # the remote-code RADIO stand-in (build_tiny_radio)
expert_image_size = 128  # an 8×8 grid at patch 16: the tiny objects survive it
expert_grid = 8
data_path = data_root + 'colva/sa1b'  # build_tiny_colva_data
batch_size = 1  # as the recipe (tiny_cpu.py's 8 would leave 3 iterations an epoch)
accumulative_counts = 1
lr = 1e-3  # a tiny random adapter

optim_wrapper.optimizer.update(lr=lr)  # into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=internvl_name_or_path)
image_processor.update(path=internvl_name_or_path)
model.base.update(path=internvl_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation,
                  tokenizer=tokenizer)
model.expert.update(path=radio_name_or_path, image_size=expert_image_size, dtype=llm_dtype)
train_dataset.update(data_root=data_path, image_processor=image_processor, expert_image_size=expert_image_size,
                     expert_grid=expert_grid)
train_dataloader.update(batch_size=batch_size, pin_memory=False, dataset=train_dataset)
