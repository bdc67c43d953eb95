"""Fail-fast exit and launcher ownership of a rank (mllm_align/engine/distributed.py), in subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from mllm_align.engine import distributed
from mllm_align.testing.runs import REPO, alive, wait_gone


def _python(code: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))


def test_launcher_alive_follows_the_parent(monkeypatch):
    monkeypatch.delenv(distributed.LAUNCHER_PID_ENV, raising=False)
    assert distributed.launcher_alive()  # outside tools/dist.sh: nothing to watch
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, str(os.getppid()))
    assert distributed.launcher_alive()
    distributed.check_launcher_alive('x')
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, str(os.getppid() + 1))  # not our parent: re-parented
    assert not distributed.launcher_alive()
    with pytest.raises(distributed.LauncherGoneError, match=r'not committing iter_4\.pth.*--resume'):
        distributed.check_launcher_alive('iter_4.pth')
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, 'abc')
    with pytest.raises(ValueError, match='MLLM_ALIGN_LAUNCHER_PID=.abc. is not a process id'):
        distributed.launcher_alive()


def test_atomic_write_commits_nothing_once_the_launcher_is_gone(tmp_path, monkeypatch):
    from mllm_align.engine.checkpoint import atomic_write
    target = tmp_path / 'iter_4.pth'
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, str(os.getppid() + 1))
    with pytest.raises(distributed.LauncherGoneError):
        atomic_write(b'weights', target)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temp file
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, str(os.getppid()))
    atomic_write(b'weights', target)
    assert target.read_bytes() == b'weights'


def test_peer_failures_are_told_apart_from_real_errors():
    import torch.distributed as dist
    gloo = RuntimeError('[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1')
    assert distributed.is_peer_failure(gloo)
    assert distributed.is_peer_failure(dist.DistNetworkError('store lost'))
    try:
        try:
            raise ConnectionResetError('Connection reset by peer')
        except ConnectionResetError as exc:
            raise RuntimeError('DDP broadcast failed') from exc
    except RuntimeError as chained:
        assert distributed.is_peer_failure(chained)
    assert not distributed.is_peer_failure(FileNotFoundError("image 'a.png' not found"))
    assert not distributed.is_peer_failure(OSError(28, 'No space left on device'))


@pytest.mark.parametrize('error, code, shown, hidden', [
    ("FileNotFoundError('sample 7: image missing')", 1, ['rank 3 failed:', 'Traceback', 'sample 7: image missing'], []),
    ("RuntimeError('gloo: Connection closed by peer [127.0.0.1]:5')", 1,
     ['rank 3: stopping because another rank failed (RuntimeError: gloo: Connection closed by peer'], ['Traceback']),
    ('SystemExit(3)', 3, [], ['Traceback', 'rank 3']),
])
def test_exit_on_failure_reports_once_and_exits_without_teardown(error, code, shown, hidden):
    proc = _python(f"""
        import atexit, sys
        from mllm_align.engine.distributed import exit_on_failure
        atexit.register(lambda: print('TEARDOWN RAN'))  # os._exit skips interpreter teardown
        try:
            raise {error}
        except BaseException as exc:
            exit_on_failure(exc)
        print('NOT REACHED')
        """, env={'RANK': '3'})
    assert proc.returncode == code, proc.stderr
    out = proc.stdout + proc.stderr
    for text in shown:
        assert out.count(text) == 1, out
    for text in hidden + ['TEARDOWN RAN', 'NOT REACHED']:
        assert text not in out, out


@pytest.mark.parametrize('death_signal', [True, False], ids=['pdeathsig+thread', 'thread-only'])
def test_watchdog_kills_the_rank_when_its_launcher_dies(tmp_path, death_signal):
    """launcher (a python) → rank (a python running the watchdog, in its own session as under torchrun);
    SIGKILL the launcher: the rank goes within seconds, by the parent-death signal or by the polling thread."""
    pid_file = tmp_path / 'rank.pid'
    rank_code = ("import os, time; import mllm_align.engine.distributed as d; "
                 + ('' if death_signal else 'd.set_parent_death_signal = lambda *a: False; ')
                 + "os.environ['MLLM_ALIGN_LAUNCHER_PID'] = str(os.getppid()); "
                 f"d.start_launcher_watchdog(poll_s=0.05); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                 "time.sleep(120)")
    launcher_code = (f'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", {rank_code!r}], '
                     'start_new_session=True); time.sleep(120)')
    launcher = subprocess.Popen([sys.executable, '-c', launcher_code], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        rank = int(pid_file.read_text())
        assert alive(rank)
        launcher.kill()
        launcher.wait()
        took = wait_gone([rank], timeout=5)
        assert took is not None, f'rank {rank} outlived its launcher by > 5 s'
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_watchdog_is_off_outside_a_launch_and_adopts_a_bare_torchrun_parent(monkeypatch):
    # setenv first so that monkeypatch restores the variable's absence: the code under test sets it
    # in os.environ, and a leaked value would make every later subprocess run think its launcher died.
    monkeypatch.setenv(distributed.LAUNCHER_PID_ENV, '')
    monkeypatch.delenv(distributed.LAUNCHER_PID_ENV)
    monkeypatch.delenv('TORCHELASTIC_RUN_ID', raising=False)
    assert distributed.start_launcher_watchdog() is None
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'x')  # `torchrun tools/train.py` without dist.sh
    monkeypatch.setattr(distributed, 'set_parent_death_signal', lambda *a: True)
    started = []

    class FakeThread:  # a real watchdog thread would outlive this test
        def __init__(self, target, name, daemon):
            self.daemon = daemon

        def start(self):
            started.append(self)
    monkeypatch.setattr(distributed.threading, 'Thread', FakeThread)
    thread = distributed.start_launcher_watchdog()
    assert started == [thread] and thread.daemon
    assert os.environ[distributed.LAUNCHER_PID_ENV] == str(os.getppid())
