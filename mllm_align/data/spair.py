"""SPair-71k pairs (Min et al., 2019) in the released directory layout, for the C score.

    <root>/JPEGImages/<category>/<name>.jpg
    <root>/ImageAnnotation/<category>/<name>.json     kps {"0".."29": [x, y] | null}, bndbox, image_width/height
    <root>/PairAnnotation/{trn,val,test}/<pair id>-<src>-<trg>:<category>.json
        src_imname, trg_imname, category, src_kps / trg_kps ([[x, y], …], mutually visible, in kps_ids order),
        kps_ids, src_bndbox / trg_bndbox ([x1, y1, x2, y2]), src_imsize / trg_imsize ([W, H, channels])

A pair file without ``src_kps`` / ``trg_kps`` is completed from the two image annotations (the keypoints
annotated in both). The 18 categories are :data:`SPAIR_CATEGORIES`; ``data/real/correspondence`` (real photo
pairs with ground-truth correspondences) and ``data/tiny/spair`` (synthetic) use the same layout.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ['SPAIR_CATEGORIES', 'SPAIR_SPLITS', 'SPairPair', 'load_spair_pairs']

SPAIR_CATEGORIES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'dog',
                    'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'train', 'tvmonitor')
SPAIR_SPLITS = ('trn', 'val', 'test')


@dataclass(frozen=True)
class SPairPair:
    """One annotated pair. Keypoints ``[N, 2]`` (x, y) in original pixels; ``visible [N]``: annotated in both."""

    pair_id: str
    category: str
    src_image: Path
    trg_image: Path
    kps_src: np.ndarray
    kps_trg: np.ndarray
    visible: np.ndarray
    size_src: tuple[int, int]
    size_trg: tuple[int, int]
    bbox_src: tuple[float, float, float, float]
    bbox_trg: tuple[float, float, float, float]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f'SPair {what} {path} is missing: the directory is incomplete (re-extract '
                                'SPair-71k, or re-run the script that wrote it).')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'SPair {what} {path} is not valid JSON ({err.msg}, line {err.lineno}).') from None


def _field(ann: dict, key: str, path: Path):
    if key not in ann:
        raise ValueError(f'SPair annotation {path} has no `{key}` field (keys: {sorted(ann)}).')
    return ann[key]


def _image_size(ann: dict, key: str, path: Path, image_ann: dict) -> tuple[int, int]:
    size = ann.get(key)
    if size is not None:
        return int(size[0]), int(size[1])
    return int(_field(image_ann, 'image_width', path)), int(_field(image_ann, 'image_height', path))


def _keypoints_from_images(src_ann: dict, trg_ann: dict, src_path: Path, trg_path: Path) -> tuple[np.ndarray, ...]:
    src_kps, trg_kps = _field(src_ann, 'kps', src_path), _field(trg_ann, 'kps', trg_path)
    ids = sorted(set(src_kps) | set(trg_kps), key=lambda k: int(k))
    both = [k for k in ids if src_kps.get(k) is not None and trg_kps.get(k) is not None]
    ks = np.array([src_kps[k] for k in both], dtype=np.float64).reshape(-1, 2)
    kt = np.array([trg_kps[k] for k in both], dtype=np.float64).reshape(-1, 2)
    return ks, kt


def load_spair_pairs(root: str | os.PathLike, split: str = 'test', categories: Sequence[str] | None = None,
                     limit: int | None = None) -> list[SPairPair]:
    """The pairs of one split, sorted by file name (deterministic), optionally for some categories only.

    Args:
        root: the SPair-71k directory (holding ``JPEGImages``, ``ImageAnnotation``, ``PairAnnotation``).
        split: ``'trn'``, ``'val'`` or ``'test'``.
        categories: category names to keep (default: all that have pairs).
        limit: at most this many pairs (after the category filter), the first ones in file order.

    Raises:
        FileNotFoundError: the root, the split's folder, a pair's image or image annotation is missing.
        ValueError: an unknown split, a malformed annotation (file named), a category with no pair.
    """
    root = Path(root)
    if split not in SPAIR_SPLITS:
        raise ValueError(f'split={split!r}: SPair-71k splits are {SPAIR_SPLITS}.')
    pair_dir = root / 'PairAnnotation' / split
    if not pair_dir.is_dir():
        raise FileNotFoundError(f'{pair_dir} does not exist: {root} is not an SPair-71k directory (it needs '
                                'JPEGImages/, ImageAnnotation/ and PairAnnotation/{trn,val,test}/).')
    files = sorted(pair_dir.glob('*.json'))
    if categories is not None:
        wanted = set(categories)
        files = [f for f in files if f.stem.rsplit(':', 1)[-1] in wanted]
        found = {f.stem.rsplit(':', 1)[-1] for f in files}
        if wanted - found:
            raise ValueError(f'No {split} pairs for categories {sorted(wanted - found)} in {pair_dir}.')
    if limit is not None:
        files = files[:limit]
    pairs = []
    for path in files:
        ann = _read_json(path, 'pair annotation')
        category = ann.get('category') or path.stem.rsplit(':', 1)[-1]
        names = [str(_field(ann, k, path)) for k in ('src_imname', 'trg_imname')]
        images = [root / 'JPEGImages' / category / n for n in names]
        image_anns = []
        for name, image in zip(names, images):
            if not image.is_file():
                raise FileNotFoundError(f'SPair image {image} (pair {path.name}) is missing.')
            ann_path = root / 'ImageAnnotation' / category / (Path(name).stem + '.json')
            image_anns.append((_read_json(ann_path, 'image annotation'), ann_path))
        if 'src_kps' in ann and 'trg_kps' in ann:
            ks = np.asarray(ann['src_kps'], dtype=np.float64).reshape(-1, 2)
            kt = np.asarray(ann['trg_kps'], dtype=np.float64).reshape(-1, 2)
            if ks.shape != kt.shape:
                raise ValueError(f'SPair pair {path}: src_kps has {len(ks)} keypoints, trg_kps {len(kt)}.')
        else:
            ks, kt = _keypoints_from_images(image_anns[0][0], image_anns[1][0], image_anns[0][1], image_anns[1][1])
        boxes = []
        for side, (image_ann, ann_path) in zip(('src', 'trg'), image_anns):
            box = ann.get(f'{side}_bndbox') or _field(image_ann, 'bndbox', ann_path)
            boxes.append(tuple(float(v) for v in box))
        pairs.append(SPairPair(
            pair_id=path.stem, category=category, src_image=images[0], trg_image=images[1],
            kps_src=ks, kps_trg=kt, visible=np.ones(len(ks), dtype=bool),
            size_src=_image_size(ann, 'src_imsize', path, image_anns[0][0]),
            size_trg=_image_size(ann, 'trg_imsize', path, image_anns[1][0]),
            bbox_src=boxes[0], bbox_trg=boxes[1]))
    return pairs
