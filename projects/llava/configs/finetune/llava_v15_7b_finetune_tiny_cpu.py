"""Tiny CPU twin of ``llava_v15_7b_finetune.py``: that recipe with tiny models, fp32.

    bash tools/dist.sh train projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_v15_7b_pretrain_tiny_cpu/iter_75.pth

Differences from the real recipe (values in ``projects/_base_/tiny_cpu.py``): tiny local models and
data (the Vicuna-style tiny LLM, multi-turn shapes Q&A), fp32, plain OptimWrapper, lr 2e-4, no
stage-1 checkpoint unless given, 16 image tokens, 256-token budget, 2 processes × batch 8, 10 %
warm-up, a checkpoint every 5 iterations (all kept), short chat samples. ``tests/test_configs.py``
checks that nothing else differs. The twins of the SFT method recipes (MoCa, CAL, visual words) import
this twin and add their method's blocks from their recipe.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then tiny_cpu.py rebinds)
from mmengine.config import read_base

with read_base():
    from .llava_v15_7b_finetune import *  # the real recipe
    from ...._base_.tiny_cpu import *  # tiny values, fp32 schedule, tiny runtime (replace the recipe's names)

llm_name_or_path = vicuna_llm_name_or_path
data_path = sft_data_path
evaluation_inputs = sft_evaluation_inputs
lr = sft_lr
pretrained_pth = None  # the stage-1 output this run starts from; None trains the projector from scratch too

optim_wrapper.optimizer.update(lr=lr)  # into tiny_cpu.py's fp32 optim_wrapper

# The recipe's fields that hold a PART 1 value, written again with the tiny ones.
tokenizer.update(path=llm_name_or_path)
image_processor.update(path=visual_encoder_name_or_path)
model.update(llm=dict(path=llm_name_or_path, dtype=llm_dtype, attn_implementation=attn_implementation),
             visual_encoder=dict(path=visual_encoder_name_or_path, dtype=llm_dtype), tokenizer=tokenizer,
             max_new_tokens=max_new_tokens, pretrained_pth=pretrained_pth)
train_dataset.update(tiny_dataset, data_path=data_path, tokenizer=tokenizer, image_processor=image_processor)
train_dataloader.update(tiny_loader, dataset=train_dataset)
custom_hooks[1].update(tiny_chat_hook, evaluation_inputs=evaluation_inputs,  # EvaluateChatHook
                       image_processor=image_processor)
