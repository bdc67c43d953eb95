"""LLaVA-1.5-7B stage 2 with MoCa: visual instruction tuning on LLaVA-665K.

The LLaVA-1.5 SFT recipe (``projects/llava/configs/finetune/llava_v15_7b_finetune.py``, inherited)
plus MoCa (Huang et al., arXiv:2410.07167, MoCa; ``mllm_align/align/moca.py``). Starts from the
stage-1 output of ``../pretrain/llava_v15_7b_moca_pretrain.py`` (``pretrained_pth``: projector and
MoCa u, v); the LLM, projector and MoCa train at lr 2e-5 (MoCa without weight decay), the CLIP tower
stays frozen. Global batch 128 (8 GPUs × 16), cosine with 3 % warm-up, 1 epoch (≈5198 iterations),
bf16, 2048 tokens, gradient checkpointing, vicuna_v1 template.

    bash tools/dist.sh train projects/moca/configs/finetune/llava_v15_7b_moca_finetune.py 8 --deepspeed deepspeed_zero3

Export for transformers: ``python tools/convert_to_hf.py CONFIG iter_N.pth OUT`` writes MoCa to
``OUT/moca.safetensors``; load with ``LlavaForConditionalGeneration.from_pretrained(OUT)`` then
``mllm_align.align.moca.attach_moca_to_hf(model, OUT)``. Tiny CPU twin:
``llava_v15_7b_moca_finetune_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F401, F403, F405, I001 (names from the read_base() chain; imported settings are config entries)
from mmengine.config import read_base

with read_base():
    from ....llava.configs.finetune.llava_v15_7b_finetune import *  # the base recipe, PART 1-5
    # MoCa's setting and blocks, as in stage 1; its u, v come from `pretrained_pth`, moca_init_std only sets
    # the build-time init.
    from ..pretrain.llava_v15_7b_moca_pretrain import moca_init_std, moca_paramwise_cfg, moca_plugins

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The stage-1 output this run starts from (projector + MoCa u, v; saved by the MoCa pretrain config).
pretrained_pth = 'work_dirs/llava_v15_7b_moca_pretrain/iter_2181.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(pretrained_pth=pretrained_pth)
model.plugins.update(moca_plugins)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# No weight decay on MoCa's u, v (moca.u, moca.v), whatever weight_decay is set to.
optim_wrapper.update(paramwise_cfg=moca_paramwise_cfg)
