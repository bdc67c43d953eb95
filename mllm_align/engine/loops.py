"""Training loop: epochs expressed as iterations, so mid-epoch resume is exact.

mmengine's ``EpochBasedTrainLoop`` restarts an interrupted epoch from its first batch. LLaVA
recipes are "1 epoch over 558K samples" with checkpoints every N iterations, so we run an
``IterBasedTrainLoop`` whose ``max_iters = ceil(max_epochs × len(train_dataloader))``; on resume
it advances the (deterministic, seeded) dataloader past the consumed batches.

Between epochs the loop reads the data through :class:`EpochDataIterator`, not mmengine's
``_InfiniteDataloaderIterator``, which sleeps 2 s at every epoch boundary (and logs a warning there).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop


@LOOPS.register_module()
class TrainLoop(IterBasedTrainLoop):
    """Iteration-based training loop configured by ``max_epochs`` or ``max_iters`` (exactly one).

    Args:
        runner: the mmengine Runner.
        dataloader: the train dataloader or its config.
        max_epochs: number of passes over the data (may be fractional).
        max_iters: number of optimiser iterations.
        val_interval, val_begin, dynamic_intervals: as in mmengine's ``IterBasedTrainLoop``.
    """

    def __init__(self, runner: Any, dataloader: Any, max_epochs: float | None = None,
                 max_iters: int | None = None, val_begin: int = 1, val_interval: int = 1000,
                 dynamic_intervals: Any = None) -> None:
        if (max_epochs is None) == (max_iters is None):
            raise ValueError('TrainLoop needs exactly one of `max_epochs` and `max_iters` in train_cfg.')
        if max_epochs is not None:
            loader = (runner.build_dataloader(dataloader, seed=runner.seed) if isinstance(dataloader, dict)
                      else dataloader)
            max_iters = max(1, math.ceil(max_epochs * len(loader)))
            dataloader = loader
        super().__init__(runner, dataloader, max_iters=int(max_iters), val_begin=val_begin,
                         val_interval=val_interval, dynamic_intervals=dynamic_intervals)
        self.dataloader_iterator = EpochDataIterator(self.dataloader)  # replaces the parent's (same batches)
        check_warmup_length(runner.cfg.get('param_scheduler'), len(self.dataloader))


class EpochDataIterator:
    """Batches of ``dataloader`` without end: pass after pass, ``set_epoch(e)`` on the sampler before pass e.

    The batches are mmengine's ``_InfiniteDataloaderIterator``'s, in the same order (so resume, which skips
    the consumed batches through this iterator, stays exact). What differs: mmengine sleeps 2 s at every
    epoch boundary against a possible deadlock while the previous pass's worker processes shut down, and
    warns each time. That only concerns loaders whose workers are restarted for every pass
    (``num_workers > 0`` without ``persistent_workers``): only those wait here. A loader without workers,
    or with persistent ones (the recipes' default, ``projects/_base_/default_loader.py``), starts its next
    pass at once — 2 s saved per epoch, which short runs over small data (the tiny twins: 38 iterations an
    epoch) feel.
    """

    RESTART_PAUSE_S = 2.0  # what mmengine waits before restarting non-persistent workers

    def __init__(self, dataloader: Any) -> None:
        self._dataloader = dataloader
        self._epoch = 0
        self._iterator = iter(dataloader)

    def __iter__(self) -> EpochDataIterator:
        return self

    def _epoch_sampler(self) -> Any:
        """The sampler that takes ``set_epoch``: the loader's own, else its batch sampler's (as mmengine)."""
        sampler = getattr(self._dataloader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            return sampler
        inner = getattr(getattr(self._dataloader, 'batch_sampler', None), 'sampler', None)
        return inner if hasattr(inner, 'set_epoch') else None

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            pass
        self._epoch += 1
        sampler = self._epoch_sampler()
        if sampler is not None:
            sampler.set_epoch(self._epoch)
        if getattr(self._dataloader, 'num_workers', 0) > 0 and not getattr(self._dataloader, 'persistent_workers',
                                                                           False):
            time.sleep(self.RESTART_PAUSE_S)
        print_log(f'epoch {self._epoch} of the data begins', logger='current', level=logging.DEBUG)
        self._iterator = iter(self._dataloader)
        return next(self._iterator)


def check_warmup_length(schedulers: Any, epoch_length: int) -> None:
    """Reject epoch-based schedulers that convert to fewer than 2 iterations.

    mmengine converts ``begin``/``end`` in epochs to iterations with ``int(x * epoch_length)``. A
    warm-up (``LinearLR``) that becomes a single iteration never steps to its end factor, and a
    chained cosine that follows keeps multiplying the warm-up's start factor: the whole run trains
    at ``lr × start_factor`` (e.g. 1e-8). This happens with ``warmup_ratio = 0.03`` once an epoch
    has fewer than 67 iterations (small data, many GPUs).

    Raises:
        ValueError: naming the scheduler, its span in iterations and the fix.
    """
    if not schedulers:
        return
    for cfg in (schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]):
        if not (cfg.get('by_epoch', True) and cfg.get('convert_to_iter_based', False)):
            continue
        begin = int(cfg.get('begin', 0) * epoch_length)
        end = cfg.get('end', float('inf'))
        if end == float('inf'):
            continue
        span = int(end * epoch_length) - begin
        if span < 2:
            name = getattr(cfg.get('type'), '__name__', cfg.get('type'))
            raise ValueError(
                f'param_scheduler {name} (begin={cfg.get("begin", 0)}, end={end} epochs) spans {span} '
                f'iteration(s) at {epoch_length} iterations per epoch; mmengine needs at least 2, or '
                'the learning rate stays at the warm-up start value for the whole run. Raise '
                '`warmup_ratio` in PART 1 (or use fewer processes / a smaller batch).')
