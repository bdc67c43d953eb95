"""What every tiny CPU twin changes: tiny local models and data, laptop sizes, fp32, short intervals.

The twin of a *base* recipe (``*_tiny_cpu.py`` beside it) imports the recipe and then this file::

    with read_base():
        from .llava_v15_7b_pretrain import *  # the real recipe: PART 1-5
        from ...._base_.tiny_cpu import *  # these tiny values, the fp32 schedule and the tiny runtime

so that the names below replace the recipe's of the same name:

* PART 1 values (paths, sizes, intervals) rebind the recipe's variables;
* PART 4 and PART 5 are the shared ``default_schedule.py`` and ``default_runtime.py`` made tiny here, once:
  a plain fp32 ``OptimWrapper`` (``AmpOptimWrapper`` refuses CPU) with a longer warm-up, and checkpoints
  every ``save_steps``. Their ``optim_wrapper``, ``param_scheduler``, ``train_cfg`` and ``default_hooks``
  replace the recipe's, so the twin sets the recipe's learning rate again
  (``optim_wrapper.optimizer.update(lr=lr)``), as its recipe does;
* PART 3 fragments (``tiny_dataset``, ``tiny_loader``, ``tiny_chat_hook``) hold the tiny
  values of the recipe dicts that this file cannot replace (they are built from the recipe's own parts),
  and the twin applies them: ``train_dataset.update(tiny_dataset, tokenizer=tokenizer, ...)``.

Rebinding a variable does not change the dicts the recipe already built from it (mmengine copies every
dict), hence the fragments; the twin also writes its model paths into the recipe's ``tokenizer``,
``image_processor`` and ``model``. The twin of a *method* recipe imports its base recipe's twin instead,
plus the method's named blocks and settings from its own recipe (``from .llava_v15_7b_moca_pretrain import
moca_init_std, moca_plugins, ...``), and applies those blocks (``model.plugins.update(moca_plugins)``).
``--cfg-options data_path=X`` (or ``moca_init_std=X``) on a twin still reaches every field:
``mllm_align/engine/config_overrides.py`` rewrites the assignment in every file of the ``read_base()``
chain (this one and the two it imports included) and evaluates the chain again.

Pre-training values are the defaults; SFT twins pick the ``sft_*`` ones and the Vicuna-style LLM (and pass
``data_path`` / ``evaluation_inputs`` again after rebinding them). Everything under ``data/tiny/`` is built
by ``python tools/build_tiny_assets.py``.
"""
# ruff: noqa: F403, F405 (names from the read_base() chain)
from mmengine.config import read_base
from mmengine.optim import OptimWrapper

with read_base():
    from .default_runtime import *  # the recipes' PART 5, made tiny below
    from .default_schedule import *  # the recipes' PART 4, made fp32 below

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
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

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
# The tiny fields of the recipe's train_dataset / train_dataloader / chat-sample hook, applied by the twin.
tiny_dataset = dict(data_path=data_path, image_folder=image_folder, max_length=max_length,
                          num_image_tokens=num_image_tokens)
tiny_loader = dict(batch_size=batch_size, pin_memory=False,  # CPU: nothing to copy to (workers: the recipe's rule)
                   sampler=dict(per_device_batch_size=batch_size * accumulative_counts))
tiny_chat_hook = dict(evaluation_images=evaluation_images, evaluation_inputs=evaluation_inputs,
                      every_n_iters=evaluation_freq)  # EvaluateChatHook

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper.update(type=OptimWrapper)  # fp32 on CPU (AmpOptimWrapper refuses CPU): no loss scale, no dtype
optim_wrapper.pop('loss_scale')
optim_wrapper.pop('dtype')
param_scheduler[0].update(end=warmup_ratio * max_epochs)  # LinearLR warm-up
param_scheduler[1].update(begin=warmup_ratio * max_epochs)  # cosine

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)
