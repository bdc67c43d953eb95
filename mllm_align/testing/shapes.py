"""A tiny, deterministic "shapes" vision-language dataset with real PNG images.

Each image (64×64 by default) shows one or two coloured shapes on a plain or lightly noised light
background. The image is split into a 3×3 grid; a shape sits in one of five cells::

    +--------+--------+--------+
    |        |  top   |        |
    +--------+--------+--------+
    |  left  | center | right  |
    +--------+--------+--------+
    |        | bottom |        |
    +--------+--------+--------+

so two shapes never overlap and every caption is exactly true of its image ("a red circle on the
left."). The generator writes, under ``out_dir``::

    images/train_000000.png …   training images (pre-training and SFT)
    images/eval_000000.png …    held-out images (evaluation only)
    pretrain.json               LLaVA pre-training format: <image> → caption
    sft.json, sft.jsonl         LLaVA SFT format: multi-turn Q&A about colour/shape/position/count,
                                ~10 % text-only samples, a few two-image samples
    eval.json                   held-out images, one-word answers (LLaVA format + `answer`,
                                `category` keys)
    annotations.json            what was drawn: {image path: [{shape, color, position, bbox}]}

Everything is a function of ``seed`` and the sizes: rebuilding gives byte-identical files.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle', 'star')
COLORS: dict[str, tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'green': (30, 170, 40),
    'blue': (30, 60, 220),
    'yellow': (235, 205, 20),
    'purple': (140, 40, 170),
    'orange': (245, 130, 20),
}
# position name → (column, row) of its cell in the 3×3 grid
POSITIONS: dict[str, tuple[int, int]] = {
    'left': (0, 1),
    'right': (2, 1),
    'top': (1, 0),
    'bottom': (1, 2),
    'center': (1, 1),
}
POSITION_PHRASES: dict[str, str] = {
    'left': 'on the left',
    'right': 'on the right',
    'top': 'at the top',
    'bottom': 'at the bottom',
    'center': 'in the center',
}
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five')

# Files written by `generate_shapes`, relative to its output directory.
PRETRAIN_JSON = 'pretrain.json'
SFT_JSON = 'sft.json'
SFT_JSONL = 'sft.jsonl'
EVAL_JSON = 'eval.json'
ANNOTATIONS_JSON = 'annotations.json'
IMAGE_DIR = 'images'


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape. ``bbox`` is (x0, y0, x1, y1) in pixels, inclusive-exclusive."""

    shape: str
    color: str
    position: str
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapesFiles:
    """Paths written by `generate_shapes`; the JSONs' ``image`` fields are relative to ``root``."""

    root: Path
    image_folder: Path
    pretrain_json: Path
    sft_json: Path
    sft_jsonl: Path
    eval_json: Path
    annotations_json: Path
    num_train_images: int
    num_eval_images: int


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def _star_points(cx: float, cy: float, r_out: float, r_in: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        ang = -np.pi / 2 + k * np.pi / 5  # first point straight up
        pts.append((cx + r * np.cos(ang), cy + r * np.sin(ang)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, bbox: tuple[int, int, int, int],
                fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = bbox
    # PIL's boxes are inclusive of (x1, y1); ours are exclusive.
    box = (x0, y0, x1 - 1, y1 - 1)
    if shape == 'circle':
        draw.ellipse(box, fill=fill)
    elif shape == 'square':
        draw.rectangle(box, fill=fill)
    elif shape == 'triangle':
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    elif shape == 'star':
        cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0 - 1) / 2
        draw.polygon(_star_points(cx, cy, r, 0.45 * r), fill=fill)
    else:
        raise ValueError(f'Unknown shape {shape!r}; expected one of {SHAPES}.')


def cell_box(position: str, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a position's grid cell in an ``image_size`` square image."""
    if position not in POSITIONS:
        raise ValueError(f'Unknown position {position!r}; expected one of {tuple(POSITIONS)}.')
    col, row = POSITIONS[position]
    edges = [round(i * image_size / 3) for i in range(4)]
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def _sample_objects(rng: random.Random, num_objects: int, image_size: int) -> list[ShapeObject]:
    positions = rng.sample(list(POSITIONS), num_objects)
    objects = []
    for position in positions:
        cx0, cy0, cx1, cy1 = cell_box(position, image_size)
        cell = min(cx1 - cx0, cy1 - cy0)
        size = max(4, round(cell * rng.uniform(0.6, 0.85)))
        slack = cell - size
        x0 = cx0 + rng.randint(0, slack)
        y0 = cy0 + rng.randint(0, slack)
        objects.append(ShapeObject(shape=rng.choice(SHAPES), color=rng.choice(list(COLORS)),
                                   position=position, bbox=(x0, y0, x0 + size, y0 + size)))
    return objects


def render_scene(objects: list[ShapeObject], image_size: int, rng: random.Random) -> Image.Image:
    """Draw ``objects`` on a light background: plain, or with light Gaussian noise (σ = 6)."""
    level = rng.randint(215, 250)
    background = np.full((image_size, image_size, 3), level, dtype=np.float32)
    if rng.random() < 0.5:
        noise_rng = np.random.default_rng(rng.getrandbits(32))
        background += noise_rng.normal(0.0, 6.0, size=background.shape).astype(np.float32)
    image = Image.fromarray(np.clip(background, 0, 255).round().astype(np.uint8), mode='RGB')
    draw = ImageDraw.Draw(image)
    for obj in objects:
        jitter = [rng.randint(-12, 12) for _ in range(3)]
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter))
        _draw_shape(draw, obj.shape, obj.bbox, fill)
    return image


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------
def _a(word: str) -> str:
    """'a red', 'an orange'."""
    return ('an ' if word[0] in 'aeiou' else 'a ') + word


def describe(obj: ShapeObject) -> str:
    """'a red circle on the left', 'an orange star at the top'."""
    return f'{_a(obj.color)} {obj.shape} {POSITION_PHRASES[obj.position]}'


def caption(objects: list[ShapeObject]) -> str:
    """'a red circle on the left.' or 'a red circle on the left and a blue star at the top.'"""
    return ' and '.join(describe(o) for o in objects) + '.'


def _qa_pool(objects: list[ShapeObject], rng: random.Random) -> list[tuple[str, str]]:
    """Question/answer pairs that are true of this image."""
    qa: list[tuple[str, str]] = []
    n = len(objects)
    qa.append((rng.choice(['Describe the image briefly.', 'What do you see in the image?',
                          'Give a short caption for this image.']),
               caption(objects).capitalize()))
    qa.append((rng.choice(['How many shapes are there?', 'How many shapes are in the image?',
                          'Count the shapes in the image. Answer with one word.']),
               NUMBER_WORDS[n]))
    if n == 1:
        (obj,) = objects
        qa.append((rng.choice(['What colour is the shape?', 'What is the colour of the shape?',
                              'What colour is the shape? Answer with one word.']), obj.color))
        qa.append((rng.choice(['What shape is it?', 'What kind of shape is shown?',
                              'What shape is in the image? Answer with one word.']), obj.shape))
        qa.append((rng.choice(['Where is the shape?', 'Where is the shape in the image?']),
                   f'It is {POSITION_PHRASES[obj.position]}.'))
        qa.append(('Where is the shape? Answer with one word.', obj.position))
    else:
        for obj in objects:
            where = POSITION_PHRASES[obj.position]
            qa.append((f'What colour is the shape {where}?', obj.color))
            qa.append((f'What shape is {where}?', f'a {obj.shape}'))
        other_color = rng.choice([c for c in COLORS if c not in {o.color for o in objects}])
        asked = rng.choice([objects[0].color, other_color])
        present = asked in {o.color for o in objects}
        qa.append((f'Is there {_a(asked)} shape in the image?', 'yes' if present else 'no'))
    return qa


_TEXT_ONLY_QA: list[tuple[str, str]] = [
    ('How many sides does a triangle have?', 'three'),
    ('How many sides does a square have?', 'four'),
    ('How many corners does a square have?', 'four'),
    ('How many points does a star have?', 'five'),
    ('Which shape has no corners?', 'a circle'),
    ('Which shape has three corners?', 'a triangle'),
    ('Which shape has five points?', 'a star'),
    ('What colour do you get when you mix blue and yellow?', 'green'),
    ('What colour do you get when you mix red and yellow?', 'orange'),
    ('What colour do you get when you mix red and blue?', 'purple'),
    ('What colour is the sky on a clear day?', 'blue'),
    ('What colour is grass?', 'green'),
    ('What colour is a banana?', 'yellow'),
    ('Is a circle round?', 'yes'),
    ('Is a square round?', 'no'),
    ('Name a shape with four equal sides.', 'a square'),
    ('What is two plus one? Answer with one word.', 'three'),
    ('What is one plus one? Answer with one word.', 'two'),
    ('Say hello.', 'Hello!'),
    ('Which word means the opposite of left?', 'right'),
    ('Which word means the opposite of top?', 'bottom'),
]


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
def _conv(turns: list[tuple[str, str]], num_images: int) -> list[dict[str, str]]:
    conversations = []
    for i, (q, a) in enumerate(turns):
        if i == 0 and num_images:
            q = '<image>\n' * num_images + q
        conversations.append({'from': 'human', 'value': q})
        conversations.append({'from': 'gpt', 'value': a})
    return conversations


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')


def generate_shapes(out_dir: str | Path,
                    *,
                    num_train: int = 600,
                    num_eval: int = 100,
                    image_size: int = 64,
                    seed: int = 0,
                    two_object_ratio: float = 0.25,
                    text_only_ratio: float = 0.1,
                    num_two_image: int = 24) -> ShapesFiles:
    """Write the shapes dataset under ``out_dir`` (created if missing; existing files overwritten).

    Args:
        out_dir: output directory; the JSONs' ``image`` fields are relative to it.
        num_train: training images; each gives one pre-training and one SFT sample.
        num_eval: held-out images for ``eval.json`` (never in pre-training or SFT).
        image_size: side of the square images in pixels (≥ 24).
        seed: everything is a function of it.
        two_object_ratio: fraction of images with two shapes (the rest have one).
        text_only_ratio: text-only SFT samples as a fraction of all SFT samples.
        num_two_image: SFT samples with two images ("which image shows a red shape?").

    Returns:
        ShapesFiles with the written paths.

    Raises:
        ValueError: on sizes that cannot produce a valid dataset.
    """
    if image_size < 24:
        raise ValueError(f'image_size={image_size} is too small to draw shapes; use at least 24.')
    if num_train < 2 or num_eval < 1:
        raise ValueError(f'Need num_train >= 2 and num_eval >= 1, got {num_train}, {num_eval}.')
    if not 0 <= text_only_ratio < 1:
        raise ValueError(f'text_only_ratio must be in [0, 1), got {text_only_ratio}.')
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def make_images(split: str, count: int) -> list[tuple[str, list[ShapeObject]]]:
        items = []
        for i in range(count):
            n = 2 if rng.random() < two_object_ratio else 1
            objects = _sample_objects(rng, n, image_size)
            rel = f'{IMAGE_DIR}/{split}_{i:06d}.png'
            render_scene(objects, image_size, rng).save(out / rel, format='PNG', optimize=False)
            items.append((rel, objects))
        return items

    train = make_images('train', num_train)
    evals = make_images('eval', num_eval)

    # Pre-training: image → caption; the human turn is the bare placeholder.
    pretrain = [{'id': Path(rel).stem, 'image': rel,
                 'conversations': [{'from': 'human', 'value': '<image>'},
                                   {'from': 'gpt', 'value': caption(objs)}]}
                for rel, objs in train]

    # SFT: multi-turn Q&A per image, text-only samples, two-image samples.
    sft: list[dict] = []
    for rel, objs in train:
        pool = _qa_pool(objs, rng)
        turns = rng.sample(pool, k=min(len(pool), rng.randint(2, 4)))
        sft.append({'id': Path(rel).stem, 'image': rel, 'conversations': _conv(turns, 1)})
    for k in range(num_two_image):
        for _ in range(100):  # find a colour present in exactly one of two images
            (rel_a, objs_a), (rel_b, objs_b) = rng.sample(train, 2)
            colors_a, colors_b = {o.color for o in objs_a}, {o.color for o in objs_b}
            only = sorted(colors_a ^ colors_b)
            if only:
                break
        else:  # pragma: no cover - impossible with six colours and ≥ 2 images
            raise RuntimeError('Could not find two images with different colours.')
        color = rng.choice(only)
        which = 'first' if color in colors_a else 'second'
        turns = [(f'Which image shows {_a(color)} shape? Answer first or second.', which),
                 ('How many shapes are there in the two images together?',
                  NUMBER_WORDS[len(objs_a) + len(objs_b)])]
        sft.append({'id': f'pair_{k:06d}', 'image': [rel_a, rel_b],
                    'conversations': _conv(turns[:rng.randint(1, 2)], 2)})
    num_text = round(text_only_ratio * len(sft) / (1 - text_only_ratio))
    for k in range(num_text):
        turns = rng.sample(_TEXT_ONLY_QA, k=rng.randint(1, 2))
        sft.append({'id': f'text_{k:06d}', 'conversations': _conv(turns, 0)})
    rng.shuffle(sft)

    # Evaluation: held-out images, one-word answers.
    suffix = ' Answer with one word.'
    eval_records: list[dict] = []
    for rel, objs in evals:
        if len(objs) == 1:
            (obj,) = objs
            questions = [('color', 'What colour is the shape?', obj.color),
                         ('shape', 'What shape is in the image?', obj.shape),
                         ('position', 'Where is the shape?', obj.position)]
        else:
            obj = rng.choice(objs)
            questions = [('count', 'How many shapes are there?', NUMBER_WORDS[len(objs)]),
                         ('color', f'What colour is the shape {POSITION_PHRASES[obj.position]}?',
                          obj.color)]
        for category, question, answer in questions:
            eval_records.append({
                'id': f'{Path(rel).stem}_{category}', 'image': rel,
                'conversations': _conv([(question + suffix, answer)], 1),
                'answer': answer, 'category': category})

    annotations = {rel: [asdict(o) for o in objs] for rel, objs in train + evals}

    files = ShapesFiles(root=out, image_folder=out, pretrain_json=out / PRETRAIN_JSON,
                        sft_json=out / SFT_JSON, sft_jsonl=out / SFT_JSONL,
                        eval_json=out / EVAL_JSON, annotations_json=out / ANNOTATIONS_JSON,
                        num_train_images=num_train, num_eval_images=num_eval)
    _write_json(files.pretrain_json, pretrain)
    _write_json(files.sft_json, sft)
    files.sft_jsonl.write_text(
        ''.join(json.dumps(s, ensure_ascii=False) + '\n' for s in sft), encoding='utf-8')
    _write_json(files.eval_json, eval_records)
    _write_json(files.annotations_json, annotations)
    return files


def corpus_texts(*json_paths: str | Path) -> list[str]:
    """Every conversation turn in LLaVA JSON files, ``<image>`` placeholders removed.

    Used to train the tiny tokenizers so their vocabulary covers the dataset's text.
    """
    texts = []
    for path in json_paths:
        for sample in json.loads(Path(path).read_text(encoding='utf-8')):
            for turn in sample['conversations']:
                text = turn['value'].replace('<image>', '').strip()
                if text:
                    texts.append(text)
    return texts
