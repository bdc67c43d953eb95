"""Tiny CPU twin of ``llava_mistral_7b_vw_finetune.py``: visual words, Mistral chat template, tiny LLM.

The tiny LLaMA-2-style tokenizer has the ``<s>``/``</s>`` that the recipe's ``mistral`` template needs, so the
twin keeps that template on the tiny SFT twin's LLM:

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_mistral_7b_vw_finetune_tiny_cpu.py 2 \\
        --cfg-options model.pretrained_pth=work_dirs/llava_mistral_7b_vw_pretrain_tiny_cpu/iter_75.pth
"""
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune_tiny_cpu import *  # tiny LLaVA-1.5 SFT
    from .llava_mistral_7b_vw_finetune import (  # the template and the method, from the recipe
        template, vw_detach_target, vw_pif, vw_plugins, vw_vm_head_init, vw_weight)

model.plugins.update(vw_plugins)
model.update(template=template)
train_dataset.update(template=template)
train_dataloader.update(dataset=train_dataset)
