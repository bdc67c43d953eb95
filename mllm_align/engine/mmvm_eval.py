"""``tools/eval_mmvm.py``'s config layer: MMVM accuracy of a model series, or of a predictions file.

    bench (TSV + match_bench/) ──► MMVMEvaluator (cases checked first; mllm_align/evaluation/mmvm.py)
    target ──► work dir / one checkpoint (with its config) / HF directory, and --untrained
           ──► GenerationSeries.run (the checkpoint runner: mmvm.json / mmvm.csv / mmvm_curve.png /
               mmvm_categories.png; predictions/<checkpoint>.jsonl kept per case, so a killed run resumes)
    a predictions file (ours: JSONL with index + prediction; the kit's: .xlsx / .tsv with index + prediction)
           ──► score_predictions_file (no model)
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..data.mmvm import load_mmvm
from ..evaluation.mmvm import MMVMEvaluator, plot_categories
from .vqa_eval import GenerationSeries

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['compare_runs', 'evaluate_mmvm', 'read_predictions_file', 'score_predictions_file']


def evaluate_mmvm(target: str | os.PathLike | None, config: str | os.PathLike | None = None, *,
                  bench: str | os.PathLike, tsv: str | os.PathLike | None = None, limit: int | None = None,
                  out_dir: str | os.PathLike | None = None, checkpoint: str | None = None, latest: bool = False,
                  untrained: bool = False, batch_size: int = 4, max_new_tokens: int = 32, policy: str = 'strict',
                  circular: bool = False, device: str | None = None, dtype: str | None = None,
                  template: str | None = None, overwrite: bool = False, progress: bool = True, plots: bool = True,
                  console: Any = None, model_factory: Callable[[], 'MultimodalModel'] | None = None,
                  cfg_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """MMVM accuracy of every checkpoint of ``target`` (arguments as :func:`~mllm_align.engine.vqa_eval.evaluate_vqa`;
    ``bench``/``tsv``/``limit``: the questions, ``policy``/``circular``: how they are asked and read)."""
    series = GenerationSeries.prepare(target, config, checkpoint=checkpoint, latest=latest, untrained=untrained,
                                      out_dir=out_dir, cfg_options=cfg_options)
    cases = load_mmvm(bench, tsv, limit=limit)
    evaluator = MMVMEvaluator(cases, image_processor=series.image_processor, pad_to_square=series.pad_to_square,
                              batch_size=batch_size, max_new_tokens=max_new_tokens, policy=policy,  # type: ignore
                              circular=circular, source=Path(tsv or Path(bench) / 'mllm_match_eval_full.tsv'))
    records, _ = series.run(evaluator, out_dir=out_dir, device=device, dtype=dtype, template=template,
                            overwrite=overwrite, progress=progress, plots=plots, console=console,
                            model_factory=model_factory)
    return records


def read_predictions_file(path: str | os.PathLike) -> dict[str, str]:
    """``{index: prediction}`` from our JSONL (``{"index", "prediction"}`` per line; ``key`` = ``index@rotation``
    lines from a run's predictions folder are read too) or the kit's output (.xlsx, read with openpyxl when it is
    installed, or .tsv / .csv) with ``index`` and ``prediction`` columns.

    Raises:
        FileNotFoundError / ValueError: no file; a line or row without index and prediction (its number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Predictions file {path} does not exist.')
    out: dict[str, str] = {}
    suffix = path.suffix.lower()
    if suffix in ('.jsonl', '.json'):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{path} line {n}: not JSON ({err.msg}).') from None
            if row.get('format'):  # a run's header line
                continue
            if 'key' in row and 'prediction' in row:
                index, _, shift = str(row['key']).partition('@')
                if shift in ('', '0'):
                    out[index] = str(row['prediction'])
                continue
            if 'index' not in row or 'prediction' not in row:
                raise ValueError(f'{path} line {n}: needs "index" and "prediction" (has {sorted(row)}).')
            out[str(row['index'])] = '' if row['prediction'] is None else str(row['prediction'])
        return out
    if suffix == '.xlsx':
        try:
            import openpyxl
        except ImportError:
            raise ValueError(f'{path}: reading the kit\'s .xlsx needs openpyxl (pip install openpyxl), or save the '
                             'sheet as .tsv.') from None
        sheet = openpyxl.load_workbook(path, read_only=True).active
        table = [['' if v is None else str(v) for v in r] for r in sheet.iter_rows(values_only=True)]
        rows: Sequence[Mapping[str, Any]] = [dict(zip(table[0], r)) for r in table[1:]] if table else []
    else:
        with path.open(newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f, delimiter='\t' if suffix == '.tsv' else ','))
    for n, row in enumerate(rows, 2):
        if 'index' not in row or 'prediction' not in row:
            raise ValueError(f'{path} row {n}: needs "index" and "prediction" columns (has {sorted(row)}).')
        out[str(row['index']).strip()] = str(row['prediction'])
    return out


def score_predictions_file(predictions: str | os.PathLike, *, bench: str | os.PathLike,
                           tsv: str | os.PathLike | None = None, policy: str = 'strict') -> dict[str, Any]:
    """The MMVM record of an existing predictions file against the bench's answers.

    Raises:
        ValueError: predictions for indices the TSV does not hold, or questions without a prediction.
    """
    cases = load_mmvm(bench, tsv, check_files=False)
    given = read_predictions_file(predictions)
    known = {c.index for c in cases}
    stray = sorted(set(given) - known)
    if stray:
        raise ValueError(f'{predictions}: {len(stray)} indices are not in the TSV (first: {stray[:5]}): is it the '
                         'predictions of this bench?')
    missing = [c.index for c in cases if c.index not in given]
    if missing:
        raise ValueError(f'{predictions}: no prediction for {len(missing)} of {len(cases)} questions (first: '
                         f'{missing[:5]}).')
    evaluator = MMVMEvaluator(cases, policy=policy)  # type: ignore[arg-type]
    return evaluator.score_predictions({f'{c.index}@0': given[c.index] for c in cases})


def compare_runs(records: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """One grouped bar chart of several runs' per-category accuracy (``{label: record}``)."""
    if not records:
        raise ValueError('compare_runs needs at least one run.')
    return plot_categories(records, path)
