"""TrainLoop helpers."""
import time

import pytest
import torch
from mmengine.optim import CosineAnnealingLR, LinearLR

from mllm_align.engine.loops import EpochDataIterator, check_warmup_length


def _schedulers(warmup_ratio):
    return [dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio,
                 convert_to_iter_based=True),
            dict(type=CosineAnnealingLR, by_epoch=True, begin=warmup_ratio, end=1, convert_to_iter_based=True)]


def test_one_iteration_warmup_is_rejected_with_the_fix():
    # 0.03 × 38 iterations → int(1.14) = 1 iteration: LinearLR would never leave 1e-5 × lr.
    with pytest.raises(ValueError, match='LinearLR .* spans 1 iteration.*warmup_ratio'):
        check_warmup_length(_schedulers(0.03), epoch_length=38)


def test_long_enough_warmup_passes():
    check_warmup_length(_schedulers(0.03), epoch_length=2181)
    check_warmup_length(_schedulers(0.1), epoch_length=38)
    check_warmup_length(None, epoch_length=5)


class _EpochShuffled(torch.utils.data.Sampler):
    """Indices 0..n-1 rotated by the epoch: which pass a batch came from is visible in its values."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch, self.epochs_set = n, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __iter__(self):
        return iter([(i + self.epoch) % self.n for i in range(self.n)])

    def __len__(self) -> int:
        return self.n


def _loader(sampler, **kwargs):
    return torch.utils.data.DataLoader(list(range(6)), batch_size=2, sampler=sampler, **kwargs)


def test_epoch_iterator_gives_mmengine_s_batches_with_set_epoch_and_no_pause(monkeypatch):
    """Same batches as mmengine's _InfiniteDataloaderIterator (hand-worked), set_epoch before each new pass."""
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    monkeypatch.setattr(time, 'sleep', lambda s: pytest.fail(f'slept {s} s with no worker processes to restart'))
    ours = EpochDataIterator(_loader(sampler := _EpochShuffled(6)))
    got = [next(ours).tolist() for _ in range(7)]
    assert got == [[0, 1], [2, 3], [4, 5], [1, 2], [3, 4], [5, 0], [2, 3]]  # epoch 0, epoch 1 (rotated by 1), …
    assert sampler.epochs_set == [1, 2]
    monkeypatch.setattr(time, 'sleep', lambda s: None)  # mmengine's own waits 2 s per boundary
    theirs = _InfiniteDataloaderIterator(_loader(_EpochShuffled(6)))
    assert [next(theirs).tolist() for _ in range(7)] == got


def test_epoch_iterator_pauses_only_before_restarting_worker_processes(monkeypatch):
    slept = []
    monkeypatch.setattr(time, 'sleep', slept.append)
    persistent = EpochDataIterator(_loader(_EpochShuffled(6), num_workers=1, persistent_workers=True))
    assert [next(persistent).tolist() for _ in range(4)][-1] == [1, 2] and slept == []
    restarted = EpochDataIterator(_loader(_EpochShuffled(6), num_workers=1))
    assert [next(restarted).tolist() for _ in range(4)][-1] == [1, 2]
    assert slept == [EpochDataIterator.RESTART_PAUSE_S]
