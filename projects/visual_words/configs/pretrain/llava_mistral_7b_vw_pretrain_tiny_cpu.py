"""Tiny CPU twin of ``llava_mistral_7b_vw_pretrain.py``: the visual-word Mistral recipe, scaled down.

The tiny assets hold no Mistral; the tiny LLaMA-architecture model with the LLaMA-2-style tokenizer
(``data/tiny/llm/vicuna``) stands in for it:

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_mistral_7b_vw_pretrain_tiny_cpu.py 2
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_mistral_7b_vw_pretrain import vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight

model.plugins.update(vw_plugins)

llm_name_or_path = vicuna_llm_name_or_path  # a LLaMA-style decoder, as Mistral-7B
tokenizer.update(path=llm_name_or_path)
model.update(llm=dict(path=llm_name_or_path), tokenizer=tokenizer)
train_dataset.update(tokenizer=tokenizer)
train_dataloader.update(dataset=train_dataset)
