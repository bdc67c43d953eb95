"""PART 5 boilerplate shared by every mllm_align config (hooks, environment, logging).

Configs import it with ``with read_base(): from ..._base_.default_runtime import *`` and then set
``default_hooks.checkpoint`` from their own PART 1 (interval, how many to keep).
"""
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Overridden per config from PART 1 (save_steps, save_total_limit, save_optimizer).
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=500, max_keep_ckpts=-1,
                    save_optimizer=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/train.py switches to gloo on machines without CUDA
)
# Scalars go to work_dir/<timestamp>/vis_data/scalars.json; add TensorboardVisBackend on clusters.
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42, deterministic=False)
log_processor = dict(by_epoch=False)
