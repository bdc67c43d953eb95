"""Image preprocessing for LLaVA-style training: pad to square, then the HF image processor.

LLaVA-1.5 (``image_aspect_ratio='pad'``) pads every image to a centred square filled with the
processor's normalisation mean, so that the centre crop of the vision tower's processor keeps the
whole image (Liu et al., "Improved Baselines with Visual Instruction Tuning", Sec. 3.1;
``llava/mm_utils.py:expand2square``). Resize, crop and normalisation are the HF processor's
(``CLIPImageProcessor``, ``SiglipImageProcessor``, ``BitImageProcessor``, … loaded from a local
directory). No torchvision. A plain ``CLIPImageProcessor`` with the usual settings (LLaVA's towers) is not
called per image: :func:`clip_fast_path` does the same PIL resize, crop and a tabulated rescale + normalise,
bitwise equal to the processor's output, without its per-call argument checks.

Every image is first made 8-bit RGB by :func:`~mllm_align.data.image_loading.to_rgb`: 16-bit and
float images are scaled (not clipped to white), transparent pixels are composited over
``alpha_background`` (``'white'`` by default, ``'mean'`` for the processor's mean colour, or an
RGB triple), never dropped. Files should be opened with
:func:`~mllm_align.data.image_loading.load_image` (size guard, EXIF orientation).
"""
from __future__ import annotations

import functools
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from .image_loading import WHITE, to_rgb

__all__ = ['expand2square', 'background_color', 'resolve_background', 'process_images', 'process_image_inputs',
           'has_patch_grid', 'has_token_counts', 'image_token_counts', 'clip_fast_path']

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
    fast = clip_fast_path(image_processor)
    if fast is not None and all(min(im.size) > 3 for im in prepared):
        return torch.from_numpy(np.stack([fast(im) for im in prepared]))
    out = image_processor(prepared, return_tensors='np')
    pixel_values = out['pixel_values'] if isinstance(out, dict) or hasattr(out, 'keys') else out
    if isinstance(pixel_values, list):
        pixel_values = np.stack(pixel_values)
    return torch.as_tensor(np.ascontiguousarray(pixel_values), dtype=torch.float32)  # (N, 3, H, W)


class _ClipPath:
    """``CLIPImageProcessor``'s slow path for one 8-bit RGB PIL image, without its per-call overhead.

    The processor (transformers 4.57, ``use_fast=False``) does, per image: ``np.array`` → PIL again →
    ``Image.resize((w', h'), resample)`` with the short side → ``shortest_edge`` and the long side →
    ``int(shortest_edge · long / short)`` → centre crop at ``top = (h' - crop_h) // 2``, ``left = (w' - crop_w) // 2``
    → ``float32(float64(v) · rescale_factor)`` → ``(x - float32(mean_c)) / float32(std_c)`` in float32 → CHW.
    Here the same PIL resize, the same integer crop, and the last two steps as a lookup table: for 8-bit
    input the output of channel c is a function of the byte v alone, ``table[c, v]`` computed with exactly those
    numpy float32 operations (subtraction and division are correctly rounded, so elementwise or tabulated
    gives the same bits). The output is therefore bitwise equal to the processor's (``tests/data/
    test_image_processing.py`` checks it on real-sized images of many shapes). Measured on the 2-core CPU of
    ``docs/benchmarks.md``: 0.020 vs 0.077 ms at 32 px, where the processor's argument checks and format inference
    dominate; 4.2 vs 5.7 ms for 640×480 → 336 px, where PIL's bicubic resize (the same in both) dominates.
    """

    def __init__(self, shortest_edge: int, crop_h: int, crop_w: int, resample: int, rescale_factor: float,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.shortest_edge, self.crop_h, self.crop_w, self.resample = shortest_edge, crop_h, crop_w, resample
        v = np.arange(256, dtype=np.uint8)
        scaled = (v.astype(np.float64) * rescale_factor).astype(np.float32)  # transformers' rescale
        mean32, std32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        self.table = ((scaled[None, :] - mean32[:, None]) / std32[:, None]).astype(np.float32)  # [3, 256]

    def __call__(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)  # get_resize_output_image_size
        size = (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)
        pixels = np.asarray(image.resize(size, resample=self.resample))  # [h', w', 3] uint8
        top, left = (size[1] - self.crop_h) // 2, (size[0] - self.crop_w) // 2
        pixels = pixels[top:top + self.crop_h, left:left + self.crop_w]
        out = np.empty((3, self.crop_h, self.crop_w), dtype=np.float32)
        for c in range(3):
            out[c] = self.table[c][pixels[..., c]]
        return out


def clip_fast_path(image_processor: Any) -> _ClipPath | None:
    """A :class:`_ClipPath` for ``image_processor`` if it is exactly a (slow) ``CLIPImageProcessor`` with the
    settings that path reproduces, else None (the processor itself is then called).

    Required: the class itself (no subclass, no fast processor), resize by ``shortest_edge`` only, a centre crop
    no larger than that edge (so the crop never pads), rescale and normalise on, RGB conversion on, three-channel
    mean / std, a PIL resampling filter. The settings are read on every call and the path (its lookup table) is
    cached per settings, not stored on the processor: a processor changed after a dataset was built gets a path
    for its new settings, and the processor stays as transformers made it (``save_pretrained`` writes its
    attributes). Images with a side of 3 px or less always go to the processor (its channel-format inference
    reads such shapes differently).
    """
    if image_processor is None:
        return None
    try:
        from transformers import CLIPImageProcessor
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    p = image_processor
    if type(p) is not CLIPImageProcessor:
        return None
    size, crop = dict(p.size or {}), dict(p.crop_size or {})
    mean, std = p.image_mean, p.image_std
    ok = (p.do_resize and set(size) == {'shortest_edge'} and p.do_center_crop and set(crop) == {'height', 'width'}
          and p.do_rescale and p.do_normalize and p.do_convert_rgb in (True, None)
          and isinstance(mean, (list, tuple)) and len(mean) == 3 and isinstance(std, (list, tuple))
          and len(std) == 3 and int(p.resample) in (0, 1, 2, 3, 4, 5)
          and 0 < crop['height'] <= size['shortest_edge'] and 0 < crop['width'] <= size['shortest_edge'])
    if not ok:
        return None
    return _clip_path_for(int(size['shortest_edge']), int(crop['height']), int(crop['width']), int(p.resample),
                          float(p.rescale_factor), tuple(float(m) for m in mean), tuple(float(x) for x in std))


@functools.lru_cache(maxsize=32)
def _clip_path_for(shortest_edge: int, crop_h: int, crop_w: int, resample: int, rescale_factor: float,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> _ClipPath:
    return _ClipPath(shortest_edge, crop_h, crop_w, resample, rescale_factor, mean, std)
