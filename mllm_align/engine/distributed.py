"""Fail-fast and launcher-ownership for the ranks of a ``tools/dist.sh`` (torchrun) run.

Two failure modes of a multi-process run are handled here; ``tools/train.py`` wires them in:

* **A failing rank ends the run.** A rank that raises (a missing image, ENOSPC while saving) must
  not wait in a collective for ranks that will never join it. :func:`exit_on_failure` prints the
  traceback once, prefixed with the rank, flushes, and ends the process with ``os._exit(1)``
  without any collective; torchrun then stops the other ranks. A rank whose error is only the echo
  of that (gloo "connection closed / reset by peer" once a peer is gone) prints one line instead of
  a second traceback.
* **The launcher owns its ranks.** torchrun starts every rank in its own session
  (``start_new_session=True``), so a SIGKILL of the launcher leaves the ranks training. Each rank
  therefore (1) asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``;
  torchrun creates the ranks from its main thread, so the signal fires when the launcher process
  goes) and (2) runs :func:`start_launcher_watchdog`, a daemon thread that SIGKILLs the rank once
  its parent is no longer the launcher (``os.getppid()`` changes when it is re-parented).
  :func:`check_launcher_alive` is called by the atomic checkpoint writers right before a finished
  file or directory is renamed into place, so no checkpoint appears after the launcher died, even
  in the window before the watchdog fires. Ctrl-C / SIGTERM of torchrun: torchrun itself sends
  SIGTERM to the ranks (then SIGKILL after 30 s).

``tools/dist.sh`` exports the launcher's pid as ``MLLM_ALIGN_LAUNCHER_PID`` (it ``exec``\\ s
torchrun, so its own pid is the launcher's); under a bare ``torchrun`` the watchdog takes the rank's
parent at start. Outside such a launch nothing here is active.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import NoReturn

LAUNCHER_PID_ENV = 'MLLM_ALIGN_LAUNCHER_PID'
_PR_SET_PDEATHSIG = 1
PEER_EXIT_DELAY_S = 3.0  # a rank stopped by another's failure exits after at most this long
OTHER_RANK_REPORT_DELAY_S = 1.0  # a failing rank other than 0 reports after this long (exit_on_failure)

# gloo / c10d messages a rank sees when a peer process has gone away: the peer failed first.
_PEER_GONE_MARKERS = ('connection closed by peer', 'connection reset by peer', 'broken pipe',
                      'connection refused', 'socket closed', 'read error', 'write error',
                      'no route to host')


class LauncherGoneError(RuntimeError):
    """The launcher (torchrun) of this rank is gone; nothing may be written any more."""


def _expected_launcher_pid() -> int | None:
    value = os.environ.get(LAUNCHER_PID_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f'{LAUNCHER_PID_ENV}={value!r} is not a process id; tools/dist.sh sets it '
                         'to its own pid (unset it to run without the launcher watchdog).') from None


def launcher_alive() -> bool:
    """Whether this rank's launcher still runs: True outside a ``tools/dist.sh`` launch.

    Under a launch the parent of every rank is the launcher; when the launcher dies the rank is
    re-parented (to init or a subreaper) and ``os.getppid()`` no longer returns its pid. This test
    cannot be fooled by pid reuse.
    """
    launcher = _expected_launcher_pid()
    return launcher is None or os.getppid() == launcher


def check_launcher_alive(what: str = 'checkpoint') -> None:
    """Raise :class:`LauncherGoneError` if the launcher died, naming ``what`` would have been written.

    Called by the atomic checkpoint writers (``mllm_align.engine.checkpoint.atomic_write``, the
    DeepSpeed directory rename) right before they rename a finished temp file into place.
    """
    if not launcher_alive():
        raise LauncherGoneError(f'rank {rank_name()}: the launcher (pid {os.environ.get(LAUNCHER_PID_ENV)}) is gone; '
                                f'not committing {what}. Restart the run with --resume.')


def rank_name() -> str:
    """This process's global rank as torchrun set it (``RANK``), or ``'0'`` for a single process."""
    return os.environ.get('RANK', '0')


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Returns False where unsupported (not Linux, no libc). Note the kernel sends it when the *thread*
    that created this process exits; torchrun creates its ranks from its main thread.
    """
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except OSError:
        return False


def _kill_self(reason: str) -> NoReturn:
    try:
        sys.stderr.write(f'rank {rank_name()}: {reason}; stopping (SIGKILL).\n')
        sys.stderr.flush()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError('unreachable')  # pragma: no cover


def start_launcher_watchdog(poll_s: float = 0.2) -> threading.Thread | None:
    """Make this rank die with its launcher: parent-death signal plus a polling daemon thread.

    Does nothing (returns None) outside a launch: ``MLLM_ALIGN_LAUNCHER_PID`` unset (``tools/dist.sh``
    sets it) and not started by torchrun directly (``TORCHELASTIC_RUN_ID`` unset; then the parent
    at this moment is taken as the launcher). If the launcher is already gone, the rank is killed
    at once.

    Args:
        poll_s: seconds between checks of ``os.getppid()``.

    Returns:
        The started daemon thread, or None.
    """
    if not os.environ.get(LAUNCHER_PID_ENV) and os.environ.get('TORCHELASTIC_RUN_ID'):
        os.environ[LAUNCHER_PID_ENV] = str(os.getppid())  # plain `torchrun tools/train.py …`
    launcher = _expected_launcher_pid()
    if launcher is None:
        return None
    set_parent_death_signal(signal.SIGKILL)
    if not launcher_alive():  # died before the death signal was armed
        _kill_self(f'the launcher (pid {launcher}) is gone')

    def watch() -> None:
        while launcher_alive():
            time.sleep(poll_s)
        _kill_self(f'the launcher (pid {launcher}) is gone')

    thread = threading.Thread(target=watch, name='mllm_align-launcher-watchdog', daemon=True)
    thread.start()
    return thread


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is only the consequence of another rank's exit (a closed gloo connection)."""
    import torch.distributed as dist
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, dist.DistNetworkError):
            return True
        if isinstance(current, (RuntimeError, OSError)) and any(m in str(current).lower() for m in _PEER_GONE_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _log_to_files(message: str) -> None:
    """Append ``message`` to the run's log file(s) (mmengine's file handlers), not to the console."""
    try:
        from mmengine.logging import MMLogger
        if not MMLogger._instance_dict:  # failed before the Runner made its logger
            return
        logger = MMLogger.get_current_instance()
    except Exception:  # noqa: BLE001 - logging must never hide the original error
        return
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.handle(record)
                handler.flush()
            except Exception:  # noqa: BLE001
                pass


def exit_on_failure(exc: BaseException) -> NoReturn:
    """End this rank at once after ``exc``: report it once, flush, ``os._exit`` — no collective.

    * ``SystemExit``: exits with its code.
    * :class:`LauncherGoneError`: its one-line message, exit code 1.
    * A peer failure (:func:`is_peer_failure`): one line on stderr, exit code 1 after at most
      ``PEER_EXIT_DELAY_S`` (torchrun usually stops the rank before, having seen the failing rank
      exit first, which it then reports as the root cause).
    * Anything else: ``rank N failed:`` and the traceback on stderr (and in the run's log file), exit
      code 1. Ranks other than 0 wait ``OTHER_RANK_REPORT_DELAY_S`` first: if rank 0 failed too (an
      error every rank meets), torchrun stops them meanwhile and the error is printed once.
    """
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        flush_and_exit(code)
    rank = rank_name()
    secondary = not isinstance(exc, LauncherGoneError) and is_peer_failure(exc)
    if isinstance(exc, LauncherGoneError):
        message = f'{exc}\n'
    elif secondary:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        message = f'rank {rank}: stopping because another rank failed ({type(exc).__name__}: {first})\n'
    else:
        if rank != '0':
            # An error every rank meets (a config error, a file missing everywhere): rank 0 reports it,
            # exits, and torchrun stops this rank (SIGTERM) during the wait, so it is printed once.
            time.sleep(OTHER_RANK_REPORT_DELAY_S)
        text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        message = f'rank {rank} failed:\n{text}'
        _log_to_files(message.rstrip('\n'))
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    if secondary:
        # Let the rank that failed first exit first: torchrun then names it as the root cause and
        # stops this one (SIGTERM) within its monitor interval; the wait is only a bound.
        time.sleep(PEER_EXIT_DELAY_S)
    flush_and_exit(1)


def flush_and_exit(code: int) -> NoReturn:
    """Shut logging down, flush stdout/stderr, and end the process with ``code`` (``os._exit``: no teardown)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not change the exit code
            pass
    os._exit(code)
