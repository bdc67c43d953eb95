"""The demo's stage 1: projector + MoCa pre-training of DINOv2-S/14 + SmolLM2-135M-Instruct on easy-VQA captions.

The MoCa recipe (``projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain.py``: LLaVA-1.5 stage 1 + MoCa,
inherited whole) with real pretrained weights that fit a laptop: DINOv2-S/14 (22 M) as the vision encoder,
SmolLM2-135M-Instruct (frozen) as the LLM, and one caption per easy-VQA training image ("a red circle"),
built by ``python data/prepare_real.py`` (see data/README.md). Only the projector and MoCa's u, v train.

    python data/prepare_real.py   # once: converts the pinned wheels into data/real/
    bash tools/dist.sh train projects/demo/configs/pretrain/dinov2s_smollm2_moca_easyvqa_pretrain.py 2

What differs from the 7B recipe, and why (values shared with stage 2: ``projects/demo/_base_/easyvqa_real.py``):
64 px images read at 112 px and the 8×8 patch grid average-pooled 2×2 (16 image tokens: the LLM pass
dominates a CPU step, and flat shapes need no more); fp32 with a plain OptimWrapper on CPU (``gpu = True``:
bf16 and AMP); a run counted in iterations (``max_iters``) with a checkpoint every ``save_steps`` for MIR
(``tools/eval_mir.py``); chat samples on two test images. ``bash tools/demo.sh`` runs it, scores every
checkpoint and continues with ``../finetune/dinov2s_smollm2_moca_easyvqa_finetune.py``.
"""
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then the demo's values)
from mmengine.config import read_base

with read_base():
    from ....moca.configs.pretrain.llava_v15_7b_moca_pretrain import *  # LLaVA-1.5 stage 1 + MoCa, PART 1-5
    from ..._base_.easyvqa_real import *  # real small models, easy-VQA, CPU sizes (rebinds PART 1)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
data_path = data_root + 'pretrain.json'  # one caption per training image (4,000)
template = 'plain'  # pre-training: image then caption
max_length = 64  # 16 image tokens + a caption of a few words
lr = 1e-3  # LLaVA-1.5's projector lr
max_iters = 160  # 2,560 captions at global batch 16: about 2/3 of an epoch
warmup_iters = max(1, min(5, max_iters // 20))  # 5, or fewer in a shortened run
save_steps = 20  # a checkpoint every 20 iterations: tools/eval_mir.py scores each (and the untrained model)
evaluation_freq = max_iters
evaluation_inputs = ['', '']  # the plain template keeps only the image: the model writes its caption

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer.update(path=llm_name_or_path)
image_processor.update(demo_image_processor)
model.update(demo_model, tokenizer=tokenizer, template=template)

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset.update(data_path=data_path, image_folder=image_folder, tokenizer=tokenizer, template=template,
                     image_processor=image_processor, max_length=max_length, num_image_tokens=num_image_tokens)
train_dataloader.update(demo_loader, dataset=train_dataset)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper.update(demo_optim_wrapper)
optim_wrapper.optimizer.update(lr=lr)
if not gpu:
    optim_wrapper.pop('loss_scale')
    optim_wrapper.pop('dtype')
param_scheduler = [dict(demo_warmup, end=warmup_iters), dict(demo_cosine, begin=warmup_iters, end=max_iters)]
train_cfg.update(max_iters=max_iters, max_epochs=None)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)
default_hooks.logger.update(interval=5)
custom_hooks[1].update(image_processor=image_processor, evaluation_images=evaluation_images,  # EvaluateChatHook
                       evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq)
custom_hooks = custom_hooks[:2]  # no MIRHook: the demo scores every checkpoint afterwards (tools/eval_mir.py)
