"""tools/eval_vqa.py (mllm_align/engine/vqa_eval.py) on the tiny LLaVA finetune config: a work dir of two
checkpoints plus the untrained model → vqa.json / vqa.csv / PNGs / JSONL, re-run skips, selection flags, and
bad data named by sample with a non-zero exit."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py'
DATA = 'data/tiny/shapes/eval.json'
FOLDER = 'data/tiny/shapes'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))


def _eval_vqa_main():
    spec = importlib.util.spec_from_file_location('eval_vqa_tool', REPO / 'tools' / 'eval_vqa.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny config's paths (data/tiny/...) are relative to the repo


@pytest.fixture(scope='module')
def run_dir(tiny_assets, tmp_path_factory):
    """iter_2.pth / iter_4.pth of the tiny config (its trained weights with a perturbed projector; no training)."""
    from mllm_align.engine.build import build_model_from_config
    from mllm_align.testing.runs import write_perturbed_checkpoints
    work = tmp_path_factory.mktemp('vqa_run')
    write_perturbed_checkpoints(build_model_from_config(REPO / CONFIG), work)
    return work


def test_series_with_untrained_writes_everything_and_reruns_skip(run_dir, tmp_path):
    out = tmp_path / 'vqa'
    args = [str(run_dir), '--config', CONFIG, '--data', DATA, '--image-folder', FOLDER, '--limit', '12',
            '--untrained', '--show', '4', '--out', str(out), '--device', 'cpu']
    proc = subprocess.run([sys.executable, 'tools/eval_vqa.py', *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    echoed = [line for line in proc.stdout.splitlines() if line.startswith('eval_vqa: ')]
    assert echoed[0].startswith('eval_vqa: target=') and 'VQA accuracy per checkpoint' in proc.stdout
    doc = json.loads((out / 'vqa.json').read_text())
    results = doc['results']
    assert [r['iteration'] for r in results] == [0, 2, 4]
    assert results[0]['checkpoint'] == str(out / 'untrained' / 'iter_0.pth')
    assert all(r['num_samples'] == 12 and len(r['predictions']) == 12 for r in results)
    assert doc['settings']['limit'] == 12 and doc['settings']['match'] == 'first_word'
    with open(out / 'vqa.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['iteration']) for r in rows] == [0, 2, 4]
    assert float(rows[2]['accuracy']) == pytest.approx(results[2]['accuracy'], abs=1e-6)
    for name in ('vqa_curve.png', 'answers/untrained.png', 'answers/iter_2.png', 'answers/iter_4.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    lines = (out / 'predictions' / 'iter_4.jsonl').read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 12 and [r['prediction'] for r in rows] == results[2]['predictions']
    assert sum(r['correct'] for r in rows) == results[2]['num_correct']

    # re-run in-process: nothing recomputed (the untrained snapshot is reused), the files are still there
    main = _eval_vqa_main()
    assert main([*args, '--no-progress']) == 0
    again = json.loads((out / 'vqa.json').read_text())['results']
    assert [r['finished_at'] for r in again] == [r['finished_at'] for r in results]
    # other settings are refused (exit 1) unless --overwrite
    assert main([*args[:-6], '--out', str(out), '--max-new-tokens', '4', '--no-progress']) == 1


def test_latest_and_checkpoint_pick_one_of_the_work_dir(run_dir, tmp_path, capsys):
    from mllm_align.engine.vqa_eval import resolve_vqa_target
    assert resolve_vqa_target(run_dir, latest=True) == run_dir / 'iter_4.pth'
    assert resolve_vqa_target(run_dir, 'iter_2.pth') == run_dir / 'iter_2.pth'
    assert resolve_vqa_target(run_dir, 'all') == run_dir
    with pytest.raises(ValueError, match=r"holds no 'iter_9.pth'; it holds \['iter_2.pth', 'iter_4.pth'\]"):
        resolve_vqa_target(run_dir, 'iter_9.pth')
    with pytest.raises(ValueError, match='not one'):
        resolve_vqa_target(run_dir / 'iter_2.pth', latest=True)
    main = _eval_vqa_main()
    out = tmp_path / 'latest'
    assert main([str(run_dir), '--config', CONFIG, '--data', DATA, '--limit', '4', '--latest', '--out', str(out),
                 '--no-progress', '--no-plots', '--device', 'cpu']) == 0
    assert [r['iteration'] for r in json.loads((out / 'vqa.json').read_text())['results']] == [4]
    assert main([str(run_dir), '--data', DATA, '--limit', '4']) == 1
    assert '--config is required' in capsys.readouterr().err


def _bad(tmp_path: Path, name: str, samples: list) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(samples))
    return path


def test_bad_data_is_named_and_exits_non_zero(run_dir, tmp_path, capsys):
    main = _eval_vqa_main()
    good = json.loads((REPO / DATA).read_text())[:3]
    no_answer = _bad(tmp_path, 'no_answer.json', good[:1] + [dict(good[1], conversations=good[1]['conversations'][:1])])
    missing = _bad(tmp_path, 'missing.json', good[:2] + [dict(good[2], image='images/gone.png')])
    common = ['--config', CONFIG, '--image-folder', FOLDER, '--out', str(tmp_path / 'o'), '--no-progress']
    cases = [
        ([str(run_dir), '--data', str(no_answer), *common], f"sample 1 (id {good[1]['id']!r}) has no gpt answer"),
        ([str(run_dir), '--data', str(missing), *common], f"sample 2 (id {good[2]['id']!r}): image"),
        ([str(run_dir), '--data', DATA, '--limit', '3', *common[:2], '--image-folder', f'{FOLDER}/images',
          '--out', str(tmp_path / 'o')], 'None of the 3 images'),
        ([str(run_dir), '--data', str(tmp_path / 'nope.json'), *common], 'nope.json'),
        (['--data', DATA, '--config', CONFIG], 'Nothing to score'),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith('eval_vqa: error: ') and message in err, (argv, err)
    assert not (tmp_path / 'o' / 'vqa.json').exists()  # refused before any model was built or file written
    shutil.rmtree(tmp_path / 'o', ignore_errors=True)
