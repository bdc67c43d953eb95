"""TrainLoop helpers."""
import pytest
from mmengine.optim import CosineAnnealingLR, LinearLR

from mllm_align.engine.loops import check_warmup_length


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
