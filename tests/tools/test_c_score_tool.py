"""tools/c_score.py end to end on a tiny recipe and the synthetic SPair directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm_align.testing.spair import build_tiny_spair
from mllm_align.testing.tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def _tool():
    return load_tool('c_score')


def test_tiny_recipe(tiny_assets, tmp_path, capsys):
    spair = build_tiny_spair(tiny_assets.root)
    out = tmp_path / 'c.json'
    assert _tool().main([str(CONFIG), '--spair', str(spair), '--out', str(out), '--device', 'cpu']) == 0
    result = json.loads(out.read_text())
    assert result['pairs'] == 8 and result['skipped'] == 0 and 0 <= result['pck'] <= 1
    assert set(result['per_category']) == {'cat', 'dog'}
    assert f'{100 * result["pck"]:.2f} %' in capsys.readouterr().out
    again = tmp_path / 'c2.json'
    _tool().main([str(CONFIG), '--spair', str(spair), '--out', str(again), '--device', 'cpu'])
    assert json.loads(again.read_text())['pck'] == result['pck']  # deterministic
    stretch = tmp_path / 'c3.json'
    _tool().main([str(CONFIG), '--spair', str(spair), '--out', str(stretch), '--convention', 'law-repo',
                  '--match', 'window-soft-argmax', '--average', 'keypoint', '--limit', '4'])
    assert json.loads(stretch.read_text())['settings']['convention'] == 'law-repo'


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match='not an SPair-71k directory'):
        _tool().main([str(CONFIG), '--spair', str(tmp_path)])
