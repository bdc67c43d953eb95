"""AtomicCheckpointHook: save, then re-point ``last_checkpoint`` atomically, then delete: a kill never loses work."""
import errno
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mllm_align.engine  # noqa: F401  (installs the atomic backend)
from mllm_align.engine.checkpoint import checkpoint_write_hook, load_checkpoint_file
from mllm_align.engine.checkpoint_hook import AtomicCheckpointHook


class _Linear(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, mode='loss'):
        return {'loss': self.w(x).pow(2).mean()}


def _runner(work: Path, max_keep: int, iters: int = 6) -> Runner:
    data = [{'x': torch.full((2,), float(i))} for i in range(8)]
    return Runner(
        model=_Linear(), work_dir=str(work), experiment_name=f'ckpt-{work.name}',
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=2,
                                           max_keep_ckpts=max_keep)),
        default_scope=None, log_level='WARNING')


def _pointer(work: Path) -> str:
    return Path((work / 'last_checkpoint').read_text()).name


def test_old_checkpoint_is_deleted_only_after_the_new_one_and_the_pointer_are_committed(tmp_path):
    work = tmp_path / 'run'
    seen = []  # at each commit: the target and the checkpoints on disk

    def record(path):
        seen.append((Path(path).name, sorted(p.name for p in work.glob('iter_*.pth'))))

    with checkpoint_write_hook(record):
        _runner(work, max_keep=1).train()
    assert seen == [('iter_2.pth', []), ('last_checkpoint', ['iter_2.pth']),
                    ('iter_4.pth', ['iter_2.pth']), ('last_checkpoint', ['iter_2.pth', 'iter_4.pth']),
                    ('iter_6.pth', ['iter_4.pth']), ('last_checkpoint', ['iter_4.pth', 'iter_6.pth'])]
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_6.pth'] and _pointer(work) == 'iter_6.pth'
    # the bookkeeping --resume restores is mmengine's: the window of kept steps, this one included
    assert load_checkpoint_file(work / 'iter_6.pth')['message_hub']['runtime_info']['keep_ckpt_ids'] == [6]


def test_a_failed_pointer_write_leaves_the_previous_pointer_and_its_checkpoint(tmp_path):
    work = tmp_path / 'run'

    def fail_second_pointer(path):
        if Path(path).name == 'last_checkpoint' and (work / 'iter_4.pth').exists():
            raise OSError(errno.EIO, 'simulated I/O error')

    with checkpoint_write_hook(fail_second_pointer), pytest.raises(OSError, match='simulated'):
        _runner(work, max_keep=1).train()
    # iter_4 is whole but not yet pointed at, so iter_2 (what the pointer names) was not deleted
    assert _pointer(work) == 'iter_2.pth'
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_2.pth', 'iter_4.pth']
    load_checkpoint_file(work / 'iter_2.pth')


def test_keep_all_deletes_nothing_and_points_at_the_newest(tmp_path):
    work = tmp_path / 'run'
    _runner(work, max_keep=-1).train()
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']
    assert _pointer(work) == 'iter_6.pth'
