"""LLaVA-1.5-style stage 2 on Mistral-7B with visual words (VW-LMM-Mistral-7B).

``llava_v15_7b_vw_finetune.py`` (inherited: the LLaVA-1.5 SFT recipe plus the visual-word loss) with
Mistral-7B-Instruct-v0.2; starts from the Mistral stage-1 output (``pretrained_pth``: projector +
``vm_head``). Conversations use the ``mistral`` template, the reference's ``mistral`` conversation
format: ``<s>[INST] {q} [/INST]{a}</s>[INST] …``, no system prompt; its token ids equal Mistral's own
tokenizer (mistral-common) for text-only chats, see ``mllm_align/data/templates.py``.

    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_mistral_7b_vw_finetune.py 8 --deepspeed deepspeed_zero3

(or ``deepspeed_zero2``, see ``llava_v15_7b_vw_finetune.py``). Besides the LLM, the data and image paths are the
base recipe's PART 1 (edit them or pass ``--cfg-options``); tiny CPU twin: ``llava_mistral_7b_vw_finetune_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405 (the recipe's names come from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .llava_v15_7b_vw_finetune import *  # visual words on LLaVA-1.5 SFT, PART 1-5

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm_name_or_path = 'models/Mistral-7B-Instruct-v0.2'
template = 'mistral'  # [INST] q [/INST]a</s>, as the reference
# The stage-1 output this run starts from (projector + vm_head; saved by llava_mistral_7b_vw_pretrain.py).
pretrained_pth = 'work_dirs/llava_mistral_7b_vw_pretrain/iter_2181.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer.update(path=llm_name_or_path)
model.update(llm=dict(path=llm_name_or_path), tokenizer=tokenizer, template=template, pretrained_pth=pretrained_pth)

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset.update(tokenizer=tokenizer, template=template)
train_dataloader.update(dataset=train_dataset)
