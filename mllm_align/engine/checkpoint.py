"""Checkpoint safety: atomic writes and ``weights_only`` loading with an explicit allow-list.

* **Atomic writes.** mmengine writes checkpoints and the ``last_checkpoint`` pointer through its
  ``local`` file backend. :class:`AtomicLocalBackend` replaces it: bytes go to a temporary file in
  the same directory, are fsync'ed, then ``os.replace``d over the target, so a run killed
  mid-write leaves either the old file or the new one, never a torn ``iter_N.pth``.
* **Safe loading.** torch ≥ 2.6 loads with ``weights_only=True``; mmengine's checkpoints carry its
  ``HistoryBuffer`` and numpy scalars/arrays in the message hub. We allow-list exactly those
  classes (:func:`allow_mmengine_checkpoint_globals`) instead of turning the safety off.
  The temporary file gets the mode an ``open()`` would give (``0o666`` less the umask, so
  ``-rw-r--r--`` as every other output), not ``mkstemp``'s ``0600``.
* **DeepSpeed runs** (``--deepspeed``) save each ``iter_N.pth`` as a DeepSpeed *directory* of
  per-rank shards, made atomic by writing it under another name and renaming it when whole
  (:class:`~mllm_align.engine.ds_strategy.AtomicDeepSpeedStrategy`). :func:`load_checkpoint_file`
  reads such a directory too (fp32 weights re-assembled by DeepSpeed's ``zero_to_fp32``), so
  ``pretrained_pth``, ``tools/eval_mir.py`` and ``tools/convert_to_hf.py`` take either form.
* **No code from a checkpoint, in any form.** Every load goes through ``weights_only=True``:
  plain files (:func:`load_checkpoint_file`; mmengine's own ``resume`` / ``load_from`` through the
  local loader :func:`install_safe_local_loader` registers), every shard of a DeepSpeed directory
  (DeepSpeed's ``zero_to_fp32`` and ``engine.load_checkpoint`` call ``torch.load(...,
  weights_only=False)``; they run under :func:`weights_only_torch_load`, which forces
  ``weights_only=True`` for the duration), and HF directories (:func:`hf_weights_kwargs`:
  safetensors preferred, ``pytorch_model*.bin`` scanned). Besides mmengine's classes, DeepSpeed
  files hold exactly :data:`DEEPSPEED_SAFE_GLOBALS` (its config dict, ZeRO stage enum, loss scaler,
  fragment addresses), allow-listed for DeepSpeed directories only. Before loading, the pickle's
  globals are read statically (``torch.serialization.get_unsafe_globals_in_checkpoint``: only the
  small ``data.pkl`` record, no tensor is read), so a file that needs anything else is refused
  with :class:`UnsafeCheckpointError` naming the file and the globals, before anything runs. A
  trusted file is opted in with ``--trust-checkpoint`` (``tools/train.py``, ``tools/eval_mir.py``,
  ``tools/convert_to_hf.py``), which sets :data:`TRUST_ENV` (``MLLM_ALIGN_TRUST_CHECKPOINT=1``,
  inherited by every rank); library loaders also take ``trust=True``.

Importing :mod:`mllm_align.engine` installs the atomic backend, the allow-list and the safe loader.
"""
from __future__ import annotations

import argparse
import contextlib
import copyreg
import errno
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log

from ..testing.fault_injection import checkpoint_write_fault
from .distributed import check_launcher_alive


def _atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(filepath) + '.', suffix='.tmp')
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 → what open() gives every other output
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            checkpoint_write_fault(filepath)  # test hook (pause / ENOSPC); a no-op in normal use
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
        _atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        _atomic_write(obj.encode(encoding), filepath)


def install_atomic_backend() -> None:
    """Make mmengine's default local backend the atomic one (idempotent)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # get_file_backend caches instances; drop stale plain-LocalBackend ones.
    from mmengine.fileio import io as mm_io
    for key, inst in list(mm_io.backend_instances.items()):
        if type(inst) is LocalBackend:
            del mm_io.backend_instances[key]


def _reduce_history_buffer(buf: HistoryBuffer) -> tuple:
    """Pickle a HistoryBuffer as ``HistoryBuffer(log_history, count_history, max_length)``.

    By default it pickles its dict of statistics methods as bound methods (``getattr`` calls), which
    a ``weights_only`` load rightly refuses; rebuilding through the constructor needs no more than
    the class and numpy arrays on the allow-list.
    """
    return HistoryBuffer, (buf._log_history, buf._count_history, buf.max_length)


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list the non-tensor classes mmengine stores in checkpoints for ``weights_only`` loads.

    The message hub holds ``HistoryBuffer`` objects whose state is numpy arrays and scalars.
    """
    from numpy._core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')]
    torch.serialization.add_safe_globals([HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar,
                                          *dtype_classes])
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)


DEEPSPEED_MODEL_STATES = '*model_states.pt'
DEEPSPEED_OPTIM_STATES = '*optim_states.pt'

TRUST_ENV = 'MLLM_ALIGN_TRUST_CHECKPOINT'
TRUST_HINT = ('If you trust this file (you or a source you trust wrote it), opt in with --trust-checkpoint '
              f'(tools/train.py, tools/eval_mir.py, tools/convert_to_hf.py) or {TRUST_ENV}=1.')

# What DeepSpeed 0.19 pickles into its checkpoint shards besides tensors and builtins (found by saving
# real ZeRO-2/3 checkpoints, fp32 and bf16): mmengine's ConfigDict (the DeepSpeed config it passed),
# the ZeRO stage enum, the loss scaler (fp32/bf16: LossScaler, fp16: DynamicLossScaler) and
# tensor-fragment addresses. Plain data classes: rebuilding them runs no code of the file.
DEEPSPEED_SAFE_GLOBALS = ('mmengine.config.config.ConfigDict',
                          'deepspeed.runtime.fp16.loss_scaler.LossScaler',
                          'deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler',
                          'deepspeed.runtime.zero.config.ZeroStageEnum',
                          'deepspeed.utils.tensor_fragment.fragment_address')


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that could only be loaded by running code from it (refused unless trusted)."""


def trust_checkpoints(trust: bool | None = None) -> bool:
    """Whether unsafe (full-pickle) loading is allowed: ``trust`` if given, else :data:`TRUST_ENV` is ``1``."""
    if trust is not None:
        return bool(trust)
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes')


def set_trust_checkpoints(trust: bool) -> None:
    """Set or clear :data:`TRUST_ENV` for this process and the processes it starts (``--trust-checkpoint``)."""
    if trust:
        os.environ[TRUST_ENV] = '1'
    else:
        os.environ.pop(TRUST_ENV, None)


def _import_global(qualname: str) -> Any:
    module, _, name = qualname.rpartition('.')
    import importlib
    return getattr(importlib.import_module(module), name)


def deepspeed_safe_globals() -> list[Any]:
    """The classes of :data:`DEEPSPEED_SAFE_GLOBALS` (imports deepspeed)."""
    return [_import_global(name) for name in DEEPSPEED_SAFE_GLOBALS]


def unsafe_globals_in_checkpoint(path: Union[str, Path], allowed: Sequence[str] = ()) -> list[str] | None:
    """The pickle globals of a ``torch.save`` zip file that ``weights_only`` would refuse, read statically.

    Only the ``data.pkl`` record is read (no tensor data, nothing is unpickled). ``allowed``: extra
    ``module.Name`` strings to accept. Returns None for a file that is not a torch zip checkpoint
    (legacy format: its load is still ``weights_only``).
    """
    allow_mmengine_checkpoint_globals()
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError):  # not a zip checkpoint, or a torn one: torch.load reports it
        return None
    return sorted(set(found) - set(allowed))


def _refusal(path: Union[str, Path], what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f'Refusing to load {str(path)!r}: {what}, which only a full unpickling (weights_only=False) can '
        f'rebuild, and that runs whatever code the file names. {TRUST_HINT}')


def check_checkpoint_safe(path: Union[str, Path], trust: bool | None = None) -> None:
    """Refuse a checkpoint (file or DeepSpeed directory: every shard) that needs unsafe loading.

    Raises:
        UnsafeCheckpointError: naming the file and the globals, unless trusted (:func:`trust_checkpoints`).
    """
    if trust_checkpoints(trust):
        return
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        files, allowed = sorted(path.glob('*.pt')), DEEPSPEED_SAFE_GLOBALS
    else:
        files, allowed = [path], ()
    for file in files:
        bad = unsafe_globals_in_checkpoint(file, allowed)
        if bad:
            raise _refusal(file, f'it references {", ".join(bad)}')


def _unpickling_refusal(path: Any, exc: Exception) -> UnsafeCheckpointError:
    found = re.findall(r'GLOBAL ([\w.]+)', str(exc))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()
             and not line.startswith(('Weights only load failed', 'Check the documentation'))]
    return _refusal(path, f'it references {", ".join(sorted(set(found)))}' if found
                    else f'weights_only loading failed ({lines[0] if lines else type(exc).__name__})')


@contextlib.contextmanager
def weights_only_torch_load(trust: bool | None = None, extra_globals: Sequence[Any] = ()) -> Iterator[None]:
    """Within the block every ``torch.load`` call loads with ``weights_only=True`` (unless trusted).

    It replaces the ``torch.load`` attribute, so third-party code that looks it up at call time and
    passes ``weights_only=False`` (DeepSpeed's ``zero_to_fp32`` and checkpoint engine) loads safely
    too; ``extra_globals`` (class objects) are allow-listed for the block. A refused file raises
    :class:`UnsafeCheckpointError` naming it. Trusted: ``weights_only=False`` for every call.
    Not thread-safe (it patches a module attribute); meant for a process's checkpoint loading.
    """
    original = torch.load
    trusted = trust_checkpoints(trust)

    def guarded_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs['weights_only'] = not trusted
        if trusted:
            return original(f, *args, **kwargs)
        with torch.serialization.safe_globals(list(extra_globals)):
            try:
                return original(f, *args, **kwargs)
            except pickle.UnpicklingError as exc:
                raise _unpickling_refusal(f, exc) from None

    torch.load = guarded_load
    try:
        yield
    finally:
        torch.load = original


def is_deepspeed_checkpoint(path: Union[str, Path]) -> bool:
    """A DeepSpeed checkpoint tag directory (what ``--deepspeed`` runs save as ``iter_N.pth/``)."""
    path = Path(path)
    return path.is_dir() and any(path.glob(DEEPSPEED_MODEL_STATES))


def _load_deepspeed_checkpoint(path: Path, trust: bool | None = None) -> dict:
    """``{'state_dict': fp32 weights, 'meta': …}`` of a DeepSpeed ZeRO-2/3 checkpoint directory.

    The weights are re-assembled from every rank's partition by DeepSpeed's own ``zero_to_fp32``,
    run under :func:`weights_only_torch_load` (every shard is loaded with ``weights_only=True`` and
    :data:`DEEPSPEED_SAFE_GLOBALS`; all shards are checked first). They are the trained parameters
    only (those the optimizer updated), like an ``iter_N.pth`` of a plain run.
    """
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as exc:
        raise RuntimeError(f'{path} is a DeepSpeed checkpoint directory; reading it needs the deepspeed package '
                           '(`pip install deepspeed==0.19.8`).') from exc
    check_checkpoint_safe(path, trust)
    states = sorted(path.glob(DEEPSPEED_MODEL_STATES))
    allow_mmengine_checkpoint_globals()
    try:
        with weights_only_torch_load(trust, deepspeed_safe_globals()):
            client = torch.load(states[0], map_location='cpu')
            state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name,
                                                             exclude_frozen_parameters=True)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise RuntimeError(f'Could not read the DeepSpeed checkpoint {str(path)!r}: {exc}. It needs every '
                           "rank's *_model_states.pt and *_optim_states.pt files "
                           '(saved with save_optimizer=True).') from exc
    return {'state_dict': dict(state), 'meta': client.get('meta'), 'message_hub': client.get('message_hub')}


def _load_file(path: Union[str, Path], map_location: Any = 'cpu', trust: bool | None = None) -> Any:
    """``torch.load`` of one checkpoint file: checked first, ``weights_only`` unless trusted, file named."""
    check_checkpoint_safe(path, trust)
    allow_mmengine_checkpoint_globals()
    try:
        with weights_only_torch_load(trust):
            return torch.load(path, map_location=map_location)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f'Could not load checkpoint {str(path)!r} with weights_only=True: {exc}. '
                           'If it is a file from another tool, convert it to a plain state dict.') from exc


def load_checkpoint_file(path: Union[str, Path], trust: bool | None = None) -> dict:
    """Load a checkpoint's contents: an ``iter_N.pth`` file or a DeepSpeed checkpoint directory.

    Files load with ``weights_only=True`` (mmengine allow-list installed), directories as
    :func:`_load_deepspeed_checkpoint` describes; names the path on failure.

    Args:
        path: the file or directory.
        trust: allow unsafe (full-pickle) loading; None: :func:`trust_checkpoints` (``--trust-checkpoint``).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs unsafe loading and is not trusted.
        RuntimeError: the file cannot be read.
    """
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        return _load_deepspeed_checkpoint(path, trust)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint {str(path)!r} does not exist.')
    return _load_file(path, trust=trust)


def _load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    """mmengine's local checkpoint loader (``Runner.resume`` / ``load_from``), loading as :func:`_load_file`."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return _load_file(filename, map_location=map_location)


def install_safe_local_loader() -> None:
    """Register :func:`_load_from_local_safely` as mmengine's loader of local paths (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local_safely, force=True)


def hf_weights_kwargs(path: Union[str, Path], trust: bool | None = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load a local HF directory's weights safely.

    transformers prefers ``*.safetensors`` (no pickle); without them it reads ``pytorch_model*.bin``
    with ``weights_only=True`` but reports a refused file as "Unable to load weights … from_tf=True".
    So without safetensors each ``pytorch_model*.bin`` is checked here first (the error names it and
    the opt-in); trusted, ``weights_only=False`` is passed.
    """
    trusted = trust_checkpoints(trust)
    p = Path(path)
    if not trusted and p.is_dir() and not any(p.glob('*.safetensors')):
        for file in sorted(p.glob('pytorch_model*.bin')):
            check_checkpoint_safe(file, trust=False)
    return {'weights_only': not trusted}


def load_trained_weights(model: torch.nn.Module, path: Union[str, Path], strict: bool = False) -> list[str]:
    """Load a trainable-only checkpoint (``iter_N.pth`` or a bare state dict) into ``model``.

    Returns the checkpoint keys the model does not have (also logged). With ``strict`` a key
    mismatch raises.
    """
    ckpt = load_checkpoint_file(path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k in state or strict]
    if strict and (unexpected or missing):
        raise RuntimeError(f'Checkpoint {path} does not match the model: unexpected {unexpected[:10]}, '
                           f'missing {missing[:10]}.')
    print_log(f'Loaded {len(state) - len(unexpected)} tensors from {path}'
              + (f'; {len(unexpected)} unexpected keys ignored, e.g. {unexpected[:3]}' if unexpected else ''),
              logger='current')
    return unexpected


class _TrustCheckpointAction(argparse.Action):
    """``--trust-checkpoint``: sets :data:`TRUST_ENV`, so that every loader (and every rank) sees it."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        set_trust_checkpoints(True)


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-checkpoint`` (the opt-in to unsafe loading of trusted files) to a tool's parser."""
    parser.add_argument('--trust-checkpoint', action=_TrustCheckpointAction,
                        help='load checkpoints that need full unpickling (weights_only=False), which can run code '
                             f'from the file: only for files you trust (same as {TRUST_ENV}=1)')
