"""A real-photo SA-1B-format mini set for CoLVA pre-training (:class:`~mllm_align.data.sa1b.SA1BPseudoVideoDataset`).

Sources, read from pinned wheels (never installed): scikit-image 0.25.2's photos (as :mod:`.mmvm_mini`: the coins of
``coins.png`` cut out by their masks, seven photos as backgrounds) and stardist 0.9.1's ``img2d.tif`` +
``mask2d.tif`` (a 512² fluorescence image and its 125 annotated nucleus instances; read with ``tifffile`` from the
wheel file). ``python data/prepare_real.py --only sa1b_mini`` writes ``data/real/sa1b_mini``:

- ``sa_1``: ``coins.png`` itself, every single coin an annotation (the mmvm_mini rule: smoothed intensity > 120,
  opened, holes filled, components of 800–2,000 px);
- ``sa_2``: the stardist image (intensities stretched to 0–255, grey as RGB) with its nucleus masks;
- ``sa_3`` … ``sa_<num_images>``: a background photo (448×336 crop) with 5–10 coins pasted on a non-overlapping
  layout, each rescaled (×0.8–1.4), rotated and, with probability 0.5, recoloured, plus one speck-sized coin
  (×0.15) that augmentation makes too small (what the dataset's drop-and-count handles);
- per image ``sa_<n>.json`` in SA-1B's layout (COCO RLE masks, ``area``, ``bbox`` [x, y, w, h], ``point_coords``,
  ``predicted_iou`` / ``stability_score`` 1.0, ``crop_box``), annotation ids unique over the set; ``index.json``
  (``{"images": [...]}``, the released code's index) and ``manifest.json``.

Seed-deterministic: byte-identical for a seed and the same library versions.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .mmvm_mini import BACKGROUNDS, SKIMAGE_MEMBERS, _background, _layout, _paste, _rle, _save, _transform, coin_objects

__all__ = ['STARDIST_MEMBERS', 'build_sa1b_mini', 'coins_scene', 'read_stardist']

STARDIST_IMAGE = 'stardist/data/images/img2d.tif'
STARDIST_MASK = 'stardist/data/images/mask2d.tif'
STARDIST_MEMBERS = (STARDIST_IMAGE, STARDIST_MASK)


def read_stardist(members: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 ``[512, 512, 3]``, instance label map ``[512, 512]``: 0 background, 1..125 nuclei)."""
    try:
        import tifffile
    except ImportError as err:  # pragma: no cover - the demo extra pins it
        from .wheels import AssetError
        raise AssetError('tifffile is not installed: pip install -e .[demo] (requirements-demo.txt pins it), then '
                         're-run `python data/prepare_real.py --only sa1b_mini`.') from err
    img = tifffile.imread(io.BytesIO(members[STARDIST_IMAGE])).astype(np.float64)
    labels = tifffile.imread(io.BytesIO(members[STARDIST_MASK])).astype(np.int64)
    grey = np.round(255 * (img - img.min()) / max(img.max() - img.min(), 1)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), labels


def coins_scene(coins_png: bytes) -> tuple[np.ndarray, list[np.ndarray]]:
    """``coins.png`` as RGB and the full-image mask of each single coin (the rule of :func:`coin_objects`)."""
    from scipy import ndimage as ndi
    gray = np.asarray(Image.open(io.BytesIO(coins_png)).convert('L'))
    fg = ndi.binary_fill_holes(ndi.binary_opening(ndi.gaussian_filter(gray.astype(float), 2) > 120, iterations=2))
    labels, n = ndi.label(fg)
    masks = [labels == k for k in range(1, n + 1) if 800 <= (labels == k).sum() <= 2000]
    return np.repeat(gray[..., None], 3, axis=2), masks


def _annotations(masks: list[np.ndarray], first_id: int) -> list[dict]:
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append({'id': first_id + k, 'segmentation': _rle(m), 'area': int(m.sum()),
                     'bbox': [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                     'predicted_iou': 1.0, 'stability_score': 1.0,
                     'point_coords': [[round(float(xs.mean()), 2), round(float(ys.mean()), 2)]],
                     'crop_box': [0, 0, int(m.shape[1]), int(m.shape[0])]})
    return anns


def build_sa1b_mini(members: dict[str, bytes], out_dir: str | Path, num_images: int = 16, seed: int = 0) -> dict:
    """Write the set (module docstring) under ``out_dir``; ``members``: the scikit-image files of
    :data:`~.mmvm_mini.SKIMAGE_MEMBERS` and the stardist files of :data:`STARDIST_MEMBERS`. Returns the manifest."""
    missing = [m for m in SKIMAGE_MEMBERS + STARDIST_MEMBERS if m not in members]
    if missing:
        raise KeyError(f'build_sa1b_mini: missing source files {missing}.')
    if num_images < 3:
        raise ValueError(f'num_images={num_images}: at least 3 (coins, nuclei, one composite).')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coins = coin_objects(members['coins.png'])
    backgrounds = [Image.open(io.BytesIO(members[name])) for name in BACKGROUNDS]
    scenes: list[tuple[np.ndarray, list[np.ndarray], str]] = []
    coin_img, coin_masks = coins_scene(members['coins.png'])
    scenes.append((coin_img, coin_masks, 'coins.png'))
    nuclei_img, labels = read_stardist(members)
    scenes.append((nuclei_img, [labels == k for k in range(1, int(labels.max()) + 1) if (labels == k).any()],
                   'stardist img2d.tif'))
    for n in range(num_images - 2):
        canvas = _background(backgrounds[int(rng.integers(len(backgrounds)))], rng)
        objs = []
        for index in rng.choice(len(coins), size=int(rng.integers(5, 11)), replace=False):
            tint = tuple(float(x) for x in rng.uniform(0.35, 1.4, size=3)) if rng.random() < 0.5 else None
            objs.append(_transform(coins[int(index)], scale=float(rng.uniform(0.8, 1.4)),
                                   angle=float(rng.uniform(0, 360)), tint=tint))
        objs.append(_transform(coins[int(rng.integers(len(coins)))], scale=0.15))
        corners = _layout([o.mask.shape[::-1] for o in objs], rng, margin=6)
        masks = [_paste(canvas, o, xy) for o, xy in zip(objs, corners)]
        scenes.append((canvas, masks, f'composite {n}'))
    index, per_image = [], {}
    for n, (rgb, masks, source) in enumerate(scenes, 1):
        name = f'sa_{n}.jpg'
        h, w = rgb.shape[:2]
        _save(rgb, out_dir / name)
        info = {'image_id': n, 'width': int(w), 'height': int(h), 'file_name': name}
        doc = {'image': info, 'annotations': _annotations(masks, n * 1000)}
        (out_dir / f'sa_{n}.json').write_text(json.dumps(doc))
        index.append(info)
        per_image[name] = dict(objects=len(masks), source=source)
    (out_dir / 'index.json').write_text(json.dumps({'images': index}, indent=1) + '\n')
    manifest = dict(images=len(scenes), seed=seed, objects=sum(v['objects'] for v in per_image.values()),
                    per_image=per_image,
                    sources='scikit-image 0.25.2 (coins.png, ' + ', '.join(BACKGROUNDS) + '); stardist 0.9.1 '
                            '(data/images/img2d.tif, mask2d.tif)')
    (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    return manifest
