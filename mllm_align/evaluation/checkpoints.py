"""What the runner scores: a work dir's ``iter_N.pth`` series, one checkpoint, or an HF model directory;
and swapping a checkpoint's trained weights into a base model built once.

Discovery and completeness reuse the resume logic (``mllm_align/engine/resume.py``): ``iter_N.pth``
entries are plain files or DeepSpeed directories (temporary names never match), and each is checked
without unpickling (zip directory + CRC-32; every rank's shards); a torn one in a series is skipped
with a warning naming it. Loading is the safe loader of ``mllm_align/engine/checkpoint.py``
(``weights_only``, DeepSpeed shards re-assembled by ``zero_to_fp32``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from mmengine.logging import print_log

from ..checkpoint_io import is_deepspeed_checkpoint, load_checkpoint_file
from ..engine.resume import ITER_CHECKPOINT_RE, checkpoint_problem, find_checkpoints
from ..models.hf_llava import hf_dir_model_type, registered_hf_model_types

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ['UNTRAINED_NAME', 'CheckpointRef', 'discover_checkpoints', 'load_trained_state', 'save_untrained_checkpoint',
           'untrained_snapshot']

#: ``<out>/untrained/iter_0.pth``: the model as a config builds it, scored as iteration 0 (before training).
UNTRAINED_NAME = 'untrained'


@dataclass(frozen=True)
class CheckpointRef:
    """One thing to score: an ``iter_N.pth`` file or DeepSpeed directory (``kind='pth'``) or an HF model
    directory (``kind='hf'``)."""

    path: Path
    iteration: int | None
    kind: Literal['pth', 'hf'] = 'pth'

    @property
    def name(self) -> str:
        return self.path.name

    def key(self) -> dict[str, Any]:
        """Resolved path, total size and newest mtime (over the files of a directory): what "already
        scored" compares."""
        path = self.path.resolve()
        if path.is_dir():
            stats = [p.stat() for p in sorted(path.rglob('*')) if p.is_file()]
            return dict(path=str(path), size=sum(s.st_size for s in stats),
                        mtime_ns=max((s.st_mtime_ns for s in stats), default=0))
        st = path.stat()
        return dict(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


def _iteration(path: Path) -> int | None:
    m = ITER_CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else None


def discover_checkpoints(target: str | os.PathLike, check_complete: bool = True) -> list[CheckpointRef]:
    """The checkpoints ``target`` names, in iteration order.

    Args:
        target: a work dir (its complete ``iter_*.pth`` files and DeepSpeed directories, sorted by N;
            other files ignored, torn ones skipped with a warning), one checkpoint (a ``.pth`` file or
            DeepSpeed directory), or an HF model directory whose ``model_type`` has a registered loader
            (:func:`~mllm_align.models.hf_llava.register_hf_dir_loader`).
        check_complete: check each checkpoint's completeness here (a CRC read of every file). The runner
            passes False and checks only the checkpoints it is about to load.

    Raises:
        FileNotFoundError: ``target`` does not exist.
        ValueError: a work dir without a usable ``iter_*.pth``; a named checkpoint that is incomplete; a
            file that is not ``.pth``; an HF directory of a ``model_type`` without a loader.
    """
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f'{str(path)!r} does not exist: give a work dir of iter_*.pth files, one .pth '
                                'checkpoint or an HF model directory.')
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        model_type = hf_dir_model_type(path)
        if model_type is not None:
            if model_type not in registered_hf_model_types():
                raise ValueError(f'{path} is an HF {model_type!r} directory, which no loader is registered for '
                                 f'(registered: {registered_hf_model_types()}); see '
                                 'mllm_align.models.register_hf_dir_loader.')
            return [CheckpointRef(path, None, 'hf')]
        found = sorted(find_checkpoints(path), key=lambda c: c.iteration)
        if not found:
            raise ValueError(f'{path} holds no iter_*.pth checkpoint (and is not an HF model directory); '
                             'train with default_hooks.checkpoint saving every few iterations first.')
        refs, torn = [], []
        for cand in found:
            problem = checkpoint_problem(cand.path) if check_complete else None
            if problem is None:
                refs.append(CheckpointRef(cand.path, cand.iteration))
            else:
                torn.append(f'{cand.path.name}: {problem}')
                print_log(f'Skipping {cand.path}: {problem}.', logger='current', level=logging.WARNING)
        if not refs:
            raise ValueError(f'{path} holds no complete iter_*.pth checkpoint: {"; ".join(torn)}.')
        return refs
    if not is_deepspeed_checkpoint(path) and path.suffix != '.pth':
        raise ValueError(f'{path} is not a .pth checkpoint, a work dir or an HF model directory.')
    problem = checkpoint_problem(path) if check_complete else None
    if problem is not None:
        raise ValueError(f'Checkpoint {path} cannot be scored: {problem}.')
    return [CheckpointRef(path, _iteration(path))]


def load_trained_state(model: 'torch.nn.Module', ref: CheckpointRef, seen_keys: set[str],
                       source: str = 'the base model') -> int | None:
    """Load ``ref``'s trained weights into ``model`` (built once); returns the iteration of its ``meta``.

    Every parameter the model trains (``model.trainable_names()``) must be in the checkpoint, no key may
    be unknown to the model, and a key set by an earlier checkpoint of the series must be set again, so no
    weight of another checkpoint survives the swap.

    Args:
        model: the base model (a ``MultimodalModel``).
        ref: the checkpoint (``kind='pth'``).
        seen_keys: keys loaded by earlier checkpoints of this call (updated).
        source: what built the model (a config path), named in errors.

    Raises:
        ValueError: no weights, shape mismatch, unknown or missing trained keys, or a key an earlier
            checkpoint set (each naming the checkpoint and ``source``).
    """
    ckpt = load_checkpoint_file(ref.path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'Checkpoint {ref.path} holds no weights (no `state_dict`).')
    trainable = model.trainable_names() if hasattr(model, 'trainable_names') else set(state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        detail = ' '.join(str(exc).split()).rstrip('.')  # torch's message spans several lines
        raise ValueError(f'Checkpoint {ref.path} does not match the model built from {source}: {detail}. '
                         'Pass the config the run was trained with.') from exc
    unexpected = list(result.unexpected_keys)
    missing = sorted(trainable - set(state))
    if unexpected or missing:
        raise ValueError(f'Checkpoint {ref.path} does not match the model built from {source}: keys the model '
                         f'does not have {unexpected[:5]}, trained keys missing from the checkpoint {missing[:5]}. '
                         'Pass the config the run was trained with.')
    stale = sorted(seen_keys - set(state))
    if stale:
        raise ValueError(f'Checkpoint {ref.path} lacks {stale[:5]}, which an earlier checkpoint of the series set; '
                         'score it in a separate call so that no weight from another checkpoint remains.')
    seen_keys.update(state)
    return int(meta['iter']) if isinstance(meta, dict) and isinstance(meta.get('iter'), int) else None


def save_untrained_checkpoint(model: 'torch.nn.Module', path: str | os.PathLike) -> Path:
    """Save ``model``'s trainable weights as an iteration-0 checkpoint (``{'state_dict', 'meta': {'iter': 0}}``),
    written to a temporary sibling and renamed into place."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        torch.save({'state_dict': state, 'meta': {'iter': 0}}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def untrained_snapshot(out_dir: str | os.PathLike, build: 'Callable[[], torch.nn.Module]',
                       model_settings: dict[str, Any]) -> Path:
    """``out_dir/untrained/iter_0.pth``: the model as ``build()`` makes it, saved once per ``model_settings``
    (a ``model_settings.json`` stamp beside it: another config or dtype saves it again), so that the runner
    scores "before training" as iteration 0 and a re-run skips it."""
    import json

    from .runner import atomic_write_text

    snapshot = Path(out_dir) / UNTRAINED_NAME / 'iter_0.pth'
    stamp = snapshot.with_name('model_settings.json')
    wanted = json.dumps(model_settings, sort_keys=True)
    if not snapshot.is_file() or not stamp.is_file() or stamp.read_text() != wanted:
        save_untrained_checkpoint(build(), snapshot)
        atomic_write_text(stamp, wanted)
    return snapshot
