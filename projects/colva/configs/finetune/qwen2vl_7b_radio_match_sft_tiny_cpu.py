"""Tiny CPU twin of ``qwen2vl_7b_radio_match_sft.py``: the 2B twin (2B and 7B are the same tiny model).

    bash tools/dist.sh train projects/colva/configs/finetune/qwen2vl_7b_radio_match_sft_tiny_cpu.py 2
"""
# ruff: noqa: F403 (names from the read_base() chain)
from mmengine.config import read_base

with read_base():
    from .qwen2vl_2b_radio_match_sft_tiny_cpu import *  # the 2B recipe's twin
