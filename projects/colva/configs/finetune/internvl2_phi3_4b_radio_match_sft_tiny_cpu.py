"""Tiny CPU twin of ``internvl2_phi3_4b_radio_match_sft.py``: the tiny remote-code InternVL2 and tiny RADIO, fp32.

    python tools/build_tiny_assets.py
    bash tools/dist.sh train projects/colva/configs/finetune/internvl2_phi3_4b_radio_match_sft_tiny_cpu.py 2 \\
        --cfg-options pretrained_adapter_pth=work_dirs/<pre-training twin>/iter_24.pth

Differences from the real recipe (shared values in ``projects/_base_/tiny_cpu.py``, CoLVA ones here): the tiny
remote-code InternVL2 stand-in (one 448-px tile per image: 256 tokens), the tiny RADIO stand-in at 128 px, the tiny
MMVMData files mixed with the tiny shapes SFT data, no pre-trained adapter unless given, fp32, plain OptimWrapper,
lr 2e-4, a 1024-token budget, batch 2 per process, no accumulation, checkpoints every 5 iterations.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base

with read_base():
    from .internvl2_phi3_4b_radio_match_sft import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

internvl_name_or_path = data_root + 'internvl2_remote'  # built by tools/build_tiny_assets.py (build_tiny_internvl)
radio_name_or_path = data_root + 'radio'
pretrained_adapter_pth = None  # the pre-training twin's iter_N.pth, through --cfg-options
expert_image_size = 128
expert_grid = 8
match_choice_data_path = data_root + 'colva/mmvm_sft/match_choices.json'  # build_tiny_colva_data
match_reasoning_data_path = data_root + 'colva/mmvm_sft/match_reasoning.json'
match_image_root = data_root + 'colva/mmvm_sft'
data_path = sft_data_path  # the tiny shapes SFT data
llava_image_folder = image_folder
max_num_tiles = 1  # 256 tokens per image on CPU
max_length = 1024
num_image_tokens = 256
batch_size = 2
accumulative_counts = 1
lr = sft_lr

optim_wrapper.optimizer.update(lr=lr)  # into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=internvl_name_or_path)
image_processor.update(path=internvl_name_or_path, max_num_tiles=max_num_tiles)
model.base.update(path=internvl_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation,
                  tokenizer=tokenizer, max_num_tiles=max_num_tiles, max_new_tokens=max_new_tokens)
model.expert.update(path=radio_name_or_path, image_size=expert_image_size, dtype=llm_dtype)
model.update(adapter_pth=pretrained_adapter_pth)
_match = dict(tokenizer=tokenizer, image_processor=image_processor, expert_image_size=expert_image_size,
              expert_grid=expert_grid, image_root=match_image_root, max_length=max_length,
              num_image_tokens=num_image_tokens)
match_dataset.update(_match)
train_dataset.datasets[0].update(_match, data_path=match_choice_data_path)
train_dataset.datasets[1].update(_match, data_path=match_reasoning_data_path)
train_dataset.datasets[2].update(data_path=data_path, image_folder=llava_image_folder, tokenizer=tokenizer,
                                 image_processor=image_processor, max_length=max_length,
                                 num_image_tokens=num_image_tokens)
train_dataloader.update(batch_size=batch_size, pin_memory=False, dataset=train_dataset,
                        sampler=dict(per_device_batch_size=batch_size * accumulative_counts))
