"""The demo's stage 2: short visual instruction tuning of the stage-1 model on easy-VQA questions, with LoRA.

The MoCa SFT recipe (``projects/moca/configs/finetune/llava_v15_7b_moca_finetune.py``: LLaVA-1.5 stage 2 + MoCa,
inherited whole) on the demo's real small models: starts from the stage-1 checkpoint (``pretrained_pth``:
projector + MoCa u, v from ``../pretrain/dinov2s_smollm2_moca_easyvqa_pretrain.py``), trains a LoRA adapter on
every linear layer of SmolLM2's decoder together with the projector and MoCa, on easy-VQA question → one-word
answer pairs in ChatML, SmolLM2's chat format. The test split (``test.json``) is never trained on:
``tools/eval_vqa.py`` scores it before and after.

    bash tools/dist.sh train projects/demo/configs/finetune/dinov2s_smollm2_moca_easyvqa_finetune.py 2 \
        --cfg-options pretrained_pth=work_dirs/demo_real/pretrain/iter_160.pth

LoRA rather than the full LLM: on 2 CPU cores a step of LoRA is cheaper (no weight gradients for the
135 M frozen weights, a small AdamW state) and it learns the answer format and the image within the budget.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
# ruff: noqa: F403, F405, I001 (names from the read_base() chain; the recipe first, then the demo's values)
from mmengine.config import read_base
from peft import LoraConfig

with read_base():
    from ....moca.configs.finetune.llava_v15_7b_moca_finetune import *  # LLaVA-1.5 stage 2 + MoCa, PART 1-5
    from ..._base_.easyvqa_real import *  # real small models, easy-VQA, CPU sizes (rebinds PART 1)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The stage-1 output this run starts from; tools/demo.sh passes the last one of its pre-training run.
pretrained_pth = 'work_dirs/demo_real/pretrain/iter_160.pth'
data_path = data_root + 'sft.json'  # 38,575 question -> answer pairs over the 4,000 training images
# ChatML without SmolLM2's 16-token default system prompt ('smollm2' keeps it): ~45 instead of ~65 tokens a
# sample, and the LLM pass is most of a CPU step. SmolLM2 was trained on ChatML either way.
template = 'chatml'
max_length = 96  # 16 image tokens + question + instruction + a one-word answer (~45)
lr = 2e-4  # LoRA's usual lr (the projector and MoCa train at it too)
lora_r = 16  # LoRA rank on every linear layer of the decoder
lora_alpha = 32
lora_dropout = 0.0  # > 0 draws from the RNG, which checkpoints do not hold: resume would no longer be bitwise
max_iters = 100  # 1,600 of the 38,575 pairs at global batch 16
warmup_iters = max(1, min(5, max_iters // 20))  # 5, or fewer in a shortened run
save_steps = max_iters  # one checkpoint: tools/eval_vqa.py scores it against the model before SFT
evaluation_freq = max_iters
evaluation_inputs = ['What color is the shape?', 'What shape is in the image?']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer.update(path=llm_name_or_path)
image_processor.update(demo_image_processor)
model.update(demo_model, tokenizer=tokenizer, template=template, pretrained_pth=pretrained_pth,
             freeze_llm=True, gradient_checkpointing=False,  # LoRA adapters train; 60 tokens need no checkpointing
             llm_lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias='none'))

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
