"""Tiny CPU twin of ``llava_mistral_7b_vw_finetune.py``: same five parts, tiny random models, fp32.

What it trains: visual words, Mistral recipe (mllm_align/align/visual_words.py).

Runs in about a minute on a laptop CPU. The tiny assets hold no Mistral model: the tiny
LLaMA-architecture model with the LLaMA-2-style tokenizer (data/tiny/llm/vicuna) stands in
(Mistral-7B is a LLaMA-style decoder with a LLaMA-2-like tokenizer); its ``<s>``/``</s>`` are all
the ``mistral`` chat template needs, so the twin uses the real recipe's template.

    python tools/build_tiny_assets.py   # once: tiny LLMs + CLIP + shapes dataset in data/tiny/
    bash tools/dist.sh train projects/visual_words/configs/finetune/llava_mistral_7b_vw_finetune_tiny_cpu.py 2 \
        --cfg-options model.pretrained_pth=work_dirs/llava_mistral_7b_vw_pretrain_tiny_cpu/iter_75.pth

Differences from the real recipe: tiny local models, fp32, plain OptimWrapper, lr 2e-4,
16 image tokens, 256-token budget, 2 processes × batch 8.
"""
from mmengine.config import read_base
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW

from mllm_align.align import VisualWords
from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook
from mllm_align.engine.loops import TrainLoop
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

with read_base():
    from ...._base_.default_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
data_root = 'data/tiny/'  # built by tools/build_tiny_assets.py
llm_name_or_path = data_root + 'llm/vicuna'  # stands in for Mistral (see above)
visual_encoder_name_or_path = data_root + 'vision/clip'
data_path = data_root + 'shapes/sft.json'  # multi-turn Q&A, text-only and two-image samples
image_folder = data_root + 'shapes'
template = 'mistral'  # [INST] q [/INST]a</s>, as the real recipe
# The stage-1 output this run starts from (projector + vm_head, e.g.
# 'work_dirs/llava_mistral_7b_vw_pretrain_tiny_cpu/iter_75.pth'); None trains both from their init.
pretrained_pth = None
max_length = 256  # tokens after splicing (16 image tokens + text)
num_image_tokens = 16  # (32 / 8) ** 2 patch tokens of the tiny CLIP; CLS dropped
llm_dtype = 'float32'
attn_implementation = 'sdpa'

# Visual words (mllm_align/align/visual_words.py): vm_head maps each image slot's projected feature to a
# distribution q over the vocabulary; the LLM's logits one position earlier predict it (KL(q || p)).
vw_weight = 1.0  # L = CE_text + vw_weight * L_vm (the reference adds them with 1.0)
vw_detach_target = False  # as the reference; True: no gradient through the target q (see VisualWords)
vw_pif = False  # True: pseudo image features F' = softmax(vm_head(F)) E replace F (VW-LMM-pif)
vw_vm_head_init = 'normal'  # the reference's init N(0, 0.02); 'lm_head'/'embed_tokens' copy the LLM matrix

batch_size = 8  # per process; 2 processes → global 16
accumulative_counts = 1
dataloader_num_workers = 0
max_epochs = 1
lr = 2e-4  # the 7B recipe's 2e-5 barely moves a tiny random model
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
warmup_ratio = 0.1  # ≥ 2 warm-up iterations at 38 iterations per epoch (2 processes)
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log

save_steps = 5
save_total_limit = -1  # keep every iteration: the demo scores each with MIR
save_optimizer = True  # needed for exact --resume

# Chat samples during training (EvaluateChatHook): local images and questions.
evaluation_freq = 40
evaluation_images = [data_root + 'shapes/images/eval_000000.png', data_root + 'shapes/images/eval_000001.png']
evaluation_inputs = ['What colour is the shape?', 'Where is the shape?']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=llm_name_or_path)
image_processor = dict(type=load_image_processor, path=visual_encoder_name_or_path)

model = dict(
    type=LLaVAModel,
    llm=dict(type=load_llm, path=llm_name_or_path, dtype=llm_dtype,
             attn_implementation=attn_implementation),
    visual_encoder=dict(type=VisionTower, path=visual_encoder_name_or_path, select_layer=-2,
                        select_feature='patch', dtype=llm_dtype),
    projector=dict(type='mlp2x_gelu'),
    tokenizer=tokenizer,
    template=template,
    max_new_tokens=16,  # chat samples: short answers keep the CPU run quick
    freeze_llm=False,
    freeze_visual_encoder=True,
    gradient_checkpointing=True,
    pretrained_pth=pretrained_pth,
    visual_words=dict(type=VisualWords, weight=vw_weight, detach_target=vw_detach_target, pif=vw_pif,
                      vm_head_init=vw_vm_head_init))

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataset = dict(
    type=LLaVADataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    template=template,
    image_processor=image_processor,
    max_length=max_length,
    num_image_tokens=num_image_tokens,
    on_bad_sample=on_bad_sample)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    persistent_workers=dataloader_num_workers > 0,
    dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=llava_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=OptimWrapper,  # fp32 on CPU (AmpOptimWrapper refuses CPU)
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks.update(  # noqa: F405
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps,  # noqa: F405
                    max_keep_ckpts=save_total_limit, save_optimizer=save_optimizer))
custom_hooks = [
    dict(type=DatasetInfoHook),
    dict(type=EvaluateChatHook, image_processor=image_processor, evaluation_images=evaluation_images,
         evaluation_inputs=evaluation_inputs, every_n_iters=evaluation_freq),
]
