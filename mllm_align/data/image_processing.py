"""Image preprocessing for LLaVA-style training: pad to square, then the HF image processor.

LLaVA-1.5 (``image_aspect_ratio='pad'``) pads every image to a centred square filled with the
processor's normalisation mean, so that the centre crop of the vision tower's processor keeps the
whole image (Liu et al., "Improved Baselines with Visual Instruction Tuning", Sec. 3.1;
``llava/mm_utils.py:expand2square``). Resize, crop and normalisation are the HF processor's
(``CLIPImageProcessor``, ``SiglipImageProcessor``, ``BitImageProcessor``, … loaded from a local
directory). No torchvision.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['expand2square', 'background_color', 'process_images']


def expand2square(pil_image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad ``pil_image`` to a square of side ``max(w, h)``, the image centred, ``background_color`` around.

    A square image is returned unchanged (same object).
    """
    width, height = pil_image.size
    if width == height:
        return pil_image
    side = max(width, height)
    result = Image.new(pil_image.mode, (side, side), background_color)
    result.paste(pil_image, ((side - width) // 2, (side - height) // 2))
    return result


def background_color(image_processor: Any) -> tuple[int, int, int]:
    """The pad colour LLaVA-1.5 uses: the processor's ``image_mean`` in 0–255 (mid-grey if it has none)."""
    mean = getattr(image_processor, 'image_mean', None)
    if mean is None:
        return (127, 127, 127)
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    return tuple(int(x * 255) for x in mean)  # type: ignore[return-value]


def process_images(images: Sequence[Image.Image], image_processor: Any,
                   pad_to_square: bool = True) -> torch.Tensor:
    """PIL images → ``FloatTensor [N, 3, H, W]`` through ``image_processor``.

    Each image is converted to RGB, optionally padded to a square (:func:`expand2square` with
    :func:`background_color`), then resized / cropped / normalised by the processor, which fixes
    ``H, W`` for every image.

    Args:
        images: N PIL images (any mode).
        image_processor: a HF image processor (callable returning ``pixel_values``).
        pad_to_square: LLaVA-1.5's ``'pad'`` aspect-ratio mode.

    Raises:
        ValueError: if ``images`` is empty.
    """
    if len(images) == 0:
        raise ValueError('process_images needs at least one image.')
    fill = background_color(image_processor)
    prepared = []
    for image in images:
        image = image.convert('RGB')
        if pad_to_square:
            image = expand2square(image, fill)
        prepared.append(image)
    out = image_processor(prepared, return_tensors='np')
    pixel_values = out['pixel_values'] if isinstance(out, dict) or hasattr(out, 'keys') else out
    if isinstance(pixel_values, list):
        pixel_values = np.stack(pixel_values)
    return torch.as_tensor(np.ascontiguousarray(pixel_values), dtype=torch.float32)  # (N, 3, H, W)
