"""PART 3's DataLoader settings shared by the base recipes: workers per rank, prefetching, pinned memory.

A base recipe imports it (with ``default_runtime.py`` and ``default_schedule.py``) in its ``read_base()`` block
and adds what is its own, the batch size, the dataset, the sampler and the collate function::

    train_dataloader.update(batch_size=batch_size, dataset=train_dataset,
                            sampler=dict(type=LengthGroupedSampler, per_device_batch_size=batch_size),
                            collate_fn=dict(type=llava_collate_fn))

``--cfg-options dataloader_num_workers=8`` rewrites the assignment below and re-evaluates the chain
(``mllm_align/engine/config_overrides.py``), so ``persistent_workers`` and ``prefetch_factor`` follow it.
"""
from mllm_align.loader_workers import default_num_workers  # light: os only, no package import

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# DataLoader workers per rank: with a GPU max(1, min(4, cores per rank - 1)) from this machine's cores and the
# launch's LOCAL_WORLD_SIZE; 0 on a CPU-only machine, where the step has every core (the rule and why:
# mllm_align/loader_workers.py).
dataloader_num_workers = default_num_workers.build()()  # config imports are mmengine LazyObjects: build, call

#######################################################################
#                  PART 3  Dataset & Dataloader                       #
#######################################################################
train_dataloader = dict(
    num_workers=dataloader_num_workers,
    persistent_workers=dataloader_num_workers > 0,  # workers kept between epochs (ReleaseDataWorkersHook stops them)
    prefetch_factor=2 if dataloader_num_workers > 0 else None,  # batches each worker keeps ready
    pin_memory=True)  # page-locked batches: asynchronous host-to-GPU copies
