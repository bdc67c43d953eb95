"""End to end through tools/dist.sh: a failing rank ends a 2-process run fast and says why once.

A sample whose image is missing on one rank, and a full disk (ENOSPC injected while rank 0 writes
a checkpoint), each end the run non-zero within 30 s with the error shown exactly once; the other
rank says in one line that it stops because another failed. Both runs are started at the same time
without ``PORT``: ``tools/dist.sh`` picks a free port for each, so they do not collide. The
kill-and-resume tests are in test_fault_tolerance_e2e.py.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from mmengine.config import Config

from mllm_align.testing.fault_injection import write_missing_image_on_rank
from mllm_align.testing.runs import REPO, TINY_CONFIG, checkpoints, run_env, start_run, train_command

pytestmark = pytest.mark.slow
FAIL_WITHIN_S = 30


@pytest.fixture(scope='module')
def failing_runs(tiny_assets, tmp_path_factory):
    """Three concurrent 2-process runs (no PORT set): a missing image on rank 1, ENOSPC on rank 0, a config
    error on both ranks. Returns ``{name: (exit code, s from the first error print to the exit, output)}``."""
    root = tmp_path_factory.mktemp('failing_runs')
    cfg = Config.fromfile(str(REPO / TINY_CONFIG))
    bad = root / 'bad.jsonl'
    sample_id = write_missing_image_on_rank(tiny_assets.pretrain_json, bad, cfg.train_dataloader.dataset, rank=1,
                                            world_size=2, batch_size=cfg.train_dataloader.batch_size,
                                            seed=cfg.randomness.seed)
    logs = {name: root / f'{name}.log' for name in ('missing_image', 'enospc', 'bad_config')}
    runs = {
        'missing_image': start_run(train_command(root / 'missing_image', 2, 8, 2,
                                                 cfg_options=(f'train_dataloader.dataset.data_path={bad}',)),
                                   logs['missing_image'], run_env()),
        'enospc': start_run(train_command(root / 'enospc', 2, 8, 2), logs['enospc'],
                            run_env(MLLM_ALIGN_CKPT_FAULT='enospc:iter_4.pth', MLLM_ALIGN_FAULT_RANK='0')),
        # Fails on every rank at build (a misspelt model argument): still reported once, by rank 0.
        'bad_config': start_run(train_command(root / 'bad_config', 2, 8, 2, cfg_options=('model.freeze_lm=True',)),
                                logs['bad_config'], run_env()),
    }
    start, first_error, ended = time.monotonic(), {}, {}
    try:
        while len(ended) < len(runs) and time.monotonic() - start < 300:
            for name, proc in runs.items():
                if name not in first_error and ' failed:' in logs[name].read_text():
                    first_error[name] = time.monotonic()
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.monotonic()
            time.sleep(0.1)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = {name: (proc.returncode, ended.get(name, float('inf')) - first_error.get(name, start),
                      logs[name].read_text()) for name, proc in runs.items()}
    return root, sample_id, results


def test_missing_image_on_one_rank_fails_fast_and_says_so_once(failing_runs):
    root, sample_id, results = failing_runs
    code, took, out = results['missing_image']
    assert code != 0, out[-3000:]
    assert took < FAIL_WITHIN_S, f'the run ended {took:.0f} s after the error was printed'
    assert out.count(f"sample id '{sample_id}'") == 1, out[-5000:]  # the error, shown exactly once
    assert out.count('rank 1 failed:') == 1 and 'rank 0 failed' not in out, out[-5000:]
    assert len(re.findall(r'rank 0: stopping because another rank failed', out)) <= 1
    assert 'Address already in use' not in out and 'EADDRINUSE' not in out
    assert not checkpoints(root / 'missing_image')


def test_full_disk_on_rank_0_fails_fast_and_says_so_once(failing_runs):
    root, _, results = failing_runs
    code, took, out = results['enospc']
    assert code != 0, out[-3000:]
    assert took < FAIL_WITHIN_S, f'the run ended {took:.0f} s after the error was printed'
    assert out.count('[Errno 28] No space left on device') == 1, out[-5000:]
    assert out.count('rank 0 failed:') == 1 and 'rank 1 failed' not in out, out[-5000:]
    assert 'Address already in use' not in out
    assert checkpoints(root / 'enospc') == ['iter_2.pth']  # what was saved before is kept
    assert not list((root / 'enospc').glob('.iter_4.pth.*'))  # the failed write left no temp file


def test_an_error_of_every_rank_is_printed_once(failing_runs):
    _, _, results = failing_runs
    code, took, out = results['bad_config']
    assert code != 0 and took < FAIL_WITHIN_S, out[-3000:]
    assert len(re.findall(r'rank \d failed:', out)) == 1, out[-5000:]
    assert "unexpected keyword argument 'freeze_lm'" in out or 'freeze_lm' in out.split('failed:')[1]


def test_the_log_file_is_named_and_concurrent_runs_get_their_own_ports(failing_runs):
    root, _, results = failing_runs
    for name in ('missing_image', 'enospc'):
        out = results[name][2]
        match = re.search(r'Log file: (\S+\.log)', out)
        assert match, f'{name}: no "Log file:" line\n{out[-3000:]}'
        log = Path(match.group(1))
        assert log.is_file() and root in log.parents, log
        assert re.fullmatch(r'\d{8}_\d{6}', log.parent.name) and log.name == log.parent.name + '.log', log
        assert out.count('Log file:') == 1  # rank 0 only
        ports = re.findall(r'rendezvous 127\.0\.0\.1:(\d+)', out)
        assert len(ports) == 1 and ports[0] != '29500', ports
    ports = {re.findall(r'rendezvous 127\.0\.0\.1:(\d+)', out)[0] for _, _, out in results.values()}
    assert len(ports) == 3, 'the three concurrent runs must use different ports'
