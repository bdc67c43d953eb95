"""C score of a vision representation: PCK@α over SPair-format pairs (:mod:`mllm_align.metrics.correspondence`).

Every image of the pairs goes through the representation once (cached by path): placed on a square by the
convention, then the representation's own image processor, then the encoder, whose ``[N, g·g, C]`` patch
tokens (row-major; VisionTower with ``select_feature='patch'``, CNNFeatureMapTower, MultiTowerEncoder)
become a ``[C, g, g]`` grid covering that square (a processor that centre-crops — DINOv2's resizes to 256 and
crops 224 — gets the square framed by mean-colour padding that its crop removes exactly:
:func:`kept_fraction`; a multi-tower processor frames it for each tower's processor separately,
``MultiTowerImageProcessor.call_per_processor``). Conventions, by name:

- ``'geoaware'`` (GeoAware-SC): letterbox — pad to a centred square with the processor's mean colour, so
  keypoints map with ``layout='letterbox'``;
- ``'law-repo'`` (the law repository's input): stretch to a square; keypoints map with ``layout='stretch'``
  (the repository itself letterboxes the keypoints of a stretched image; we keep the two consistent).

Pairs are then scored in batches (:func:`~mllm_align.metrics.correspondence.predict_matches`, on ``device``).
``average='image'`` is the mean of per-pair PCK (the paper's), ``'keypoint'`` pools all keypoints. Pairs with
no mutually visible keypoint are skipped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.image_loading import load_image
from ..data.image_processing import background_color, expand2square
from ..data.spair import SPairPair
from ..metrics.correspondence import (
    DEFAULT_CANVAS,
    DEFAULT_TEMPERATURE,
    DEFAULT_WINDOW_RADIUS,
    NoVisibleKeypoints,
    check_pair,
    hits_from_predictions,
    predict_matches,
    to_canvas,
)

__all__ = ['CONVENTIONS', 'CScoreResult', 'c_score', 'extract_feature_grids', 'kept_fraction']

Convention = Literal['geoaware', 'law-repo']
CONVENTIONS = {'geoaware': 'letterbox', 'law-repo': 'stretch'}


@dataclass
class CScoreResult:
    """``pck``: the C score (a fraction); ``per_category`` {category: PCK}; counts of pairs scored, skipped
    (no mutually visible keypoint) and keypoints; ``settings`` the options used."""

    pck: float
    per_category: dict[str, float]
    pairs: int
    skipped: int
    keypoints: int
    hits: int
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(pck=self.pck, per_category=dict(self.per_category), pairs=self.pairs, skipped=self.skipped,
                    keypoints=self.keypoints, hits=self.hits, settings=dict(self.settings))


def kept_fraction(image_processor: Any) -> float:
    """The fraction f of a square input's side that ``image_processor`` keeps: an HF processor that resizes the
    shortest edge to s and centre-crops c × c keeps f = c / s of it (DINOv2's 224 / 256); 1 otherwise (no crop,
    or a processor without these attributes; a multi-tower processor is framed per tower instead)."""
    if not getattr(image_processor, 'do_center_crop', False):
        return 1.0
    size, crop = getattr(image_processor, 'size', None), getattr(image_processor, 'crop_size', None)
    try:
        s, c = float(size['shortest_edge']), float(crop['height'])
    except (KeyError, TypeError):
        return 1.0
    if crop.get('width', c) != c:
        raise ValueError(f'The image processor centre-crops a non-square {crop}: the C score needs a square grid.')
    return min(c / s, 1.0)


def _place(image: Image.Image, convention: str, image_processor: Any) -> Image.Image:
    """The square canvas image, then (when the processor centre-crops, :func:`kept_fraction` f < 1) padded to
    side/f with the mean colour, so that the crop removes exactly that padding and the grid covers the canvas."""
    if convention == 'geoaware':
        square = expand2square(image, background_color(image_processor))
    else:
        side = max(image.size)
        square = image.resize((side, side), Image.BICUBIC)
    f = kept_fraction(image_processor)
    if f >= 1.0:
        return square
    outer = int(round(square.width / f))
    framed = Image.new(square.mode, (outer, outer), background_color(image_processor))
    framed.paste(square, ((outer - square.width) // 2, (outer - square.width) // 2))
    return framed


@torch.no_grad()
def extract_feature_grids(encoder: Any, image_processor: Any, paths: Sequence[Any], convention: Convention = 'geoaware',
                          batch_size: int = 8, device: str | torch.device | None = None) -> dict[Any, torch.Tensor]:
    """``{path: [C, g, g]}`` float32 CPU feature grids of the given images (module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f'convention={convention!r}: use one of {sorted(CONVENTIONS)}.')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    out: dict[Any, torch.Tensor] = {}
    unique = list(dict.fromkeys(paths))
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        images = [load_image(str(p)) for p in chunk]
        if hasattr(image_processor, 'call_per_processor'):  # several towers: each framed for its own crop
            framed = [[_place(im, convention, proc) for im in images] for proc in image_processor.processors]
            pixel_values = image_processor.call_per_processor(framed)['pixel_values']
        else:
            pixel_values = image_processor(images=[_place(im, convention, image_processor) for im in images],
                                           return_tensors='pt')['pixel_values']
        tokens = encoder(pixel_values.to(device))  # (n, g², C)
        n, p, c = tokens.shape
        g = int(round(p ** 0.5))
        if g * g != p:
            raise ValueError(f'The encoder returned {p} tokens per image, not a square grid: the C score needs '
                             "patch tokens only (select_feature='patch') of a g×g grid.")
        grids = tokens.float().transpose(1, 2).reshape(n, c, g, g).cpu()
        out.update(zip(chunk, grids.unbind(0)))
    return out


def c_score(encoder: Any, image_processor: Any, pairs: Sequence[SPairPair], *, convention: Convention = 'geoaware',
            alpha: float = 0.10, match: str = 'argmax', average: Literal['image', 'keypoint'] = 'image',
            batch_size: int = 8, device: str | torch.device | None = None, progress: bool = False,
            canvas: int = DEFAULT_CANVAS, temperature: float = DEFAULT_TEMPERATURE,
            window_radius: int = DEFAULT_WINDOW_RADIUS) -> CScoreResult:
    """PCK@``alpha`` of ``encoder`` (+ its ``image_processor``) over ``pairs``.

    ``match``, ``temperature`` and ``window_radius`` (cells of the encoder's grid) are those of
    :func:`~mllm_align.metrics.correspondence.predict_matches`.

    Raises:
        ValueError: no pair could be scored; a bad pair (keypoints outside the image, …: the pair is named);
            an unknown convention or average.
    """
    if average not in ('image', 'keypoint'):
        raise ValueError(f"average={average!r}: use 'image' (mean of per-pair PCK) or 'keypoint' (pooled).")
    layout = CONVENTIONS.get(convention)
    if layout is None:
        raise ValueError(f'convention={convention!r}: use one of {sorted(CONVENTIONS)}.')
    was_training = getattr(encoder, 'training', False)
    if hasattr(encoder, 'eval'):
        encoder.eval()
    paths = [p for pair in pairs for p in (pair.src_image, pair.trg_image)]
    grids = extract_feature_grids(encoder, image_processor, paths, convention, batch_size, device)
    if was_training:
        encoder.train()
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    scored: list[tuple[str, int, int]] = []  # (category, hits, keypoints)
    skipped = 0
    valid: list[tuple[SPairPair, np.ndarray]] = []
    for pair in pairs:
        try:
            check_pair(grids[pair.src_image], grids[pair.trg_image], pair.kps_src, pair.kps_trg, pair.visible,
                        pair.size_src, pair.size_trg, pair.bbox_trg)
        except NoVisibleKeypoints:
            skipped += 1
            continue
        except ValueError as err:
            raise ValueError(f'SPair pair {pair.pair_id}: {err}') from None
        valid.append((pair, np.flatnonzero(pair.visible)))
    iterator: Any = range(0, len(valid), batch_size)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc='C score', unit='batch')
    for start in iterator:
        chunk = valid[start:start + batch_size]
        k = max(len(v) for _, v in chunk)
        xy = torch.zeros(len(chunk), k, 2)
        for b, (pair, vis) in enumerate(chunk):
            xy[b, :len(vis)] = torch.as_tensor(to_canvas(pair.kps_src[vis], pair.size_src, layout, canvas))
        fs = torch.stack([grids[pair.src_image] for pair, _ in chunk]).to(device)
        ft = torch.stack([grids[pair.trg_image] for pair, _ in chunk]).to(device)
        pred = predict_matches(fs, ft, xy.to(device), canvas, match, temperature,
                               window_radius).cpu().double().numpy()  # (b, K, 2)
        for b, (pair, vis) in enumerate(chunk):
            hits = hits_from_predictions(pred[b, :len(vis)], pair.kps_trg[vis], pair.size_trg, pair.bbox_trg,
                                         layout, canvas, alpha)
            scored.append((pair.category, int(hits.sum()), len(vis)))
    if not scored:
        raise ValueError(f'None of the {len(pairs)} pairs has a keypoint visible in both images: nothing to score.')

    def reduce(rows: list[tuple[str, int, int]]) -> float:
        if average == 'image':
            return float(np.mean([h / n for _, h, n in rows]))
        return sum(h for _, h, _ in rows) / sum(n for _, _, n in rows)

    per_category = {cat: reduce([r for r in scored if r[0] == cat]) for cat in sorted({r[0] for r in scored})}
    settings = dict(convention=convention, alpha=alpha, match=match, average=average, canvas=canvas)
    if match == 'window-soft-argmax':
        settings.update(temperature=temperature, window_radius=window_radius)
    return CScoreResult(reduce(scored), per_category, len(scored), skipped, sum(n for _, _, n in scored),
                        sum(h for _, h, _ in scored), settings)
