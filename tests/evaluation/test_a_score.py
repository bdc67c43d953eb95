"""A score v3 equals minus the training code's caption loss; batching does not change it; v1 self-score is 1."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm_align.constants import IMAGE_TOKEN_INDEX
from mllm_align.engine.a_score_eval import caption_pairs_from_config, evaluate_a_score_v1
from mllm_align.engine.build import build_model_from_config, load_config
from mllm_align.evaluation.a_score import AScoreEvaluator

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


@pytest.fixture(scope='module')
def setup(tiny_assets):
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    samples, collate, settings = caption_pairs_from_config(cfg, num_pairs=6, seed=3)
    return model, samples, collate, settings


def test_equals_minus_training_loss(setup):
    model, samples, collate, _ = setup
    ev = AScoreEvaluator(samples, collate, batch_size=4)
    record = ev.score(model)
    with torch.no_grad():
        losses = [float(model(collate([s])['data'], mode='loss')['loss_lm']) for s in samples]
    assert record['a_score_v3'] == pytest.approx(-sum(losses) / len(losses), abs=1e-5)
    assert record['caption_nll'] == pytest.approx(-record['a_score_v3']) and record['pairs'] == 6
    assert record['tokens'] == sum(int((s['labels'] != -100).sum()) for s in samples)
    one = AScoreEvaluator(samples, collate, batch_size=1).score(model)
    assert one['a_score_v3'] == pytest.approx(record['a_score_v3'], abs=1e-5)


def test_seeded_sampling(setup, tiny_assets):
    cfg = load_config(CONFIG)
    _, samples, _, settings = setup
    again, _, _ = caption_pairs_from_config(cfg, num_pairs=6, seed=3)
    assert [s['id'] for s in again] == [s['id'] for s in samples]
    other, _, _ = caption_pairs_from_config(cfg, num_pairs=6, seed=4)
    assert [s['id'] for s in other] != [s['id'] for s in samples]
    assert settings['seed'] == 3 and settings['data']['size'] > 0


def test_no_supervised_token_is_named(setup):
    _, samples, collate, _ = setup
    bad = dict(samples[0], labels=torch.full_like(samples[0]['labels'], -100))
    with pytest.raises(ValueError, match=f'{bad["id"]!r} has no supervised caption token'):
        AScoreEvaluator([bad], collate)


def test_v1_self_score_is_one(tiny_assets, tmp_path):
    from mllm_align.testing.runs import write_perturbed_checkpoints

    model = build_model_from_config(CONFIG)
    ckpt = write_perturbed_checkpoints(model, tmp_path, iterations=(1,))[0]
    assert evaluate_a_score_v1((CONFIG, ckpt), [(CONFIG, ckpt)], num_images=4) == pytest.approx(1.0, abs=1e-5)
    other = write_perturbed_checkpoints(model, tmp_path / 'b', iterations=(2,), scale=2.0)[0]
    assert evaluate_a_score_v1((CONFIG, ckpt), [(CONFIG, other)], num_images=4) < 0.999


def test_v3_of_an_hf_export_equals_the_source_models(setup, tiny_assets, tmp_path):
    """An HF directory is scored on the pairs its config makes (the same numbers as the model it was exported
    from); a directory whose template or tokenizer does not match the config's pairs is refused, naming it."""
    from mllm_align.engine.a_score_eval import check_hf_dir_matches_pairs, evaluate_a_score
    from mllm_align.engine.build import image_processor_from_config
    from mllm_align.models.hf_llava import load_hf_dir

    model, _, _, _ = setup
    cfg = load_config(CONFIG)
    out = model.export_hf(tmp_path / 'hf', image_processor=image_processor_from_config(cfg))
    records = evaluate_a_score(out, CONFIG, num_pairs=6, seed=3, progress=False, plots=False)
    assert (tmp_path / 'hf_a_score' / 'a_score.json').is_file() and records[0]['pairs'] == 6
    # independent: transformers' own Llava forward with labels, the image placeholder expanded to its tokens
    # (the export's vocabulary has one more class, its image token, so this is not the source model's number)
    hf = load_hf_dir(out)
    samples, _, _ = caption_pairs_from_config(cfg, num_pairs=6, seed=3)
    image_id, per_image = hf.hf_model.config.image_token_index, 16
    losses = []
    for s in samples:
        ids, labels = [], []
        for t, lab in zip(s['input_ids'].tolist(), s['labels'].tolist()):
            ids += [image_id] * per_image if t == IMAGE_TOKEN_INDEX else [t]
            labels += [-100] * per_image if t == IMAGE_TOKEN_INDEX else [lab]
        with torch.no_grad():
            losses.append(float(hf.hf_model(input_ids=torch.tensor([ids]), pixel_values=s['pixel_values'],
                                            labels=torch.tensor([labels])).loss))
    assert records[0]['a_score_v3'] == pytest.approx(-sum(losses) / len(losses), abs=1e-5)
    hf.template = 'vicuna_v1'
    with pytest.raises(ValueError, match=r"exported with template 'vicuna_v1'.*pass the config"):
        check_hf_dir_matches_pairs(hf, cfg, samples, out)
    hf = load_hf_dir(out)
    from mllm_align.models import load_tokenizer
    hf.tokenizer = load_tokenizer(str(tiny_assets.llm('qwen2')))  # another model's tokenizer
    with pytest.raises(ValueError, match='another vocabulary'):
        check_hf_dir_matches_pairs(hf, cfg, samples, out)


def _caption_json(path, rows):
    import json
    path.write_text(json.dumps([dict(id=i, image=img, conversations=[
        {'from': 'human', 'value': '<image>'}, {'from': 'gpt', 'value': text}]) for i, img, text in rows]))
    return path


def test_fewer_pairs_than_asked_warn_and_bad_pairs_are_named(tiny_assets, tmp_path, monkeypatch):
    """Fewer pairs than N: a warning and all of them; a missing image or a pair without one: an error naming it."""
    from mllm_align.engine import a_score_eval

    warned = []
    monkeypatch.setattr(a_score_eval, 'print_log', lambda msg, **kw: warned.append((msg, kw.get('level'))))
    cfg = load_config(CONFIG)
    folder = tiny_assets.image_folder
    good = _caption_json(tmp_path / 'two.json', [('a', 'images/train_000000.png', 'a blue star.'),
                                                 ('b', 'images/train_000001.png', 'a red circle.')])
    samples, _, settings = caption_pairs_from_config(cfg, data=good, image_folder=folder, num_pairs=5)
    assert [s['id'] for s in samples] == ['a', 'b'] and settings['requested_pairs'] == 5
    assert [level for msg, level in warned if 'has 2 samples, fewer than the 5 asked for' in msg] == [30]
    missing = _caption_json(tmp_path / 'missing.json', [('gone', 'images/nope.png', 'a blue star.')])
    with pytest.raises(Exception, match=r"(?s)gone.*nope\.png|nope\.png.*gone"):
        caption_pairs_from_config(cfg, data=missing, image_folder=folder, num_pairs=1)
    import json
    (tmp_path / 'noimg.json').write_text(json.dumps([dict(id='txt', conversations=[
        {'from': 'human', 'value': 'hello'}, {'from': 'gpt', 'value': 'a caption.'}])]))
    with pytest.raises(ValueError, match=r"samples \['txt'\] .* have no image"):
        caption_pairs_from_config(cfg, data=tmp_path / 'noimg.json', image_folder=folder, num_pairs=1)


def test_cfg_options_are_part_of_the_fingerprint(tiny_assets, tmp_path):
    """The same checkpoint scored under other --cfg-options is another setting: refused, or redone with overwrite."""
    from mllm_align.engine.a_score_eval import evaluate_a_score
    from mllm_align.evaluation.runner import SettingsMismatch
    from mllm_align.testing.runs import write_perturbed_checkpoints

    ckpt = write_perturbed_checkpoints(build_model_from_config(CONFIG), tmp_path, iterations=(1,))[0]
    kw = dict(num_pairs=3, progress=False, plots=False)
    first = evaluate_a_score(ckpt, CONFIG, **kw)
    with pytest.raises(SettingsMismatch, match='cfg_options'):
        evaluate_a_score(ckpt, CONFIG, cfg_options={'max_length': 48}, **kw)
    again = evaluate_a_score(ckpt, CONFIG, cfg_options={'max_length': 48}, overwrite=True, **kw)
    assert again[0]['finished_at'] >= first[0]['finished_at'] and again[0]['pairs'] == 3
