"""Image-token splicing: turn ``input_ids`` with image placeholders into LLM input embeddings.

Each ``IMAGE_TOKEN_INDEX`` placeholder in ``input_ids`` is replaced by the P_k projected feature rows
of the next image; images may differ in token count. Images are consumed in batch order (sample 0's
images left to right, then sample 1's, …, matching the collated ``pixel_values``). Labels at image
rows are ``IGNORE_INDEX``; padding is rebuilt on the requested side; ``position_ids`` count valid tokens from 0; and
``image_mask`` marks the vision-token positions — the modality mask that MoCa, CAL, visual words
and MIR read.

Shape letters: B batch, T text length (with placeholders), L spliced length, P_k tokens of image k,
S = Σ P_k, D LLM hidden size, N images in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class MultimodalInputs:
    """The spliced batch the LLM runs on.

    Attributes:
        inputs_embeds: ``[B, L, D]`` input embeddings (zeros at padding).
        attention_mask: ``[B, L]`` bool, True at real tokens.
        position_ids: long, opaque to plug-ins: ``[B, L]`` (0.. per sample over real tokens) for 1-D RoPE,
            ``[3, B, L]`` for M-RoPE (Qwen2-VL); always indexed as ``[..., B, L]``.
        image_mask: ``[B, L]`` bool, True at vision-token positions.
        labels: ``[B, L]`` long with ``IGNORE_INDEX`` at image rows, prompts and padding; None in inference.
        input_ids: ``[B, L]`` long, text ids at text positions and ``IMAGE_TOKEN_INDEX`` at image
            rows, pad id at padding (for plug-ins that need the token ids, e.g. CAL's no-image pass).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    image_mask: torch.Tensor
    labels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None


def _pack_features(image_features: torch.Tensor | Sequence[torch.Tensor] | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``[N, P, D]`` or N tensors ``[P_i, D]`` → packed ``[S, D]`` (S = Σ P_i) and counts ``[N]``."""
    if image_features is None:
        return None, None
    if isinstance(image_features, torch.Tensor):
        if image_features.dim() != 3:
            raise ValueError(f'image_features must be [N, P, D] or a list of [P_i, D], got shape '
                             f'{tuple(image_features.shape)}.')
        N, P, D = image_features.shape
        counts = torch.full((N,), P, dtype=torch.long, device=image_features.device)
        return image_features.reshape(N * P, D), counts
    feats = list(image_features)
    if not feats:
        return None, None
    bad = [i for i, f in enumerate(feats) if f.dim() != 2]
    if bad:
        raise ValueError(f'image feature {bad[0]} has shape {tuple(feats[bad[0]].shape)}; each image gives [P_i, D].')
    counts = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=feats[0].device)
    if len(feats) == 1:
        return feats[0], counts
    parent = _split_parent(feats)
    return (torch.cat(feats, 0) if parent is None else parent), counts


def _split_parent(feats: list[torch.Tensor]) -> torch.Tensor | None:
    """The ``[S, D]`` tensor ``feats`` were cut from, in order and without gaps (``unbind`` of ``[N, P, D]``,
    ``split`` of ``[S, D]``: how encoders return per-image features), so packing needs no copy; else None."""
    base = feats[0]._base
    if base is None or not base.is_contiguous() or base.data_ptr() != feats[0].data_ptr():
        return None
    step = feats[0].element_size()
    offset = base.data_ptr()
    for f in feats:
        if f._base is not base or not f.is_contiguous() or f.data_ptr() != offset:
            return None
        offset += f.numel() * step
    if offset != base.data_ptr() + base.numel() * step:
        return None
    return base.reshape(-1, feats[0].shape[-1])  # (S, D), a view: gradients reach the encoder as before


def placeholder_fields(data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]:
    """What a base's ``prepare_inputs`` reads first from a collated batch: ``input_ids [B, T]``, the valid-token mask
    (all True when the batch has no ``attention_mask``), the placeholder mask (``IMAGE_TOKEN_INDEX`` at valid
    positions) and each sample's name for errors (its ``sample_ids`` entry, else its index)."""
    input_ids = data['input_ids']
    attention_mask = data.get('attention_mask')
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    sample_ids = data.get('sample_ids')
    names = list(sample_ids) if sample_ids is not None else list(range(input_ids.shape[0]))
    return input_ids, valid, (input_ids == IMAGE_TOKEN_INDEX) & valid, names


def splice_image_features(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          embed_tokens: torch.nn.Module,
                          image_features: torch.Tensor | Sequence[torch.Tensor] | None,
                          labels: torch.Tensor | None = None, pad_token_id: int = 0,
                          padding_side: Literal['right', 'left'] = 'right',
                          sample_ids: Sequence[Any] | None = None) -> MultimodalInputs:
    """Replace image placeholders by image feature rows, vectorised over the batch.

    Placeholder k (in row-major order: sample 0 left to right, then sample 1, …) takes the P_k rows of
    image k; images may have different token counts.

    Args:
        input_ids: ``[B, T]`` with ``IMAGE_TOKEN_INDEX`` placeholders; padding where
            ``attention_mask`` is False (either side).
        attention_mask: ``[B, T]`` bool or 0/1.
        embed_tokens: the LLM's input embedding module.
        image_features: one ``[P_k, D]`` tensor per placeholder (or ``[N, P, D]`` when all have P rows),
            or None when the batch has no placeholder.
        labels: ``[B, T]`` or None.
        pad_token_id: id written at padding positions of the returned ``input_ids``.
        padding_side: where the rebuilt padding goes (right for training, left for generation).
        sample_ids: the samples' ids, named in errors.

    Raises:
        ValueError: the number of placeholders differs from the number of images (naming the first
            sample where they part and both counts).
    """
    B, T = input_ids.shape
    device = input_ids.device
    valid = attention_mask.bool()
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & valid
    packed, counts = _pack_features(image_features)
    num_placeholders = int(is_image.sum())
    num_images = 0 if counts is None else int(counts.numel())
    if num_placeholders != num_images:
        per_sample = is_image.sum(1).tolist()
        names = list(sample_ids) if sample_ids is not None else list(range(B))
        detail = ', '.join(f'sample {names[b]!r}: {n}' for b, n in enumerate(per_sample) if n)
        raise ValueError(f'The batch has {num_placeholders} image placeholders but {num_images} images '
                         f'(placeholders per sample: {detail or "none"}): every <image> in the text needs exactly '
                         'one image (check the '
                         "sample's `image` field and its <image> tokens).")
    # Width each original token takes in the spliced sequence: P_k for placeholder k, 1 for text, 0 for pad.
    width = valid.long()  # (B, T)
    b_img, t_img = is_image.nonzero(as_tuple=True)  # row-major = batch order of images
    if num_images:
        width = width.index_put((b_img, t_img), counts)
    lengths = width.sum(1)  # (B,)
    L = int(lengths.max()) if B else 0
    offset = (L - lengths) if padding_side == 'left' else torch.zeros_like(lengths)  # (B,)
    start = torch.cumsum(width, 1) - width + offset[:, None]  # (B, T) first spliced slot of each token

    text_ids = input_ids.masked_fill(~valid | is_image, 0)
    text_embeds = embed_tokens(text_ids)  # (B, T, D)
    D = text_embeds.shape[-1]
    out_embeds = text_embeds.new_zeros(B, L, D)
    out_ids = torch.full((B, L), pad_token_id, dtype=input_ids.dtype, device=device)
    image_mask = torch.zeros(B, L, dtype=torch.bool, device=device)

    is_text = valid & ~is_image
    b_txt, t_txt = is_text.nonzero(as_tuple=True)
    dst_txt = start[b_txt, t_txt]
    out_embeds[b_txt, dst_txt] = text_embeds[b_txt, t_txt]
    out_ids[b_txt, dst_txt] = input_ids[b_txt, t_txt]

    if num_images:
        if packed.shape[-1] != D:
            raise ValueError(f'Image features have width {packed.shape[-1]} but the LLM embeds to {D}.')
        image_of_row = torch.repeat_interleave(torch.arange(num_images, device=device), counts)  # (S,)
        first_row = torch.cumsum(counts, 0) - counts  # (N,) packed index of each image's first row
        within = torch.arange(packed.shape[0], device=device) - first_row[image_of_row]  # (S,)
        rows = start[b_img, t_img][image_of_row] + within  # (S,) spliced slot of each feature row
        b_rows = b_img[image_of_row]  # (S,)
        out_embeds[b_rows, rows] = packed.to(out_embeds.dtype)
        out_ids[b_rows, rows] = IMAGE_TOKEN_INDEX
        image_mask[b_rows, rows] = True

    slots = torch.arange(L, device=device)[None, :]  # (1, L)
    new_mask = (slots >= offset[:, None]) & (slots < (offset + lengths)[:, None])
    position_ids = (slots - offset[:, None]).clamp(min=0)

    out_labels = None
    if labels is not None:
        out_labels = torch.full((B, L), IGNORE_INDEX, dtype=labels.dtype, device=device)
        out_labels[b_txt, dst_txt] = labels[b_txt, t_txt]
    return MultimodalInputs(out_embeds, new_mask, position_ids, image_mask, out_labels, out_ids)
