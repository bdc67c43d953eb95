"""Open a user's image file as the 8-bit RGB picture a viewer shows, or fail naming the file.

Every place that reads a user image (training samples, chat-sample and MIR probe images, the
visualisation tool) should call :func:`load_image`, so that they all see the same pixels:

1. **Size guard before decoding.** The width and height are read from the file header and
   ``width × height`` is compared with ``max_pixels`` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`,
   Pillow's own warning threshold, ≈ 9459²; ``None``: no limit) *before* any pixel is decoded;
   over the limit raises :class:`ImageTooLargeError` naming the file, the size, the limit and the
   setting. Pillow's own guard is the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``; it is lifted
   (set to ``None`` under a lock, restored right after) while the header is parsed, and while
   the pixels are decoded only if ``max_pixels`` allows more than Pillow does. This module never
   changes it for good.
2. **EXIF orientation** is applied (``ImageOps.exif_transpose``), as viewers and annotation tools
   show the picture. LLaVA's original loader (``Image.open(...).convert('RGB')``) ignores it;
   ``exif_transpose=False`` reproduces that.
3. **Conversion to 8-bit RGB** (:func:`to_rgb`), with these rules:

   * ``I;16``/``I;16L``/``I;16B``/``I;16N`` (16-bit unsigned): the full range 0..65535 maps
     linearly onto 0..255, rounded to nearest: ``v8 = floor((2·v + 257) / 514)`` (= round(v / 257)).
   * ``I`` (32-bit signed): taken as 16-bit data (the same rule) when every value is in 0..65535,
     which is how Pillow and most writers store 16-bit pixels in this mode; otherwise the image's
     own range min..max maps linearly onto 0..255 (a constant image becomes 0).
   * ``F`` (32-bit float): ``round(255 · v)`` when every finite value is in [0, 1]; otherwise
     min..max onto 0..255 as above; NaN becomes 0.
   * Alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, and ``P``/``L``/``RGB`` with a
     ``transparency`` entry) is composited over ``background`` (``out = α·c + (1 − α)·bg`` with
     α = A / 255), never dropped: dropping it would show whatever colour the encoder left under
     transparent pixels (often black).
   * Everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) goes through
     Pillow's own conversion to RGB (``1`` → 0/255; ``CMYK`` without ICC colour management).

Greyscale results are replicated to three channels. A file Pillow cannot decode raises
:class:`UnreadableImageError` (an ``OSError``) naming the file.
"""
from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ['DEFAULT_MAX_IMAGE_PIXELS', 'WHITE', 'ImageTooLargeError', 'UnreadableImageError',
           'load_image', 'read_image_size', 'to_rgb']

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default warning threshold, ≈ 9459 × 9459
WHITE = (255, 255, 255)

_ALPHA_MODES = frozenset({'RGBA', 'RGBa', 'LA', 'La', 'PA'})
_UINT16_MODES = frozenset({'I;16', 'I;16L', 'I;16B', 'I;16N'})
_PIL_GUARD_LOCK = threading.Lock()


class ImageTooLargeError(ValueError):
    """An image with more pixels than the configured limit (``size`` = (width, height), ``limit``)."""

    def __init__(self, message: str, size: tuple[int, int], limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class UnreadableImageError(OSError):
    """A file that is not an image Pillow can decode (unknown format, truncated, corrupt)."""


@contextmanager
def _pil_guard_lifted() -> Iterator[None]:
    """Set ``PIL.Image.MAX_IMAGE_PIXELS = None`` for the duration (under a lock), then restore it.

    Other threads that open images without this lock in that window run without Pillow's guard;
    DataLoader workers are processes, so in training that is only this loader.
    """
    with _PIL_GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _exceeds_pil_guard(max_pixels: int | None) -> bool:
    """Whether images allowed by ``max_pixels`` can trip Pillow's global guard while decoding."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    return pil_limit is not None and (max_pixels is None or max_pixels > pil_limit)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding pixels and with no size limit.

    Raises:
        UnreadableImageError: Pillow cannot identify the file.
    """
    path = os.fspath(path)
    try:
        with _pil_guard_lifted(), Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f'image {path!r} cannot be read ({err})') from None


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
               background: Sequence[int] = WHITE, exif_transpose: bool = True) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (see the module docstring for every rule).

    Args:
        path: the image file.
        max_pixels: largest ``width × height`` decoded (checked from the header first);
            ``None``: no limit.
        background: RGB colour (0–255) that transparent pixels are composited over.
        exif_transpose: rotate/flip as the EXIF ``Orientation`` tag says.

    Returns:
        A decoded ``RGB`` :class:`PIL.Image.Image` (not tied to the file).

    Raises:
        ImageTooLargeError: ``width × height > max_pixels``; names the file, size and limit.
        UnreadableImageError: not an image, or truncated/corrupt data.
    """
    path = os.fspath(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f'max_pixels must be positive or None, got {max_pixels!r}.')
    try:
        with _pil_guard_lifted():
            image = Image.open(path)  # header only: nothing is decoded yet
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f'image {path!r} cannot be read ({err})') from None
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                f'image {path!r} is {width}×{height} = {width * height:,} pixels, more than the '
                f'limit of {max_pixels:,} (a decompression-bomb guard, checked before decoding); '
                'raise `max_image_pixels` (None: no limit) if the image is genuine, or downscale it',
                (width, height), max_pixels)
        try:
            with _pil_guard_lifted() if _exceeds_pil_guard(max_pixels) else nullcontext(), \
                    warnings.catch_warnings():
                # the size was checked above against our own limit; Pillow's warning names no file
                warnings.simplefilter('ignore', Image.DecompressionBombWarning)
                image.load()
                if exif_transpose:
                    transposed = ImageOps.exif_transpose(image)
                    image = transposed if transposed is not None else image
                rgb = to_rgb(image, background)
                return rgb.copy() if rgb is image else rgb  # `with image` closes the original
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UnreadableImageError(f'image {path!r} cannot be decoded ({err})') from None


def _rescale(values: np.ndarray, unit_range: bool) -> np.ndarray:
    """Float array → uint8: ``round(255·v)`` if ``unit_range``, else min..max onto 0..255."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if not unit_range:
        lo, hi = float(values.min()), float(values.max())
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` image → 8-bit ``L`` by the rules in the module docstring."""
    arr = np.asarray(image)
    if image.mode in _UINT16_MODES or (image.mode == 'I' and arr.size and arr.min() >= 0
                                       and arr.max() <= 65535):
        v = arr.astype(np.uint32)
        out = ((2 * v + 257) // 514).astype(np.uint8)  # round(v / 257): 0..65535 → 0..255
    elif image.mode == 'F':
        finite = arr[np.isfinite(arr)]
        out = _rescale(arr, unit_range=bool(finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)))
    else:  # 'I' outside 0..65535
        out = _rescale(arr, unit_range=False)
    return Image.fromarray(out, mode='L')


def to_rgb(image: Image.Image, background: Sequence[int] = WHITE) -> Image.Image:
    """Any PIL image → 8-bit ``RGB``: high bit depths rescaled, alpha composited on ``background``.

    See the module docstring for the exact rule per mode. An ``RGB`` image without transparency
    is returned unchanged (same object).

    Args:
        image: a PIL image in any mode.
        background: RGB colour (0–255) under transparent pixels.

    Raises:
        ValueError: a mode Pillow cannot convert to RGB.
    """
    if len(background) != 3:
        raise ValueError(f'background must be an RGB triple, got {tuple(background)!r}.')
    mode = image.mode
    if mode in _UINT16_MODES or mode in ('I', 'F'):
        return _high_bit_depth_to_l(image).convert('RGB')
    has_alpha = mode in _ALPHA_MODES or (mode in ('P', 'L', 'RGB') and 'transparency' in image.info)
    if has_alpha:
        rgba = image.convert('RGBA')
        base = Image.new('RGBA', rgba.size, tuple(int(c) for c in background) + (255,))
        return Image.alpha_composite(base, rgba).convert('RGB')
    if mode == 'RGB':
        return image
    return image.convert('RGB')
