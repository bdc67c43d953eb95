"""Per-patch visual words of an image: the argmax token of q drawn over the image, top-k as records.

The reference README shows, for each patch of an image, "the token with the highest probability in
its corresponding visual words" (https://github.com/pengts/VW-LMM at b1aeaef, README,
``assets/visualization_vp.png``). Here::

    image ─► pad to square ─► image processor ─► LLaVAModel.get_image_features ─► F [P, D]
          ─► q = softmax(vm_head(F)) [P, V] ─► argmax / top-k per patch, on the g × g patch grid

F is the projector output *before* any pseudo-image-feature replacement (the visual words are
defined on F). The patch grid is the vision tower's: g = √(number of patch tokens); prefix tokens
kept by ``select_feature='cls_patch'`` (CLS, registers) are not drawn.

Used by ``tools/visualize_visual_words.py``; PIL only (no matplotlib).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.image_processing import background_color, expand2square, process_images
from ..models.base import MultimodalModel

__all__ = ['VisualWordGrid', 'visual_word_grid', 'token_texts', 'grid_records', 'render_visual_words',
           'visualize_image']


@dataclass
class VisualWordGrid:
    """Visual words of one image on its patch grid.

    Attributes:
        grid: g, patches per side.
        topk_ids: ``[g, g, k]`` token ids, most probable first (``[..., 0]`` is the argmax).
        topk_probs: ``[g, g, k]`` their probabilities under q.
        entropy: ``[g, g]`` entropy of q per patch (nats; log V for a flat visual word).
    """

    grid: int
    topk_ids: torch.Tensor
    topk_probs: torch.Tensor
    entropy: torch.Tensor


@torch.no_grad()
def visual_word_grid(model: MultimodalModel, pixel_values: torch.Tensor, top_k: int = 5) -> VisualWordGrid:
    """q = softmax(vm_head(F)) for one image, arranged on the vision tower's patch grid.

    Args:
        model: a :class:`~mllm_align.models.LLaVAModel` with a ``visual_words`` plug-in.
        pixel_values: ``[1, 3, H, W]`` one processed image.
        top_k: tokens kept per patch.

    Raises:
        ValueError: the model has no ``visual_words``, more than one image is given, or the patch
            tokens do not form a square grid.
    """
    from .visual_words import VisualWords
    vw = next((p for p in model.plugins.values() if isinstance(p, VisualWords)), None)
    if vw is None:
        raise ValueError('The model has no VisualWords plug-in: build it from a config with '
                         '`plugins=dict(visual_words=dict(type=VisualWords, ...))` (projects/visual_words/configs/).')
    if pixel_values.dim() != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f'visual_word_grid takes one image [1, 3, H, W], got {tuple(pixel_values.shape)}.')
    tower = model.visual_encoder
    num_patches = tower.num_patches
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f'The vision tower has {num_patches} patch tokens per image, not a square grid.')
    # The visual words are defined on F, before any plug-in transform (pif's pseudo features).
    feats = model.encode_images(pixel_values)[0]  # (P, D)
    feats = feats[feats.shape[0] - num_patches:]  # drop prefix tokens ('cls_patch'): (g·g, D)
    weight = vw.vm_head.weight
    log_q = torch.log_softmax(feats.to(weight.dtype) @ weight.T, dim=-1).float()  # (g·g, V)
    k = min(top_k, log_q.shape[-1])
    top_logp, top_ids = log_q.topk(k, dim=-1)  # (g·g, k)
    entropy = -(log_q.exp() * log_q).sum(-1)  # (g·g,)
    return VisualWordGrid(grid=grid, topk_ids=top_ids.reshape(grid, grid, k).cpu(),
                          topk_probs=top_logp.exp().reshape(grid, grid, k).cpu(),
                          entropy=entropy.reshape(grid, grid).cpu())


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable text of each token id: ``decode([id])`` stripped, else the raw token (byte tokens), else ``<id>``."""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)]).strip() if tokenizer is not None else ''
        if (not text or '\ufffd' in text) and tokenizer is not None:  # empty, or a partial UTF-8 byte
            raw = tokenizer.convert_ids_to_tokens(int(i))
            text = (raw or '').strip()
        out.append(text or f'<{int(i)}>')
    return out


def grid_records(vwg: VisualWordGrid, tokenizer: Any) -> list[dict[str, Any]]:
    """One JSON-ready record per patch (row-major): row, col, argmax and top-k tokens with probabilities."""
    records = []
    g, k = vwg.grid, vwg.topk_ids.shape[-1]
    for r in range(g):
        for c in range(g):
            ids = vwg.topk_ids[r, c].tolist()
            texts = token_texts(tokenizer, ids)
            probs = vwg.topk_probs[r, c].tolist()
            records.append({
                'row': r, 'col': c, 'argmax_id': ids[0], 'argmax_token': texts[0],
                'entropy': float(vwg.entropy[r, c]),
                'topk': [{'id': ids[j], 'token': texts[j], 'prob': float(probs[j])} for j in range(k)]})
    return records


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + '…', font=font) > width:
        text = text[:-1]
    return text + '…'


def render_visual_words(image: Image.Image, words: list[list[str]], cell_px: int = 64,
                        pad_color: tuple[int, int, int] = (127, 127, 127)) -> Image.Image:
    """Draw a g × g grid of words over ``image`` (padded to a square, as the model saw it).

    The image is resized to ``g · cell_px`` pixels per side so the words are legible; each cell gets
    its word on a translucent dark box, and grid lines mark the patches.

    Args:
        image: the input image (any size and mode).
        words: ``g`` rows of ``g`` strings.
        cell_px: pixels per patch cell in the output.
        pad_color: fill used to pad a non-square image (the processor mean, as in training).
    """
    g = len(words)
    if g == 0 or any(len(row) != g for row in words):
        raise ValueError(f'render_visual_words needs a square grid of words, got rows of lengths '
                         f'{[len(row) for row in words]}.')
    side = g * cell_px
    base = expand2square(image.convert('RGB'), pad_color).resize((side, side), Image.BICUBIC).convert('RGBA')
    overlay = Image.new('RGBA', base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = _font(max(8, cell_px // 4))
    for r in range(g):
        for c in range(g):
            x0, y0 = c * cell_px, r * cell_px
            draw.rectangle([x0, y0, x0 + cell_px - 1, y0 + cell_px - 1], outline=(255, 255, 255, 110))
            text = _fit(draw, words[r][c], font, cell_px - 4)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            tx, ty = x0 + (cell_px - tw) / 2 - left, y0 + (cell_px - th) / 2 - top
            draw.rectangle([tx + left - 2, ty + top - 2, tx + right + 2, ty + bottom + 2], fill=(0, 0, 0, 150))
            draw.text((tx, ty), text, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(base, overlay).convert('RGB')


def visualize_image(model: MultimodalModel, image: Image.Image, image_processor: Any, top_k: int = 5,
                    cell_px: int = 64, pad_to_square: bool = True) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The PNG-ready drawing and the per-patch records of one image (what the tool writes).

    The image goes through the training pipeline's preprocessing (:func:`process_images`: pad to a
    square with the processor mean, then the HF processor).
    """
    pixel_values = process_images([image], image_processor, pad_to_square=pad_to_square)  # (1, 3, H, W)
    device = next(model.parameters()).device
    vwg = visual_word_grid(model, pixel_values.to(device), top_k=top_k)
    records = grid_records(vwg, model.tokenizer)
    words = [[rec['argmax_token'] for rec in records[r * vwg.grid:(r + 1) * vwg.grid]] for r in range(vwg.grid)]
    drawing = render_visual_words(image, words, cell_px=cell_px, pad_color=background_color(image_processor))
    return drawing, records
