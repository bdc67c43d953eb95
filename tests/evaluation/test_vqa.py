"""mllm_align/evaluation/vqa.py (scoring rules, per-type table, majority baseline, VQAEvaluator) and the generation
path it shares with the chat tool (mllm_align/evaluation/chat.py), on the tiny LLaVA finetune config."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from mllm_align.evaluation import evaluate_checkpoints
from mllm_align.evaluation.chat import answer_batch, build_chat_batch, generate_answer_ids
from mllm_align.evaluation.vqa import (
    VQAEvaluator,
    is_correct,
    load_answers,
    load_vqa_samples,
    majority_baseline,
    normalize_answer,
    question_type,
    vqa_accuracy,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py'


# ------------------------------------------------------------------------------------------ pure scoring
@pytest.mark.parametrize('text, first_word, exact', [
    (' Red. ', 'red', 'red'),
    ('RED!', 'red', 'red'),
    ('a star', 'star', 'star'),
    ('The star', 'star', 'star'),
    ('the', 'the', 'the'),  # an article alone is the answer itself
    ('The shape is red.', 'shape', 'shape is red'),
    ('red circle', 'red', 'red circle'),
    ('"blue",', 'blue', 'blue'),
    ("it's two-thirds", "it's", "it's two-thirds"),
    ('', '', ''),
    ('...', '', ''),
])
def test_normalize_answer_rules(text, first_word, exact):
    assert normalize_answer(text, 'first_word') == first_word
    assert normalize_answer(text, 'exact') == exact


def test_is_correct_is_strict_but_fair():
    assert is_correct('Red.', 'red') and is_correct('red circle', 'red') and is_correct('a star', 'star')
    assert not is_correct('The shape is red.', 'red')  # no search inside a sentence
    assert not is_correct('red circle', 'red', match='exact')
    assert not is_correct('', '') and not is_correct('2', 'two')  # empty never scores; no number mapping
    with pytest.raises(ValueError, match=r"match='fuzzy'"):
        normalize_answer('red', 'fuzzy')  # type: ignore[arg-type]


def test_question_type_is_the_first_two_words():
    assert question_type('<image>\nWhat colour is the shape? Answer with one word.') == 'what colour'
    assert question_type('How many shapes?\n<image>') == 'how many'
    assert question_type('Is there a red shape?') == 'is there'
    assert question_type('<image>') == 'other'
    assert question_type('Why?') == 'why'


def test_vqa_accuracy_tables_by_hand():
    questions = ['What colour is it?', 'What colour is the star?', 'What shape is it?', 'How many shapes?',
                 'What shape is on the left?']
    answers = ['red', 'blue', 'star', 'two', 'a circle']
    predictions = ['Red.', 'red', 'The star', 'two shapes', 'square']
    out = vqa_accuracy(predictions, answers, questions)
    # correct: red ✓, blue ✗, star ✓, two ✓ (first word), circle ✗
    assert out['correct'] == [True, False, True, True, False]
    assert (out['num_correct'], out['num_samples'], out['accuracy']) == (3, 5, 0.6)
    assert out['per_type'] == {'how many': {'count': 1, 'correct': 1, 'accuracy': 1.0},
                               'what colour': {'count': 2, 'correct': 1, 'accuracy': 0.5},
                               'what shape': {'count': 2, 'correct': 1, 'accuracy': 0.5}}
    assert out['per_answer']['circle'] == {'count': 1, 'correct': 0, 'accuracy': 0.0}
    assert sorted(out['per_answer']) == ['blue', 'circle', 'red', 'star', 'two']
    exact = vqa_accuracy(predictions, answers, questions, match='exact')
    assert exact['num_correct'] == 2  # 'two shapes' no longer counts
    assert 'per_type' not in vqa_accuracy(predictions, answers)
    assert vqa_accuracy([], [])['accuracy'] == 0.0
    with pytest.raises(ValueError, match='2 predictions, 1 answers'):
        vqa_accuracy(['a', 'b'], ['a'])


def test_majority_baseline_matches_a_direct_count(tiny_assets):
    samples = json.loads(Path(tiny_assets.eval_json).read_text())
    answers = [s['conversations'][1]['value'] for s in samples]
    counts = Counter(a.lower() for a in answers)
    top = max(counts.values())
    expected = sorted(a for a, c in counts.items() if c == top)[0]
    answer, acc = majority_baseline(answers)
    assert (answer, acc) == (expected, top / len(answers))
    # ties go to the alphabetically first; accuracy measured on another set
    assert majority_baseline(['b', 'a', 'b', 'a']) == ('a', 0.5)
    assert majority_baseline(['yes', 'Yes.', 'no'], ['no', 'no', 'yes', 'maybe']) == ('yes', 0.25)
    with pytest.raises(ValueError, match='at least one answer'):
        majority_baseline([])


# ------------------------------------------------------------------------------------------ data
def _write(tmp_path: Path, samples: list, name: str = 'vqa.json') -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(samples))
    return path


def _sample(sid: str, image: str, question: str = 'What colour is the shape?', answer: str | None = 'red') -> dict:
    conv = [{'from': 'human', 'value': f'<image>\n{question}'}]
    if answer is not None:
        conv.append({'from': 'gpt', 'value': answer})
    return {'id': sid, 'image': image, 'conversations': conv}


def test_load_vqa_samples_and_its_errors(tiny_assets, tmp_path):
    folder = tiny_assets.image_folder
    samples = load_vqa_samples(tiny_assets.eval_json, folder, limit=5)
    raw = json.loads(Path(tiny_assets.eval_json).read_text())[:5]
    assert [s.id for s in samples] == [r['id'] for r in raw]
    assert [s.answer for s in samples] == [r['conversations'][1]['value'] for r in raw]
    assert samples[0].question == raw[0]['conversations'][0]['value'].replace('<image>', '').strip()

    good = 'images/eval_000000.png'
    no_answer = _write(tmp_path, [_sample('q0', good), _sample('q1', good, answer=None)])
    with pytest.raises(ValueError, match=r"sample 1 \(id 'q1'\) has no gpt answer"):
        load_vqa_samples(no_answer, folder)
    missing = _write(tmp_path, [_sample('q0', good), _sample('q1', 'images/nope.png')])
    with pytest.raises(ValueError, match=r"sample 1 \(id 'q1'\): image .*nope.png does not exist"):
        load_vqa_samples(missing, folder)
    with pytest.raises(ValueError, match='None of the 2 images .* pass the folder'):
        load_vqa_samples(_write(tmp_path, [_sample('q0', good), _sample('q1', good)]), folder / 'images')
    two = _write(tmp_path, [{**_sample('q0', good), 'image': [good, good]}])
    with pytest.raises(ValueError, match="id 'q0'.* no single \"image\""):
        load_vqa_samples(two, folder)
    no_token = _write(tmp_path, [{'id': 'q0', 'image': good, 'conversations': [
        {'from': 'human', 'value': 'What?'}, {'from': 'gpt', 'value': 'red'}]}])
    with pytest.raises(ValueError, match='exactly one <image>'):
        load_vqa_samples(no_token, folder)
    with pytest.raises(ValueError, match='limit must be >= 1'):
        load_vqa_samples(tiny_assets.eval_json, folder, limit=0)
    with pytest.raises(FileNotFoundError, match='Image folder'):
        load_vqa_samples(tiny_assets.eval_json, tmp_path / 'none')
    (tmp_path / 'bad.json').write_text('{"id": 1}')
    with pytest.raises(ValueError, match='list of samples'):
        load_vqa_samples(tmp_path / 'bad.json', folder)
    # baseline answers: the first gpt turn of every sample, images not needed
    assert load_answers(no_answer) == ['red']


# ------------------------------------------------------------------------------------------ the evaluator
@pytest.fixture(scope='module')
def model(tiny_assets):
    from mllm_align.engine.build import build_model_from_config
    return build_model_from_config(CONFIG)


@pytest.fixture(scope='module')
def image_processor(tiny_assets):
    from mllm_align.engine.build import image_processor_from_config
    return image_processor_from_config(CONFIG)


def _fake_generate(model, answer_of):
    """A ``generate_ids`` that answers ``answer_of(sample_id)`` (+ the stop token, then padding)."""
    tok = model.tokenizer

    def generate_ids(inputs, data, eos_token_id, max_new_tokens):
        rows = [tok(answer_of(sid), add_special_tokens=False)['input_ids'] + [eos_token_id[0]]
                for sid in data['sample_ids']]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [model.pad_token_id] * (width - len(r)) for r in rows])
    return generate_ids


def test_right_answers_score_one_and_a_constant_its_frequency(model, image_processor, tiny_assets, monkeypatch):
    raw = json.loads(Path(tiny_assets.eval_json).read_text())[:20]
    truth = {r['id']: r['conversations'][1]['value'] for r in raw}
    ev = VQAEvaluator(tiny_assets.eval_json, tiny_assets.image_folder, image_processor=image_processor, limit=20,
                      batch_size=6)
    monkeypatch.setattr(model, 'generate_ids', _fake_generate(model, lambda sid: truth[sid].capitalize() + '.'))
    perfect = ev.score(model)
    assert perfect['accuracy'] == 1.0 and perfect['num_samples'] == 20
    assert perfect['predictions'] == [truth[r['id']].capitalize() + '.' for r in raw]  # file order kept
    monkeypatch.setattr(model, 'generate_ids', _fake_generate(model, lambda sid: 'red'))
    constant = ev.score(model)
    assert constant['accuracy'] == pytest.approx(sum(a == 'red' for a in truth.values()) / 20)
    counts = Counter(truth.values())
    assert constant['majority_answer'] == max(sorted(counts), key=counts.get)
    assert constant['majority_accuracy'] == pytest.approx(max(counts.values()) / 20)
    assert sum(r['count'] for r in constant['per_type'].values()) == 20


def test_batching_does_not_change_greedy_answers_and_sampling_is_seeded(model, image_processor, tiny_assets):
    ev1 = VQAEvaluator(tiny_assets.eval_json, tiny_assets.image_folder, image_processor=image_processor, limit=6,
                       batch_size=1)
    ev6 = VQAEvaluator(tiny_assets.eval_json, tiny_assets.image_folder, image_processor=image_processor, limit=6,
                       batch_size=6)
    assert ev1.score(model)['predictions'] == ev6.score(model)['predictions']

    from mllm_align.data.image_loading import load_image
    images = [load_image(s.path) for s in ev6.samples[:3]]
    questions = [s.prompt for s in ev6.samples[:3]]
    greedy = answer_batch(model, images, questions, image_processor=image_processor, max_new_tokens=6)
    # τ → 0: sampling puts all mass on the argmax, i.e. the base's greedy generate_ids
    cold = answer_batch(model, images, questions, image_processor=image_processor, max_new_tokens=6,
                        temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert cold == greedy
    hot = [answer_batch(model, images, questions, image_processor=image_processor, max_new_tokens=6,
                        temperature=5.0, generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert hot[0] == hot[1] and hot[0] != hot[2]
    data = build_chat_batch(model, images[:1], [[{'from': 'human', 'value': questions[0]}]],
                            image_processor=image_processor)
    with pytest.raises(ValueError, match='temperature must be >= 0'):
        generate_answer_ids(model, data, temperature=-1.0)


def _checkpoints(model, work: Path) -> list[Path]:
    """iter_2.pth / iter_4.pth: the model's trained weights with a perturbed projector (no training needed)."""
    from mllm_align.testing.runs import write_perturbed_checkpoints
    return write_perturbed_checkpoints(model, work)


def test_runner_series_files_resume_skip_and_hf_export(model, image_processor, tiny_assets, tmp_path):
    from mllm_align.models.export import export_llava_to_hf

    original = {k: v.clone() for k, v in model.state_dict().items()}
    work = tmp_path / 'run'
    _checkpoints(model, work)
    ev = VQAEvaluator(tiny_assets.eval_json, tiny_assets.image_folder, image_processor=image_processor, limit=10,
                      batch_size=5)
    out = tmp_path / 'vqa'
    try:
        records = evaluate_checkpoints(work, ev, model=model, out_dir=out, progress=False)['vqa']
        assert [r['iteration'] for r in records] == [2, 4]
        assert all(r['num_samples'] == 10 and len(r['predictions']) == 10 for r in records)
        doc = json.loads((out / 'vqa.json').read_text())
        assert doc['format'] == 'mllm_align.eval.vqa/1' and doc['settings']['limit'] == 10
        assert len(doc['samples']) == 10
        for r in records:  # the stored accuracy is the rule applied to the stored predictions
            assert r['accuracy'] == vqa_accuracy(r['predictions'], [s.answer for s in ev.samples])['accuracy']
        with open(out / 'vqa.csv') as f:
            rows = list(csv.DictReader(f))
        assert [int(r['iteration']) for r in rows] == [2, 4] and 'type:what colour' in rows[0]
        assert (out / 'vqa_curve.png').read_bytes()[:4] == b'\x89PNG'
        lines = ev.write_predictions(records[1], out / 'p.jsonl').read_text().splitlines()
        assert len(lines) == 10 and json.loads(lines[0])['answer'] == ev.samples[0].answer
        assert ev.write_answer_grid(records[1], out / 'grid.png', 3).read_bytes()[:4] == b'\x89PNG'

        again = evaluate_checkpoints(work, ev, model=model, out_dir=out, progress=False)['vqa']
        assert [r['finished_at'] for r in again] == [r['finished_at'] for r in records]  # skipped

        # the same weights as an HF export (its own processor pads as training did): same answers
        model.load_state_dict(torch.load(work / 'iter_4.pth', weights_only=True)['state_dict'], strict=False)
        hf = export_llava_to_hf(model, tmp_path / 'hf', image_processor=image_processor, pad_image_to_square=True)
        ev_hf = VQAEvaluator(tiny_assets.eval_json, tiny_assets.image_folder, limit=10, batch_size=5)
        hf_records = evaluate_checkpoints(hf, ev_hf, out_dir=tmp_path / 'hf_vqa', progress=False, plots=False)['vqa']
        assert hf_records[0]['predictions'] == records[1]['predictions']
    finally:
        model.load_state_dict(original, strict=False)


def test_question_prior_baseline_hand_worked():
    from mllm_align.evaluation.vqa import question_prior_baseline
    train_q = ['<image>\nIs there a circle?', 'is there a circle?', 'Is there a  circle?', 'What color?', 'What color?']
    train_a = ['yes', 'yes', 'no', 'red', 'blue']
    # 'is there a circle?' -> yes (2 of 3); 'what color?' -> blue (tie, alphabetical); unseen -> overall majority
    # of train ('yes': 2 of 5)
    eval_q = ['Is there a circle?', 'What color?', 'What color?', 'Is it round?']
    eval_a = ['yes', 'blue', 'red', 'no']
    assert question_prior_baseline(train_q, train_a, eval_q, eval_a) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match='aligned'):
        question_prior_baseline(train_q, train_a[:-1], eval_q, eval_a)
