"""Image-token splicing: turn ``input_ids`` with image placeholders into LLM input embeddings.

Each ``IMAGE_TOKEN_INDEX`` placeholder in ``input_ids`` is replaced by the P projected feature rows
of the next image (images are consumed in batch order: sample 0's images left to right, then
sample 1's, …, matching the collated ``pixel_values``). Labels at image rows are ``IGNORE_INDEX``;
padding is rebuilt on the requested side; ``position_ids`` count valid tokens from 0; and
``image_mask`` marks the vision-token positions — the modality mask that MoCa, CAL, visual words
and MIR read.

Shape letters: B batch, T text length (with placeholders), L spliced length, P tokens per image,
D LLM hidden size, N images in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class MultimodalInputs:
    """The spliced batch the LLM runs on.

    Attributes:
        inputs_embeds: ``[B, L, D]`` input embeddings (zeros at padding).
        attention_mask: ``[B, L]`` bool, True at real tokens.
        position_ids: ``[B, L]`` long, 0.. per sample over real tokens (pads repeat the last position + 1…).
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


def splice_image_features(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          embed_tokens: torch.nn.Module, image_features: torch.Tensor | None,
                          labels: torch.Tensor | None = None, pad_token_id: int = 0,
                          padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
    """Replace image placeholders by image feature rows, vectorised over the batch.

    Args:
        input_ids: ``[B, T]`` with ``IMAGE_TOKEN_INDEX`` placeholders; padding where
            ``attention_mask`` is False (either side).
        attention_mask: ``[B, T]`` bool or 0/1.
        embed_tokens: the LLM's input embedding module.
        image_features: ``[N, P, D]`` projected features, one block per placeholder, or None when
            the batch has no placeholder.
        labels: ``[B, T]`` or None.
        pad_token_id: id written at padding positions of the returned ``input_ids``.
        padding_side: where the rebuilt padding goes (right for training, left for generation).

    Raises:
        ValueError: the number of placeholders differs from the number of image feature blocks.
    """
    B, T = input_ids.shape
    device = input_ids.device
    valid = attention_mask.bool()
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & valid
    num_placeholders = int(is_image.sum())
    num_images = 0 if image_features is None else image_features.shape[0]
    if num_placeholders != num_images:
        raise ValueError(f'The batch has {num_placeholders} image placeholders but {num_images} image '
                         'feature blocks: every <image> in the text needs exactly one image (check the '
                         'sample\'s `image` field and its <image> tokens).')
    P = 0 if image_features is None else image_features.shape[1]
    # Width each original token takes in the spliced sequence: P for a placeholder, 1 for text, 0 for pad.
    width = torch.where(is_image, P, valid.long())  # (B, T)
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
        b_img, t_img = is_image.nonzero(as_tuple=True)  # row-major = batch order of images
        rows = start[b_img, t_img][:, None] + torch.arange(P, device=device)  # (N, P)
        b_rows = b_img[:, None].expand(-1, P)
        out_embeds[b_rows, rows] = image_features.to(out_embeds.dtype)
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
