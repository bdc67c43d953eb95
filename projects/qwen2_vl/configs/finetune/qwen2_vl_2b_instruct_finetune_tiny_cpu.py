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
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base

with read_base():
    from .qwen2_vl_2b_instruct_finetune import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

qwen2_vl_name_or_path = data_root + 'qwen2_vl'  # built by tools/build_tiny_assets.py (build_tiny_qwen2_vl)
min_pixels = 16 * 16  # the tiny processor's 8-px grid: ≥ 4 tokens per image
max_pixels = 32 * 32  # ≤ 16 tokens per image
data_path = sft_data_path
lr = sft_lr
evaluation_inputs = sft_evaluation_inputs

optim_wrapper.optimizer.update(lr=lr)  # into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=qwen2_vl_name_or_path)
image_processor.update(path=qwen2_vl_name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
model.update(path=qwen2_vl_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation,
             tokenizer=tokenizer, image_processor=image_processor, max_new_tokens=max_new_tokens)
train_dataset.update(tiny_dataset, data_path=data_path, tokenizer=tokenizer, image_processor=image_processor)
train_dataloader.update(tiny_loader, dataset=train_dataset)
custom_hooks[1].update(tiny_chat_hook, evaluation_inputs=evaluation_inputs,  # EvaluateChatHook
                       image_processor=image_processor)
