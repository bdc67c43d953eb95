"""Fault injection for end-to-end tests: kill a training run abruptly at a chosen iteration.

``tools/train.py`` adds :class:`SimulatedCrashHook` when the environment variable
``MLLM_ALIGN_CRASH_AT_ITER=N`` is set: after iteration N every rank SIGKILLs itself, as a node
failure would — no cleanup, no final checkpoint. The resume test uses it to show that ``--resume``
reproduces an uninterrupted run. Nothing sets the variable in normal use.
"""
from __future__ import annotations

import os
import signal
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

CRASH_ENV = 'MLLM_ALIGN_CRASH_AT_ITER'


@HOOKS.register_module()
class SimulatedCrashHook(Hook):
    """SIGKILL the process right after training iteration ``at_iter`` (1-based) finishes.

    Args:
        at_iter: the iteration after which to die.
    """

    priority = 'LOWEST'  # after the checkpoint hook of that iteration has run

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_hook_from_env() -> dict | None:
    """The hook config requested through ``MLLM_ALIGN_CRASH_AT_ITER``, or None."""
    value = os.environ.get(CRASH_ENV)
    # By registry name: a class object would not survive mmengine's config dump.
    return dict(type='SimulatedCrashHook', at_iter=int(value)) if value else None
