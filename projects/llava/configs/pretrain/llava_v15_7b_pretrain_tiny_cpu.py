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

with read_base():
    from .llava_v15_7b_pretrain import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

optim_wrapper.optimizer.update(lr=lr)  # the recipe's lr, into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=llm_name_or_path)
image_processor.update(path=visual_encoder_name_or_path)
model.update(llm=dict(path=llm_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation),
             visual_encoder=dict(path=visual_encoder_name_or_path, dtype=llm_dtype), tokenizer=tokenizer,
             max_new_tokens=max_new_tokens)
train_dataset.update(tiny_dataset, tokenizer=tokenizer, image_processor=image_processor)
train_dataloader.update(tiny_loader, dataset=train_dataset)
custom_hooks[1].update(tiny_chat_hook, image_processor=image_processor)  # EvaluateChatHook
custom_hooks[2].update(interval=mir_interval, eval_num=mir_eval_num, images=data_path,  # MIRHook
                       image_folder=image_folder, image_processor=image_processor)
