"""Checkpoint safety: atomic writes, weights_only loading with an explicit allow-list."""
import os
import pickle

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer, MessageHub

import mllm_align.engine  # noqa: F401  (installs the atomic backend and the allow-list)
from mllm_align.engine.checkpoint import AtomicLocalBackend, load_checkpoint_file


def test_mmengine_local_writes_go_through_the_atomic_backend(tmp_path):
    assert isinstance(get_file_backend(str(tmp_path / 'x.pth')), AtomicLocalBackend)


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    backend = AtomicLocalBackend()
    backend.put(b'old', target)

    def boom(src, dst):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'new-and-longer', target)
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']  # no temp file left behind


def test_message_hub_state_loads_with_weights_only(tmp_path):
    hub = MessageHub.get_instance('ckpt_test')
    for v in (1.0, 2.0, 4.0):
        hub.update_scalar('train/loss', v)
    path = tmp_path / 'ckpt.pth'
    torch.save({'message_hub': hub.state_dict(), 'state_dict': {'w': torch.ones(2)}}, path)
    loaded = load_checkpoint_file(path)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == pytest.approx(7 / 3) and buf.current() == 4.0


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_arbitrary_globals_are_refused_and_the_file_named(tmp_path):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'x': _Evil()}, f, pickle_module=pickle)
    with pytest.raises(RuntimeError, match='evil.pth'):
        load_checkpoint_file(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def test_mmengine_save_checkpoint_renames_into_place(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import save_checkpoint
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda s, d: (calls.append(d), real_replace(s, d)))
    save_checkpoint({'state_dict': {'w': torch.zeros(1)}}, str(tmp_path / 'iter_1.pth'))
    assert calls == [str(tmp_path / 'iter_1.pth')]
