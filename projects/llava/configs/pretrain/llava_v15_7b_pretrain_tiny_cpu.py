"""Tiny CPU twin of ``llava_v15_7b_pretrain.py``: that recipe with tiny random models, fp32.

Runs in about a minute on a laptop CPU and is what the README's demo and the tests train:

    python tools/build_tiny_assets.py   # once: tiny LLaMA + CLIP + shapes dataset in data/tiny/
    bash tools/dist.sh train projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py 2

Differences from the real recipe (values in ``projects/_base_/tiny_cpu.py``): tiny local models and
data, fp32, plain OptimWrapper, 16 image tokens, 256-token budget, 2 processes × batch 8, 10 %
warm-up, a checkpoint every 5 iterations, short chat samples. ``tests/test_configs.py`` checks that
nothing else differs. The override block below is written once: the twins of the method recipes built
on this recipe import this file and add only their method's blocks, taken from their own recipe.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base
from mmengine.optim import OptimWrapper

with read_base():
    from .llava_v15_7b_pretrain import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny paths, sizes and precision (rebinds the recipe's PART 1)

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=llm_name_or_path)
image_processor.update(path=visual_encoder_name_or_path)
model.update(llm=dict(path=llm_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation),
             visual_encoder=dict(path=visual_encoder_name_or_path, dtype=llm_dtype), tokenizer=tokenizer,
             max_new_tokens=max_new_tokens)
train_dataset.update(data_path=data_path, image_folder=image_folder, tokenizer=tokenizer,
                     image_processor=image_processor, max_length=max_length, num_image_tokens=num_image_tokens)
train_dataloader.update(
    batch_size=batch_size, num_workers=dataloader_num_workers, persistent_workers=dataloader_num_workers > 0,
    sampler=dict(per_device_batch_size=batch_size * accumulative_counts), dataset=train_dataset)
optim_wrapper.update(type=OptimWrapper)  # fp32 on CPU (AmpOptimWrapper refuses CPU): no loss scale, no dtype
optim_wrapper.pop('loss_scale')
optim_wrapper.pop('dtype')
param_scheduler[0].update(end=warmup_ratio * max_epochs)  # LinearLR warm-up
param_scheduler[1].update(begin=warmup_ratio * max_epochs)  # cosine
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)
custom_hooks[1].update(image_processor=image_processor, evaluation_images=evaluation_images,  # EvaluateChatHook
                       evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq)
custom_hooks[2].update(interval=mir_interval, eval_num=mir_eval_num, images=data_path,  # MIRHook
                       image_folder=image_folder, image_processor=image_processor)
