"""Fault injection for end-to-end tests: kill ranks or the launcher, pause or fail checkpoint writes.

Everything is driven by environment variables that nothing sets in normal use; the fault-injection
suite (``tests/engine/test_fault_tolerance_e2e.py``) sets them on a ``tools/dist.sh`` run.

Kill at an iteration (:class:`SimulatedCrashHook`, added by ``prepare_config``):

* ``MLLM_ALIGN_CRASH_AT_ITER=N``: right after iteration N (1-based; after that iteration's
  checkpoint) the chosen processes are SIGKILLed, as a node failure would — no cleanup.
* ``MLLM_ALIGN_CRASH_RANK``: who dies: ``all`` (default: every rank kills itself), a rank number
  (only that rank; torchrun then stops the others), or ``launcher`` (rank 0 SIGKILLs its parent,
  the torchrun launcher; the ranks must then stop by themselves).

Checkpoint writes (:func:`checkpoint_write_fault`, called by the atomic writers after the bytes of
a checkpoint are written and before they are committed by a rename):

* ``MLLM_ALIGN_CKPT_FAULT=ACTION:PATTERN``: when writing a file (or DeepSpeed directory) whose base
  name matches the glob ``PATTERN`` (``iter_4.pth``, ``iter_*.pth``), ``ACTION`` is
  ``pause`` (create ``MLLM_ALIGN_FAULT_DIR/paused.<name>.rank<R>``, then wait until
  ``MLLM_ALIGN_FAULT_DIR/release`` exists — a test kills the run meanwhile) or ``enospc`` (raise
  ``OSError(ENOSPC)`` as a full disk would).
* ``MLLM_ALIGN_FAULT_RANK=R``: only rank R injects checkpoint faults (default: every rank).
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

CRASH_ENV = 'MLLM_ALIGN_CRASH_AT_ITER'
CRASH_RANK_ENV = 'MLLM_ALIGN_CRASH_RANK'
CKPT_FAULT_ENV = 'MLLM_ALIGN_CKPT_FAULT'
FAULT_DIR_ENV = 'MLLM_ALIGN_FAULT_DIR'
FAULT_RANK_ENV = 'MLLM_ALIGN_FAULT_RANK'
RELEASE_FILE = 'release'
PAUSE_TIMEOUT_S = 300.0  # a paused writer gives up waiting (and continues) after this long


def _rank() -> int:
    return int(os.environ.get('RANK', '0'))


@HOOKS.register_module()
class SimulatedCrashHook(Hook):
    """SIGKILL a rank, every rank, or the launcher right after training iteration ``at_iter`` finishes.

    Args:
        at_iter: the iteration (1-based) after which to kill.
        target: ``'all'`` (every rank kills itself), a rank number as a string (only that rank), or
            ``'launcher'`` (rank 0 kills its parent process, the torchrun launcher).

    Raises:
        ValueError: ``at_iter`` < 1 or an unknown ``target``.
    """

    priority = 'LOWEST'  # after the checkpoint hook of that iteration has run

    def __init__(self, at_iter: int, target: str = 'all') -> None:
        if int(at_iter) < 1:
            raise ValueError(f'{CRASH_ENV}={at_iter}: give an iteration >= 1.')
        target = str(target)
        if target not in ('all', 'launcher') and not target.isdigit():
            raise ValueError(f"{CRASH_RANK_ENV}={target!r}: use 'all', 'launcher' or a rank number.")
        self.at_iter = int(at_iter)
        self.target = target

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if runner.iter + 1 != self.at_iter:
            return
        if self.target == 'all' or (self.target.isdigit() and int(self.target) == _rank()):
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.target == 'launcher' and _rank() == 0:
            os.kill(os.getppid(), signal.SIGKILL)


def crash_hook_from_env() -> dict | None:
    """The hook config requested through ``MLLM_ALIGN_CRASH_AT_ITER`` / ``_CRASH_RANK``, or None."""
    value = os.environ.get(CRASH_ENV)
    if not value:
        return None
    try:
        at_iter = int(value)
    except ValueError:
        raise ValueError(f'{CRASH_ENV}={value!r} is not an iteration number.') from None
    # By registry name: a class object would not survive mmengine's config dump.
    return dict(type='SimulatedCrashHook', at_iter=at_iter, target=os.environ.get(CRASH_RANK_ENV, 'all'))


def _parse_ckpt_fault(spec: str) -> tuple[str, str]:
    action, sep, pattern = spec.partition(':')
    if not sep or action not in ('pause', 'enospc') or not pattern:
        raise ValueError(f"{CKPT_FAULT_ENV}={spec!r}: use 'pause:PATTERN' or 'enospc:PATTERN' "
                         "(PATTERN a glob on the checkpoint's base name, e.g. iter_4.pth).")
    return action, pattern


def checkpoint_write_fault(path: str | os.PathLike) -> None:
    """Injected fault point of the checkpoint writers: pause or raise ENOSPC (module docstring).

    A no-op unless ``MLLM_ALIGN_CKPT_FAULT`` is set. Writers call it once the data of ``path`` is
    written (to a temp file or a hidden directory) and before the rename that commits it.

    Raises:
        OSError: ``errno.ENOSPC``, for ``enospc`` on a matching path.
        ValueError: a malformed ``MLLM_ALIGN_CKPT_FAULT``, or ``pause`` without ``MLLM_ALIGN_FAULT_DIR``.
    """
    spec = os.environ.get(CKPT_FAULT_ENV)
    if not spec:
        return
    action, pattern = _parse_ckpt_fault(spec)
    name = os.path.basename(os.fspath(path).rstrip(os.sep))
    only_rank = os.environ.get(FAULT_RANK_ENV)
    if not fnmatch.fnmatch(name, pattern) or (only_rank not in (None, '') and int(only_rank) != _rank()):
        return
    if action == 'enospc':
        raise OSError(errno.ENOSPC, f'No space left on device (injected by {CKPT_FAULT_ENV})', os.fspath(path))
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if not fault_dir:
        raise ValueError(f'{CKPT_FAULT_ENV}=pause:… needs {FAULT_DIR_ENV}, the directory for its marker files.')
    Path(fault_dir).mkdir(parents=True, exist_ok=True)
    (Path(fault_dir) / f'paused.{name}.rank{_rank()}').write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not (Path(fault_dir) / RELEASE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def write_missing_image_on_rank(src_json: str | os.PathLike, out_jsonl: str | os.PathLike, dataset_cfg: dict,
                                rank: int, world_size: int, batch_size: int, seed: int) -> str:
    """Write ``src_json`` as JSONL with the image of the first sample ``rank`` trains on made missing.

    The image path is renamed to one of the same length (``train_`` → ``gone__``), so the lengths the
    sampler groups by, and with them every rank's order, stay those of the intact file: exactly one
    rank meets the bad sample, in its first batch.

    Args:
        src_json: a LLaVA JSON array (e.g. ``data/tiny/shapes/pretrain.json``).
        out_jsonl: where to write the JSONL.
        dataset_cfg: the run's ``train_dataloader.dataset`` config (``data_path`` is replaced).
        rank, world_size, batch_size, seed: those of the run (``randomness.seed``).

    Returns:
        The id of the sample whose image is now missing.
    """
    import json
    from unittest import mock

    from mmengine.registry import DATASETS

    from ..data import samplers
    records = json.loads(Path(src_json).read_text())
    out = Path(out_jsonl)
    out.write_text(''.join(json.dumps(r) + '\n' for r in records))
    dataset = DATASETS.build(dict(dataset_cfg, data_path=str(out)))
    with mock.patch.object(samplers, 'get_dist_info', lambda: (rank, world_size)):
        first = next(iter(samplers.LengthGroupedSampler(dataset, batch_size, seed=seed)))
    image = records[first]['image']
    if 'train_' not in image:
        raise ValueError(f'{src_json}: sample {first} image {image!r} has no "train_" to rename.')
    records[first]['image'] = image.replace('train_', 'gone__', 1)
    out.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return str(records[first].get('id', first))
