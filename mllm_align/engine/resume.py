"""What ``--resume`` resumes from: the newest *complete* checkpoint, found by a cheap integrity check.

``tools/train.py --resume`` modes (:func:`resolve_resume`; ``prepare_config(resume=…)``):

* ``--resume`` alone (``'latest'`` / ``True``): the newest complete ``iter_N.pth`` of the work dir;
  an error when there is none, so a mistyped ``--work-dir`` never silently starts from scratch;
* ``--resume auto``: the same, but start fresh when the work dir holds no checkpoint at all (for
  schedulers that relaunch a job until it finishes);
* ``--resume PATH``: that checkpoint, a file or a DeepSpeed checkpoint directory.

A config's own ``resume = True`` means ``auto`` (mmengine's meaning); with ``load_from`` it means that path.

**Candidates** are the ``iter_N.pth`` entries (plain files or, for ``--deepspeed`` runs, DeepSpeed
directories) of the directory the checkpoint hook writes to (:func:`checkpoint_dir`: the work dir,
or ``out_dir/<work dir name>`` as mmengine's ``CheckpointHook(out_dir=…)`` builds it), newest N
first. Temporary names (``.iter_N.pth.*.tmp`` of the atomic file writer, ``.iter_N.pth.partial/``
of a DeepSpeed save in progress) never match. The ``last_checkpoint`` pointer does not decide: it is
written *after* the checkpoint (atomically, by :class:`~mllm_align.engine.checkpoint_hook.AtomicCheckpointHook`;
mmengine's own hook can leave it empty), so a run killed between the two leaves it one behind;
it cannot say whether the file it names is whole; and in a copied or moved work dir it still names
the old location (another run's files). It is only mentioned in the log when it disagrees.

**Complete** (:func:`checkpoint_problem`) is decided without unpickling anything: a checkpoint file
is a ``torch.save`` zip archive, and a torn one (cut short by a full disk, a kill during a copy,
``truncate``) has no readable central directory at its end; every record's CRC-32 is then checked
(a sequential read: about the speed of the disk, no tensor is built). A DeepSpeed directory needs
its model-state and every rank's optimizer-state shards, each checked the same way. A torn newest
checkpoint is reported by name with a warning and the one before it is used; when none is usable
the run stops with the list of what was found and why each is unusable. The chosen checkpoint is
also checked for unsafe pickle content (:func:`~mllm_align.checkpoint_io.check_checkpoint_safe`).
"""
from __future__ import annotations

import logging
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from mmengine.logging import print_log

from ..checkpoint_io import (
    DEEPSPEED_MODEL_STATES,
    DEEPSPEED_OPTIM_STATES,
    check_checkpoint_safe,
    is_deepspeed_checkpoint,
)

ITER_CHECKPOINT_RE = re.compile(r'^iter_(\d+)\.pth$')
ResumeMode = Union[bool, Literal['auto', 'latest'], str, None]


class ResumeError(RuntimeError):
    """``--resume`` cannot proceed: nothing usable to resume from, or the named checkpoint is unusable."""


@dataclass(frozen=True)
class CheckpointCandidate:
    """One ``iter_N.pth`` (file or DeepSpeed directory) and its N."""

    path: Path
    iteration: int


_CRC_CHUNK = 16 << 20


def _record_crc_problem(archive: zipfile.ZipFile, fd: int) -> str | None:
    """The first record whose CRC-32 differs from the central directory's, or None.

    torch stores records uncompressed; their bytes are read straight from the file (``os.pread``, 16 MiB
    at a time) rather than through ``ZipFile.open``, about twice as fast (I/O bound).
    """
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as record:  # ZipExtFile checks the CRC at the end
                while record.read(_CRC_CHUNK):
                    pass
            continue
        header = os.pread(fd, 30, info.header_offset)
        if len(header) < 30 or header[:4] != b'PK\x03\x04':
            return f'record {info.filename!r} has no local header'
        start = info.header_offset + 30 + struct.unpack('<H', header[26:28])[0] + struct.unpack('<H', header[28:30])[0]
        crc, done = 0, 0
        while done < info.file_size:
            chunk = os.pread(fd, min(_CRC_CHUNK, info.file_size - done), start + done)
            if not chunk:
                return f'record {info.filename!r} is cut short'
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
        if crc != info.CRC:
            return f'record {info.filename!r} fails its CRC check (corrupt data)'
    return None


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` zip file (None: it is)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return 'empty file (0 bytes)'
        with open(path, 'rb') as f, zipfile.ZipFile(f) as archive:  # reads the central directory (at the end)
            names = archive.namelist()
            if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
                return 'not a torch.save checkpoint (no data.pkl record)'
            return _record_crc_problem(archive, f.fileno())
    except zipfile.BadZipFile as exc:
        return (f'torn or not a torch.save zip file ({exc}; {size} bytes): the archive is cut short, e.g. by a '
                'full disk or an interrupted copy')
    except Exception as exc:  # noqa: BLE001 - any read failure makes the checkpoint unusable
        return f'unreadable ({type(exc).__name__}: {exc})'


def _deepspeed_problem(path: Path) -> str | None:
    models = sorted(path.glob(DEEPSPEED_MODEL_STATES))
    optims = sorted(path.glob(DEEPSPEED_OPTIM_STATES))
    if not models:
        return f'DeepSpeed directory without a {DEEPSPEED_MODEL_STATES} shard'
    if not optims:
        return f'DeepSpeed directory without {DEEPSPEED_OPTIM_STATES} shards (saved without the optimizer)'
    ranks = sorted(int(m.group(1)) for f in optims if (m := re.search(r'zero_pp_rank_(\d+)_', f.name)))
    missing = sorted(set(range(max(ranks) + 1)) - set(ranks)) if ranks else []
    if missing:
        return f'optimizer shards of rank(s) {missing} are missing'
    for shard in models + optims:
        problem = _zip_problem(shard)
        if problem is not None:
            return f'shard {shard.name}: {problem}'
    return None


def checkpoint_problem(path: Union[str, Path], deepspeed: bool | None = None) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is complete (no unpickling; module docstring).

    Args:
        path: an ``iter_N.pth`` file or DeepSpeed checkpoint directory.
        deepspeed: the run's kind (True: ``--deepspeed``, needs a directory; False: needs a file;
            None: either).
    """
    path = Path(path)
    if not path.exists():
        return 'does not exist'
    if path.is_dir():
        if not is_deepspeed_checkpoint(path):
            return f'a directory without DeepSpeed shards ({DEEPSPEED_MODEL_STATES})'
        if deepspeed is False:
            return 'a DeepSpeed checkpoint directory; resume it with --deepspeed'
        return _deepspeed_problem(path)
    if deepspeed:
        return 'a plain checkpoint file; a --deepspeed run resumes from DeepSpeed checkpoint directories'
    return _zip_problem(path)


def _last_checkpoint_pointer(work_dir: Path) -> Path | None:
    pointer = work_dir / 'last_checkpoint'
    try:
        text = pointer.read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def checkpoint_dir(cfg: Any) -> str:
    """Where a config's ``CheckpointHook`` writes ``iter_N.pth``: ``out_dir/<work dir name>``, else the work dir."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    out_dir = hook.get('out_dir') if hasattr(hook, 'get') else None
    if not out_dir or os.path.normpath(str(out_dir)) == os.path.normpath(cfg.work_dir):
        return cfg.work_dir
    return os.path.join(str(out_dir), os.path.basename(cfg.work_dir.rstrip(os.sep)))


def find_checkpoints(directory: Union[str, Path]) -> list[CheckpointCandidate]:
    """The ``iter_N.pth`` entries (files or directories) of ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [CheckpointCandidate(entry, int(m.group(1))) for entry in directory.iterdir()
             if (m := ITER_CHECKPOINT_RE.match(entry.name))]
    return sorted(found, key=lambda c: c.iteration, reverse=True)


def _describe(problems: list[tuple[CheckpointCandidate, str | None]]) -> str:
    return '; '.join(f'{c.path.name}: {p or "usable"}' for c, p in problems)


def _is_rank_zero() -> bool:
    return os.environ.get('RANK', '0') == '0'


def _say(message: str, level: int = logging.INFO) -> None:
    if _is_rank_zero():  # every rank resolves the same checkpoint; say it once
        print_log(message, logger='current', level=level)


def resolve_resume(work_dir: Union[str, Path], resume: ResumeMode, deepspeed: bool | None = None) -> str | None:
    """The checkpoint ``--resume`` continues from, or None to start fresh (modes: module docstring).

    Args:
        work_dir: where the run's ``iter_N.pth`` are (:func:`checkpoint_dir` of its config).
        resume: None/False (fresh), ``'auto'``, ``'latest'``/True, or a checkpoint path.
        deepspeed: the run is a ``--deepspeed`` run (checkpoints are directories); None: either kind.

    Returns:
        The checkpoint path (normalised, no trailing slash), or None.

    Raises:
        FileNotFoundError: ``resume`` names a path that does not exist.
        ResumeError: ``'latest'`` with no checkpoint; no complete checkpoint; the named one is unusable.
        UnsafeCheckpointError: the chosen checkpoint needs unsafe loading and is not trusted.
    """
    if resume is None or resume is False or resume == '':
        return None
    work_dir = Path(work_dir)
    if resume not in (True, 'auto', 'latest'):
        path = Path(os.path.normpath(str(resume)))
        if not path.exists():
            listing = [c.path.name for c in find_checkpoints(path.parent)]
            raise FileNotFoundError(f'--resume {str(resume)!r}: no such checkpoint file or DeepSpeed checkpoint '
                                    f'directory (in {path.parent}: {listing or "no iter_*.pth"}).')
        problem = checkpoint_problem(path, deepspeed)
        if problem is not None:
            others = [(c, checkpoint_problem(c.path, deepspeed)) for c in find_checkpoints(path.parent)
                      if c.path.resolve() != path.resolve()]
            usable = [str(c.path) for c, p in others if p is None]
            raise ResumeError(f'--resume {str(path)!r}: cannot resume from it: {problem}. Usable checkpoints in '
                              f'{path.parent}: {usable or "none"}.')
        check_checkpoint_safe(path)
        _say(f'--resume: resuming from {path}.')
        return str(path)

    candidates = find_checkpoints(work_dir)
    if not candidates:
        if resume == 'auto':
            _say(f'--resume auto: no iter_*.pth in {work_dir}; starting fresh.')
            return None
        raise ResumeError(f'--resume: no checkpoint to resume from in {work_dir} (no iter_*.pth). Check '
                          '--work-dir; pass --resume auto to start fresh when there is none, or --resume PATH.')
    checked: list[tuple[CheckpointCandidate, str | None]] = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate.path, deepspeed)
        checked.append((candidate, problem))
        if problem is None:
            break
    chosen, problem = checked[-1]
    if problem is not None:
        raise ResumeError(f'--resume: no complete checkpoint in {work_dir} to resume from: {_describe(checked)}. '
                          'Usable checkpoints: none. Remove the unusable ones to start fresh, or pass --resume '
                          'PATH to a copy you trust.')
    for candidate, why in checked[:-1]:
        _say(f'--resume: skipping {candidate.path}: {why}. Resuming from the previous complete checkpoint, '
             f'{chosen.path.name}.', logging.WARNING)
    pointed = _last_checkpoint_pointer(work_dir)
    if pointed is not None and pointed.exists() and pointed.resolve() != chosen.path.resolve():
        _say(f'--resume: last_checkpoint names {pointed}; resuming from {chosen.path}, the newest complete '
             'iter_*.pth (see mllm_align/engine/resume.py).')
    check_checkpoint_safe(chosen.path)
    _say(f'--resume: resuming from {chosen.path}.')
    return os.path.normpath(str(chosen.path))
