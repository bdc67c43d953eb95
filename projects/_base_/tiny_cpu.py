"""PART 1 of every tiny CPU twin: tiny local models and data, laptop sizes, fp32.

The twin of a *base* recipe (``*_tiny_cpu.py`` beside it) imports the recipe and then this file,
so these names rebind the recipe's PART 1 variables of the same name::

    with read_base():
        from .llava_v15_7b_pretrain import *  # the real recipe: PART 1-5
        from ...._base_.tiny_cpu import *  # these tiny values

Rebinding a variable does not change the dicts the recipe already built from it (mmengine copies
every dict), so the base twin then writes these values into the fields themselves
(``model.update(llm=dict(path=llm_name_or_path, ...))``), once per base. The twin of a *method*
recipe imports its base recipe's twin instead, plus the method's named blocks and settings from its
own recipe (``from .llava_v15_7b_moca_pretrain import moca_init_std, moca_plugins, ...``), and applies
those blocks (``model.plugins.update(moca_plugins)``). ``--cfg-options data_path=X`` (or
``moca_init_std=X``) on a twin still reaches every field: ``mllm_align/engine/config_overrides.py``
rewrites the assignment in every file of the ``read_base()`` chain and evaluates the chain again.

Pre-training values are the defaults; SFT twins pick the ``sft_*`` ones and the Vicuna-style LLM. Everything under
``data/tiny/`` is built by ``python tools/build_tiny_assets.py``.
"""
data_root = 'data/tiny/'  # built by tools/build_tiny_assets.py
llm_name_or_path = data_root + 'llm/llama'  # tiny random LLaMA with a trained tokenizer
visual_encoder_name_or_path = data_root + 'vision/clip'  # tiny random CLIP, 32 px, patch 8
data_path = data_root + 'shapes/pretrain.json'  # one caption per shape image
image_folder = data_root + 'shapes'
max_length = 256  # tokens after splicing (16 image tokens + text)
num_image_tokens = 16  # (32 / 8) ** 2 patch tokens of the tiny CLIP; CLS dropped
llm_dtype = 'float32'  # CPU: no bf16 autocast, plain OptimWrapper (AmpOptimWrapper refuses CPU)
attn_implementation = 'sdpa'
max_new_tokens = 16  # chat samples: short answers keep the CPU run quick

batch_size = 8  # per process; 2 processes → global 16
dataloader_num_workers = 0
warmup_ratio = 0.1  # ≥ 2 warm-up iterations at 38 iterations per epoch (2 processes)

save_steps = 5
save_total_limit = -1  # keep every iteration: the demo scores each with MIR

# Chat samples during training (EvaluateChatHook): local images and questions.
evaluation_freq = 40
evaluation_images = [data_root + 'shapes/images/eval_000000.png', data_root + 'shapes/images/eval_000001.png']
evaluation_inputs = ['Describe the image.', 'What colour is the shape?']

# MIR tracked during training (MIRHook): probe size and frequency.
mir_interval = 25
mir_eval_num = 8

# The tiny LLM with a LLaMA-2-style tokenizer, as Vicuna: the SFT twins' LLM (and of pre-training twins
# whose output an SFT twin continues, or that stand in for Mistral-7B, a LLaMA-style decoder).
vicuna_llm_name_or_path = data_root + 'llm/vicuna'

# SFT twins: multi-turn data, questions instead of a caption prompt, a higher lr.
sft_data_path = data_root + 'shapes/sft.json'  # multi-turn Q&A, text-only and two-image samples
sft_evaluation_inputs = ['What colour is the shape?', 'Where is the shape?']
sft_lr = 2e-4  # the 7B recipes' 2e-5 barely moves a tiny random model
