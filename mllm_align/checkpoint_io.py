"""Safe checkpoint *loading*: a static pickle-globals check, then ``weights_only`` loads with an allow-list.

This module sits at the bottom of the package (beside :mod:`mllm_align.constants`): it imports torch, numpy
and mmengine's logging only, so ``models/`` (``pretrained_pth``, HF directories), ``align/``, ``engine/``
and the tools all load checkpoints through it without importing each other. Writing checkpoints (the
atomic file backend, DeepSpeed's atomic directories) is the engine's business
(:mod:`mllm_align.engine.checkpoint`, which re-exports every name defined here).

* **weights_only with an allow-list.** torch ≥ 2.6 loads with ``weights_only=True``; mmengine's
  checkpoints carry its ``HistoryBuffer`` and numpy scalars/arrays in the message hub. Exactly those
  classes are allow-listed (:func:`allow_mmengine_checkpoint_globals`) instead of turning the safety off.
* **Checked before loading.** The pickle's globals are read statically
  (``torch.serialization.get_unsafe_globals_in_checkpoint``: only the small ``data.pkl`` record, no
  tensor is read), so a file that needs anything else is refused with :class:`UnsafeCheckpointError`
  naming the file and the globals before anything runs (:func:`check_checkpoint_safe`).
* **Every form.** Plain files (:func:`load_checkpoint_file`, :func:`load_torch_file`), DeepSpeed
  checkpoint directories (every rank's shards; fp32 weights re-assembled by DeepSpeed's ``zero_to_fp32``,
  which calls ``torch.load(..., weights_only=False)`` and so runs under :func:`weights_only_torch_load`,
  which forces ``weights_only=True``; DeepSpeed's plain records :data:`DEEPSPEED_SAFE_GLOBALS` are
  allowed for these directories only), and HF directories (:func:`hf_weights_kwargs`: safetensors
  preferred, ``pytorch_model*.bin`` checked).
* **Trust is opt-in.** A trusted file is loaded with full unpickling when :data:`TRUST_ENV`
  (``MLLM_ALIGN_TRUST_CHECKPOINT=1``, set by the tools' ``--trust-checkpoint`` and inherited by every
  rank) is set, or when a loader is called with ``trust=True``.
"""
from __future__ import annotations

import contextlib
import copyreg
import importlib
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log

__all__ = ['DEEPSPEED_MODEL_STATES', 'DEEPSPEED_OPTIM_STATES', 'DEEPSPEED_SAFE_GLOBALS', 'TRUST_ENV', 'TRUST_HINT',
           'UnsafeCheckpointError', 'allow_mmengine_checkpoint_globals', 'check_checkpoint_safe',
           'deepspeed_safe_globals', 'hf_weights_kwargs', 'is_deepspeed_checkpoint', 'load_checkpoint_file',
           'load_torch_file', 'load_trained_weights', 'set_trust_checkpoints', 'trust_checkpoints',
           'unsafe_globals_in_checkpoint', 'weights_only_torch_load']

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


def _reduce_history_buffer(buf: HistoryBuffer) -> tuple:
    """Pickle a HistoryBuffer as ``HistoryBuffer(log_history, count_history, max_length)``.

    By default it pickles its dict of statistics methods as bound methods (``getattr`` calls), which
    a ``weights_only`` load rightly refuses; rebuilding through the constructor needs no more than
    the class and numpy arrays on the allow-list.
    """
    return HistoryBuffer, (buf._log_history, buf._count_history, buf.max_length)


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list the non-tensor classes mmengine stores in checkpoints for ``weights_only`` loads (idempotent).

    The message hub holds ``HistoryBuffer`` objects whose state is numpy arrays and scalars; they are
    also made to pickle through their constructor (:func:`_reduce_history_buffer`), so that what is
    saved from now on needs nothing beyond this list.
    """
    from numpy._core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')]
    torch.serialization.add_safe_globals([HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar,
                                          *dtype_classes])
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)


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


def is_deepspeed_checkpoint(path: Union[str, Path]) -> bool:
    """A DeepSpeed checkpoint tag directory (what ``--deepspeed`` runs save as ``iter_N.pth/``)."""
    path = Path(path)
    return path.is_dir() and any(path.glob(DEEPSPEED_MODEL_STATES))


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


def _load_deepspeed_checkpoint(path: Path, trust: bool | None = None) -> dict:
    """``{'state_dict': fp32 weights, 'meta': …, 'message_hub': …}`` of a DeepSpeed ZeRO-2/3 checkpoint directory.

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


def load_torch_file(path: Union[str, Path], map_location: Any = 'cpu', trust: bool | None = None) -> Any:
    """``torch.load`` of one checkpoint file: checked first, ``weights_only`` unless trusted, file named on failure.

    Raises:
        UnsafeCheckpointError: the file needs unsafe loading and is not trusted.
        RuntimeError: the file cannot be read with ``weights_only=True``.
    """
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
    return load_torch_file(path, trust=trust)


def hf_weights_kwargs(path: Union[str, Path], trust: bool | None = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load a local HF directory's weights safely.

    transformers prefers ``*.safetensors`` (no pickle); without them it reads ``pytorch_model*.bin``
    with ``weights_only=True`` but reports a refused file as "Unable to load weights … from_tf=True".
    So without safetensors each ``pytorch_model*.bin`` is checked here first (the error names it and
    the opt-in); trusted, ``weights_only=False`` is passed.

    Raises:
        UnsafeCheckpointError: an untrusted ``pytorch_model*.bin`` that needs unsafe loading.
    """
    trusted = trust_checkpoints(trust)
    p = Path(path)
    if not trusted and p.is_dir() and not any(p.glob('*.safetensors')):
        for file in sorted(p.glob('pytorch_model*.bin')):
            check_checkpoint_safe(file, trust=False)
    return {'weights_only': not trusted}


def load_trained_weights(model: torch.nn.Module, path: Union[str, Path], strict: bool = False) -> list[str]:
    """Load a trainable-only checkpoint (``iter_N.pth``, a DeepSpeed directory or a bare state dict) into ``model``.

    Returns the checkpoint keys the model does not have (also logged). Model keys the checkpoint lacks
    are ignored (the frozen base is not saved) unless ``strict``, where any mismatch raises.

    Raises:
        RuntimeError: with ``strict``, a key mismatch (both lists, first ten each).
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
