"""Tiny CoLVA data for the tiny CPU twins: an SA-1B-format folder and MMVMData-format SFT files, drawn in numpy.

    ROOT/colva/sa1b/sa_<n>.jpg + sa_<n>.json          SA-1B layout, COCO RLE masks (pre-training twin)
    ROOT/colva/mmvm_sft/images/pair_<n>_{0,1}.png     image 1 (query), image 2 (candidates)
    ROOT/colva/mmvm_sft/match_choices.json            MMVMData choice-only records
    ROOT/colva/mmvm_sft/match_reasoning.json          MMVMData reasoning records (with ``description``)

Objects are coloured disks and squares on a noisy background, large enough to survive the twins' small expert
grid (8×8 at 128 px) after augmentation. In an SFT pair the query object reappears in image 2 (same shape and
colour, moved) unless the record says ``is_disappear``; the other candidates differ in colour or shape. The real-
photo sets (``data/prepare_real.py --only sa1b_mini mmvm_sft_mini``) are the realistic counterpart; these exist so
the twins need nothing beyond ``tools/build_tiny_assets.py``. Deterministic for a seed; a build goes to a
temporary sibling and is renamed into place, with a stamp of its parameters.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['build_tiny_colva_data', 'tiny_colva_paths']

_VERSION = 1
_STAMP = '.complete'
_SIZE = 64
_COLOURS = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 20), (200, 60, 200), (20, 200, 200)]


def tiny_colva_paths(root: str | Path) -> dict[str, Path]:
    base = Path(root) / 'colva'
    return dict(root=base, sa1b=base / 'sa1b', mmvm_sft=base / 'mmvm_sft',
                choices=base / 'mmvm_sft' / 'match_choices.json',
                reasoning=base / 'mmvm_sft' / 'match_reasoning.json')


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _shape_mask(kind: str, cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:_SIZE, :_SIZE]
    if kind == 'disk':
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)


def _canvas(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(90, 160, size=3)
    return np.clip(base + rng.normal(0, 12, (_SIZE, _SIZE, 3)), 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, n: int, taken: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """n centres on a 3×3 lattice of the image (jittered), never two in one cell."""
    cells = [(x, y) for y in range(3) for x in range(3) if taken is None or (x, y) not in taken]
    pick = rng.choice(len(cells), size=n, replace=False)
    return [cells[int(i)] for i in pick]


def _centre(cell: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    step = _SIZE // 3
    jx, jy = (int(v) for v in rng.integers(-2, 3, size=2))
    return cell[0] * step + step // 2 + jx, cell[1] * step + step // 2 + jy


def _draw(canvas: np.ndarray, objects: list[tuple[str, tuple[int, int, int], tuple[int, int], int]]
          ) -> tuple[np.ndarray, list[np.ndarray]]:
    out = canvas.copy()
    masks = []
    for kind, colour, (cx, cy), r in objects:
        m = _shape_mask(kind, cx, cy, r)
        out[m] = colour
        masks.append(m)
    return out, masks


def _write_sa1b(folder: Path, rng: np.random.Generator, num_images: int) -> None:
    folder.mkdir(parents=True)
    for n in range(1, num_images + 1):
        k = int(rng.integers(3, 6))
        cells = _place(rng, k)
        objs = [(('disk', 'square')[int(rng.integers(2))], _COLOURS[int(rng.integers(len(_COLOURS)))],
                 _centre(c, rng), int(rng.integers(8, 11))) for c in cells]
        image, masks = _draw(_canvas(rng), objs)
        Image.fromarray(image).save(folder / f'sa_{n}.jpg', quality=95)
        anns = []
        for i, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            anns.append(dict(id=n * 100 + i, segmentation=_rle(m), area=int(m.sum()),
                             bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]))
        doc = dict(image=dict(image_id=n, width=_SIZE, height=_SIZE, file_name=f'sa_{n}.jpg'), annotations=anns)
        (folder / f'sa_{n}.json').write_text(json.dumps(doc))


def _write_mmvm_sft(folder: Path, rng: np.random.Generator, num_pairs: int) -> tuple[list, list]:
    (folder / 'images').mkdir(parents=True)
    choices, reasoning = [], []
    for n in range(num_pairs):
        kind = ('disk', 'square')[n % 2]
        colour = _COLOURS[n % len(_COLOURS)]
        r = int(rng.integers(8, 11))
        img1, (query,) = _draw(_canvas(rng), [(kind, colour, _centre(_place(rng, 1)[0], rng), r)])
        disappear = n % 4 == 3
        num_others = int(rng.integers(1, 4))
        cells = _place(rng, num_others + (0 if disappear else 1))
        others = []
        for i in range(num_others):  # another colour, or the other shape in the same colour
            if i % 2 == 0:
                other_colour = _COLOURS[(n + 1 + i) % len(_COLOURS)]
                others.append((kind, other_colour, _centre(cells[i], rng), r))
            else:
                others.append((('square', 'disk')[n % 2], colour, _centre(cells[i], rng), r))
        objs = ([] if disappear else [(kind, colour, _centre(cells[-1], rng), r)]) + others
        img2, masks2 = _draw(_canvas(rng), objs)
        names = [f'images/pair_{n}_0.png', f'images/pair_{n}_1.png']
        Image.fromarray(img1).save(folder / names[0])
        Image.fromarray(img2).save(folder / names[1])
        target = [] if disappear else [_rle(masks2[0])]
        negatives = [_rle(m) for m in (masks2 if disappear else masks2[1:])]
        record = dict(file_names=names, pos_annotations=[[_rle(query)], target], neg_annotations=[[], negatives],
                      is_disappear=disappear, vprompt_type='mask', id=f'tiny_pair_{n}')
        choices.append(record)
        why = ('the object is not in the second image: every candidate differs in shape or colour' if disappear
               else f'the {kind} keeps its colour and shape; only its position changed')
        reasoning.append({**record, 'id': f'tiny_pair_{n}_why', 'description': why})
    return choices, reasoning


def build_tiny_colva_data(root: str | Path, force: bool = False, *, seed: int = 0, num_sa1b: int = 48,
                          num_pairs: int = 16) -> dict[str, Path]:
    """Build (or reuse) ``ROOT/colva`` (module docstring) and return its paths."""
    paths = tiny_colva_paths(Path(root).absolute())
    out = paths['root']
    stamp = json.dumps(dict(version=_VERSION, seed=seed, num_sa1b=num_sa1b, num_pairs=num_pairs, size=_SIZE))
    if not force and (out / _STAMP).is_file() and (out / _STAMP).read_text() == stamp:
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f'.colva.building-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        tmp.mkdir()
        rng = np.random.default_rng(seed)
        _write_sa1b(tmp / 'sa1b', rng, num_sa1b)
        choices, reasoning = _write_mmvm_sft(tmp / 'mmvm_sft', rng, num_pairs)
        (tmp / 'mmvm_sft' / 'match_choices.json').write_text(json.dumps(choices))
        (tmp / 'mmvm_sft' / 'match_reasoning.json').write_text(json.dumps(reasoning))
        (tmp / _STAMP).write_text(stamp)
        if out.exists():
            old = out.parent / f'.colva.old-{uuid.uuid4().hex[:8]}'
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
