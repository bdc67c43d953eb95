"""A real-photo MMVM mini bench in the released layout (:mod:`mllm_align.data.mmvm`), answers known by construction.

Sources, read from the pinned scikit-image wheel (never installed): ``coins.png`` (a real photograph of 24
coins; each coin cut out by its mask — Gaussian-smoothed intensity > 120, opened, holes filled, components of
800–2,000 px: one coin each, 21 of them) and seven real photos as backgrounds (astronaut, coffee, chelsea,
rocket, brick, grass, gravel). ``python data/prepare_real.py --only mmvm_mini`` writes it to
``data/real/mmvm_mini``.

Each case (``seed``-deterministic; byte-identical for the same seed and library versions):

- ``FRAME00``: a background with the query coin pasted (scale 0.9–1.3), its contour drawn in cyan;
- ``FRAME01_CAND``: another background with k candidates (k cycles through 2, 3, 4, 6, 8, 10, 12) on a
  non-overlapping layout, drawn by :mod:`mllm_align.data.visual_prompts` (each its own contour colour, a
  white numeric ID on that colour at its centroid; IDs 1..k in random order over the positions). With
  probability 0.8 one candidate is the query coin itself, barely changed (rotation ±5°, scale ×0.95–1.05);
  the others are distractors, each of a kind whose cue the case then tests: another coin (TM:
  texture/markings), the query coin recoloured (CL), rotated by 60–300° (OO) or rescaled ×0.55 / ×1.7 (SZ).
  Without the query coin the answer is the last option, "None of the above choices are correct";
- ``*_ORI.jpg`` the same images clean; ``FRAME00.json`` / ``FRAME01_CAND.json`` the masks (COCO RLE, the
  candidates in ID order);
- a TSV row: the benchmark's question text with options ``A. 1 … `` and the none option, the answer letter,
  ``match_type`` the sorted ids of the distractor kinds present, the two image paths.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data.visual_prompts import assign_ids, draw_candidates, draw_query, options_for_ids
from ..metrics.mmvm import MATCH_TYPES

__all__ = ['BACKGROUNDS', 'MMVM_QUESTION', 'SKIMAGE_MEMBERS', 'build_mmvm_mini', 'coin_objects']

BACKGROUNDS = ('astronaut.png', 'coffee.png', 'chelsea.png', 'rocket.jpg', 'brick.png', 'grass.png', 'gravel.png')
SKIMAGE_MEMBERS = ('coins.png',) + BACKGROUNDS
#: The benchmark's question (its evaluation kit's wording), followed by the options.
MMVM_QUESTION = ("Here are two images. In the second image, I have marked several visual objects with their contours "
                 "in different colors, and each is identified by a white numeric ID against a background that "
                 "matches the contour's color. Could you please tell me which of these marked objects is the same "
                 "as the object marked with a cyan contour in the first image? Please make a choice from the "
                 "following options: \n")
CANVAS = (448, 336)
CANDIDATE_COUNTS = (2, 3, 4, 6, 8, 10, 12)
KINDS = {'TM': 3, 'CL': 1, 'OO': 6, 'SZ': 4}  # distractor kind -> match_type id (1-based in MATCH_TYPES)
assert all(MATCH_TYPES[i - 1] == k for k, i in KINDS.items())


@dataclass
class _Obj:
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool


def coin_objects(coins_png: bytes) -> list[_Obj]:
    """The coins of scikit-image's ``coins.png``, each cropped to its mask's box (module docstring)."""
    from scipy import ndimage as ndi

    gray = np.asarray(Image.open(io.BytesIO(coins_png)).convert('L'))
    fg = ndi.binary_fill_holes(ndi.binary_opening(ndi.gaussian_filter(gray.astype(float), 2) > 120, iterations=2))
    labels, n = ndi.label(fg)
    out = []
    for k, box in enumerate(ndi.find_objects(labels), 1):
        mask = labels[box] == k
        if not 800 <= mask.sum() <= 2000:  # one coin (two touching coins are larger)
            continue
        rgb = np.repeat(gray[box][..., None], 3, axis=2)
        out.append(_Obj(rgb, mask))
    if len(out) < 13:
        raise ValueError(f'coins.png gave {len(out)} single coins, fewer than the 13 a 12-candidate case needs '
                         '(is this the pinned scikit-image 0.25.2?).')
    return out


def _transform(obj: _Obj, scale: float = 1.0, angle: float = 0.0, tint: Sequence[float] | None = None) -> _Obj:
    h, w = obj.mask.shape
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    rgb = Image.fromarray(obj.rgb).resize(size, Image.BICUBIC)
    mask = Image.fromarray(obj.mask.astype(np.uint8) * 255).resize(size, Image.BILINEAR)
    if angle:
        rgb = rgb.rotate(angle, resample=Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, resample=Image.BILINEAR, expand=True)
    arr = np.asarray(rgb).astype(np.float32)
    if tint is not None:
        arr = np.clip(arr * np.asarray(tint, np.float32), 0, 255)
    m = np.asarray(mask) > 127
    ys, xs = np.nonzero(m)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return _Obj(arr.astype(np.uint8)[crop], m[crop])


def _background(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    im = image.convert('RGB')
    w, h = im.size
    cw, ch = CANVAS
    scale = max(cw / w, ch / h) * rng.uniform(1.0, 1.3)
    im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    x0 = int(rng.integers(0, im.width - cw + 1))
    y0 = int(rng.integers(0, im.height - ch + 1))
    return np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch))).copy()


def _layout(sizes: Sequence[tuple[int, int]], rng: np.random.Generator, margin: int = 14) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping boxes (with room for the ID tag) on the canvas."""
    cw, ch = CANVAS
    for _attempt in range(200):
        placed: list[tuple[int, int, int, int]] = []
        for w, h in sizes:
            for _ in range(300):
                x = int(rng.integers(margin, cw - w - 2))
                y = int(rng.integers(margin + 6, ch - h - 2))
                box = (x - margin, y - margin - 6, x + w + margin, y + h + margin)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
                    placed.append(box)
                    break
            else:
                break
        if len(placed) == len(sizes):
            return [(b[0] + margin, b[1] + margin + 6) for b in placed]
    raise ValueError(f'could not lay out {len(sizes)} objects on a {cw}×{ch} canvas')


def _candidates(query: _Obj, coins: Sequence[_Obj], others: Sequence[int], present: bool, k: int,
                rng: np.random.Generator) -> tuple[list[_Obj], list[str]]:
    """The ``k`` candidate objects of a case and the distractor kind of each non-match (in draw order).

    With ``present``, the match comes first: the query again, rescaled by ±5 % and turned by ±5°. Each distractor is
    ``TM`` another coin (``others`` in turn), ``CL`` the query recoloured, ``OO`` the query turned by 60–300°, or
    ``SZ`` the query at 0.55× or 1.7×.
    """
    objs, kinds = [], []
    if present:
        objs.append(_transform(query, scale=float(rng.uniform(0.95, 1.05)), angle=float(rng.uniform(-5, 5))))
    other = iter(others)
    while len(objs) < k:
        kind = str(rng.choice(list(KINDS)))
        kinds.append(kind)
        if kind == 'TM':
            objs.append(_transform(coins[next(other)], scale=float(rng.uniform(0.9, 1.3)),
                                   angle=float(rng.uniform(0, 360))))
        elif kind == 'CL':
            objs.append(_transform(query, tint=tuple(float(x) for x in rng.uniform(0.35, 1.4, size=3))))
        elif kind == 'OO':
            objs.append(_transform(query, angle=float(rng.uniform(60, 300))))
        else:
            objs.append(_transform(query, scale=float(rng.choice([0.55, 1.7]))))
    return objs, kinds


def _paste(canvas: np.ndarray, obj: _Obj, xy: tuple[int, int]) -> np.ndarray:
    """Paste; return the object's full-canvas mask."""
    x, y = xy
    h, w = obj.mask.shape
    region = canvas[y:y + h, x:x + w]
    region[obj.mask] = obj.rgb[obj.mask]
    full = np.zeros(canvas.shape[:2], bool)
    full[y:y + h, x:x + w] = obj.mask
    return full


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _save(canvas: np.ndarray, path: Path) -> None:
    # 4:4:4 chroma: the thin coloured contours keep their colour
    Image.fromarray(canvas).save(path, format='JPEG', quality=92, subsampling=0)


def build_mmvm_mini(members: dict[str, bytes], out_dir: str | Path, num_cases: int = 28, seed: int = 0) -> dict:
    """Write ``num_cases`` cases under ``out_dir`` (``match_bench/`` + ``mllm_match_eval_full.tsv``); returns the
    manifest (also ``manifest.json``): counts per category and per candidate count, answers per letter."""
    missing = [m for m in SKIMAGE_MEMBERS if m not in members]
    if missing:
        raise KeyError(f'build_mmvm_mini: missing scikit-image data files {missing}.')
    if num_cases < 1:
        raise ValueError(f'num_cases={num_cases}: build at least one case.')
    out_dir = Path(out_dir)
    coins = coin_objects(members['coins.png'])
    backgrounds = [Image.open(io.BytesIO(members[name])) for name in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    rows, per_type = [], {t: 0 for t in MATCH_TYPES}
    answers: dict[str, int] = {}
    for c in range(num_cases):
        k = CANDIDATE_COUNTS[c % len(CANDIDATE_COUNTS)]
        if k + 1 > 26:
            raise ValueError(f'case {c}: {k} candidates need more than 25 option letters.')
        name = f'case_{c:03d}'
        case_dir = out_dir / 'match_bench' / name
        case_dir.mkdir(parents=True, exist_ok=True)
        q_index, *others = [int(i) for i in rng.permutation(len(coins))]
        query = _transform(coins[q_index], scale=float(rng.uniform(0.9, 1.3)), angle=float(rng.uniform(0, 360)))
        b0, b1 = (int(i) for i in rng.choice(len(backgrounds), size=2, replace=False))
        # FRAME00: the query
        frame0 = _background(backgrounds[b0], rng)
        (qx, qy), = _layout([query.mask.shape[::-1]], rng, margin=30)
        qmask = _paste(frame0, query, (qx, qy))
        _save(frame0, case_dir / 'FRAME00_ORI.jpg')
        _save(np.asarray(draw_query(Image.fromarray(frame0), qmask, 'cyan')), case_dir / 'FRAME00.jpg')
        (case_dir / 'FRAME00.json').write_text(json.dumps({'width': CANVAS[0], 'height': CANVAS[1], 'objects': [
            {'id': 0, 'segmentation': _rle(qmask)}]}))
        # FRAME01: candidates
        present = bool(rng.random() < 0.8)
        objs, drawn = _candidates(query, coins, others, present, k, rng)
        kinds = set(drawn)
        ids = assign_ids(k, rng)  # ids[j]: the tag of object j
        frame1 = _background(backgrounds[b1], rng)
        corners = _layout([o.mask.shape[::-1] for o in objs], rng)
        masks = [_paste(frame1, o, xy) for o, xy in zip(objs, corners)]
        _save(frame1, case_dir / 'FRAME01_ORI.jpg')
        _save(np.asarray(draw_candidates(Image.fromarray(frame1), masks, ids, 'cyan')), case_dir / 'FRAME01_CAND.jpg')
        by_id = sorted(range(k), key=lambda j: ids[j])
        (case_dir / 'FRAME01_CAND.json').write_text(json.dumps({'width': CANVAS[0], 'height': CANVAS[1], 'objects': [
            {'id': ids[j], 'segmentation': _rle(masks[j])} for j in by_id]}))
        options = options_for_ids(k)
        letters = list(options)
        choices = '\n'.join(f'{letter}. {text}' for letter, text in options.items())
        answer = letters[ids[0] - 1] if present else letters[k]
        types = sorted(KINDS[x] for x in kinds)
        for t in types:
            per_type[MATCH_TYPES[t - 1]] += 1
        answers[answer] = answers.get(answer, 0) + 1
        rows.append(dict(index=c, question=MMVM_QUESTION + choices + '\n', answer=answer, match_type=str(types),
                         image_path=str([f'match_bench/{name}/FRAME00.jpg', f'match_bench/{name}/FRAME01_CAND.jpg']),
                         choices=choices, pure_question=MMVM_QUESTION.rstrip(), choices_head=', '.join(letters),
                         num_candidates=k, query_present=int(present)))
    with (out_dir / 'mllm_match_eval_full.tsv').open('w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter='\t', lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)
    manifest = dict(cases=num_cases, seed=seed, per_type=per_type, answers=dict(sorted(answers.items())),
                    candidates={str(n): sum(r['num_candidates'] == n for r in rows) for n in CANDIDATE_COUNTS},
                    query_absent=sum(not r['query_present'] for r in rows),
                    sources='scikit-image 0.25.2: coins.png (objects), ' + ', '.join(BACKGROUNDS) + ' (backgrounds)')
    (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    return manifest
