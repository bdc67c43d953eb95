"""CoLVA's adapter pre-training loss: an object's expert embedding should pick out the same object's embedding
by the base model in another view of the image, among the other objects there.

For an image with objects k = 1..K seen in two augmented views: anchor a_k (the object adapter's embedding of
object k from the expert's features of view 1), positive p_k (the base model's own embedding of object k, its
vision tokens mask-pooled in view 2), negatives p_j, j ≠ k (the other objects of view 2). With raw dot products,

    L_k = log(1 + Σ_{j≠k} exp(a_k·p_j − a_k·p_k)) = logsumexp([0, a_k·p_j − a_k·p_k for j ≠ k]),

averaged over the valid anchors of the batch (an object is valid when it survives both views' grids). A batch
without a valid anchor gives 0 — a zero that is still connected to every input, so the backward pass and
gradient synchronisation across ranks run as on any other step (never None, never NaN).
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ['object_contrastive_loss']


def object_contrastive_loss(anchors: Sequence[torch.Tensor], positives: Sequence[torch.Tensor],
                            valid: Sequence[torch.Tensor] | None = None,
                            positive_valid: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """(mean L_k over valid anchors, number of valid anchors) for a batch of images (module docstring).

    Args:
        anchors: per image ``[K_i, H]``, the adapter's object embeddings from view 1.
        positives: per image ``[K_i, H]``, the base model's embeddings of the same objects in view 2, same order.
        valid: per image ``[K_i]`` bool (default: all valid). Without ``positive_valid``: an invalid object is
            neither anchor nor negative.
        positive_valid: per image ``[K_i]`` bool, which objects have an embedding in view 2 (as the released
            code: ``valid`` is then the anchors' own flag; object k is an anchor when both flags hold, and every
            object with a view-2 embedding is a negative of the other anchors, whatever its anchor flag).

    Raises:
        ValueError: lists of different lengths, or an image whose anchors and positives differ in shape.
    """
    n = len(anchors)
    if len(positives) != n or (valid is not None and len(valid) != n) or \
            (positive_valid is not None and len(positive_valid) != n):
        raise ValueError(f'{n} anchor sets, {len(positives)} positive sets'
                         f'{"" if valid is None else f", {len(valid)} valid masks"}'
                         f'{"" if positive_valid is None else f", {len(positive_valid)} positive masks"}: '
                         'give one per image.')
    terms = []
    keep_graph = []
    for i, (a, p) in enumerate(zip(anchors, positives)):
        if a.shape != p.shape or a.dim() != 2:
            raise ValueError(f'image {i}: anchors {tuple(a.shape)} and positives {tuple(p.shape)} must both be '
                             '[K, H] with the same K and H.')
        keep_graph += [a.sum() * 0, p.sum() * 0]
        every = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        a_ok = every if valid is None else valid[i].bool()
        p_ok = a_ok if positive_valid is None else positive_valid[i].bool()
        anchor_ok = a_ok & p_ok
        if int(anchor_ok.sum()) == 0:
            continue
        cols = p_ok.nonzero().squeeze(1)  # the objects with a view-2 embedding: positive or negative
        rows = anchor_ok.nonzero().squeeze(1)
        logits = a[rows].float() @ p[cols].float().T  # (A, M): a_k · p_j
        own = (cols[None, :] == rows[:, None])  # (A, M): the positive's column
        diff = logits - logits[own][:, None]  # a_k·p_j − a_k·p_k; 0 at the positive, as log(1 + …) needs
        terms.append(torch.logsumexp(diff, dim=1))  # logsumexp over [0 (j = k), the negatives]
    zero = torch.stack(keep_graph).sum() if keep_graph else torch.zeros(())
    if not terms:
        return zero, 0
    all_terms = torch.cat(terms)
    return all_terms.mean() + zero, int(all_terms.numel())
