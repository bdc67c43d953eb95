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
    expected = [f'zero_pp_rank_{i}_mp_rank_00_model_states.pt' for i in range(3)]
    assert sorted(p.name for p in target.iterdir()) == expected
    assert not (tmp_path / '.iter_4.pth.partial').exists()
    _strategy().save_checkpoint(str(target))  # saving the same iteration again replaces it
    assert len(list(target.iterdir())) == 3


def test_a_consolidated_file_save_is_left_to_mmengine(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(DeepSpeedStrategy, 'save_checkpoint',
                        lambda self, filename, **kw: calls.append((filename, kw['save_optimizer'])))
    _strategy().save_checkpoint(str(tmp_path / 'iter_2.pth'), save_optimizer=False)
    assert calls == [(str(tmp_path / 'iter_2.pth'), False)]  # no .partial detour for a single file


# ---------------------------------------------------------------------------------------------
# A real ZeRO-2 checkpoint (one CPU process): every shard loads safely, a payload in any shard is
# refused by every reader (zero_to_fp32 via load_checkpoint_file, eval_mir, convert_to_hf, resume),
# and --resume finds and reads DeepSpeed directories.
# ---------------------------------------------------------------------------------------------
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from mllm_align.engine.checkpoint import TRUST_ENV, UnsafeCheckpointError, load_checkpoint_file  # noqa: E402
from mllm_align.testing.net import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def _train_zero2(work: Path, *extra: str) -> subprocess.CompletedProcess:
    """tools/train.py --deepspeed deepspeed_zero2 as rank 0 of a 1-process torchrun-style launch."""
    env = dict(os.environ, OMP_NUM_THREADS='1', DS_ACCELERATOR='cpu', PYTHONPATH=str(REPO), RANK='0',
               LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()))
    env.pop(TRUST_ENV, None)
    cmd = [sys.executable, 'tools/train.py', CONFIG, '--launcher', 'pytorch', '--deepspeed', 'deepspeed_zero2',
           '--work-dir', str(work), '--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=2',
           'default_hooks.checkpoint.interval=1', 'custom_hooks=[]', *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope='module')
def zero2_run(tiny_assets, tmp_path_factory):
    work = tmp_path_factory.mktemp('zero2') / 'work'
    proc = _train_zero2(work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


@pytest.fixture()
def untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.chdir(REPO)  # the tiny config's paths are relative to the repo


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _poisoned_copy(run: Path, dest: Path, shard_kind: str, marker: Path, iteration: int = 2) -> Path:
    """A copy of ``run`` whose ``iter_<iteration>.pth/*<shard_kind>.pt`` carries a payload."""
    shutil.copytree(run, dest)
    (shard,) = (dest / f'iter_{iteration}.pth').glob(f'*{shard_kind}.pt')
    state = torch.load(shard, map_location='cpu', weights_only=False)  # our own clean file
    state['note'] = _Payload(marker)
    torch.save(state, shard)
    return dest / f'iter_{iteration}.pth'


@pytest.mark.slow
def test_real_zero2_shards_hold_only_allow_listed_classes(zero2_run, untrusted):
    from mllm_align.engine.checkpoint import check_checkpoint_safe
    shards = sorted(p.name for p in (zero2_run / 'iter_2.pth').iterdir())
    assert shards == ['mp_rank_00_model_states.pt', 'zero_pp_rank_0_mp_rank_00_optim_states.pt']
    check_checkpoint_safe(zero2_run / 'iter_2.pth')  # every shard, statically
    state = load_checkpoint_file(zero2_run / 'iter_2.pth')['state_dict']  # zero_to_fp32, weights_only
    assert state and all(k.startswith('projector.') for k in state)


@pytest.mark.slow
@pytest.mark.parametrize('shard_kind', ['model_states', 'optim_states'])
def test_payload_in_any_shard_is_refused_unless_trusted(zero2_run, tmp_path, untrusted, shard_kind):
    marker = tmp_path / 'marker'
    ckpt = _poisoned_copy(zero2_run, tmp_path / 'work', shard_kind, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf'{shard_kind}\.pt.*posix\.system.*--trust-checkpoint'):
        load_checkpoint_file(ckpt)
    assert not marker.exists()
    assert load_checkpoint_file(ckpt, trust=True)['state_dict']  # the opt-in reads it (and runs it)
    assert marker.exists()


@pytest.mark.slow
def test_eval_mir_and_convert_to_hf_refuse_a_poisoned_optimizer_shard(zero2_run, tmp_path, untrusted, capsys):
    """The issue's reproduction: the payload in a zero_pp_rank_*_optim_states.pt shard ran under both tools."""
    import importlib.util
    marker = tmp_path / 'marker'
    ckpt = _poisoned_copy(zero2_run, tmp_path / 'work', 'optim_states', marker)

    def tool(name):
        spec = importlib.util.spec_from_file_location(f'{name}_tool', REPO / 'tools' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    assert tool('eval_mir')([str(ckpt), '--config', CONFIG, '--eval-num', '2', '--out', str(tmp_path / 'mir'),
                             '--no-plots', '--no-progress']) == 1
    assert tool('convert_to_hf')([CONFIG, str(ckpt), str(tmp_path / 'hf'), '--no-verify']) == 1
    err = capsys.readouterr().err
    assert err.count('zero_pp_rank_0_mp_rank_00_optim_states.pt') >= 2 and '--trust-checkpoint' in err
    assert not marker.exists()


@pytest.mark.slow
def test_resume_finds_deepspeed_directories_and_refuses_payloads(zero2_run, tmp_path, untrusted):
    from mllm_align.engine.launch import prepare_config
    work = tmp_path / 'work'
    shutil.copytree(zero2_run, work)
    cfg = prepare_config(CONFIG, work_dir=str(work), resume='latest', deepspeed='deepspeed_zero2')
    assert cfg.load_from == str(work / 'iter_2.pth')
    cfg = prepare_config(CONFIG, work_dir=str(work), resume=f'{work}/iter_1.pth/', deepspeed='deepspeed_zero2')
    assert cfg.load_from == str(work / 'iter_1.pth')  # no trailing slash: DeepSpeed's tag is the basename
    (optim,) = (work / 'iter_2.pth').glob('*optim_states.pt')
    os.truncate(optim, 5000)
    cfg = prepare_config(CONFIG, work_dir=str(work), resume='latest', deepspeed='deepspeed_zero2')
    assert cfg.load_from == str(work / 'iter_1.pth')  # the torn directory is skipped

    marker = tmp_path / 'marker'
    poisoned = _poisoned_copy(zero2_run, tmp_path / 'poisoned', 'model_states', marker)
    with pytest.raises(UnsafeCheckpointError, match='mp_rank_00_model_states.pt'):
        prepare_config(CONFIG, work_dir=str(poisoned.parent), resume='latest', deepspeed='deepspeed_zero2')
    with pytest.raises(UnsafeCheckpointError, match='mp_rank_00_model_states.pt'):
        _strategy().resume(str(poisoned))  # the strategy checks too (e.g. a resume set in the config)
    assert not marker.exists()


@pytest.mark.slow
def test_explicit_resume_of_a_deepspeed_directory_matches_the_uninterrupted_run(zero2_run, tmp_path):
    work = tmp_path / 'work'
    shutil.copytree(zero2_run, work)
    shutil.rmtree(work / 'iter_2.pth')
    proc = _train_zero2(work, '--resume', str(work / 'iter_1.pth'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    full = load_checkpoint_file(zero2_run / 'iter_2.pth')['state_dict']
    resumed = load_checkpoint_file(work / 'iter_2.pth')['state_dict']
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
