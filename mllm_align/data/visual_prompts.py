"""Visual prompts for object matching (MMVM, CoLVA): contours and numeric ID tags drawn on an image.

The query object is outlined in a named colour (the name goes into the question; the benchmark uses cyan).
Candidates get distinct colours (never near-white, never the query's) and a white numeric ID on a filled box of
their colour, centred on the centroid of the object's largest connected part; one font size for all tags of an
image — the smallest that each object's size calls for (about a third of its box's shorter side), so no tag
dwarfs a small object. IDs are a seeded random permutation of 1..K over the objects; the options are ``A.. ``
over the sorted IDs, then "None of the above choices are correct"; at most 25 candidates (26 letters).

Masks are ``[H, W]`` bool arrays (:func:`decode_mask` reads COCO RLE or polygons).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..metrics.mmvm import NONE_OPTION

__all__ = ['MAX_CANDIDATES', 'NAMED_COLOURS', 'assign_ids', 'candidate_colours', 'decode_mask', 'draw_candidates',
           'draw_query', 'options_for_ids', 'tag_font_size']

MAX_CANDIDATES = 25
#: Colours by name; the query's name appears in the question text.
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    'cyan': (0, 255, 255), 'red': (230, 25, 75), 'green': (60, 180, 75), 'blue': (0, 80, 220),
    'yellow': (255, 200, 0), 'magenta': (240, 50, 230), 'orange': (245, 130, 48), 'purple': (145, 30, 180),
    'maroon': (128, 0, 0), 'dark green': (0, 110, 0), 'navy': (0, 0, 128), 'olive': (128, 128, 0),
    'brown': (170, 110, 40), 'teal': (0, 128, 128), 'pink': (250, 120, 190), 'lime': (170, 255, 50),
    'grey': (110, 110, 110), 'black': (0, 0, 0), 'crimson': (160, 0, 40), 'indigo': (75, 0, 130),
    'gold': (200, 160, 0), 'sky blue': (80, 170, 255), 'salmon': (250, 128, 114), 'plum': (130, 60, 110),
    'chocolate': (120, 60, 20), 'violet': (200, 120, 255)}


def _near_white(rgb: Sequence[int]) -> bool:
    return min(rgb) > 200


def candidate_colours(n: int, exclude: Sequence[str] = ('cyan',)) -> list[tuple[str, tuple[int, int, int]]]:
    """``n`` distinct named colours in a fixed order, without ``exclude`` (the query's) and near-white ones."""
    pool = [(k, v) for k, v in NAMED_COLOURS.items() if k not in exclude and not _near_white(v)]
    if n > len(pool):
        raise ValueError(f'{n} candidates need {n} distinct colours; {len(pool)} are defined (at most '
                         f'{MAX_CANDIDATES} candidates).')
    return pool[:n]


def assign_ids(n: int, rng: np.random.Generator) -> list[int]:
    """``ids[j]``: the tag of object j, a seeded random permutation of 1..n."""
    if not 1 <= n <= MAX_CANDIDATES:
        raise ValueError(f'{n} candidates: give 1 to {MAX_CANDIDATES} (one option letter each, and one for '
                         '"None of the above").')
    return [int(i) + 1 for i in rng.permutation(n)]


def options_for_ids(n: int) -> dict[str, str]:
    """``{'A': '1', …, letter n: str(n), next letter: NONE_OPTION}`` (the options over the sorted IDs)."""
    if not 1 <= n <= MAX_CANDIDATES:
        raise ValueError(f'{n} candidates: give 1 to {MAX_CANDIDATES}.')
    options = {chr(65 + i): str(i + 1) for i in range(n)}
    options[chr(65 + n)] = NONE_OPTION
    return options


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO RLE (``{'size', 'counts'}``, compressed or not) or polygons (``[[x1, y1, …], …]``) → ``[H, W]`` bool.

    Raises:
        ValueError: another form, an RLE of another size, a polygon outside the image.
    """
    if isinstance(segmentation, dict) and 'counts' in segmentation:
        from pycocotools import mask as mask_utils
        rle = dict(segmentation)
        if isinstance(rle['counts'], list):
            rle = mask_utils.frPyObjects(rle, *rle['size'])
        elif isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode()
        if tuple(rle['size']) != (height, width):
            raise ValueError(f'RLE size {list(rle["size"])} is not the image size {[height, width]}.')
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) and len(p) >= 6
                                                                for p in segmentation):
        canvas = Image.new('L', (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segmentation:
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -0.5 or min(ys) < -0.5 or max(xs) > width + 0.5 or max(ys) > height + 0.5:
                raise ValueError(f'a polygon lies outside the {width}×{height} image.')
            draw.polygon([(float(x), float(y)) for x, y in zip(xs, ys)], fill=1)
        return np.asarray(canvas, dtype=bool)
    raise ValueError('segmentation is neither COCO RLE nor a list of polygons.')


def _check(mask: np.ndarray, size: tuple[int, int], what: str) -> None:
    if mask.shape != (size[1], size[0]):
        raise ValueError(f'{what}: mask {mask.shape[::-1]} is not the image size {size}.')
    if not mask.any():
        raise ValueError(f'{what}: the mask is empty.')


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage as ndi
    return ndi.binary_dilation(mask, iterations=width) & ~mask


def _largest_part_centroid(mask: np.ndarray) -> tuple[float, float]:
    from scipy import ndimage as ndi
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def tag_font_size(masks: Sequence[np.ndarray], minimum: int = 9, maximum: int = 40) -> int:
    """The one font size for an image's tags: min over objects of a third of the box's shorter side, clamped."""
    sizes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        sizes.append(min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 3)
    return int(np.clip(min(sizes), minimum, maximum))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_query(image: Image.Image, mask: np.ndarray, colour: str = 'cyan', width: int = 3) -> Image.Image:
    """A copy of ``image`` with the query object's contour in the named ``colour``."""
    if colour not in NAMED_COLOURS:
        raise ValueError(f'colour {colour!r} is not one of {sorted(NAMED_COLOURS)}.')
    _check(mask, image.size, 'query')
    arr = np.asarray(image.convert('RGB')).copy()
    arr[_ring(mask, width)] = NAMED_COLOURS[colour]
    return Image.fromarray(arr)


def draw_candidates(image: Image.Image, masks: Sequence[np.ndarray], ids: Sequence[int],
                    query_colour: str = 'cyan', width: int = 3) -> Image.Image:
    """A copy of ``image`` with candidate j outlined in its colour and tagged ``ids[j]`` (module docstring).

    The colour goes with the ID (ID 1 always gets the first colour), so an ID reads the same in every case.
    """
    if len(masks) != len(ids) or not masks:
        raise ValueError(f'{len(masks)} masks for {len(ids)} ids: give one id per candidate (at least one).')
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise ValueError(f'ids {list(ids)} are not a permutation of 1..{len(ids)}.')
    for j, m in enumerate(masks):
        _check(m, image.size, f'candidate {j}')
    colours = candidate_colours(len(ids), exclude=(query_colour,))
    arr = np.asarray(image.convert('RGB')).copy()
    for m, i in zip(masks, ids):
        arr[_ring(m, width)] = colours[i - 1][1]
    out = Image.fromarray(arr)
    draw = ImageDraw.Draw(out)
    font = _font(tag_font_size(masks))
    for m, i in zip(masks, ids):
        text = str(i)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        cx, cy = _largest_part_centroid(m)
        x = int(np.clip(round(cx - tw / 2), 0, out.width - tw))
        y = int(np.clip(round(cy - th / 2), 0, out.height - th))
        draw.rectangle((x, y, x + tw, y + th), fill=colours[i - 1][1])
        draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)
    return out
