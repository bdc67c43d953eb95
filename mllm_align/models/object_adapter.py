"""CoLVA's object adapter: one embedding per object from a vision expert's patch features and the object's mask.

The expert (RADIO in production: 1280-d features on a 64×64 grid for a 1024² input) gives ``F [C, g, g]`` for
an image; each object's binary mask ``M [H, W]`` (image pixels) becomes a grid weight, and the adapted features
are averaged under it:

    m = 1[ bilinear(M, g×g) > τ ]                                  (τ: 0.5 in SFT, 0.55 in pre-training)
    e = Σ_ij m_ij · A(F)_ij / (Σ_ij m_ij + 1e-4),   A = Linear(H, H) ∘ GELU ∘ Linear(C, H) ∘ LayerNorm(C)

(the adapter acts on each cell's feature vector, so pooling after it is the average of adapted cells). An
object whose mask vanishes on the grid (no cell above τ) has no embedding: :func:`masks_to_grid` reports it so
the caller drops and counts it, never pools an all-zero weight into a silent zero vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['POOL_EPS', 'ObjectAdapter', 'mask_pool', 'masks_to_grid']

POOL_EPS = 1e-4


class ObjectAdapter(nn.Module):
    """``LayerNorm(C) → Linear(C, H) → GELU → Linear(H, H)`` on expert feature vectors ``[..., C]``."""

    def __init__(self, expert_dim: int, llm_dim: int) -> None:
        super().__init__()
        if expert_dim < 1 or llm_dim < 1:
            raise ValueError(f'ObjectAdapter needs positive sizes, got expert_dim={expert_dim}, llm_dim={llm_dim}.')
        self.norm = nn.LayerNorm(expert_dim)
        self.fc1 = nn.Linear(expert_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(features))))


def masks_to_grid(masks: torch.Tensor, grid: int | tuple[int, int], threshold: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Object masks ``[K, H, W]`` (bool or 0/1, image pixels) → grid weights ``[K, g, g]`` (0/1 float) and
    ``valid [K]`` (at least one cell above ``threshold`` after bilinear resizing).

    Raises:
        ValueError: not 3-D, an empty mask (nothing to pool, in the image itself), a threshold outside (0, 1).
    """
    if masks.dim() != 3:
        raise ValueError(f'masks must be [K, H, W], got {tuple(masks.shape)}.')
    if not 0.0 < threshold < 1.0:
        raise ValueError(f'threshold={threshold}: use a value in (0, 1) (0.5 in SFT, 0.55 in pre-training).')
    empty = [k for k in range(masks.shape[0]) if not bool(masks[k].any())]
    if empty:
        raise ValueError(f'mask(s) {empty} are empty: every object needs at least one pixel.')
    size = (grid, grid) if isinstance(grid, int) else tuple(grid)
    resized = F.interpolate(masks[:, None].float(), size=size, mode='bilinear', align_corners=False)[:, 0]
    weights = (resized > threshold).float()
    return weights, weights.flatten(1).any(dim=1)


def mask_pool(features: torch.Tensor, weights: torch.Tensor, eps: float = POOL_EPS) -> torch.Tensor:
    """``Σ m·f / (Σ m + eps)`` per object: features ``[g, g, D]`` (or ``[P, D]`` with weights ``[K, P]``) and
    weights ``[K, g, g]`` → ``[K, D]``."""
    feats = features.reshape(-1, features.shape[-1])  # (P, D)
    w = weights.flatten(1).to(feats.dtype)  # (K, P); K = 0 (no object) gives [0, D]
    if w.shape[1] != feats.shape[0]:
        raise ValueError(f'weights cover {w.shape[1]} cells, the features {feats.shape[0]}: use the same grid.')
    return (w @ feats) / (w.sum(dim=1, keepdim=True) + eps)
