"""tools/ac_law.py end to end on the shipped table, a table with gaps and bad tables."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mllm_align.testing.tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / 'data' / 'law' / 'v3_table6.csv'


def _tool():
    return load_tool('ac_law')


def _write(path: Path, header, rows):
    with path.open('w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_shipped_table(tmp_path, capsys):
    assert _tool().main([str(TABLE), '--plots', str(tmp_path), '--policy', '--runs', '40']) == 0
    out = capsys.readouterr().out
    assert 'mean vision                94.08' in out and 'mean ocr                   83.77' in out
    assert 'Recall@3' in out and 'random 26.67 %' in out
    pngs = sorted(p.name for p in tmp_path.glob('*.png'))
    assert len(pngs) == 8 and all((tmp_path / p).stat().st_size > 1000 for p in pngs)


def test_recommend_on_a_table_with_gaps(tmp_path, capsys):
    with TABLE.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    keep = header.index('MMB')
    gapped = [r[:3] + [r[keep] if i in (0, 6, 9, 13) else ''] for i, r in enumerate(body)]
    path = _write(tmp_path / 't.csv', header[:3] + ['MMB'], gapped)
    assert _tool().main([str(path), '--recommend', 'MMB']) == 0
    out = capsys.readouterr().out
    assert '4 of 15 settings trained' in out and 'next to train: ' in out
    nxt = out.split('next to train: ')[1].splitlines()[0]
    assert nxt in [r[0] for i, r in enumerate(body) if i not in (0, 6, 9, 13)]


def test_sweep_table_without_benchmarks(tmp_path):
    path = _write(tmp_path / 'sweep.csv', ['setting', 'C', 'A_v3'],
                  [['a', '10', '-2'], ['b', '12', '-1.5'], ['c', '3', '-3']])
    with pytest.raises(ValueError, match='no benchmark columns yet'):
        _tool().main([str(path)])


@pytest.mark.parametrize('rows,match', [
    ([['a', 'x', '-2', '1']], r't\.csv:2: column .C. holds .x.'),
    ([['a', '', '-2', '1']], r't\.csv:2: column .C. is empty'),
    ([['a', '1', '-2', '1'], ['a', '2', '-1', '2']], 'more than once'),
])
def test_bad_tables(tmp_path, rows, match):
    path = _write(tmp_path / 't.csv', ['setting', 'C', 'A_v3', 'MMB'], rows)
    with pytest.raises(ValueError, match=match):
        _tool().main([str(path)])
