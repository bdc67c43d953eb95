"""mmengine's ``CheckpointHook`` with a commit order that never loses work.

mmengine's hook saves ``iter_N.pth`` in this order: delete the checkpoints past ``max_keep_ckpts``, write the
new one, then write ``work_dir/last_checkpoint`` with a plain ``open(..., 'w')``. Two windows lose work when a
node dies in them:

* between the truncating ``open`` and the ``write`` of the pointer, ``last_checkpoint`` is empty (seen in CI: a
  run whose ranks were all SIGKILLed left an empty pointer beside two whole checkpoints);
* between the deletion and the new save, with ``max_keep_ckpts=1`` no checkpoint exists at all.

:class:`AtomicCheckpointHook` keeps everything else of mmengine's hook (intervals, ``out_dir``, ``save_last``,
best checkpoints, the ``keep_ckpt_ids`` bookkeeping saved in each checkpoint for ``--resume``) and reorders
the commit: **save** the new checkpoint (atomic, :mod:`mllm_align.engine.checkpoint`), then **point**
``last_checkpoint`` at it (written to a temp file and renamed, so it names the old checkpoint or the new one),
then **delete** what is now outdated. A kill at any moment leaves a pointer that names a whole checkpoint.
"""
from __future__ import annotations

import os.path as osp
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from .checkpoint import atomic_write


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that saves, then atomically re-points ``last_checkpoint``, then deletes (module docstring)."""

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        outdated = self._retire_outdated_id(runner, step)  # before the save: keep_ckpt_ids goes into it
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():  # the other ranks wrote their shards (DeepSpeed); rank 0 commits
            return
        atomic_write(str(self.last_ckpt).encode(), osp.join(runner.work_dir, 'last_checkpoint'))
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # a DeepSpeed checkpoint is a directory
                self.file_backend.rmtree(path)

    def _retire_outdated_id(self, runner: Any, step: int) -> int | None:
        """Record ``step`` in ``keep_ckpt_ids``; return the step that falls out of the window (deleted after saving)."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return None  # keep all, or a second save at the same step (best + interval)
        outdated = self.keep_ckpt_ids.popleft() if len(self.keep_ckpt_ids) == self.max_keep_ckpts else None
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated
