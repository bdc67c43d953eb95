"""What --resume resumes from (mllm_align/engine/resume.py): the newest complete checkpoint, torn ones
skipped by name, nothing-to-resume an error unless ``auto``, temp files never candidates, and a real
run that resumes past a ``truncate``d checkpoint to the weights of an uninterrupted run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_align.engine.checkpoint import load_checkpoint_file
from mllm_align.engine.launch import prepare_config
from mllm_align.engine.resume import ResumeError, checkpoint_dir, checkpoint_problem, find_checkpoints, resolve_resume

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')


def _save(path: Path, value: float = 1.0) -> Path:
    torch.save({'state_dict': {'w': torch.full((64, 64), value)}, 'meta': {'iter': 1}}, path)
    return path


def _tear(path: Path, size: int = 2000) -> None:
    os.truncate(path, size)  # what `truncate -s` or a full disk leaves


def test_newest_complete_checkpoint_is_chosen_in_every_mode(tmp_path):
    for n in (2, 4, 8):
        _save(tmp_path / f'iter_{n}.pth')
    assert resolve_resume(tmp_path, 'latest') == str(tmp_path / 'iter_8.pth')
    _tear(tmp_path / 'iter_8.pth')
    assert 'torn' in checkpoint_problem(tmp_path / 'iter_8.pth')
    for mode in ('latest', True, 'auto'):
        assert resolve_resume(tmp_path, mode) == str(tmp_path / 'iter_4.pth')


def test_skipping_a_torn_checkpoint_warns_with_its_name(tmp_path, capsys):
    _save(tmp_path / 'iter_2.pth')
    _save(tmp_path / 'iter_4.pth')
    _tear(tmp_path / 'iter_4.pth')
    assert resolve_resume(tmp_path, 'latest') == str(tmp_path / 'iter_2.pth')
    out = capsys.readouterr()
    text = out.out + out.err
    assert f'skipping {tmp_path / "iter_4.pth"}' in text and 'torn' in text and 'iter_2.pth' in text


def test_only_torn_checkpoints_stop_the_run_with_the_list(tmp_path):
    for n in (2, 4):
        _save(tmp_path / f'iter_{n}.pth')
        _tear(tmp_path / f'iter_{n}.pth')
    for mode in ('latest', 'auto'):  # auto starts fresh only when there is nothing at all
        with pytest.raises(ResumeError, match=r'no complete checkpoint.*iter_4\.pth: torn.*iter_2\.pth: torn'):
            resolve_resume(tmp_path, mode)


def test_nothing_to_resume_is_an_error_unless_auto(tmp_path):
    with pytest.raises(ResumeError, match='no checkpoint to resume from.*--resume auto'):
        resolve_resume(tmp_path / 'mistyped_work_dir', 'latest')
    assert resolve_resume(tmp_path / 'mistyped_work_dir', 'auto') is None
    assert resolve_resume(tmp_path, None) is None and resolve_resume(tmp_path, False) is None


def test_temp_files_and_partial_directories_are_never_candidates(tmp_path):
    _save(tmp_path / 'iter_2.pth')
    _save(tmp_path / '.iter_6.pth.k2j3h4.tmp')  # the atomic writer's temp file (complete bytes even)
    (tmp_path / '.iter_8.pth.partial').mkdir()  # a DeepSpeed save in progress
    _save(tmp_path / '.iter_8.pth.partial' / 'mp_rank_00_model_states.pt')
    _save(tmp_path / 'iter_9.pth.bak')
    assert [c.path.name for c in find_checkpoints(tmp_path)] == ['iter_2.pth']
    assert resolve_resume(tmp_path, 'latest') == str(tmp_path / 'iter_2.pth')


def test_a_corrupt_record_fails_its_crc(tmp_path):
    path = _save(tmp_path / 'iter_2.pth', value=3.0)
    data = bytearray(path.read_bytes())
    i = data.index(torch.full((1,), 3.0).numpy().tobytes())  # inside the tensor record, not the directory
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    assert 'CRC' in checkpoint_problem(path)
    assert checkpoint_problem(_save(tmp_path / 'iter_1.pth')) is None


def test_explicit_path_is_checked_and_usable_ones_are_listed(tmp_path):
    _save(tmp_path / 'iter_2.pth')
    _save(tmp_path / 'iter_4.pth')
    _tear(tmp_path / 'iter_4.pth')
    assert resolve_resume(tmp_path / 'other', str(tmp_path / 'iter_2.pth')) == str(tmp_path / 'iter_2.pth')
    usable = rf"Usable checkpoints in .*\['{tmp_path / 'iter_2.pth'}'\]"
    with pytest.raises(ResumeError, match=rf"iter_4\.pth'.*torn.*{usable}"):
        resolve_resume(tmp_path, str(tmp_path / 'iter_4.pth'))
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint.*iter_4\.pth"):
        resolve_resume(tmp_path, str(tmp_path / 'iter_6.pth'))


def test_run_kind_must_match_the_checkpoint_kind(tmp_path):
    _save(tmp_path / 'iter_2.pth')
    with pytest.raises(ResumeError, match='plain checkpoint file; a --deepspeed run'):
        resolve_resume(tmp_path, str(tmp_path / 'iter_2.pth'), deepspeed=True)
    (tmp_path / 'iter_4.pth').mkdir()
    _save(tmp_path / 'iter_4.pth' / 'mp_rank_00_model_states.pt')
    _save(tmp_path / 'iter_4.pth' / 'zero_pp_rank_0_mp_rank_00_optim_states.pt')
    assert resolve_resume(tmp_path, 'latest', deepspeed=False) == str(tmp_path / 'iter_2.pth')
    assert resolve_resume(tmp_path, 'latest', deepspeed=True) == str(tmp_path / 'iter_4.pth')
    assert resolve_resume(tmp_path, str(tmp_path / 'iter_4.pth') + '/', deepspeed=True) == str(tmp_path / 'iter_4.pth')


def test_deepspeed_directory_with_a_missing_or_torn_shard_is_unusable(tmp_path):
    ckpt = tmp_path / 'iter_4.pth'
    ckpt.mkdir()
    _save(ckpt / 'mp_rank_00_model_states.pt')
    _save(ckpt / 'zero_pp_rank_0_mp_rank_00_optim_states.pt')
    _save(ckpt / 'zero_pp_rank_2_mp_rank_00_optim_states.pt')
    assert 'rank(s) [1]' in checkpoint_problem(ckpt, deepspeed=True)
    _save(ckpt / 'zero_pp_rank_1_mp_rank_00_optim_states.pt')
    assert checkpoint_problem(ckpt, deepspeed=True) is None
    _tear(ckpt / 'zero_pp_rank_1_mp_rank_00_optim_states.pt')
    assert 'zero_pp_rank_1_mp_rank_00_optim_states.pt: torn' in checkpoint_problem(ckpt, deepspeed=True)


def test_last_checkpoint_pointer_does_not_decide(tmp_path):
    work, old = tmp_path / 'copied_work', tmp_path / 'old_work'
    work.mkdir()
    old.mkdir()
    _save(old / 'iter_6.pth')
    _save(work / 'iter_2.pth')
    _save(work / 'iter_4.pth')  # killed after renaming iter_4.pth, before updating the pointer:
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    assert resolve_resume(work, 'latest') == str(work / 'iter_4.pth')
    (work / 'last_checkpoint').write_text(str(old / 'iter_6.pth'))  # a copied work dir: another run's file
    assert resolve_resume(work, 'latest') == str(work / 'iter_4.pth')


def test_checkpoint_hook_out_dir_is_where_checkpoints_are_looked_for(tmp_path):
    cfg = prepare_config(TINY, work_dir=str(tmp_path / 'run'),
                         cfg_options={'default_hooks.checkpoint.out_dir': str(tmp_path / 'ckpts')})
    assert checkpoint_dir(cfg) == str(tmp_path / 'ckpts' / 'run')  # mmengine's out_dir/<work dir name>
    (tmp_path / 'ckpts' / 'run').mkdir(parents=True)
    _save(tmp_path / 'ckpts' / 'run' / 'iter_5.pth')
    cfg = prepare_config(TINY, work_dir=str(tmp_path / 'run'), resume='latest',
                         cfg_options={'default_hooks.checkpoint.out_dir': str(tmp_path / 'ckpts')})
    assert cfg.load_from == str(tmp_path / 'ckpts' / 'run' / 'iter_5.pth')


def test_prepare_config_resume_modes(tmp_path):
    with pytest.raises(ResumeError, match='no checkpoint to resume from'):
        prepare_config(TINY, work_dir=str(tmp_path), resume='latest')
    cfg = prepare_config(TINY, work_dir=str(tmp_path), resume='auto')
    assert cfg.resume is False and cfg.load_from is None
    _save(tmp_path / 'iter_3.pth')
    cfg = prepare_config(TINY, work_dir=str(tmp_path), resume='latest')
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'iter_3.pth')
    cfg = prepare_config(TINY, work_dir=str(tmp_path), cfg_options={'resume': True})  # the config's own flag
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'iter_3.pth')


@pytest.mark.slow
def test_training_resumes_past_a_truncated_checkpoint(tiny_assets, tmp_path):
    """The issue's reproduction: ``truncate -s 50000 W/iter_4.pth`` then ``--resume``."""
    work = tmp_path / 'work'

    def train(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, 'tools/train.py', TINY, '--work-dir', str(work), '--cfg-options',
               'train_cfg.max_epochs=None', 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2',
               'custom_hooks=[]', *extra]
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    first = train()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    shutil.copy(work / 'iter_4.pth', tmp_path / 'uninterrupted_iter_4.pth')
    os.truncate(work / 'iter_4.pth', 50000)
    resumed = train('--resume')
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f'skipping {work / "iter_4.pth"}' in log and 'resuming from' in log.lower()
    assert 'Errno 22' not in log
    expected = load_checkpoint_file(tmp_path / 'uninterrupted_iter_4.pth')
    got = load_checkpoint_file(work / 'iter_4.pth')  # rewritten whole, from iter_2's state
    assert got['meta']['iter'] == 4
    for key, value in expected['state_dict'].items():
        assert torch.equal(value, got['state_dict'][key]), key
    assert oct((work / 'iter_4.pth').stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_resume_refuses_a_checkpoint_with_a_payload(tmp_path, monkeypatch):
    from mllm_align.engine.checkpoint import TRUST_ENV, UnsafeCheckpointError
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / 'marker'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'x': _Payload(marker)}}, tmp_path / 'iter_2.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'iter_2\.pth.*--trust-checkpoint'):
        prepare_config(TINY, work_dir=str(tmp_path), resume='latest')
    assert not marker.exists()
    monkeypatch.setenv(TRUST_ENV, '1')  # --trust-checkpoint
    assert prepare_config(TINY, work_dir=str(tmp_path), resume='latest').load_from == str(tmp_path / 'iter_2.pth')
    assert not marker.exists()  # choosing it reads no pickle; the runner's load would
