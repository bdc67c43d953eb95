"""Checkpoint safety: atomic writes and ``weights_only`` loading with an explicit allow-list.

* **Atomic writes.** mmengine writes checkpoints and the ``last_checkpoint`` pointer through its
  ``local`` file backend. :class:`AtomicLocalBackend` replaces it: bytes go to a temporary file in
  the same directory, are fsync'ed, then ``os.replace``d over the target, so a run killed
  mid-write leaves either the old file or the new one, never a torn ``iter_N.pth``.
* **Safe loading.** torch ≥ 2.6 loads with ``weights_only=True``; mmengine's checkpoints carry its
  ``HistoryBuffer`` and numpy scalars/arrays in the message hub. We allow-list exactly those
  classes (:func:`allow_mmengine_checkpoint_globals`) instead of turning the safety off.
* **DeepSpeed runs** (``--deepspeed``) save each ``iter_N.pth`` as a DeepSpeed *directory* of
  per-rank shards, made atomic by writing it under another name and renaming it when whole
  (:class:`~mllm_align.engine.ds_strategy.AtomicDeepSpeedStrategy`). :func:`load_checkpoint_file`
  reads such a directory too (fp32 weights re-assembled by DeepSpeed's ``zero_to_fp32``), so
  ``pretrained_pth``, ``tools/eval_mir.py`` and ``tools/convert_to_hf.py`` take either form.

Importing :mod:`mllm_align.engine` installs both.
"""
from __future__ import annotations

import copyreg
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log


def _atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(filepath) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def is_deepspeed_checkpoint(path: Union[str, Path]) -> bool:
    """A DeepSpeed checkpoint tag directory (what ``--deepspeed`` runs save as ``iter_N.pth/``)."""
    path = Path(path)
    return path.is_dir() and any(path.glob(DEEPSPEED_MODEL_STATES))


def _load_deepspeed_checkpoint(path: Path) -> dict:
    """``{'state_dict': fp32 weights, 'meta': …}`` of a DeepSpeed ZeRO-2/3 checkpoint directory.

    The weights are re-assembled from every rank's partition by DeepSpeed's own ``zero_to_fp32``
    (which reads its files with pickle; they are this run's own outputs). They are the trained
    parameters only (those the optimizer updated), like an ``iter_N.pth`` of a plain run.
    """
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as exc:
        raise RuntimeError(f'{path} is a DeepSpeed checkpoint directory; reading it needs the deepspeed package '
                           '(`pip install deepspeed==0.19.8`).') from exc
    states = sorted(path.glob(DEEPSPEED_MODEL_STATES))
    allow_mmengine_checkpoint_globals()
    try:
        from mmengine.config import ConfigDict
        with torch.serialization.safe_globals([ConfigDict]):  # the DeepSpeed config mmengine passed
            client = torch.load(states[0], map_location='cpu', weights_only=True)
        state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name,
                                                         exclude_frozen_parameters=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise RuntimeError(f'Could not read the DeepSpeed checkpoint {str(path)!r}: {exc}. It needs every '
                           "rank's *_model_states.pt and *_optim_states.pt files (saved with save_optimizer=True).") from exc
    return {'state_dict': dict(state), 'meta': client.get('meta'), 'message_hub': client.get('message_hub')}


def load_checkpoint_file(path: Union[str, Path]) -> dict:
    """Load a checkpoint's contents: an ``iter_N.pth`` file (``torch.load`` with ``weights_only=True``,
    allow-list installed) or a DeepSpeed checkpoint directory (fp32 weights re-assembled); names the path
    on failure."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        return _load_deepspeed_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint {str(path)!r} does not exist.')
    allow_mmengine_checkpoint_globals()
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f'Could not load checkpoint {str(path)!r} with weights_only=True: {exc}. '
                           'If it is a file from another tool, convert it to a plain state dict.') from exc


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
