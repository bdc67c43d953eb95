"""tools/eval_mmvm.py (mllm_align/engine/mmvm_eval.py) end to end on the real-photo mini bench with the tiny LLaVA
finetune model: a checkpoint series plus the untrained model, resumed after an interruption mid-checkpoint; a
predictions file scored without a model (ours and the kit's TSV); circular evaluation; bad files named."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mllm_align.testing.tools import load_tool

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py'


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope='module')
def bench():
    from mllm_align.testing.real_assets import prepared
    return prepared('mmvm_mini')


@pytest.fixture(scope='module')
def run_dir(tiny_assets, tmp_path_factory):
    from mllm_align.engine.build import build_model_from_config
    from mllm_align.testing.runs import write_perturbed_checkpoints
    work = tmp_path_factory.mktemp('mmvm_run')
    write_perturbed_checkpoints(build_model_from_config(REPO / CONFIG), work, iterations=(2,))
    return work


@pytest.mark.real_assets
def test_series_resumes_after_an_interruption_and_writes_everything(bench, run_dir, tmp_path, monkeypatch):
    from mllm_align.evaluation.mmvm import MMVMEvaluator

    out = tmp_path / 'mmvm'
    main = load_tool('eval_mmvm').main
    args = [str(run_dir), '--config', CONFIG, '--bench', str(bench), '--limit', '5', '--batch-size', '2',
            '--max-new-tokens', '3', '--out', str(out), '--device', 'cpu', '--no-progress']
    real = MMVMEvaluator.run_batch
    asked: list[list[str]] = []

    def interrupted(self, model, batch):
        asked.append(batch['keys'])
        if len(asked) == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(self, model, batch)

    monkeypatch.setattr(MMVMEvaluator, 'run_batch', interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    cache = (out / 'predictions' / 'iter_2.jsonl').read_text().splitlines()
    assert len(cache) == 1 + 2  # the header and the first batch's two answers
    asked.clear()
    monkeypatch.setattr(MMVMEvaluator, 'run_batch', lambda self, m, b: (asked.append(b['keys']), real(self, m, b))[1])
    assert main(args) == 0
    assert [k for keys in asked for k in keys] == ['2@0', '3@0', '4@0']  # only what was left
    doc = json.loads((out / 'mmvm.json').read_text())
    (rec,) = doc['results']
    assert rec['num_questions'] == 5 and len(rec['predictions']) == 5 and rec['policy'] == 'strict'
    assert set(rec['by_candidates']) == {'<=4', '<=8', '<=12', 'all'}
    assert sum(r['hit'] for r in rec['predictions']) == round(rec['accuracy'] * 5)
    for name in ('mmvm_curve.png', 'mmvm_categories.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with open(out / 'mmvm.csv') as f:
        assert float(next(csv.DictReader(f))['accuracy']) == pytest.approx(rec['accuracy'], abs=1e-6)
    asked.clear()
    assert main(args) == 0 and asked == []  # a finished checkpoint is skipped

    # the same answers scored from a file, without a model: ours (JSONL) and the kit's layout (TSV)
    mine = tmp_path / 'preds.jsonl'
    mine.write_text(''.join(json.dumps(dict(index=r['index'], prediction=r['prediction'])) + '\n'
                            for r in rec['predictions']))
    from mllm_align.data.mmvm import load_mmvm
    from mllm_align.engine.mmvm_eval import score_predictions_file
    with pytest.raises(ValueError, match='no prediction for 23 of 28'):
        score_predictions_file(mine, bench=bench)
    five = tmp_path / 'five'
    five.mkdir()
    rows = list(csv.DictReader(open(bench / 'mllm_match_eval_full.tsv', newline=''), delimiter='\t'))[:5]
    with open(five / 'mllm_match_eval_full.tsv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter='\t')
        w.writeheader()
        w.writerows(rows)
    again = score_predictions_file(mine, bench=bench, tsv=five / 'mllm_match_eval_full.tsv')
    assert again['accuracy'] == rec['accuracy'] and len(load_mmvm(bench, five / 'mllm_match_eval_full.tsv')) == 5
    kit = tmp_path / 'kit.tsv'
    with open(kit, 'w', newline='') as f:
        w = csv.writer(f, delimiter='\t')
        w.writerow(['index', 'question', 'prediction'])
        for r in rec['predictions']:
            w.writerow([r['index'], 'q', r['prediction']])
    assert main(['--predictions', str(kit), '--bench', str(bench), '--tsv', str(five / 'mllm_match_eval_full.tsv'),
                 '--out', str(tmp_path / 'scored')]) == 0
    assert json.loads((tmp_path / 'scored' / 'mmvm_predictions_score.json').read_text())['accuracy'] == rec['accuracy']
    import openpyxl  # the kit's default output format
    book = openpyxl.Workbook()
    book.active.append(['index', 'question', 'prediction'])
    for r in rec['predictions']:
        book.active.append([int(r['index']), 'q', r['prediction']])
    book.save(tmp_path / 'kit.xlsx')
    xlsx = score_predictions_file(tmp_path / 'kit.xlsx', bench=bench, tsv=five / 'mllm_match_eval_full.tsv')
    assert xlsx['accuracy'] == rec['accuracy'] and [r['prediction'] for r in xlsx['predictions']] == \
        [r['prediction'] for r in rec['predictions']]
    stray = tmp_path / 'stray.jsonl'
    stray.write_text(json.dumps(dict(index='9999', prediction='A')) + '\n')
    assert main(['--predictions', str(stray), '--bench', str(bench)]) == 1
    assert main(['--compare', str(out / 'mmvm.json'), '--out', str(tmp_path / 'cmp')]) == 0
    assert (tmp_path / 'cmp' / 'mmvm_compare.png').is_file()


@pytest.mark.real_assets
def test_circular_evaluation_of_a_scripted_model_that_always_answers_A(bench):
    """Through the evaluator (no model): vanilla "A" is right where the answer is A; circular never."""
    from mllm_align.data.mmvm import load_mmvm
    from mllm_align.evaluation.mmvm import MMVMEvaluator

    cases = load_mmvm(bench)
    vanilla = MMVMEvaluator(cases).score_predictions({f'{c.index}@0': 'A' for c in cases})
    assert vanilla['accuracy'] == pytest.approx(sum(c.answer == 'A' for c in cases) / len(cases))
    circ = MMVMEvaluator(cases, circular=True)
    assert len(circ.rows) == sum(c.num_candidates for c in cases)
    rec = circ.score_predictions({f'{cases[i].index}@{s}': 'A' for i, s, *_ in circ.rows})
    assert rec['accuracy'] == 0.0 and rec['circular'] is True
    # a rotated question lists the rotated options and keeps the rest of its text
    text, options, answer = circ.rows[1][2:]
    assert text.startswith(cases[0].question[:60]) and options[answer] == cases[0].options[cases[0].answer]


@pytest.mark.real_assets
def test_a_qwen2_vl_base_is_asked_with_both_images(bench, tiny_assets, tmp_path):
    """The Qwen2-VL base (dynamic grids, M-RoPE) through the same path: both images of a case in one prompt."""
    from mllm_align.engine.mmvm_eval import evaluate_mmvm

    qwen = 'projects/qwen2_vl/configs/finetune/qwen2_vl_2b_instruct_finetune_tiny_cpu.py'
    (rec,) = evaluate_mmvm(None, qwen, bench=bench, limit=2, untrained=True, out_dir=tmp_path / 'q', batch_size=2,
                           max_new_tokens=2, progress=False, plots=False, device='cpu')
    assert rec['num_questions'] == 2 and rec['iteration'] == 0 and len(rec['predictions']) == 2


@pytest.mark.real_assets
def test_an_hf_export_is_scored_like_its_source_model(bench, tiny_assets, tmp_path):
    """An exported HF Llava directory (its own processor) answers the same questions as the config's model."""
    import torch

    from mllm_align.engine.build import build_model_from_config, image_processor_from_config, load_config
    from mllm_align.engine.mmvm_eval import evaluate_mmvm

    cfg = load_config(REPO / CONFIG)

    def build():  # the same random projector both times
        torch.manual_seed(0)
        return build_model_from_config(cfg)

    hf = build().export_hf(tmp_path / 'hf', image_processor=image_processor_from_config(cfg))
    kw = dict(bench=bench, limit=3, batch_size=3, max_new_tokens=4, progress=False, plots=False, device='cpu')
    (from_hf,) = evaluate_mmvm(hf, **kw)
    (from_cfg,) = evaluate_mmvm(None, CONFIG, untrained=True, out_dir=tmp_path / 'cfg', model_factory=build, **kw)
    assert [r['prediction'] for r in from_hf['predictions']] == [r['prediction'] for r in from_cfg['predictions']]
    assert (tmp_path / 'hf_mmvm' / 'mmvm.json').is_file()
