"""mmengine's DeepSpeedStrategy made to work with DeepSpeed 0.19 and to save checkpoints atomically.

Imported by :func:`mllm_align.engine.launch.build_runner` only for ``--deepspeed`` runs (it imports
deepspeed, and hands it to mmengine's strategy module where ``tools/train.py`` deferred that import:
:mod:`mllm_align.lazy_imports`). What it changes:

* **Optimizer registration.** mmengine 0.10.7's strategy registers DeepSpeed's 1-bit optimizers from
  ``deepspeed.runtime.fp16.onebit``, which DeepSpeed 0.19 no longer has: building the strategy failed
  with ModuleNotFoundError. :func:`patch_optimizer_registration` registers the optimizers that exist.
* **Atomic checkpoint directories.** With the optimizer state, DeepSpeed writes ``iter_N.pth`` as a
  directory of per-rank shards, file by file. :class:`AtomicDeepSpeedStrategy` has every rank write
  into ``.iter_N.pth.partial/`` and rank 0 renames it to ``iter_N.pth`` once all ranks are done, so a
  run killed mid-save never leaves a torn ``iter_N.pth`` (the ``last_checkpoint`` pointer is written
  after it, atomically, by :class:`~mllm_align.engine.checkpoint_hook.AtomicCheckpointHook`). The rename
  assumes the work dir is one shared file system for all ranks, as DeepSpeed's own resume does.
* **Safe loading.** DeepSpeed's ``engine.load_checkpoint`` (what ``--resume`` and ``load_from`` call)
  reads every shard with ``torch.load(..., weights_only=False)``. :meth:`AtomicDeepSpeedStrategy.resume`
  and :meth:`~AtomicDeepSpeedStrategy.load_checkpoint` first check every shard's pickle globals, then
  run DeepSpeed's load under :func:`~mllm_align.checkpoint_io.weights_only_torch_load` with
  :data:`~mllm_align.checkpoint_io.DEEPSPEED_SAFE_GLOBALS`: a shard that needs anything else is
  refused, naming the file and ``--trust-checkpoint``.
* DeepSpeed 0.19 calls collectives that torch 2.13 deprecates; their FutureWarnings (several per
  step) are filtered.
"""
from __future__ import annotations

import importlib
import os
import os.path as osp
import shutil
import warnings
from typing import Any

from mmengine._strategy import DeepSpeedStrategy
from mmengine._strategy import deepspeed as _mm_ds
from mmengine.dist import barrier, is_main_process
from mmengine.registry import OPTIMIZERS, STRATEGIES

from ..checkpoint_io import check_checkpoint_safe, deepspeed_safe_globals, weights_only_torch_load
from ..lazy_imports import bind_deepspeed_into_mmengine
from .checkpoint import run_checkpoint_write_hooks
from .distributed import check_launcher_alive

bind_deepspeed_into_mmengine()  # where tools/train.py deferred mmengine's `import deepspeed` (lazy_imports.py)

PARTIAL_SUFFIX = '.partial'


def patch_optimizer_registration() -> None:
    """Replace mmengine's registration of DeepSpeed optimizers by one that skips missing ones (idempotent)."""

    def register_available() -> list[str]:
        names = []
        for module, attrs in (('deepspeed.ops.adam', ('DeepSpeedCPUAdam', 'FusedAdam')),
                              ('deepspeed.ops.lamb', ('FusedLamb',)),
                              ('deepspeed.runtime.fp16.onebit', ('OnebitAdam', 'OnebitLamb', 'ZeroOneAdam'))):
            try:
                mod = importlib.import_module(module)
            except ImportError:
                continue
            for attr in attrs:
                if hasattr(mod, attr):
                    OPTIMIZERS.register_module(module=getattr(mod, attr), force=True)
                    names.append(attr)
        return names

    _mm_ds.register_deepspeed_optimizers = register_available
    warnings.filterwarnings('ignore', message=r'`torch\.distributed\.\w+` is deprecated', category=FutureWarning)


@STRATEGIES.register_module(force=True)
class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose checkpoint directories appear whole or not at all (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        patch_optimizer_registration()
        super().__init__(**kwargs)

    def load_checkpoint(self, filename: str, **kwargs: Any) -> dict:
        """DeepSpeed's load of ``filename`` (a checkpoint directory), with every shard loaded safely."""
        filename = osp.normpath(filename)  # 'iter_4.pth/' would give DeepSpeed an empty tag
        check_checkpoint_safe(filename)
        with weights_only_torch_load(extra_globals=deepspeed_safe_globals()):
            return super().load_checkpoint(filename, **kwargs)

    def resume(self, filename: str, **kwargs: Any) -> dict:
        """DeepSpeed's resume from ``filename`` (a checkpoint directory), with every shard loaded safely."""
        filename = osp.normpath(filename)
        check_checkpoint_safe(filename)
        with weights_only_torch_load(extra_globals=deepspeed_safe_globals()):
            return super().resume(filename, **kwargs)

    def save_checkpoint(self, filename: str, *, save_optimizer: bool = True, **kwargs: Any) -> None:
        writes_directory = save_optimizer or (self.model.zero_optimization_partition_weights()
                                              and not self.model.zero_gather_16bit_weights_on_model_save())
        if not writes_directory:  # one consolidated file, written through mmengine's (atomic) file backend
            super().save_checkpoint(filename, save_optimizer=save_optimizer, **kwargs)
            return
        dirname, basename = osp.split(filename)
        partial = osp.join(dirname, '.' + basename + PARTIAL_SUFFIX)
        if is_main_process() and osp.exists(partial):  # left by a run killed while saving
            shutil.rmtree(partial)
        barrier()
        super().save_checkpoint(partial, save_optimizer=save_optimizer, **kwargs)
        run_checkpoint_write_hooks(filename)  # none registered in normal use (engine/checkpoint.py)
        barrier()  # every rank's shards are on disk
        if is_main_process():
            check_launcher_alive(filename)  # nothing is committed once the launcher died
            if osp.isdir(filename):  # the same iteration saved again (e.g. after_train)
                shutil.rmtree(filename)
            os.replace(partial, filename)
        barrier()
