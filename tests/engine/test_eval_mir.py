"""tools/eval_mir.py and mllm_align/engine/mir_eval.py on a tiny run trained here (4 iterations, saved
every 2): one MIR per iteration, mir.csv, both PNGs, skip on re-run, and the bad-input errors."""
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
import torch

from mllm_align.engine.checkpoint import load_checkpoint_file
from mllm_align.engine.mir_eval import MIRSettingsMismatch, discover_checkpoints, evaluate_mir

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # trains the tiny config in a subprocess
CONFIG = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
FAST = dict(eval_num=4, text_max_tokens=48, progress=False)  # in-process calls: a small probe


@pytest.fixture(scope='module')
def run_dir(tiny_assets, tmp_path_factory):
    """A real tiny pre-training run: iter_2.pth and iter_4.pth (trained projector only)."""
    work = tmp_path_factory.mktemp('mir_run')
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options',
         'train_cfg.max_epochs=None', 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2',
         'custom_hooks=[]'],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_2.pth', 'iter_4.pth']
    return work


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny config's paths (data/tiny/...) are relative to the repo


def _eval_mir_main():
    spec = importlib.util.spec_from_file_location('eval_mir_tool', REPO / 'tools' / 'eval_mir.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_series_scored_once_per_iteration_then_skipped(run_dir, tmp_path):
    out = tmp_path / 'mir'
    cmd = [sys.executable, 'tools/eval_mir.py', str(run_dir), '--config', CONFIG, '--eval-num', '6',
           '--text-max-tokens', '64', '--out', str(out)]
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    doc = json.loads((out / 'mir.json').read_text())
    results = doc['results']
    assert [r['iteration'] for r in results] == [2, 4]
    assert all(r['layers'] == [1, 2] and len(r['per_layer']) == 2 and r['num_pairs'] == 6 for r in results)
    assert doc['settings']['sqrt'] == 'exact' and doc['settings']['text_tokens'] == 'after_image'
    assert doc['settings']['images'].endswith('pretrain.json') and doc['settings']['texts'].endswith('mir_texts')
    assert len(doc['probe']['pairs']) == 6
    # the two checkpoints differ (training moved the projector), and so do their MIRs
    assert results[0]['mir'] != results[1]['mir']
    with open(out / 'mir.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['iteration']) for r in rows] == [2, 4]
    assert list(rows[0])[:4] == ['iteration', 'checkpoint', 'mir', 'num_layers'] and 'layer_2' in rows[0]
    assert float(rows[1]['mir']) == pytest.approx(results[1]['mir'], abs=1e-6)
    for name in ('mir_curve.png', 'mir_layers.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'MIR per checkpoint' in first.stdout

    # re-run in-process through the CLI's main(): nothing recomputed
    main = _eval_mir_main()
    assert main([str(run_dir), '--config', CONFIG, '--eval-num', '6', '--text-max-tokens', '64', '--out', str(out),
                 '--no-progress']) == 0
    again = json.loads((out / 'mir.json').read_text())['results']
    assert [r['finished_at'] for r in again] == [r['finished_at'] for r in results]

    # a touched checkpoint is recomputed; other settings are refused unless --overwrite
    os.utime(run_dir / 'iter_4.pth', ns=(1, 1))
    try:
        records = evaluate_mir(run_dir, CONFIG, out_dir=out, eval_num=6, text_max_tokens=64, progress=False)
    finally:
        os.utime(run_dir / 'iter_4.pth')
    assert records[0]['finished_at'] == results[0]['finished_at']
    assert records[1]['mir'] == pytest.approx(results[1]['mir'], rel=1e-5)  # same weights (fp32 noise only)
    with pytest.raises(MIRSettingsMismatch, match="sqrt: 'exact' → 'seed-sqrtm'"):
        evaluate_mir(run_dir, CONFIG, out_dir=out, eval_num=6, text_max_tokens=64, sqrt='seed-sqrtm', progress=False)
    assert main([str(run_dir), '--config', CONFIG, '--out', str(out), '--eval-num', '6', '--no-progress']) == 1


def test_single_checkpoint_layers_and_swap_equals_fresh_build(run_dir, tmp_path):
    series = evaluate_mir(run_dir, CONFIG, out_dir=tmp_path / 'a', plots=False, **FAST)
    single = evaluate_mir(run_dir / 'iter_4.pth', CONFIG, out_dir=tmp_path / 'b', plots=False, **FAST)
    # base model built once + weights swapped == a model built for iter_4 alone
    assert single[0]['per_layer'] == pytest.approx(series[1]['per_layer'], rel=1e-5)
    layer2 = evaluate_mir(run_dir / 'iter_4.pth', CONFIG, out_dir=tmp_path / 'c', layers='2', plots=False, **FAST)
    assert layer2[0]['layers'] == [2]
    assert layer2[0]['per_layer'][0] == pytest.approx(series[1]['per_layer'][1], rel=1e-5)
    assert not (tmp_path / 'a' / 'mir_curve.png').exists()


def test_second_pass_replayed_or_recomputed_gives_the_same_mir(run_dir, tmp_path, monkeypatch):
    """The first pass's rows kept in memory (default) or the model run again (replay_mb=0): same numbers, and
    the model runs once per pair instead of twice."""
    from mllm_align.evaluation.mir import MIREvaluator
    calls = []
    original = MIREvaluator.run_batch
    monkeypatch.setattr(MIREvaluator, 'run_batch', lambda self, model, batch: calls.append(1) or original(
        self, model, batch))
    kept = evaluate_mir(run_dir / 'iter_4.pth', CONFIG, out_dir=tmp_path / 'kept', plots=False, **FAST)
    assert len(calls) == 4  # eval_num pairs, batch 1: one forward each
    rerun = evaluate_mir(run_dir / 'iter_4.pth', CONFIG, out_dir=tmp_path / 'rerun', plots=False, replay_mb=0, **FAST)
    assert len(calls) == 4 + 8
    assert rerun[0]['per_layer'] == kept[0]['per_layer'] and rerun[0]['mir'] == kept[0]['mir']
    with pytest.raises(ValueError, match='replay_mb must be >= 0'):
        evaluate_mir(run_dir / 'iter_4.pth', CONFIG, out_dir=tmp_path / 'bad', replay_mb=-1, **FAST)


def test_bad_inputs_name_their_cause(run_dir, tmp_path, tiny_assets):
    with pytest.raises(ValueError, match=r'layer\(s\) \[7\] out of range; the LLM has 2 decoder layers'):
        evaluate_mir(run_dir, CONFIG, out_dir=tmp_path / 'o1', layers='1,7', **FAST)
    with pytest.raises(ValueError, match='--config is required'):
        evaluate_mir(run_dir, None, out_dir=tmp_path / 'o2', **FAST)
    (tmp_path / 'empty_run').mkdir()
    with pytest.raises(ValueError, match='holds no iter_\\*.pth'):
        evaluate_mir(tmp_path / 'empty_run', CONFIG, **FAST)

    # a checkpoint of another model: a projector of another shape, and one with an unknown key
    state = load_checkpoint_file(run_dir / 'iter_2.pth')['state_dict']
    wrong = tmp_path / 'wrong_shape'
    wrong.mkdir()
    torch.save({'state_dict': {k: torch.zeros(3, 3) if k.endswith('0.weight') else v for k, v in state.items()},
                'meta': {'iter': 2}}, wrong / 'iter_2.pth')
    with pytest.raises(ValueError, match='does not match the model built from .*size mismatch'):
        evaluate_mir(wrong, CONFIG, out_dir=tmp_path / 'o3', **FAST)
    extra = tmp_path / 'extra_key'
    extra.mkdir()
    torch.save({'state_dict': dict(state, **{'moca.u': torch.ones(4)})}, extra / 'iter_2.pth')
    with pytest.raises(ValueError, match=r"keys the model does not have \['moca.u'\]"):
        evaluate_mir(extra, CONFIG, out_dir=tmp_path / 'o4', **FAST)

    # a non-image file in the image folder is named; --skip-bad-images skips it
    images = tmp_path / 'images'
    images.mkdir()
    for src in sorted((tiny_assets.image_folder / 'images').glob('train_*.png'))[:3]:
        shutil.copy(src, images / src.name)
    (images / 'labels.csv').write_text('a,b\n')
    with pytest.raises(ValueError, match=r'labels\.csv.*cannot be used'):
        evaluate_mir(run_dir / 'iter_2.pth', CONFIG, out_dir=tmp_path / 'o5', images=images, **FAST)
    # eval-num larger than the pairs available: a warning, all 3 images used and recorded
    records = evaluate_mir(run_dir / 'iter_2.pth', CONFIG, out_dir=tmp_path / 'o6', images=images,
                           skip_bad_images=True, plots=False, **dict(FAST, eval_num=50))
    assert records[0]['num_pairs'] == 3
    doc = json.loads((tmp_path / 'o6' / 'mir.json').read_text())
    assert doc['probe']['skipped_images'][0][0] == 'labels.csv' and doc['settings']['eval_num'] == 50

    texts = tmp_path / 'texts'
    texts.mkdir()
    (texts / 'a.txt').write_text('A real sentence.')
    (texts / 'b.txt').write_text('\n')
    with pytest.raises(ValueError, match=r'b\.txt is empty'):
        evaluate_mir(run_dir / 'iter_2.pth', CONFIG, out_dir=tmp_path / 'o7', texts=texts, **FAST)
    assert discover_checkpoints(run_dir)[0].iteration == 2


def test_cfg_options_reach_the_model_and_the_fingerprint(run_dir, tmp_path):
    """--cfg-options as the run used them: recorded with the results; scoring again without them is refused."""
    kw = dict(out_dir=tmp_path / 'o', plots=False, **FAST)
    evaluate_mir(run_dir / 'iter_4.pth', CONFIG, cfg_options={'max_length': 48}, **kw)
    doc = json.loads((tmp_path / 'o' / 'mir.json').read_text())
    assert doc['settings']['cfg_options'] == {'max_length': '48'}
    with pytest.raises(MIRSettingsMismatch):
        evaluate_mir(run_dir / 'iter_4.pth', CONFIG, **kw)
    with pytest.raises(ValueError, match='--cfg-options needs --config'):
        evaluate_mir(run_dir / 'iter_4.pth', None, cfg_options={'max_length': 48}, **kw)
