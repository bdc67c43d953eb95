"""Checkpoint writing for the engine (atomic files, a fault point before every commit) and mmengine's safe loader.

* **Atomic writes.** mmengine writes checkpoints and the ``last_checkpoint`` pointer through its
  ``local`` file backend. :class:`AtomicLocalBackend` replaces it: bytes go to a temporary file in
  the same directory, are fsync'ed, then renamed (``os.replace``) over the target, so a run killed
  mid-write leaves either the old file or the new one, never a torn ``iter_N.pth``.
  The temporary file gets the mode an ``open()`` would give (``0o666`` less the umask, so
  ``-rw-r--r--`` as every other output), not ``mkstemp``'s ``0600``. A failed write (ENOSPC, quota,
  read-only) raises one ``OSError`` naming the file, the space left and the fix.
* **DeepSpeed runs** (``--deepspeed``) save each ``iter_N.pth`` as a DeepSpeed *directory* of
  per-rank shards, made atomic by writing it under another name and renaming it when whole
  (:class:`~mllm_align.engine.ds_strategy.AtomicDeepSpeedStrategy`).
* **Checkpoint-write hooks.** Both writers call :func:`run_checkpoint_write_hooks` with the target
  path once its bytes are written and before the rename that commits it, then check that the launcher
  still lives (:func:`~mllm_align.engine.distributed.check_launcher_alive`). Nothing is registered in
  a normal run; the fault-injection suite registers its pause / ENOSPC faults here
  (``CheckpointWriteFaultHook`` of ``mllm_align/testing/fault_injection.py``, a ``custom_hooks``
  entry), so the engine needs no test code and reads no test environment variable.
* **Safe loading** lives one level lower, in :mod:`mllm_align.checkpoint_io`, so that models can load
  ``pretrained_pth`` and HF directories without importing the engine: the pickle-globals pre-scan,
  ``weights_only`` loading with the allow-list, :func:`load_checkpoint_file`,
  :func:`load_trained_weights`, :func:`hf_weights_kwargs`, :class:`UnsafeCheckpointError` and the
  trust flag (:data:`TRUST_ENV`). This module re-exports those names, registers mmengine's loader of
  local paths so that ``resume`` / ``load_from`` load the same way (:func:`install_safe_local_loader`),
  and adds ``--trust-checkpoint`` to the tools' parsers (:func:`add_trust_checkpoint_argument`).

Importing :mod:`mllm_align.engine` installs the atomic backend, the allow-list and the safe loader.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

from mmengine.fileio.backends import LocalBackend, register_backend

from ..checkpoint_io import (
    DEEPSPEED_MODEL_STATES,
    DEEPSPEED_OPTIM_STATES,
    DEEPSPEED_SAFE_GLOBALS,
    TRUST_ENV,
    TRUST_HINT,
    UnsafeCheckpointError,
    allow_mmengine_checkpoint_globals,
    check_checkpoint_safe,
    deepspeed_safe_globals,
    hf_weights_kwargs,
    is_deepspeed_checkpoint,
    load_checkpoint_file,
    load_torch_file,
    load_trained_weights,
    set_trust_checkpoints,
    trust_checkpoints,
    unsafe_globals_in_checkpoint,
    weights_only_torch_load,
)
from .distributed import check_launcher_alive

__all__ = [
    # defined here: writing
    'AtomicLocalBackend', 'CheckpointWriteHook', 'add_checkpoint_write_hook', 'add_trust_checkpoint_argument',
    'add_trust_remote_code_argument',
    'atomic_write', 'checkpoint_write_hook', 'install_atomic_backend', 'install_safe_local_loader',
    'remove_checkpoint_write_hook', 'run_checkpoint_write_hooks',
    # re-exported from mllm_align.checkpoint_io: loading
    'DEEPSPEED_MODEL_STATES', 'DEEPSPEED_OPTIM_STATES', 'DEEPSPEED_SAFE_GLOBALS', 'TRUST_ENV', 'TRUST_HINT',
    'UnsafeCheckpointError', 'allow_mmengine_checkpoint_globals', 'check_checkpoint_safe', 'deepspeed_safe_globals',
    'hf_weights_kwargs', 'is_deepspeed_checkpoint', 'load_checkpoint_file', 'load_torch_file', 'load_trained_weights',
    'set_trust_checkpoints', 'trust_checkpoints', 'unsafe_globals_in_checkpoint', 'weights_only_torch_load',
]

CheckpointWriteHook = Callable[[str], None]
"""A function of the target path (``str``) called before a checkpoint write is committed (module docstring)."""

_write_hooks: list[CheckpointWriteHook] = []


def add_checkpoint_write_hook(hook: CheckpointWriteHook) -> None:
    """Register ``hook``: from now on every checkpoint write calls ``hook(path)`` right before its commit.

    ``path`` is the target (``.../iter_4.pth``, ``.../last_checkpoint``, or a DeepSpeed checkpoint
    directory), its bytes already written to a temp file or a hidden directory. A hook may block (a
    test kills the run meanwhile) or raise (``OSError`` fails the write as the disk would; nothing is
    committed). Registering the same hook twice is a no-op.
    """
    if hook not in _write_hooks:
        _write_hooks.append(hook)


def remove_checkpoint_write_hook(hook: CheckpointWriteHook) -> None:
    """Unregister ``hook`` (a no-op if it is not registered)."""
    if hook in _write_hooks:
        _write_hooks.remove(hook)


@contextlib.contextmanager
def checkpoint_write_hook(hook: CheckpointWriteHook) -> Iterator[None]:
    """``hook`` is registered for the duration of the block (:func:`add_checkpoint_write_hook`)."""
    add_checkpoint_write_hook(hook)
    try:
        yield
    finally:
        remove_checkpoint_write_hook(hook)


def run_checkpoint_write_hooks(path: Union[str, os.PathLike]) -> None:
    """Call every registered hook with ``path``, in registration order (the writers' fault point)."""
    for hook in list(_write_hooks):
        hook(os.fspath(path))


def atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to ``filepath`` so that a reader sees the old file or the new one, never a torn one.

    Temp file in the same directory, fsync, the write hooks, a launcher-alive check, then ``os.replace``.
    """
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(filepath) + '.', suffix='.tmp')
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 → what open() gives every other output
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            run_checkpoint_write_hooks(filepath)  # none registered in normal use (module docstring)
            os.fsync(f.fileno())
        check_launcher_alive(str(filepath))  # nothing is committed once the launcher died
        os.replace(tmp, filepath)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise _write_error(exc, filepath, directory, len(data)) from None  # one message, not two
        raise


def _write_error(exc: OSError, filepath: Union[str, Path], directory: str, size: int) -> OSError:
    """The same ``OSError`` (errno kept), naming the file, the space left and what to do."""
    try:
        free = f'{shutil.disk_usage(directory).free / 2**20:.1f} MiB free'
    except OSError:
        free = 'free space unknown'
    return OSError(exc.errno, f'{exc.strerror or exc}: writing {str(filepath)!r} ({size / 2**20:.1f} MiB; '
                              f'{free} in {directory!r}) failed and nothing was replaced: the checkpoints '
                              'already saved are intact. Free space (or fix the permissions), or pass another '
                              '--work-dir, then rerun with --resume.')


def _umask() -> int:
    """The process umask (read from /proc without changing it; else set-and-restore)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` / ``put_text`` (temp file + ``os.replace``)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


def install_atomic_backend() -> None:
    """Make mmengine's default local backend the atomic one (idempotent)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # get_file_backend caches instances; drop stale plain-LocalBackend ones.
    from mmengine.fileio import io as mm_io
    for key, inst in list(mm_io.backend_instances.items()):
        if type(inst) is LocalBackend:
            del mm_io.backend_instances[key]


def _load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    """mmengine's local checkpoint loader (``Runner.resume`` / ``load_from``), loading as :func:`load_torch_file`."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_torch_file(filename, map_location=map_location)


def install_safe_local_loader() -> None:
    """Register :func:`_load_from_local_safely` as mmengine's loader of local paths (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local_safely, force=True)


class _SetEnvFlagAction(argparse.Action):
    """A flag without a value that sets the environment variable ``const`` to ``1``: this process and every process
    it starts (each rank, each loader) see the permission."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        os.environ[self.const] = '1'


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-checkpoint`` (the opt-in to unsafe loading of trusted files; sets :data:`TRUST_ENV`)."""
    parser.add_argument('--trust-checkpoint', action=_SetEnvFlagAction, const=TRUST_ENV,
                        help='load checkpoints that need full unpickling (weights_only=False), which can run code '
                             f'from the file: only for files you trust (same as {TRUST_ENV}=1)')


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-remote-code`` (run the modelling code an HF directory ships, e.g. a remote-code InternVL2
    export; sets ``MLLM_ALIGN_TRUST_REMOTE_CODE``) to a tool's parser."""
    from ..models.hf_llava import TRUST_REMOTE_CODE_ENV
    parser.add_argument('--trust-remote-code', action=_SetEnvFlagAction, const=TRUST_REMOTE_CODE_ENV,
                        help='allow HF directories that ship their own modelling code (config.json auto_map + *.py, '
                             'e.g. an export of a remote-code InternVL2 base): that code runs, so only for '
                             f'directories you trust (same as {TRUST_REMOTE_CODE_ENV}=1)')
