"""tools/law_sweep.py: the tiny twin end to end (two of its settings, one of them multi-tower), then a re-run."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from mllm_align.testing.tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / 'projects/law/sweeps/tiny_cpu.py'


def _tool():
    return load_tool('law_sweep')


@pytest.mark.slow
def test_tiny_twin(tiny_assets, tmp_path, capsys):
    from mllm_align.testing.spair import build_tiny_spair

    build_tiny_spair(tiny_assets.root)
    args = [str(SWEEP), '--work-root', str(tmp_path), '--only', 'tiny_siglip,tiny_clip_dinov2']
    assert _tool().main(args) == 0
    with (tmp_path / 'law_table.csv').open() as f:
        rows = list(csv.DictReader(f))
    assert [r['setting'] for r in rows] == ['tiny_siglip', 'tiny_clip_dinov2']
    assert [r['table_name'] for r in rows] == ['SigLIP', 'C+D']
    for r in rows:
        assert 0 <= float(r['C']) <= 100 and math.isfinite(float(r['A_v3'])) and float(r['A_v3']) < 0
    assert (tmp_path / 'tiny_clip_dinov2' / 'iter_12.pth').is_file()
    capsys.readouterr()
    assert _tool().main(args) == 0  # everything reused: no training, same table
    out = capsys.readouterr().out
    assert out.count('done earlier, reused') == 6 and ': train …' not in out
    with (tmp_path / 'law_table.csv').open() as f:
        assert list(csv.DictReader(f)) == rows
