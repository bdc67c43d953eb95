"""LLaVA-1.5-style stage 1 on Mistral-7B with visual words (VW-LMM-Mistral-7B): projector + vm_head.

The LLaVA-1.5 pre-training recipe with Mistral-7B-Instruct-v0.2 as the LLM (the reference's
VW-LMM-Mistral) and the visual-word loss (Peng et al., arXiv:2403.07720). The ``plain`` template
needs no chat format. The LLM stays frozen; the projector and ``vm_head`` (32000 × 4096) train.

    bash tools/dist.sh train projects/visual_words/configs/pretrain/llava_mistral_7b_vw_pretrain.py 8 --deepspeed deepspeed_zero2

Edit PART 1 paths to your local copies (see data/README.md). Tiny CPU twin:
``llava_mistral_7b_vw_pretrain_tiny_cpu.py``.
"""  # noqa: E501 (the launch command stays on one line to copy and paste)
from mmengine.config import read_base
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from mllm_align.align import VisualWords
from mllm_align.data import LengthGroupedSampler, LLaVADataset, llava_collate_fn
from mllm_align.engine.hooks import DatasetInfoHook, EvaluateChatHook, MIRHook
from mllm_align.engine.loops import TrainLoop
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

with read_base():
    from ...._base_.default_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm_name_or_path = 'models/Mistral-7B-Instruct-v0.2'
visual_encoder_name_or_path = 'models/clip-vit-large-patch14-336'
data_root = 'data/llava_data/'
data_path = data_root + 'LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = data_root + 'LLaVA-Pretrain/images'
template = 'plain'  # pre-training: image then caption, no chat scaffolding
max_length = 2048  # tokens after splicing (576 image tokens + text)
num_image_tokens = 576  # (336 / 14) ** 2 patch tokens per image; CLS dropped
llm_dtype = 'bfloat16'
attn_implementation = 'flash_attention_2'  # 'sdpa' if flash-attn is not installed

# Visual words (mllm_align/align/visual_words.py): vm_head maps each image slot's projected feature to a
# distribution q over the vocabulary; the LLM's logits one position earlier predict it (KL(q || p)).
vw_weight = 1.0  # L = CE_text + vw_weight * L_vm (the reference adds them with 1.0)
vw_detach_target = False  # as the reference; True: no gradient through the target q (see VisualWords)
vw_pif = False  # True: pseudo image features F' = softmax(vm_head(F)) E replace F (VW-LMM-pif)
vw_vm_head_init = 'normal'  # the reference's init N(0, 0.02); 'lm_head'/'embed_tokens' copy the LLM matrix

batch_size = 32  # per device; 8 devices → global 256
accumulative_counts = 1
dataloader_num_workers = 4
max_epochs = 1
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
warmup_ratio = 0.03
on_bad_sample = 'raise'  # or 'skip': skipped samples are counted in the log

save_steps = 500
save_total_limit = -1  # keep every iteration: MIR scores them later (a few MB each)
save_optimizer = True  # needed for exact --resume

# Chat samples during training (EvaluateChatHook): any local images and questions.
evaluation_freq = 500
evaluation_images = [data_root + 'eval_images/view.jpg']
evaluation_inputs = ['Please describe this picture.', 'What is unusual about this image?']

# MIR tracked during training (MIRHook): probe images from the training data, text from
# data/mir_texts/ (or point `texts` at CNN/DailyMail .story files as in the paper).
mir_interval = 500
mir_eval_num = 20

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
    freeze_llm=True,
    freeze_visual_encoder=True,
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
    type=AmpOptimWrapper,
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='bfloat16')

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
    dict(type=MIRHook, interval=mir_interval, eval_num=mir_eval_num, images=data_path,
         image_folder=image_folder, image_processor=image_processor),
]
