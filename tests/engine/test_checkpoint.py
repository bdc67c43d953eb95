"""Checkpoint safety: atomic writes, weights_only loading with an explicit allow-list."""
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer, MessageHub

import mllm_align.engine  # noqa: F401  (installs the atomic backend and the allow-list)
from mllm_align.engine.checkpoint import AtomicLocalBackend, load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------------------------------------
# No code from a checkpoint: a real payload (it creates a marker file when unpickled) in each form
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickled, runs ``touch marker`` (what an attacker's checkpoint would do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture()
def untrusted(monkeypatch):
    from mllm_align.engine.checkpoint import TRUST_ENV
    monkeypatch.delenv(TRUST_ENV, raising=False)


def _evil_checkpoint(path, marker):
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'note': _Payload(marker)}}, path)
    return path


def test_payload_in_a_plain_checkpoint_is_refused_before_it_runs(tmp_path, untrusted):
    from mllm_align.engine.checkpoint import UnsafeCheckpointError
    marker = tmp_path / 'marker'
    path = _evil_checkpoint(tmp_path / 'iter_2.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match=r"iter_2\.pth'.*posix\.system.*--trust-checkpoint"):
        load_checkpoint_file(path)
    assert not marker.exists()
    assert load_checkpoint_file(path, trust=True)['state_dict']['w'].sum() == 2  # the opt-in loads it
    assert marker.exists()  # (and so runs the payload: that is what trusting means)


def test_trust_env_var_is_the_library_opt_in(tmp_path, monkeypatch):
    from mllm_align.engine.checkpoint import TRUST_ENV
    monkeypatch.setenv(TRUST_ENV, '1')
    load_checkpoint_file(_evil_checkpoint(tmp_path / 'a.pth', tmp_path / 'marker'))
    assert (tmp_path / 'marker').exists()


def test_mmengine_resume_and_load_from_go_through_the_safe_loader(tmp_path, untrusted):
    from mmengine.runner.checkpoint import _load_checkpoint

    from mllm_align.engine.checkpoint import UnsafeCheckpointError
    marker = tmp_path / 'marker'
    path = _evil_checkpoint(tmp_path / 'iter_2.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match=r'iter_2\.pth'):
        _load_checkpoint(str(path), map_location='cpu')  # what Runner.resume / load_checkpoint call
    assert not marker.exists()


def test_forced_weights_only_overrides_a_caller_asking_for_pickle(tmp_path, untrusted):
    """DeepSpeed calls torch.load(..., weights_only=False); under the guard that becomes True."""
    from mllm_align.engine.checkpoint import UnsafeCheckpointError, weights_only_torch_load
    marker = tmp_path / 'marker'
    path = _evil_checkpoint(tmp_path / 'shard.pt', marker)
    with weights_only_torch_load(), pytest.raises(UnsafeCheckpointError, match=r'shard\.pt.*posix\.system'):
        torch.load(path, map_location='cpu', weights_only=False)
    assert not marker.exists()
    assert torch.load is not None and torch.load.__name__ == 'load'  # restored on exit
    with weights_only_torch_load(trust=True):
        torch.load(path, map_location='cpu', weights_only=True)
    assert marker.exists()


def test_hf_directory_bin_weights_are_checked(tiny_assets, tmp_path, untrusted, monkeypatch):
    from safetensors.torch import load_file

    from mllm_align.engine.checkpoint import TRUST_ENV, UnsafeCheckpointError
    from mllm_align.models.builders import load_llm
    hf = tmp_path / 'llama_bin'
    shutil.copytree(tiny_assets.llm_llama, hf)
    state = load_file(hf / 'model.safetensors')
    (hf / 'model.safetensors').unlink()
    marker = tmp_path / 'marker'
    torch.save({**state, 'extra': _Payload(marker)}, hf / 'pytorch_model.bin')
    with pytest.raises(UnsafeCheckpointError, match=r'pytorch_model\.bin.*--trust-checkpoint'):
        load_llm(str(hf))
    assert not marker.exists()
    monkeypatch.setenv(TRUST_ENV, '1')  # --trust-checkpoint: transformers gets weights_only=False
    assert load_llm(str(hf)).config.model_type == 'llama' and marker.exists()
    monkeypatch.delenv(TRUST_ENV)
    torch.save(state, hf / 'pytorch_model.bin')  # a clean .bin loads (weights_only)
    marker.unlink()
    assert load_llm(str(hf)).config.model_type == 'llama' and not marker.exists()


def test_pretrained_pth_payload_is_refused(tiny_assets, tmp_path, untrusted, monkeypatch):
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from mllm_align.engine.checkpoint import UnsafeCheckpointError
    monkeypatch.chdir(REPO)  # the tiny config's model paths are relative to the repo
    cfg = Config.fromfile('projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')
    marker = tmp_path / 'marker'
    cfg.model.pretrained_pth = str(_evil_checkpoint(tmp_path / 'pretrain_iter_5.pth', marker))
    with pytest.raises(UnsafeCheckpointError, match=r'pretrain_iter_5\.pth'):
        MODELS.build(cfg.model)
    assert not marker.exists()


def test_trust_checkpoint_flag_sets_the_env_var(monkeypatch):
    import argparse

    from mllm_align.engine.checkpoint import TRUST_ENV, add_trust_checkpoint_argument, trust_checkpoints
    monkeypatch.setenv(TRUST_ENV, '')  # recorded as absent, so the flag's setting is undone afterwards
    monkeypatch.delenv(TRUST_ENV)
    parser = argparse.ArgumentParser()
    add_trust_checkpoint_argument(parser)
    assert parser.parse_args([]).trust_checkpoint is False and not trust_checkpoints()
    assert parser.parse_args(['--trust-checkpoint']).trust_checkpoint is True
    assert os.environ[TRUST_ENV] == '1' and trust_checkpoints() and not trust_checkpoints(False)


def test_checkpoints_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        AtomicLocalBackend().put(b'x', tmp_path / 'iter_1.pth')
    finally:
        os.umask(old)
    assert (tmp_path / 'iter_1.pth').stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    AtomicLocalBackend().put(b'x', tmp_path / 'iter_2.pth')
    assert (tmp_path / 'iter_2.pth').stat().st_mode & 0o777 == 0o666 & ~old


def test_eval_mir_refuses_an_hf_directory_with_a_poisoned_bin(tiny_assets, tmp_path, untrusted, capsys):
    import importlib.util
    import json
    hf = tmp_path / 'hf_export'
    hf.mkdir()
    (hf / 'config.json').write_text(json.dumps({'model_type': 'llava'}))
    shutil.copy(tiny_assets.vision_clip / 'preprocessor_config.json', hf)
    marker = tmp_path / 'marker'
    torch.save({'w': torch.ones(1), 'x': _Payload(marker)}, hf / 'pytorch_model.bin')
    spec = importlib.util.spec_from_file_location('eval_mir_tool', REPO / 'tools' / 'eval_mir.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main([str(hf), '--images', str(tiny_assets.image_folder), '--template', 'plain', '--eval-num', '2',
                      '--out', str(tmp_path / 'mir'), '--no-plots', '--no-progress'])
    assert rc == 1 and not marker.exists()
    assert 'pytorch_model.bin' in capsys.readouterr().err


def test_a_full_disk_names_the_file_keeps_the_old_checkpoint_and_says_what_to_do(monkeypatch, tmp_path):
    import errno

    from mllm_align.engine.checkpoint import atomic_write, checkpoint_write_hook
    from mllm_align.testing import fault_injection as fi
    target = tmp_path / 'iter_4.pth'
    atomic_write(b'old checkpoint', target)
    monkeypatch.setenv('RANK', '0')
    with checkpoint_write_hook(fi.CheckpointWriteFault('enospc', 'iter_4.pth')), pytest.raises(OSError) as info:
        atomic_write(b'new' * 1000, target)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and message.count('No space left on device') == 1
    assert str(target) in message and 'MiB free' in message and '--resume' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # printed once, not twice
    assert target.read_bytes() == b'old checkpoint' and sorted(tmp_path.iterdir()) == [target]
