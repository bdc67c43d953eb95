"""Score a series of checkpoints with one or more evaluators, building the base model once.

What :func:`evaluate_checkpoints` does::

    target ──► checkpoints (work dir: iter_*.pth files and DeepSpeed dirs by N | one checkpoint | an HF dir)
    per evaluator: <out>/<name>.json ──► records already scored with the same settings are kept
    base model, built ONCE (model= / build_model= ; an HF dir: its registered loader) ──►
      per checkpoint still to score: swap its trained weights in (every trained key required) ──►
        per evaluator that needs it: evaluator.score(model) (process / compute_metrics) ──►
          <name>.json rewritten atomically after each
    all records ──► <name>.csv and the evaluator's plots (atomically), a summary table

Only the trained weights change between iterations (``iter_N.pth`` holds the ``requires_grad``
parameters: projector, LoRA, plug-ins); see :func:`~mllm_align.evaluation.checkpoints.load_trained_state`.

Re-running is cheap: each results file keeps one record per checkpoint, keyed by its resolved path,
size and mtime, under one ``settings`` block (the evaluator's :meth:`settings` plus the caller's
``model_settings``: config hash, dtype, template, …). A checkpoint whose key matches is skipped; a
changed file is recomputed; different settings raise :class:`SettingsMismatch` naming them
(``overwrite=True`` discards the old results instead).

The runner takes built objects and plain values only; reading a config (to build the base, find the
probe images, hash the config) is the caller's job (``mllm_align/engine/mir_eval.py`` for MIR).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from mmengine.logging import print_log

from ..checkpoint_io import is_deepspeed_checkpoint
from ..engine.resume import checkpoint_problem
from ..models.hf_llava import load_hf_dir
from .checkpoints import CheckpointRef, discover_checkpoints, load_trained_state
from .evaluator import ModelEvaluator, sorted_records

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['SettingsMismatch', 'atomic_write_text', 'default_out_dir', 'evaluate_checkpoints', 'load_results',
           'settings_diff']


class SettingsMismatch(ValueError):
    """A results file in the output folder was computed with other settings."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_results(path: str | os.PathLike, results_format: str) -> dict[str, Any] | None:
    """The content of a results file, or None if absent.

    Raises:
        ValueError: the file is not valid JSON, or not a results file of ``results_format``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not valid JSON ({exc.msg}); delete it or pass --overwrite.') from exc
    if not isinstance(data, dict) or data.get('format') != results_format:
        raise ValueError(f'{path} is not a results file of format {results_format}; use another --out.')
    return data


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``'key: old → new'`` for every setting that differs (sorted by key)."""
    keys = sorted(set(old) | set(new))
    return [f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in keys if old.get(k) != new.get(k)]


def default_out_dir(target: str | os.PathLike, kind: str, name: str) -> Path:
    """``<work dir>/<name>`` for checkpoints (the checkpoint's folder for one file), ``<hf dir>_<name>``."""
    target = Path(target)
    if kind == 'hf':
        return target.with_name(f'{target.name}_{name}')
    series = target.is_dir() and not is_deepspeed_checkpoint(target)
    return (target if series else target.parent) / name


def _write_outputs(evaluator: ModelEvaluator, records: list[dict[str, Any]], out_dir: Path, plots: bool) -> list[Path]:
    csv_path = out_dir / f'{evaluator.name}.csv'
    tmp = csv_path.with_name(f'.{csv_path.name}.{os.getpid()}.tmp')
    try:
        evaluator.write_csv(records, tmp)
        os.replace(tmp, csv_path)
    finally:
        tmp.unlink(missing_ok=True)
    written = [csv_path]
    if plots and records:
        tmp_dir = Path(tempfile.mkdtemp(dir=out_dir, prefix=f'.{evaluator.name}_plots.'))
        try:
            for path in evaluator.plot(records, tmp_dir):
                os.replace(path, out_dir / Path(path).name)
                written.append(out_dir / Path(path).name)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return written


class _Book:
    """One evaluator's results file: its document, records, and what is left to score."""

    def __init__(self, evaluator: ModelEvaluator, out_dir: Path, target: Path, settings: dict[str, Any],
                 refs: list[CheckpointRef], overwrite: bool) -> None:
        self.evaluator = evaluator
        self.path = out_dir / f'{evaluator.name}.json'
        previous = load_results(self.path, evaluator.format)
        records: list[dict[str, Any]] = []
        if previous is not None:
            diff = settings_diff(previous.get('settings', {}), settings)
            if diff and not overwrite:
                raise SettingsMismatch(
                    f'{self.path} was computed with other settings ({"; ".join(diff)}). Use another --out, '
                    'or --overwrite to discard those results.')
            if not diff:
                records = list(previous.get('results', []))
        self.records = records
        done = {json.dumps(r['checkpoint_key'], sort_keys=True) for r in records}
        self.todo = [ref for ref in refs if json.dumps(ref.key(), sort_keys=True) not in done]
        self.doc = dict(format=evaluator.format, target=str(target.resolve()), settings=settings,
                        **evaluator.info(), versions=dict(torch=torch.__version__), results=records)

    def add(self, record: dict[str, Any]) -> None:
        where = record['checkpoint_key']['path']
        self.records[:] = [r for r in self.records if r['checkpoint_key']['path'] != where] + [record]
        self.save()

    def save(self) -> None:
        self.doc['results'] = sorted_records(self.records)
        atomic_write_text(self.path, json.dumps(self.doc, indent=1) + '\n')


def evaluate_checkpoints(target: str | os.PathLike, evaluators: ModelEvaluator | Sequence[ModelEvaluator], *,
                         model: 'MultimodalModel | None' = None,
                         build_model: Callable[[], 'MultimodalModel'] | None = None,
                         load_hf: Callable[[], 'MultimodalModel'] | None = None,
                         out_dir: str | os.PathLike | None = None, model_settings: dict[str, Any] | None = None,
                         source: str = 'the base model', template: str | None = None,
                         dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                         overwrite: bool = False, progress: bool = True, plots: bool = True,
                         console: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Score every checkpoint of ``target`` with each evaluator; write ``<name>.json``, ``.csv`` and plots.

    Args:
        target: a work dir of ``iter_*.pth`` (files or DeepSpeed directories), one checkpoint, or an HF
            model directory (loaded by :func:`~mllm_align.models.hf_llava.load_hf_dir`).
        evaluators: one or more :class:`ModelEvaluator` (distinct names).
        model: the base model the checkpoints' trained weights are swapped into (``.pth`` targets).
        build_model: builds it instead, called at most once and only when something is left to score.
        load_hf: loads an HF directory target instead of :func:`~mllm_align.models.hf_llava.load_hf_dir` (e.g.
            to check it against the evaluator's data), called like ``build_model``.
        out_dir: results folder (default :func:`default_out_dir` of the first evaluator's name).
        model_settings: JSON-able settings of the model side, part of the fingerprint (config hash, dtype…).
        source: what builds the model (a config path), named in checkpoint mismatch errors.
        template: chat template for an HF directory (default: the one its export recorded).
        dtype: cast the model (``.pth``) or load the HF directory in this dtype (None: as built / saved).
        device: default CUDA if available, else CPU.
        overwrite: discard results computed with other settings instead of raising.
        progress: a tqdm bar per checkpoint and evaluator.
        plots: write the evaluators' plots.
        console: a rich ``Console`` for the tables (default: a new one on stdout).

    Returns:
        ``{evaluator name: records of target's checkpoints (computed now or earlier), in iteration order}``.

    Raises:
        SettingsMismatch: a results file exists with other settings (and not ``overwrite``).
        ValueError / FileNotFoundError: bad inputs, each naming the cause.
    """
    from rich.console import Console
    from tqdm import tqdm

    evaluators = [evaluators] if isinstance(evaluators, ModelEvaluator) else list(evaluators)
    if not evaluators:
        raise ValueError('evaluate_checkpoints needs at least one evaluator.')
    names = [ev.name for ev in evaluators]
    if len(set(names)) != len(names):
        raise ValueError(f'Evaluator names must differ (they name the results files): {names}.')
    console = console or Console()
    target_path = Path(target)
    refs = discover_checkpoints(target_path, check_complete=False)
    kind = refs[0].kind
    if kind == 'pth' and model is None and build_model is None:
        raise ValueError('Scoring .pth checkpoints needs the base model they were trained from: pass model= or '
                         'build_model= (tools/eval_mir.py: --config).')
    series = kind == 'pth' and target_path.is_dir() and not is_deepspeed_checkpoint(target_path)
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(target_path, kind, evaluators[0].name)
    out_dir.mkdir(parents=True, exist_ok=True)

    books = [_Book(ev, out_dir, target_path, {**ev.settings(), **(model_settings or {})}, refs, overwrite)
             for ev in evaluators]
    for book in books:
        for ref in refs:
            if ref not in book.todo:
                console.print(f'{ref.name}: already in {book.path}, skipped')
    todo = [ref for ref in refs if any(ref in book.todo for book in books)]

    if todo:
        if kind == 'hf' and load_hf is None:
            model = load_hf_dir(target_path, template=template, dtype=dtype, device=device)
        else:
            model = load_hf() if kind == 'hf' else model if model is not None else build_model()  # type: ignore
            if dtype is not None:
                model.to(dtype)
            model.to(device)
        for ev in evaluators:
            ev.prepare(model)
        was_training = model.training
        model.eval()
        seen_keys: set[str] = set()
        try:
            for ref in todo:
                iteration = ref.iteration
                if ref.kind == 'pth':
                    problem = checkpoint_problem(ref.path)
                    if problem is not None:
                        if not series:
                            raise ValueError(f'Checkpoint {ref.path} cannot be scored: {problem}.')
                        print_log(f'Skipping {ref.path}: {problem}.', logger='current', level=logging.WARNING)
                        continue
                    meta_iter = load_trained_state(model, ref, seen_keys, source)
                    iteration = iteration if iteration is not None else meta_iter
                for book in books:
                    if ref not in book.todo:
                        continue
                    ev = book.evaluator
                    ev.begin_checkpoint(ref.name, out_dir, ref.key())
                    total = ev.num_samples()
                    bar = tqdm(total=None if total is None else ev.num_passes * total,
                               desc=f'{ev.name} {ref.name}', unit='sample', disable=not progress, leave=False)
                    start = time.perf_counter()
                    try:
                        metrics = ev.score(model, bar)
                    finally:
                        bar.close()
                    record = dict(iteration=iteration, checkpoint=str(ref.path), checkpoint_key=ref.key(), **metrics,
                                  seconds=time.perf_counter() - start, device=str(device),
                                  finished_at=datetime.datetime.now().isoformat(timespec='seconds'))
                    book.add(record)
                    shown = ev.report(record)
                    if shown is not None:
                        console.print(shown)
        finally:
            model.train(was_training)

    wanted = {str(ref.path.resolve()) for ref in refs}
    out: dict[str, list[dict[str, Any]]] = {}
    for book in books:
        if not book.path.is_file() or not todo:
            book.save()
        records = sorted_records(book.records)
        written = [book.path] + _write_outputs(book.evaluator, records, out_dir, plots)
        mine = [r for r in records if r['checkpoint_key']['path'] in wanted]
        console.print(book.evaluator.summary_table(mine))
        console.print('Results: ' + ', '.join(str(p) for p in written))
        out[book.evaluator.name] = mine
    return out
