"""easy-VQA → LLaVA JSON (mllm_align/assets/easy_vqa.py): a hand-made fake wheel, and the pinned real one."""
from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mllm_align.assets import easy_vqa
from mllm_align.assets.easy_vqa import COLORS, PALETTE, SHAPES, allowed_facts, convert_easy_vqa
from mllm_align.assets.wheels import AssetError

ANSWERS = ['circle', 'green', 'red', 'gray', 'yes', 'teal', 'black', 'rectangle', 'yellow', 'triangle', 'brown',
           'blue', 'no']


# ---------------------------------------------------------------- an independent oracle
def oracle_answer(question: str, color: str, shape: str) -> str:
    """The answer a question has for an image holding one ``color`` ``shape`` (written apart from the module:
    it answers questions instead of intersecting constraints)."""
    words = question.rstrip('?').split()
    negated = 'not' in words or 'no' in words
    if question.startswith('what') and ('color' in words):
        return color
    if question.startswith('what'):
        return shape
    named = [w for w in words if w in COLORS or w in SHAPES]
    holds = named[0] in (color, shape)
    return 'yes' if holds != negated else 'no'


def test_oracle_on_hand_examples():
    assert oracle_answer('what is the blue shape?', 'blue', 'circle') == 'circle'
    assert oracle_answer('what color is the triangle?', 'red', 'triangle') == 'red'
    assert oracle_answer('is no red shape present?', 'red', 'circle') == 'no'
    assert oracle_answer('is there not a circle?', 'red', 'triangle') == 'yes'


# ---------------------------------------------------------------- the fake wheel
def _draw(color: str, shape: str, background=(244, 238, 236)) -> bytes:
    image = Image.new('RGB', (64, 64), background)
    draw = ImageDraw.Draw(image)
    fill = PALETTE[color]
    if shape == 'circle':
        draw.ellipse((10, 12, 50, 52), fill=fill)
    elif shape == 'rectangle':
        draw.rectangle((8, 20, 55, 40), fill=fill)
    else:
        draw.polygon([(12, 50), (52, 50), (32, 10)], fill=fill)
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    return buf.getvalue()


FAKE_IMAGES = {'train': [('red', 'circle'), ('blue', 'rectangle'), ('green', 'triangle')],
               'test': [('yellow', 'circle')]}
FAKE_TRAIN_QA = [['what color is the circle?', 'red', 0], ['is there a triangle?', 'no', 0],
                 ['what shape is in the image?', 'rectangle', 1], ['is there a blue shape?', 'yes', 1],
                 ['is there not a red shape?', 'yes', 2], ['does the image contain a circle?', 'no', 2]]
FAKE_TEST_QA = [['what color is the shape?', 'yellow', 0], ['is there a circle?', 'yes', 0],
                ['is no black shape present?', 'yes', 0]]


def _fake_wheel(path: Path, train_qa=FAKE_TRAIN_QA, test_qa=FAKE_TEST_QA) -> Path:
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('easy_vqa/data/answers.txt', '\n'.join(ANSWERS) + '\n')
        for split, qa in (('train', train_qa), ('test', test_qa)):
            z.writestr(f'easy_vqa/data/{split}/questions.json', json.dumps(qa))
            for i, (color, shape) in enumerate(FAKE_IMAGES[split]):
                z.writestr(f'easy_vqa/data/{split}/images/{i}.png', _draw(color, shape))
    return path


def _load(out: Path, name: str):
    return json.loads((out / name).read_text())


def test_fake_wheel_captions_from_pairs_and_pixels(tmp_path):
    out = tmp_path / 'easy'
    stats = convert_easy_vqa(_fake_wheel(tmp_path / 'fake.whl'), out, seed=3)
    captions = {s['id']: s['conversations'][1]['value'] for s in _load(out, 'pretrain.json')}
    assert set(captions) == {'train_0_caption', 'train_1_caption', 'train_2_caption'}
    assert 'red circle' in captions['train_0_caption']            # pinned by "what color is the circle?"
    assert 'blue rectangle' in captions['train_1_caption']        # shape answer + "is there a blue shape?" yes
    assert 'green triangle' in captions['train_2_caption']        # only negatives: completed from the pixels
    facts = stats['caption_facts']
    assert (facts['color_from_qa'], facts['color_from_pixels']) == (2, 1)
    assert (facts['shape_from_qa'], facts['shape_from_pixels']) == (2, 1)
    sft = _load(out, 'sft.json')
    assert len(sft) == len(FAKE_TRAIN_QA)
    assert sft[0]['conversations'] == [
        {'from': 'human', 'value': '<image>\nwhat color is the circle?\n' + easy_vqa.DEFAULT_INSTRUCTION},
        {'from': 'gpt', 'value': 'red'}]
    assert [s['image'] for s in _load(out, 'test.json')] == ['test/0.png'] * 3
    assert (out / 'images' / 'test' / '0.png').read_bytes() == _draw('yellow', 'circle')
    assert stats['majority_baseline'] == {'answer': 'yes', 'accuracy': pytest.approx(2 / 3)}


def test_fake_wheel_templates_follow_the_seed(tmp_path):
    wheel = _fake_wheel(tmp_path / 'fake.whl')
    runs = []
    for k, seed in enumerate((0, 0, 1)):
        convert_easy_vqa(wheel, tmp_path / f'o{k}', seed=seed, instruction=None)
        runs.append((tmp_path / f'o{k}' / 'pretrain.json').read_text())
    assert runs[0] == runs[1]
    assert json.loads(runs[0])[0]['conversations'][1]['value'] in [
        t.format(color='red', shape='circle') for t in easy_vqa.CAPTION_TEMPLATES]
    assert _load(tmp_path / 'o2', 'sft.json')[0]['conversations'][0]['value'] == '<image>\nwhat color is the circle?'


def test_contradicting_pairs_name_the_image(tmp_path):
    qa = FAKE_TRAIN_QA + [['is there a red shape?', 'no', 0]]
    with pytest.raises(AssetError, match=r"train image 0, question 'is there a red shape\?'"):
        convert_easy_vqa(_fake_wheel(tmp_path / 'fake.whl', train_qa=qa), tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_pixels_outside_what_the_pairs_allow_is_an_error(tmp_path):
    qa = FAKE_TRAIN_QA + [['is there a green shape?', 'no', 2]]  # image 2 is green; its colour is left open
    with pytest.raises(AssetError, match='train image 2: its questions leave the color open'):
        convert_easy_vqa(_fake_wheel(tmp_path / 'fake.whl', train_qa=qa), tmp_path / 'out')


def test_allowed_facts_reads_negations():
    colors, shapes = allowed_facts([('is no red shape present?', 'yes'), ('is there not a circle?', 'no')], 7)
    assert colors == set(COLORS) - {'red'} and shapes == {'circle'}
    colors, shapes = allowed_facts([('what is the teal shape?', 'triangle')], 7)
    assert colors == {'teal'} and shapes == {'triangle'}
    with pytest.raises(AssetError, match='image 7'):
        allowed_facts([('what is the answer?', 'maybe')], 7)


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(AssetError, match='not a previous easy-VQA conversion'):
        convert_easy_vqa(_fake_wheel(tmp_path / 'fake.whl'), out)
    assert (out / 'keep.txt').read_text() == 'mine'


# ---------------------------------------------------------------- the pinned wheel
@pytest.fixture(scope='module')
def real(tmp_path_factory):
    from mllm_align.testing.real_assets import real_wheel
    wheel = real_wheel('easy-vqa')
    out = tmp_path_factory.mktemp('easy_vqa') / 'easy_vqa'
    stats = convert_easy_vqa(wheel, out)
    with zipfile.ZipFile(wheel) as z:
        raw = {s: json.loads(z.read(f'easy_vqa/data/{s}/questions.json')) for s in ('train', 'test')}
        answers_txt = [a.strip() for a in z.read('easy_vqa/data/answers.txt').decode().splitlines() if a.strip()]
    return dict(wheel=wheel, out=out, stats=stats, raw=raw, answers_txt=answers_txt)


@pytest.mark.real_assets
def test_real_counts(real):
    out, stats = real['out'], real['stats']
    assert len(list((out / 'images' / 'train').glob('*.png'))) == 4000
    assert len(list((out / 'images' / 'test').glob('*.png'))) == 1000
    assert len(_load(out, 'pretrain.json')) == 4000
    assert len(_load(out, 'sft.json')) == 38575
    assert len(_load(out, 'test.json')) == 9673
    assert {s: (v['images'], v['questions']) for s, v in stats['splits'].items()} == {
        'train': (4000, 38575), 'test': (1000, 9673)}
    assert _load(out, 'stats.json') == stats
    for s in _load(out, 'sft.json')[:50] + _load(out, 'test.json')[:50]:
        assert (out / 'images' / s['image']).is_file()


@pytest.mark.real_assets
def test_real_answer_set(real):
    answers = _load(real['out'], 'answers.json')
    assert answers == real['answers_txt'] and len(set(answers)) == 13
    replies = {s['conversations'][1]['value'] for name in ('sft.json', 'test.json') for s in _load(real['out'], name)}
    assert replies == set(answers)


@pytest.mark.real_assets
def test_real_test_split_is_disjoint_from_training(real):
    out = real['out']
    train_samples = _load(out, 'pretrain.json') + _load(out, 'sft.json')
    test_samples = _load(out, 'test.json')
    assert {s['image'].split('/')[0] for s in train_samples} == {'train'}
    assert {s['image'].split('/')[0] for s in test_samples} == {'test'}
    assert not {s['id'] for s in train_samples} & {s['id'] for s in test_samples}
    assert len({s['id'] for s in train_samples}) == len(train_samples)

    def digests(split):
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / 'images' / split).glob('*.png')}
    assert not digests('train') & digests('test')  # no image file's bytes appear in both splits


@pytest.mark.real_assets
def test_real_captions_answer_every_train_question(real):
    """Every train question, answered from its image's caption by the independent oracle, gets the dataset's
    answer (38,575 checks: the caption agrees with all of the image's pairs)."""
    caption = {}
    for s in _load(real['out'], 'pretrain.json'):
        words = s['conversations'][1]['value'].split()
        colors, shapes = [w for w in words if w in COLORS], [w for w in words if w in SHAPES]
        assert len(colors) == 1 and len(shapes) == 1, s
        caption[int(s['image'].split('/')[1][:-4])] = (colors[0], shapes[0])
    assert len(caption) == 4000
    wrong = [(q, a, i, caption[i]) for q, a, i in real['raw']['train'] if oracle_answer(q, *caption[i]) != a]
    assert not wrong


def _colour_from_pixels(path: Path) -> str:
    """Independent of the module's rule: backgrounds are light (every channel ≥ 230), so the shape is the
    pixels with a channel below 200; their per-channel median, nearest palette colour (Euclidean)."""
    rgb = np.asarray(Image.open(path).convert('RGB'), dtype=float).reshape(-1, 3)
    shape_pixels = rgb[rgb.min(1) < 200]
    median = np.median(shape_pixels, axis=0)
    return min(COLORS, key=lambda c: float(((median - np.array(PALETTE[c])) ** 2).sum()))


@pytest.mark.real_assets
def test_real_caption_colour_matches_the_pixels(real):
    samples = _load(real['out'], 'pretrain.json')
    for s in random.Random(0).sample(samples, 50):
        words = s['conversations'][1]['value'].split()
        assert _colour_from_pixels(real['out'] / 'images' / s['image']) in words, s


@pytest.mark.real_assets
def test_real_majority_and_blind_prior_equal_direct_counts(real):
    stats, raw = real['stats'], real['raw']
    counts = Counter(a for _, a, _ in raw['test'])
    top, n = counts.most_common(1)[0]
    assert stats['majority_baseline'] == {'answer': top, 'accuracy': n / len(raw['test'])}
    assert stats['splits']['test']['answers'] == {a: counts[a] for a in real['answers_txt']}
    by_text = defaultdict(Counter)
    for q, a, _ in raw['train']:
        by_text[q][a] += 1
    # Every test question text occurs in train (stats say 0 unseen), so the per-text rule needs no fallback.
    order = real['answers_txt']
    hits = sum(max(by_text[q], key=lambda x: (by_text[q][x], -order.index(x))) == a for q, a, _ in raw['test'])
    assert stats['blind_prior']['unseen_questions'] == 0
    assert stats['blind_prior']['accuracy'] == pytest.approx(hits / len(raw['test']))
    assert stats['majority_baseline']['accuracy'] < stats['blind_prior']['accuracy'] < 1


@pytest.mark.real_assets
def test_real_failure_mid_write_leaves_no_out_dir(real, tmp_path, monkeypatch):
    write = easy_vqa._write_json

    def failing(path, obj):
        if path.name == 'test.json':
            raise OSError('disk full (injected)')
        write(path, obj)
    monkeypatch.setattr(easy_vqa, '_write_json', failing)
    out = tmp_path / 'easy_vqa'
    with pytest.raises(OSError, match='injected'):
        convert_easy_vqa(real['wheel'], out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too
