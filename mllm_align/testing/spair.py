"""A small synthetic SPair-71k directory (the real layout) with correspondences known by construction.

Each pair is one smooth random texture seen twice: the target is the source scaled by ``s`` and shifted by
``(dx, dy)`` inside a canvas of another size, so a source keypoint (x, y) lies at (s·x + dx, s·y + dy) in the
target. Written by ``tools/build_tiny_assets.py`` to ``data/tiny/spair`` (the C score's tests and the law
sweep's tiny twin) and by tests into temporary folders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['write_synthetic_spair', 'build_tiny_spair']


def _texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def write_synthetic_spair(root: str | Path, categories: tuple[str, ...] = ('cat', 'dog'), pairs_per_category: int = 3,
                          split: str = 'test', num_keypoints: int = 8, seed: int = 0) -> Path:
    """Write the directory; returns ``root``. Deterministic in ``seed``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in categories:
        for d in ('JPEGImages', 'ImageAnnotation'):
            (root / d / category).mkdir(parents=True, exist_ok=True)
        (root / 'PairAnnotation' / split).mkdir(parents=True, exist_ok=True)
        for p in range(pairs_per_category):
            w, h = int(rng.integers(80, 121)), int(rng.integers(60, 101))
            src = _texture(rng, w, h)
            scale = float(rng.uniform(0.8, 1.2))
            tw, th = int(w * scale) + int(rng.integers(10, 40)), int(h * scale) + int(rng.integers(10, 40))
            dx, dy = int(rng.integers(0, tw - int(w * scale))), int(rng.integers(0, th - int(h * scale)))
            trg = Image.new('RGB', (tw, th), (127, 127, 127))
            trg.paste(src.resize((int(w * scale), int(h * scale)), Image.BICUBIC), (dx, dy))
            ks = np.column_stack([rng.uniform(2, w - 2, num_keypoints), rng.uniform(2, h - 2, num_keypoints)])
            kt = ks * scale + [dx, dy]
            names = [f'{category}_{p:03d}_src', f'{category}_{p:03d}_trg']
            boxes = [[0, 0, w - 1, h - 1], [dx, dy, dx + int(w * scale) - 1, dy + int(h * scale) - 1]]
            for name, image, kps, box in zip(names, (src, trg), (ks, kt), boxes):
                image.save(root / 'JPEGImages' / category / f'{name}.jpg', quality=95)
                ann = dict(filename=f'{name}.jpg', category=category, image_width=image.width,
                           image_height=image.height, image_depth=3, bndbox=box,
                           kps={str(k): [round(float(x), 2), round(float(y), 2)] for k, (x, y) in enumerate(kps)})
                (root / 'ImageAnnotation' / category / f'{name}.json').write_text(json.dumps(ann))
            pair = dict(pair_id=p, src_imname=f'{names[0]}.jpg', trg_imname=f'{names[1]}.jpg', category=category,
                        src_imsize=[w, h, 3], trg_imsize=[tw, th, 3], src_bndbox=boxes[0], trg_bndbox=boxes[1],
                        kps_ids=[str(k) for k in range(num_keypoints)],
                        src_kps=[[round(float(x), 2), round(float(y), 2)] for x, y in ks],
                        trg_kps=[[round(float(x), 2), round(float(y), 2)] for x, y in kt])
            (root / 'PairAnnotation' / split / f'{p:06d}-{names[0]}-{names[1]}:{category}.json').write_text(
                json.dumps(pair))
    return root


def build_tiny_spair(tiny_root: str | Path, seed: int = 0) -> Path:
    """``<tiny_root>/spair``: the synthetic directory the tiny configs and the law sweep's twin score C on.

    Written once (into a temporary folder, then renamed; a ``.complete`` stamp marks it whole) and reused.
    """
    import shutil
    import tempfile

    out = Path(tiny_root) / 'spair'
    if (out / '.complete').is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='.spair.', dir=out.parent))
    try:
        write_synthetic_spair(tmp, categories=('cat', 'dog'), pairs_per_category=4, seed=seed)
        (tmp / '.complete').write_text('synthetic SPair-format pairs (mllm_align.testing.spair)\n')
        if out.exists():
            shutil.rmtree(out)  # an unstamped (interrupted) directory
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
