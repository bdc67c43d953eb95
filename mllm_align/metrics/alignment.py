"""A score (v1) of the Law of Vision Representation: cross-modal alignment as similarity to a reference.

After stage 1 (projector pre-training), a representation's image tokens live in the LLM's embedding space.
v1 compares them with the projected tokens of a reference representation on the same images (the paper: two
CLIP stage-1 models, CLIP@224 and CLIP@336). For image i with target tokens T_i ``[P_i, D]`` and reference
tokens R_i ``[Q_i, D]``:

    s_i = (1/P_i) Σ_p max_q cos(T_i[p], R_i[q]),     A_v1(target, ref) = (1/M) Σ_i s_i,

and A_v1 is averaged over the references. A representation against itself scores 1. (v3, the mean caption
log-likelihood under the frozen stage-1 model, needs the model: ``mllm_align/evaluation/a_score.py``.)
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ['a_score_v1', 'max_cosine_alignment']


def max_cosine_alignment(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """s for one image: ``mean_p max_q cos(target[p], reference[q])`` of ``[P, D]`` and ``[Q, D]``, float32."""
    t = torch.nn.functional.normalize(target.float(), dim=-1)
    r = torch.nn.functional.normalize(reference.float(), dim=-1)
    return (t @ r.T).max(dim=1).values.mean()


def a_score_v1(target: Sequence[torch.Tensor], references: Sequence[Sequence[torch.Tensor]]) -> float:
    """A score v1 (module docstring).

    Args:
        target: M per-image token matrices ``[P_i, D]`` of the representation under test (projected).
        references: one or more references, each M matrices ``[Q_i, D]`` for the same images, same D.

    Raises:
        ValueError: no image or reference; a reference with another image count; a D that differs; NaN tokens.
    """
    if len(target) == 0:
        raise ValueError('a_score_v1 needs at least one image.')
    if len(references) == 0:
        raise ValueError('a_score_v1 needs at least one reference representation (the paper: CLIP@224, CLIP@336).')
    dim = target[0].shape[-1]
    scores = []
    for r, ref in enumerate(references):
        if len(ref) != len(target):
            raise ValueError(f'reference {r} has tokens for {len(ref)} images, the target for {len(target)}: both '
                             'must encode the same images in the same order.')
        per_image = []
        for i, (t, q) in enumerate(zip(target, ref)):
            if t.dim() != 2 or q.dim() != 2 or t.shape[-1] != dim or q.shape[-1] != dim:
                raise ValueError(f'image {i}: token matrices must be [P, D] with one D (target {tuple(t.shape)}, '
                                 f'reference {r} {tuple(q.shape)}, D = {dim}): the representations must be projected '
                                 'into the same LLM.')
            if t.shape[0] == 0 or q.shape[0] == 0:
                raise ValueError(f'image {i}: no tokens (target {tuple(t.shape)}, reference {r} {tuple(q.shape)}).')
            if not (torch.isfinite(t).all() and torch.isfinite(q).all()):
                raise ValueError(f'image {i}: NaN or infinite tokens (target or reference {r}).')
            per_image.append(max_cosine_alignment(t, q))
        scores.append(torch.stack(per_image).mean())
    return float(torch.stack(scores).mean())
