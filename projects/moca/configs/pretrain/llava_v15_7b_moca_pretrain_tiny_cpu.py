"""Tiny CPU twin of ``llava_v15_7b_moca_pretrain.py``: MoCa added to the tiny LLaVA pre-training twin.

Trains the projector and MoCa's u, v on shape captions, about a minute on a laptop CPU:

    bash tools/dist.sh train projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain_tiny_cpu.py 2

MoCa's blocks come from the recipe; the frozen LLM is the Vicuna-style tiny one that the MoCa SFT twin
continues on.
"""
# ruff: noqa: F401, F403, F405 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.pretrain.llava_v15_7b_pretrain_tiny_cpu import *  # tiny LLaVA-1.5 stage 1
    from .llava_v15_7b_moca_pretrain import moca_init_std, moca_paramwise_cfg, moca_plugins

model.plugins.update(moca_plugins)
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)

llm_name_or_path = vicuna_llm_name_or_path  # MoCa calibrates the LLM it continues on in SFT
tokenizer.update(path=llm_name_or_path)
model.update(llm=dict(path=llm_name_or_path), tokenizer=tokenizer)
train_dataset.update(tokenizer=tokenizer)
train_dataloader.update(dataset=train_dataset)
