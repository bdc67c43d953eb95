"""AtomicDeepSpeedStrategy.save_checkpoint: a DeepSpeed checkpoint directory appears whole or not at all.

DeepSpeed's own writer is replaced by a stand-in that writes shard files (and can fail half-way), so
the rename logic is tested without an engine; tests/engine/test_deepspeed_e2e.py runs the real thing."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip('deepspeed')

from mmengine._strategy import DeepSpeedStrategy  # noqa: E402

from mllm_align.engine.ds_strategy import AtomicDeepSpeedStrategy  # noqa: E402


class _Engine:
    def zero_optimization_partition_weights(self) -> bool:
        return True

    def zero_gather_16bit_weights_on_model_save(self) -> bool:
        return True


def _strategy() -> AtomicDeepSpeedStrategy:
    strategy = object.__new__(AtomicDeepSpeedStrategy)  # no engine: only save_checkpoint is exercised
    strategy.model = _Engine()
    return strategy


def _fake_deepspeed_save(fail_after: int | None = None):
    def save(self, filename, *, save_optimizer=True, **kwargs):  # what DeepSpeed does: a dir of shards
        path = Path(filename)
        path.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            if fail_after is not None and i == fail_after:
                raise OSError('disk full (simulated)')
            (path / f'zero_pp_rank_{i}_mp_rank_00_model_states.pt').write_bytes(b'x' * (i + 1))
    return save


def test_a_failed_save_leaves_no_checkpoint_and_the_next_save_is_whole(tmp_path, monkeypatch):
    target = tmp_path / 'iter_4.pth'
    monkeypatch.setattr(DeepSpeedStrategy, 'save_checkpoint', _fake_deepspeed_save(fail_after=2))
    with pytest.raises(OSError, match='disk full'):
        _strategy().save_checkpoint(str(target))
    assert not target.exists()  # nothing named iter_4.pth: eval_mir / resume never see a torn one
    assert len(list((tmp_path / '.iter_4.pth.partial').iterdir())) == 2

    monkeypatch.setattr(DeepSpeedStrategy, 'save_checkpoint', _fake_deepspeed_save())
    _strategy().save_checkpoint(str(target))
    assert sorted(p.name for p in target.iterdir()) == [f'zero_pp_rank_{i}_mp_rank_00_model_states.pt' for i in range(3)]
    assert not (tmp_path / '.iter_4.pth.partial').exists()
    _strategy().save_checkpoint(str(target))  # saving the same iteration again replaces it
    assert len(list(target.iterdir())) == 3


def test_a_consolidated_file_save_is_left_to_mmengine(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(DeepSpeedStrategy, 'save_checkpoint',
                        lambda self, filename, **kw: calls.append((filename, kw['save_optimizer'])))
    _strategy().save_checkpoint(str(tmp_path / 'iter_2.pth'), save_optimizer=False)
    assert calls == [(str(tmp_path / 'iter_2.pth'), False)]  # no .partial detour for a single file
