"""Fault injection for end-to-end tests: kill ranks or the launcher, pause or fail checkpoint writes.

The faults are mmengine hooks that a run gets through its config's ``custom_hooks``; the engine knows
none of them and reads no variable of this module (it offers one generic fault point, the
checkpoint-write hooks of :mod:`mllm_align.engine.checkpoint`). Nothing here is imported in a normal run.

* :class:`SimulatedCrashHook` (``dict(type='SimulatedCrashHook', at_iter=N, target=...)``): right after
  iteration N (1-based; after that iteration's checkpoint) the chosen processes are SIGKILLed, as a
  node failure would — no cleanup. ``target``: ``all`` (every rank kills itself), a rank number (only
  that rank; torchrun then stops the others), or ``launcher`` (rank 0 SIGKILLs its parent, the torchrun
  launcher; the ranks must then stop by themselves).
* :class:`CheckpointWriteFaultHook` (``dict(type='CheckpointWriteFaultHook', action=..., pattern=...)``):
  registers a :class:`CheckpointWriteFault` as a checkpoint-write hook for the run, so that writing a
  file (or DeepSpeed directory) whose base name matches the glob ``pattern`` (``iter_4.pth``,
  ``iter_*.pth``), after its bytes are written and before the rename that commits them, either
  pauses (``pause``: creates ``fault_dir/paused.<name>.rank<R>``, then waits until ``fault_dir/release``
  exists — a test kills the run meanwhile) or fails with ``enospc`` (``OSError(ENOSPC)`` as a full
  disk would); ``rank`` limits it to one rank.

The test suite asks for them through environment variables on a ``tools/dist.sh`` run;
``tools/train.py`` turns them into the hook configs above (:func:`fault_hooks_from_env`) and passes them
to :func:`mllm_align.engine.launch.prepare_config` as ``extra_hooks``:

* ``MLLM_ALIGN_CRASH_AT_ITER=N`` and ``MLLM_ALIGN_CRASH_RANK`` (default ``all``): the crash hook;
* ``MLLM_ALIGN_CKPT_FAULT=ACTION:PATTERN``, ``MLLM_ALIGN_FAULT_DIR`` (the marker directory of
  ``pause``) and ``MLLM_ALIGN_FAULT_RANK=R`` (only rank R; default every rank): the checkpoint-write fault.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal, Mapping

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..engine.checkpoint import add_checkpoint_write_hook, remove_checkpoint_write_hook

CRASH_ENV = 'MLLM_ALIGN_CRASH_AT_ITER'
CRASH_RANK_ENV = 'MLLM_ALIGN_CRASH_RANK'
CKPT_FAULT_ENV = 'MLLM_ALIGN_CKPT_FAULT'
FAULT_DIR_ENV = 'MLLM_ALIGN_FAULT_DIR'
FAULT_RANK_ENV = 'MLLM_ALIGN_FAULT_RANK'
FAULT_ENVS = (CRASH_ENV, CRASH_RANK_ENV, CKPT_FAULT_ENV, FAULT_DIR_ENV, FAULT_RANK_ENV)
RELEASE_FILE = 'release'
PAUSE_TIMEOUT_S = 300.0  # a paused writer gives up waiting (and continues) after this long

FaultAction = Literal['pause', 'enospc']


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
            raise ValueError(f'SimulatedCrashHook: at_iter={at_iter} ({CRASH_ENV}): give an iteration >= 1.')
        target = str(target)
        if target not in ('all', 'launcher') and not target.isdigit():
            raise ValueError(f"SimulatedCrashHook: target={target!r} ({CRASH_RANK_ENV}): use 'all', 'launcher' "
                             'or a rank number.')
        self.at_iter = int(at_iter)
        self.target = target

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if runner.iter + 1 != self.at_iter:
            return
        if self.target == 'all' or (self.target.isdigit() and int(self.target) == _rank()):
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.target == 'launcher' and _rank() == 0:
            os.kill(os.getppid(), signal.SIGKILL)


class CheckpointWriteFault:
    """A checkpoint-write hook (``fault(path)``) that pauses or fails the write of matching checkpoints.

    Args:
        action: ``'pause'`` (write ``fault_dir/paused.<name>.rank<R>`` holding the pid, then wait until
            ``fault_dir/release`` exists or :data:`PAUSE_TIMEOUT_S` pass) or ``'enospc'`` (raise
            ``OSError(errno.ENOSPC)``).
        pattern: glob on the base name of the path being written (``iter_4.pth``, ``iter_*.pth``).
        fault_dir: the marker directory; required for ``pause``.
        rank: only this rank (``RANK``) injects; None: every rank.

    Raises:
        ValueError: an unknown ``action``, an empty ``pattern``, or ``pause`` without ``fault_dir``.
    """

    def __init__(self, action: FaultAction, pattern: str, fault_dir: str | os.PathLike | None = None,
                 rank: int | None = None) -> None:
        if action not in ('pause', 'enospc') or not pattern:
            raise ValueError(f"{CKPT_FAULT_ENV}={action}:{pattern}: use 'pause:PATTERN' or 'enospc:PATTERN' "
                             "(PATTERN a glob on the checkpoint's base name, e.g. iter_4.pth).")
        if action == 'pause' and not fault_dir:
            raise ValueError(f'{CKPT_FAULT_ENV}=pause:{pattern} needs {FAULT_DIR_ENV}, the directory for its '
                             'marker files (CheckpointWriteFault(fault_dir=...)).')
        self.action, self.pattern = action, pattern
        self.fault_dir = Path(fault_dir) if fault_dir else None
        self.rank = None if rank is None else int(rank)

    def __call__(self, path: str | os.PathLike) -> None:
        name = os.path.basename(os.fspath(path).rstrip(os.sep))
        if not fnmatch.fnmatch(name, self.pattern) or (self.rank is not None and self.rank != _rank()):
            return
        if self.action == 'enospc':
            raise OSError(errno.ENOSPC, 'No space left on device (injected by the fault-injection test hook)',
                          os.fspath(path))
        assert self.fault_dir is not None  # checked in __init__
        self.fault_dir.mkdir(parents=True, exist_ok=True)
        (self.fault_dir / f'paused.{name}.rank{_rank()}').write_text(str(os.getpid()))
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not (self.fault_dir / RELEASE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)


@HOOKS.register_module()
class CheckpointWriteFaultHook(Hook):
    """Inject a :class:`CheckpointWriteFault` into every checkpoint write of the run (``before_run`` → ``after_run``).

    Args: those of :class:`CheckpointWriteFault`.
    """

    priority = 'VERY_HIGH'

    def __init__(self, action: FaultAction, pattern: str, fault_dir: str | None = None,
                 rank: int | None = None) -> None:
        self.fault = CheckpointWriteFault(action, pattern, fault_dir, rank)

    def before_run(self, runner: Any) -> None:
        add_checkpoint_write_hook(self.fault)

    def after_run(self, runner: Any) -> None:
        remove_checkpoint_write_hook(self.fault)


def crash_hook_from_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """The :class:`SimulatedCrashHook` config asked for by ``MLLM_ALIGN_CRASH_AT_ITER`` / ``_CRASH_RANK``, or None.

    Raises:
        ValueError: ``MLLM_ALIGN_CRASH_AT_ITER`` is not an integer.
    """
    env = os.environ if environ is None else environ
    value = env.get(CRASH_ENV)
    if not value:
        return None
    try:
        at_iter = int(value)
    except ValueError:
        raise ValueError(f'{CRASH_ENV}={value!r} is not an iteration number.') from None
    # By registry name: a class object would not survive mmengine's config dump.
    return dict(type='SimulatedCrashHook', at_iter=at_iter, target=env.get(CRASH_RANK_ENV, 'all'))


def checkpoint_fault_hook_from_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """The :class:`CheckpointWriteFaultHook` config asked for by ``MLLM_ALIGN_CKPT_FAULT`` (+ ``_FAULT_DIR``,
    ``_FAULT_RANK``), or None.

    Raises:
        ValueError: a malformed ``MLLM_ALIGN_CKPT_FAULT`` or ``MLLM_ALIGN_FAULT_RANK``, or ``pause``
            without ``MLLM_ALIGN_FAULT_DIR``.
    """
    env = os.environ if environ is None else environ
    spec = env.get(CKPT_FAULT_ENV)
    if not spec:
        return None
    action, sep, pattern = spec.partition(':')
    if not sep or action not in ('pause', 'enospc') or not pattern:
        raise ValueError(f"{CKPT_FAULT_ENV}={spec!r}: use 'pause:PATTERN' or 'enospc:PATTERN' "
                         "(PATTERN a glob on the checkpoint's base name, e.g. iter_4.pth).")
    rank = env.get(FAULT_RANK_ENV) or None
    if rank is not None and not rank.isdigit():
        raise ValueError(f'{FAULT_RANK_ENV}={rank!r} is not a rank number.')
    hook = dict(type='CheckpointWriteFaultHook', action=action, pattern=pattern,
                fault_dir=env.get(FAULT_DIR_ENV) or None, rank=None if rank is None else int(rank))
    CheckpointWriteFault(hook['action'], hook['pattern'], hook['fault_dir'], hook['rank'])  # validate now
    return hook


def fault_hooks_from_env(environ: Mapping[str, str] | None = None) -> list[dict]:
    """Every fault hook config the environment asks for (module docstring), in the order crash, checkpoint write."""
    return [hook for hook in (crash_hook_from_env(environ), checkpoint_fault_hook_from_env(environ)) if hook]


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
