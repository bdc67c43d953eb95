"""PART 5 shared by every mllm_align config: default hooks, environment, visualizer, logging, seed.

A base recipe imports it (with ``default_schedule.py``) in its ``read_base()`` block and sets from its own
PART 1 only what differs between recipes, the checkpoint interval and how many to keep::

    default_hooks.checkpoint.update(interval=save_steps, max_keep_ckpts=save_total_limit)

A fix to any hook, the environment or logging made here reaches every config. The runner keys that name
a recipe's own parts (``custom_hooks``: chat samples, MIR) stay in the recipe.
"""
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer

from mllm_align.engine.checkpoint_hook import AtomicCheckpointHook
from mllm_align.engine.hooks.data_workers_hook import ReleaseDataWorkersHook

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
save_optimizer = True  # in every checkpoint: needed for exact --resume

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    # interval and max_keep_ckpts: set by each recipe from its PART 1 (save_steps, save_total_limit).
    # mmengine's CheckpointHook, committing in an order that never loses work (save, re-point, delete).
    checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=500, max_keep_ckpts=-1,
                    save_optimizer=save_optimizer),
    sampler_seed=dict(type=DistSamplerSeedHook),
    data_workers=dict(type=ReleaseDataWorkersHook),  # persistent DataLoader workers stopped before the exit
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
