"""Tiny CPU twin of ``qwen2_vl_2b_instruct_finetune.py``: that recipe with the tiny random Qwen2-VL, fp32.

    python tools/build_tiny_assets.py  # builds data/tiny/qwen2_vl too
    bash tools/dist.sh train projects/qwen2_vl/configs/finetune/qwen2_vl_2b_instruct_finetune_tiny_cpu.py 2

Differences from the real recipe (shared values in ``projects/_base_/tiny_cpu.py``, Qwen2-VL ones
here): the tiny Qwen2-VL (hidden 64, 2 layers, vision depth 2, 4-px patches, 2×2 merge) and the
multi-turn shapes Q&A, a 16…256-pixel budget per patch side (the 64² shapes images → 32² → 16
tokens), fp32, plain OptimWrapper, lr 2e-4, 256-token budget, 2 processes × batch 8, 10 % warm-up,
a checkpoint every 5 iterations (all kept). ``tests/test_configs.py`` checks that nothing else differs.
A method recipe on Qwen2-VL would get a twin that imports this one and adds the method's blocks.
"""
# ruff: noqa: F403, F405 (the recipe's names come from the read_base() chain)
from mmengine.config import read_base
from mmengine.optim import OptimWrapper

with read_base():
    from .qwen2_vl_2b_instruct_finetune import *  # noqa: I001 (the real recipe first, then the tiny values)
    from ...._base_.tiny_cpu import *  # tiny paths, sizes and precision (rebinds the recipe's PART 1)

qwen2_vl_name_or_path = data_root + 'qwen2_vl'  # built by tools/build_tiny_assets.py (build_tiny_qwen2_vl)
min_pixels = 16 * 16  # the tiny processor's 8-px grid: ≥ 4 tokens per image
max_pixels = 32 * 32  # ≤ 16 tokens per image
data_path = sft_data_path
lr = sft_lr
evaluation_inputs = sft_evaluation_inputs

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=qwen2_vl_name_or_path)
image_processor.update(path=qwen2_vl_name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
model.update(path=qwen2_vl_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation,
             tokenizer=tokenizer, image_processor=image_processor, max_new_tokens=max_new_tokens)
train_dataset.update(data_path=data_path, image_folder=image_folder, tokenizer=tokenizer,
                     image_processor=image_processor, max_length=max_length, num_image_tokens=num_image_tokens)
train_dataloader.update(
    batch_size=batch_size, num_workers=dataloader_num_workers, persistent_workers=dataloader_num_workers > 0,
    sampler=dict(per_device_batch_size=batch_size * accumulative_counts), dataset=train_dataset)
optim_wrapper.update(type=OptimWrapper, optimizer=dict(lr=lr))  # fp32 on CPU: AmpOptimWrapper refuses CPU
optim_wrapper.pop('loss_scale')
optim_wrapper.pop('dtype')
param_scheduler[0].update(end=warmup_ratio * max_epochs)  # LinearLR warm-up
param_scheduler[1].update(begin=warmup_ratio * max_epochs)  # cosine
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)
custom_hooks[1].update(image_processor=image_processor, evaluation_images=evaluation_images,  # EvaluateChatHook
                       evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq)
