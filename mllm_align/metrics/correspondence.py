"""C score: semantic-correspondence PCK of a vision representation's feature grids (the law's C).

One image pair (source, target) with N annotated keypoints, ``visible[k]`` when keypoint k is annotated in
both. Each image is placed on a square canvas of side ``canvas`` (840 px, as GeoAware-SC and the law
repository) and the representation's features ``[C, P, P]`` cover that canvas: cell (i, j) is the canvas
point ((j + ½)·canvas/P, (i + ½)·canvas/P). The placement (``layout``):

- ``'letterbox'`` (GeoAware-SC): scale s = canvas / max(W, H), the image centred, padding around:
  x' = s·x + (canvas − s·W)/2, y' = s·y + (canvas − s·H)/2;
- ``'stretch'`` (the law repository's input): x' = x·canvas/W, y' = y·canvas/H.

For every visible source keypoint, its source cell's feature is compared by cosine similarity with every
target cell. ``match='argmax'`` predicts the centre of the most similar cell; ``match='window-soft-argmax'``
(the law repository's variant) takes the (2r+1)×(2r+1) cells around the argmax (r = ``window_radius``, cut at
the grid border) and predicts their centres' mean weighted by softmax(cos / τ), τ = ``temperature`` = 0.02.
r = 7 by default: the law repository's ``SOFT_EVAL_WINDOW`` (``C_score/pck_train.py`` at 11a1dc3, in cells of
the native grid, window 2r+1 = 15; ``get_flow`` in ``C_score/utils/utils_correspondence.py``). There the cells
outside the window are set to similarity 0 rather than left out, so they keep a weight exp(−max cos / τ) each;
we leave them out (the same when the best cosine is large, not when features are weak).
The prediction is mapped back to the target's original pixels with the inverse placement, and a keypoint is
a hit when its distance to the annotated target keypoint is below α·max(h, w) of the target bounding box
(α = 0.10: PCK@0.10). With ``'letterbox'`` this is the same as measuring on the canvas against the threshold
scaled by s; with ``'stretch'`` measuring in original pixels keeps the threshold meaningful (the law
repository stretches the images but places keypoints on a letterboxed canvas; we map both the same way).

``pck_pair`` returns one pair's fraction of hits; :func:`pck_pair_counts` its (hits, visible) counts so that
an aggregate can average per image (mean of per-pair fractions, the default in the paper) or per keypoint
(pooled). :func:`predict_matches` is the batched core (many pairs, torch, on any device).

Pure functions: no model, no IO.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

__all__ = ['NoVisibleKeypoints', 'Layout', 'Match', 'canvas_transform', 'to_canvas', 'from_canvas',
           'predict_matches', 'pck_pair', 'pck_pair_counts', 'hits_from_predictions', 'check_pair']

Layout = Literal['letterbox', 'stretch']
Match = Literal['argmax', 'window-soft-argmax']
DEFAULT_CANVAS = 840
DEFAULT_TEMPERATURE = 0.02
DEFAULT_WINDOW_RADIUS = 7


class NoVisibleKeypoints(ValueError):
    """The pair has no keypoint visible in both images: it cannot be scored (aggregates skip and count it)."""


def canvas_transform(size: Sequence[float], layout: Layout = 'letterbox',
                     canvas: int = DEFAULT_CANVAS) -> tuple[float, float, float, float]:
    """(sx, sy, ox, oy) with canvas = (sx·x + ox, sy·y + oy) for an image of ``size`` = (W, H)."""
    width, height = float(size[0]), float(size[1])
    if not (width > 0 and height > 0):
        raise ValueError(f'image size {tuple(size)} must be positive (W, H).')
    if layout == 'letterbox':
        s = canvas / max(width, height)
        return s, s, (canvas - s * width) / 2, (canvas - s * height) / 2
    if layout == 'stretch':
        return canvas / width, canvas / height, 0.0, 0.0
    raise ValueError(f"layout={layout!r}: use 'letterbox' (GeoAware-SC) or 'stretch' (the law repository).")


def to_canvas(xy: np.ndarray, size: Sequence[float], layout: Layout = 'letterbox',
              canvas: int = DEFAULT_CANVAS) -> np.ndarray:
    """Original pixel coordinates ``[N, 2]`` (x, y) → canvas coordinates."""
    sx, sy, ox, oy = canvas_transform(size, layout, canvas)
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([xy[..., 0] * sx + ox, xy[..., 1] * sy + oy], axis=-1)


def from_canvas(xy: np.ndarray, size: Sequence[float], layout: Layout = 'letterbox',
                canvas: int = DEFAULT_CANVAS) -> np.ndarray:
    """Canvas coordinates ``[N, 2]`` → original pixel coordinates (the inverse of :func:`to_canvas`)."""
    sx, sy, ox, oy = canvas_transform(size, layout, canvas)
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([(xy[..., 0] - ox) / sx, (xy[..., 1] - oy) / sy], axis=-1)


def predict_matches(feat_src: torch.Tensor, feat_trg: torch.Tensor, src_canvas_xy: torch.Tensor,
                    canvas: int = DEFAULT_CANVAS, match: Match = 'argmax',
                    temperature: float = DEFAULT_TEMPERATURE,
                    window_radius: int = DEFAULT_WINDOW_RADIUS) -> torch.Tensor:
    """Predicted target canvas points for source canvas points, batched over pairs.

    Args:
        feat_src, feat_trg: ``[B, C, P, P]`` feature grids covering the canvas.
        src_canvas_xy: ``[B, K, 2]`` source points on the canvas (x, y); padding rows may hold any value
            inside the canvas (their predictions are simply ignored by the caller).
        canvas, match, temperature, window_radius: see the module docstring.

    Returns:
        ``[B, K, 2]`` float32 predicted target canvas points (x, y).
    """
    if feat_src.dim() != 4 or feat_src.shape != feat_trg.shape or feat_src.shape[-1] != feat_src.shape[-2]:
        raise ValueError(f'feature grids must both be [B, C, P, P] with the same shape, got {tuple(feat_src.shape)} '
                         f'and {tuple(feat_trg.shape)}.')
    B, C, P, _ = feat_src.shape
    cell = canvas / P
    col = (src_canvas_xy[..., 0] / cell).long().clamp(0, P - 1)
    row = (src_canvas_xy[..., 1] / cell).long().clamp(0, P - 1)
    idx = (row * P + col).to(feat_src.device)  # (B, K)
    src = feat_src.flatten(2)  # (B, C, P²)
    q = torch.gather(src, 2, idx[:, None, :].expand(B, C, idx.shape[1])).float()  # (B, C, K): only the queries
    q = torch.nn.functional.normalize(q, dim=1)
    trg = torch.nn.functional.normalize(feat_trg.flatten(2).float(), dim=1)  # (B, C, P²)
    sim = torch.bmm(q.transpose(1, 2), trg)  # (B, K, P²) cosine similarities
    best = sim.argmax(-1)  # (B, K)
    by, bx = best // P, best % P
    if match == 'argmax':
        return torch.stack([(bx.float() + 0.5) * cell, (by.float() + 0.5) * cell], dim=-1)
    if match != 'window-soft-argmax':
        raise ValueError(f"match={match!r}: use 'argmax' or 'window-soft-argmax'.")
    if temperature <= 0 or window_radius < 0:
        raise ValueError(f'window-soft-argmax needs temperature > 0 and window_radius ≥ 0 (got {temperature}, '
                         f'{window_radius}).')
    grid = torch.arange(P, device=sim.device)
    rows = grid.view(1, 1, P, 1).expand(B, best.shape[1], P, P)
    cols = grid.view(1, 1, 1, P).expand(B, best.shape[1], P, P)
    near_row = (rows - by[..., None, None]).abs() <= window_radius
    inside = near_row & ((cols - bx[..., None, None]).abs() <= window_radius)
    logits = (sim.view(B, -1, P, P) / temperature).masked_fill(~inside, float('-inf'))
    w = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)  # (B, K, P, P), zero outside the window
    centres = (grid.float() + 0.5) * cell
    x = (w.sum(-2) * centres).sum(-1)  # Σ_ij w_ij · x_j
    y = (w.sum(-1) * centres).sum(-1)  # Σ_ij w_ij · y_i
    return torch.stack([x, y], dim=-1)


def check_pair(feat_src, feat_trg, kps_src, kps_trg, visible, size_src, size_trg, bbox_trg):
    """Validate one pair's inputs (see :func:`pck_pair`); returns keypoints as float64 and ``visible`` as bool."""
    for name, f in (('feat_src', feat_src), ('feat_trg', feat_trg)):
        if f.dim() != 3 or f.shape[1] != f.shape[2]:
            raise ValueError(f'{name} must be a square grid [C, P, P] covering the canvas, got {tuple(f.shape)}.')
        if not torch.isfinite(f).all():
            raise ValueError(f'{name} holds NaN or infinite values.')
    if feat_src.shape != feat_trg.shape:
        raise ValueError(f'source and target grids differ: {tuple(feat_src.shape)} vs {tuple(feat_trg.shape)}.')
    kps_src, kps_trg = np.asarray(kps_src, np.float64), np.asarray(kps_trg, np.float64)
    visible = np.asarray(visible, dtype=bool)
    if (kps_src.shape != kps_trg.shape or kps_src.ndim != 2 or kps_src.shape[1] != 2
            or visible.shape != kps_src.shape[:1]):
        raise ValueError(f'keypoints must be [N, 2] (x, y) for both images with visible [N]; got {kps_src.shape}, '
                         f'{kps_trg.shape} and {visible.shape}.')
    for name, kps, size in (('source', kps_src, size_src), ('target', kps_trg, size_trg)):
        k = kps[visible]
        if not np.isfinite(k).all():
            raise ValueError(f'a visible {name} keypoint is NaN: mark it not visible.')
        outside = (k[:, 0] < 0) | (k[:, 1] < 0) | (k[:, 0] > size[0]) | (k[:, 1] > size[1])
        if outside.any():
            raise ValueError(f'{name} keypoint(s) {np.flatnonzero(visible)[outside].tolist()} lie outside the '
                             f'{size[0]}×{size[1]} image: check the annotation (x, y order, image size).')
    x1, y1, x2, y2 = (float(v) for v in bbox_trg)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f'target bbox {list(bbox_trg)} must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1.')
    if not visible.any():
        raise NoVisibleKeypoints('no keypoint is visible in both images of this pair.')
    return kps_src, kps_trg, visible


def hits_from_predictions(pred_canvas: np.ndarray, kps_trg: np.ndarray, size_trg: Sequence[float],
                          bbox_trg: Sequence[float], layout: Layout = 'letterbox', canvas: int = DEFAULT_CANVAS,
                          alpha: float = 0.10) -> np.ndarray:
    """Boolean hits ``[K]``: predicted target canvas points mapped back to pixels, within α·max(box h, w)."""
    pred = from_canvas(pred_canvas, size_trg, layout, canvas)
    x1, y1, x2, y2 = (float(v) for v in bbox_trg)
    threshold = alpha * max(x2 - x1, y2 - y1)
    return np.linalg.norm(pred - np.asarray(kps_trg, np.float64), axis=-1) < threshold


def pck_pair_counts(feat_src: torch.Tensor, feat_trg: torch.Tensor, kps_src, kps_trg, visible,
                    size_src: Sequence[float], size_trg: Sequence[float], bbox_trg: Sequence[float],
                    alpha: float = 0.10, match: Match = 'argmax', layout: Layout = 'letterbox',
                    canvas: int = DEFAULT_CANVAS, temperature: float = DEFAULT_TEMPERATURE,
                    window_radius: int = DEFAULT_WINDOW_RADIUS) -> tuple[int, int]:
    """(hits, visible keypoints) of one pair; arguments as :func:`pck_pair`."""
    kps_src, kps_trg, visible = check_pair(feat_src, feat_trg, kps_src, kps_trg, visible, size_src, size_trg,
                                            bbox_trg)
    src_xy = torch.as_tensor(to_canvas(kps_src[visible], size_src, layout, canvas), dtype=torch.float32)
    pred = predict_matches(feat_src[None], feat_trg[None], src_xy[None].to(feat_src.device), canvas, match,
                           temperature, window_radius)[0]
    hits = hits_from_predictions(pred.cpu().double().numpy(), kps_trg[visible], size_trg, bbox_trg, layout,
                                 canvas, alpha)
    return int(hits.sum()), int(visible.sum())


def pck_pair(feat_src: torch.Tensor, feat_trg: torch.Tensor, kps_src, kps_trg, visible,
             size_src: Sequence[float], size_trg: Sequence[float], bbox_trg: Sequence[float],
             alpha: float = 0.10, match: Match = 'argmax', layout: Layout = 'letterbox',
             canvas: int = DEFAULT_CANVAS, temperature: float = DEFAULT_TEMPERATURE,
             window_radius: int = DEFAULT_WINDOW_RADIUS) -> float:
    """PCK@α of one pair: the fraction of mutually visible keypoints matched within α·max(target box h, w).

    Args:
        feat_src, feat_trg: ``[C, P, P]`` features of each image on its ``canvas``-side square placement.
        kps_src, kps_trg: ``[N, 2]`` keypoints (x, y) in original pixels; ``visible`` ``[N]`` bool (both).
        size_src, size_trg: (W, H) of the original images; ``bbox_trg``: [x1, y1, x2, y2] of the target object.
        alpha: the PCK threshold factor. ``match``, ``layout``, ``temperature``, ``window_radius``: module docstring.

    Raises:
        NoVisibleKeypoints: no keypoint visible in both (aggregates skip and count such pairs).
        ValueError: grids not square or not equal, NaN features, keypoints outside their image, a bad box.
    """
    hits, total = pck_pair_counts(feat_src, feat_trg, kps_src, kps_trg, visible, size_src, size_trg, bbox_trg,
                                  alpha, match, layout, canvas, temperature, window_radius)
    return hits / total
