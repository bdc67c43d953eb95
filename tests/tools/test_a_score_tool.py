"""tools/a_score.py v3 over a tiny work dir: records, files, skip on re-run, cfg-options fingerprint."""
from __future__ import annotations

import json
from pathlib import Path

from mllm_align.testing.tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def _tool():
    return load_tool('a_score')


def test_series(tiny_assets, tmp_path, capsys):
    from mllm_align.engine.build import build_model_from_config
    from mllm_align.testing.runs import write_perturbed_checkpoints

    work = tmp_path / 'work'
    write_perturbed_checkpoints(build_model_from_config(ROOT / CONFIG), work, iterations=(2, 4))
    args = ['v3', str(work), '--config', str(ROOT / CONFIG), '--num-pairs', '4', '--untrained', '--no-progress']
    assert _tool().main(args) == 0
    out = work / 'a_score'
    data = json.loads((out / 'a_score.json').read_text())
    iters = sorted(r['iteration'] for r in data['results'])
    assert iters == [0, 2, 4] and (out / 'a_score.csv').is_file() and (out / 'a_score_curve.png').is_file()
    printed = capsys.readouterr().out
    assert 'iteration 0: A_v3' in printed and 'iteration 4: A_v3' in printed
    values = [float(line.split('A_v3 ')[1].split()[0]) for line in printed.splitlines() if 'A_v3' in line]
    assert len(set(values)) == 3 and all(v < 0 for v in values)
    assert _tool().main(args) == 0  # everything scored: skipped, the records (with their finish times) kept
    assert json.loads((out / 'a_score.json').read_text())['results'] == data['results']
