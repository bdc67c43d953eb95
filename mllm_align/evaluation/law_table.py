"""A Law-of-Vision-Representation table on disk: read it, fit the AC law per benchmark, plot, run the policy.

The table is a CSV with one row per vision setting: a ``setting`` column, an A column (``A_v3``, else ``A``),
a ``C`` column, and every other column a benchmark score; an empty cell is a setting not trained (yet) on
that benchmark. ``data/law/v3_table6.csv`` (the paper's) is one; ``tools/law_sweep.py`` writes one with only
``setting, C, A_v3``, to which a user adds benchmark columns as runs finish. The maths is in
:mod:`mllm_align.metrics.ac_law`; this module does the file and the figures (``tools/ac_law.py``).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..metrics.ac_law import ACLawFit, fit_ac_law

__all__ = ['LawTable', 'read_law_table', 'fit_table', 'plot_fits', 'DEFAULT_GROUPS']

#: the paper's two benchmark groups (column names of data/law/v3_table6.csv)
DEFAULT_GROUPS = {'vision': ('MMB', 'MME', 'OKV', 'SEED'), 'ocr': ('MMMU', 'TVQA', 'VizW', 'SQA')}


@dataclass(frozen=True)
class LawTable:
    """A parsed table: ``settings`` names, ``A``, ``C`` ([n] float64), ``scores`` {benchmark: [n], NaN = gap}."""

    path: Path
    settings: list[str]
    A: np.ndarray
    C: np.ndarray
    scores: dict[str, np.ndarray]
    a_column: str


def _number(text: str, path: Path, line: int, column: str, allow_empty: bool) -> float:
    text = (text or '').strip()
    if not text:
        if allow_empty:
            return math.nan
        raise ValueError(f'{path}:{line}: column {column!r} is empty; every setting needs its {column} score.')
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'{path}:{line}: column {column!r} holds {text!r}, not a number.') from None
    if not math.isfinite(value):
        raise ValueError(f'{path}:{line}: column {column!r} holds {text!r}; use an empty cell for a missing score.')
    return value


def read_law_table(path: str | os.PathLike, a_column: str | None = None) -> LawTable:
    """Parse a law table CSV (module docstring). Errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Law table {path} does not exist (tools/law_sweep.py writes one; '
                                'data/law/v3_table6.csv is the paper\'s).')
    with path.open(newline='') as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if 'setting' not in columns or 'C' not in columns:
        raise ValueError(f'{path}: the header needs a `setting` and a `C` column, got {columns}.')
    if a_column is None:
        a_column = 'A_v3' if 'A_v3' in columns else 'A' if 'A' in columns else None
        if a_column is None:
            raise ValueError(f'{path}: no A column (`A_v3` or `A`) in {columns}; pass --a-column NAME.')
    elif a_column not in columns:
        raise ValueError(f'{path}: --a-column {a_column!r} is not a column ({columns}).')
    if not rows:
        raise ValueError(f'{path}: the table has no settings.')
    skip = {'setting', 'C', a_column, 'table_name', 'A', 'A_v1', 'A_v3'}
    benchmarks = [c for c in columns if c not in skip]
    names = [r['setting'] for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'{path}: setting(s) {dupes} appear more than once.')
    line = lambda i: i + 2  # noqa: E731  (1-based, after the header)
    A = np.array([_number(r[a_column], path, line(i), a_column, False) for i, r in enumerate(rows)])
    C = np.array([_number(r['C'], path, line(i), 'C', False) for i, r in enumerate(rows)])
    scores = {b: np.array([_number(r[b], path, line(i), b, True) for i, r in enumerate(rows)]) for b in benchmarks}
    return LawTable(path, names, A, C, scores, a_column)


def fit_table(table: LawTable, benchmarks: Sequence[str] | None = None,
              features: str = 'quadratic') -> dict[str, ACLawFit]:
    """The AC law per benchmark, fitted on the settings that have a score for it.

    Raises:
        ValueError: an unknown benchmark; a table without benchmark columns (what to do: add scores);
            too few scored settings (from :func:`~mllm_align.metrics.ac_law.fit_ac_law`, with the benchmark named).
    """
    names = list(benchmarks or table.scores)
    if not names:
        raise ValueError(f'{table.path}: no benchmark columns yet, so there is nothing to fit. Train some settings '
                         'fully, evaluate them, and add one column per benchmark (empty cells for settings not '
                         'trained); `tools/ac_law.py --recommend BENCH` then says which setting to train next.')
    fits = {}
    for b in names:
        if b not in table.scores:
            raise ValueError(f'{table.path}: no benchmark column {b!r} (have {sorted(table.scores)}).')
        have = np.isfinite(table.scores[b])
        try:
            fits[b] = fit_ac_law(table.A[have], table.C[have], table.scores[b][have], features=features)
        except ValueError as err:
            raise ValueError(f'{table.path}, benchmark {b!r} ({int(have.sum())} scored settings): {err}') from None
    return fits


def plot_fits(table: LawTable, fits: dict[str, ACLawFit], out_dir: str | os.PathLike) -> list[Path]:
    """One predicted-vs-actual scatter PNG per benchmark in ``out_dir``; returns the paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, fit in fits.items():
        have = np.isfinite(table.scores[b])
        actual, names = table.scores[b][have], [n for n, h in zip(table.settings, have) if h]
        fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
        ax.scatter(actual, fit.fitted, s=22)
        for x, y, n in zip(actual, fit.fitted, names):
            ax.annotate(n, (x, y), fontsize=6, xytext=(3, 2), textcoords='offset points')
        lo, hi = float(min(actual.min(), fit.fitted.min())), float(max(actual.max(), fit.fitted.max()))
        ax.plot([lo, hi], [lo, hi], lw=0.8, color='grey')
        loo = 'n/a' if fit.loo_r2 is None else f'{fit.loo_r2:.3f}'
        ax.set(xlabel=f'{b} (actual)', ylabel=f'{b} (AC law, {fit.features})',
               title=f'{b}: R² {fit.r2:.3f}, leave-one-out {loo}')
        fig.tight_layout()
        path = out_dir / f'ac_law_{"".join(ch if ch.isalnum() else "_" for ch in b)}.png'
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
