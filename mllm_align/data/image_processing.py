"""Image preprocessing for LLaVA-style training: pad to square, then the HF image processor.

LLaVA-1.5 (``image_aspect_ratio='pad'``) pads every image to a centred square filled with the
processor's normalisation mean, so that the centre crop of the vision tower's processor keeps the
whole image (Liu et al., "Improved Baselines with Visual Instruction Tuning", Sec. 3.1;
``llava/mm_utils.py:expand2square``). Resize, crop and normalisation are the HF processor's
(``CLIPImageProcessor``, ``SiglipImageProcessor``, ``BitImageProcessor``, … loaded from a local
directory). No torchvision.

Every image is first made 8-bit RGB by :func:`~mllm_align.data.image_loading.to_rgb`: 16-bit and
float images are scaled (not clipped to white), transparent pixels are composited over
``alpha_background`` (``'white'`` by default, ``'mean'`` for the processor's mean colour, or an
RGB triple), never dropped. Files should be opened with
:func:`~mllm_align.data.image_loading.load_image` (size guard, EXIF orientation).
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from .image_loading import WHITE, to_rgb

__all__ = ['expand2square', 'background_color', 'resolve_background', 'process_images', 'process_image_inputs',
           'has_patch_grid', 'has_token_counts', 'image_token_counts']

AlphaBackground = Literal['white', 'mean'] | tuple[int, int, int]


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


def resolve_background(spec: AlphaBackground, image_processor: Any) -> tuple[int, int, int]:
    """The RGB colour transparent pixels are composited over.

    Args:
        spec: ``'white'`` (255, 255, 255), ``'mean'`` (:func:`background_color` of the
            processor: the pad colour, ≈ 0 after normalisation) or an RGB triple of 0–255 ints.
        image_processor: consulted for ``'mean'``.

    Raises:
        ValueError: anything else.
    """
    if isinstance(spec, str):
        if spec == 'white':
            return WHITE
        if spec == 'mean':
            return background_color(image_processor)
    elif (isinstance(spec, (tuple, list)) and len(spec) == 3
          and all(isinstance(c, int) and 0 <= c <= 255 for c in spec)):
        return tuple(spec)  # type: ignore[return-value]
    raise ValueError(f"alpha_background must be 'white', 'mean' or an RGB triple of 0-255 ints, "
                     f'got {spec!r}.')


def has_patch_grid(image_processor: Any) -> bool:
    """Whether ``image_processor`` cuts images into variable patch grids (Qwen2-VL's: it returns
    ``image_grid_thw`` beside flattened patches) rather than fixed-size ``[3, H, W]`` images."""
    return image_processor is not None and 'image_grid_thw' in (getattr(image_processor, 'model_input_names', None)
                                                                or ())


def has_token_counts(image_processor: Any) -> bool:
    """Whether ``image_processor`` decides each image's LLM token count itself: a patch grid
    (:func:`has_patch_grid`) or a processor with ``image_token_counts(image_inputs)`` (InternVL's tiles,
    :class:`~mllm_align.data.internvl_tiles.InternVLTileProcessor`, which returns several entries)."""
    return has_patch_grid(image_processor) or callable(getattr(image_processor, 'image_token_counts', None))


def image_token_counts(image_processor: Any, image_inputs: dict[str, Any]) -> list[int] | None:
    """LLM positions each processed image takes (:func:`has_token_counts` processors), else None (a fixed
    ``num_image_tokens``). Patch grids: ``t·h·w / merge²``; others: their own ``image_token_counts``."""
    if has_patch_grid(image_processor):
        merge = int(getattr(image_processor, 'merge_size', 1))
        return (image_inputs['image_grid_thw'].prod(-1) // merge ** 2).tolist()
    counter = getattr(image_processor, 'image_token_counts', None)
    return list(counter(image_inputs)) if callable(counter) else None


def _prepare(images: Sequence[Image.Image], image_processor: Any, pad_to_square: bool,
             alpha_background: AlphaBackground) -> list[Image.Image]:
    if len(images) == 0:
        raise ValueError('process_images needs at least one image.')
    fill = background_color(image_processor)
    alpha_fill = resolve_background(alpha_background, image_processor)
    prepared = []
    for image in images:
        image = to_rgb(image, alpha_fill)
        if pad_to_square:
            image = expand2square(image, fill)
        prepared.append(image)
    return prepared


def process_image_inputs(images: Sequence[Image.Image], image_processor: Any, pad_to_square: bool = True,
                         alpha_background: AlphaBackground = 'white') -> dict[str, torch.Tensor]:
    """PIL images → the model's image entries, for fixed-size and patch-grid processors alike.

    Fixed-size processors (CLIP, SigLIP, …): ``{'pixel_values': [N, 3, H, W]}`` as :func:`process_images`.
    Patch-grid processors (:func:`has_patch_grid`, e.g. ``Qwen2VLImageProcessor``): each image is resized
    (aspect kept, within the processor's ``min_pixels``/``max_pixels``, sides a multiple of
    ``patch_size · merge_size``) and cut into p×p patches of T frames: ``{'pixel_values': [S, C·T·p·p],
    'image_grid_thw': [N, 3]}`` with S = Σ t·h·w (patches of image i are rows
    ``Σ_{j<i} t_j·h_j·w_j`` onward).

    Processors with their own token counts (:func:`has_token_counts`, e.g. InternVL's tiles): every entry
    they return (``{'pixel_values': [ΣT_i, 3, S, S], 'num_tiles': [N]}``).

    Args and Raises: as :func:`process_images` (``pad_to_square`` is usually False for patch grids and
    tiles: they take any aspect ratio).
    """
    if has_token_counts(image_processor) and not has_patch_grid(image_processor):
        prepared = _prepare(images, image_processor, pad_to_square, alpha_background)
        return {k: torch.as_tensor(v) for k, v in dict(image_processor(prepared)).items()}
    if not has_patch_grid(image_processor):
        return {'pixel_values': process_images(images, image_processor, pad_to_square, alpha_background)}
    prepared = _prepare(images, image_processor, pad_to_square, alpha_background)
    out = image_processor(images=prepared, return_tensors='np')
    pixel_values = torch.as_tensor(np.ascontiguousarray(out['pixel_values']), dtype=torch.float32)  # (S, C·T·p·p)
    grid = torch.as_tensor(np.asarray(out['image_grid_thw']), dtype=torch.long)  # (N, 3)
    return {'pixel_values': pixel_values, 'image_grid_thw': grid}


def process_images(images: Sequence[Image.Image], image_processor: Any,
                   pad_to_square: bool = True,
                   alpha_background: AlphaBackground = 'white') -> torch.Tensor:
    """PIL images → ``FloatTensor [N, 3, H, W]`` through ``image_processor``.

    Each image is converted to 8-bit RGB (:func:`~mllm_align.data.image_loading.to_rgb`: high bit
    depths scaled, alpha composited over ``alpha_background``), optionally padded to a square
    (:func:`expand2square` with :func:`background_color`), then resized / cropped / normalised by
    the processor, which fixes ``H, W`` for every image.

    Args:
        images: N PIL images (any mode).
        image_processor: a HF image processor (callable returning ``pixel_values``).
        pad_to_square: LLaVA-1.5's ``'pad'`` aspect-ratio mode.
        alpha_background: see :func:`resolve_background`.

    Raises:
        ValueError: if ``images`` is empty, or a bad ``alpha_background``; a patch-grid processor
            (Qwen2-VL's: use :func:`process_image_inputs`, which keeps ``image_grid_thw``).
    """
    if has_patch_grid(image_processor):
        raise ValueError(f'{type(image_processor).__name__} returns patches with an image_grid_thw, not [N, 3, H, W] '
                         'images: use mllm_align.data.image_processing.process_image_inputs (or the model\'s '
                         'process_images), which returns both.')
    prepared = _prepare(images, image_processor, pad_to_square, alpha_background)
    out = image_processor(prepared, return_tensors='np')
    pixel_values = out['pixel_values'] if isinstance(out, dict) or hasattr(out, 'keys') else out
    if isinstance(pixel_values, list):
        pixel_values = np.stack(pixel_values)
    return torch.as_tensor(np.ascontiguousarray(pixel_values), dtype=torch.float32)  # (N, 3, H, W)
