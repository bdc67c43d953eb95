"""LLaVA-1.5-style stage 1 on Mistral-7B with visual words (VW-LMM-Mistral-7B): projector + vm_head.

``llava_v15_7b_vw_pretrain.py`` (inherited: the LLaVA-1.5 pre-training recipe plus the visual-word
loss, Peng et al., arXiv:2403.07720) with Mistral-7B-Instruct-v0.2 as the LLM, the reference's
VW-LMM-Mistral. The ``plain`` template needs no chat format. The LLM stays frozen; the projector and
``vm_head`` (32000 × 4096) train.

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_mistral_7b_vw_pretrain.py 8 --deepspeed deepspeed_zero2

Edit the base recipe's PART 1 paths (or pass them with ``--cfg-options``). Tiny CPU twin:
``llava_mistral_7b_vw_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the recipe's names come from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .llava_v15_7b_vw_pretrain import *  # visual words on LLaVA-1.5, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm_name_or_path = 'models/Mistral-7B-Instruct-v0.2'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer.update(path=llm_name_or_path)
model.update(llm=dict(path=llm_name_or_path), tokenizer=tokenizer)

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset.update(tokenizer=tokenizer)
train_dataloader.update(dataset=train_dataset)
