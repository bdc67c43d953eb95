"""CoLVA pre-training data: SA-1B images as two-frame pseudo videos, instance masks kept across the frames.

CoLVA (Zhou et al., "Are They the Same? Exploring Visual Correspondence Shortcomings of Multimodal LLMs",
arXiv:2501.04670, Sec. 4.1) pre-trains its object adapter on SA-1B: each image is augmented twice, and an
object's embedding in one view is contrasted against the objects of the other view
(:mod:`mllm_align.models.object_contrastive`). Reference: ``projects/colva/dataset/SA1BPseudoVideoDataset.py``
and ``utils/augmentation.py:build_pseudo_augmentation`` of github.com/zhouyiks/CoLVA at 77a681f.

Layout (SA-1B's own)::

    <data_root>/sa_<n>.jpg
    <data_root>/sa_<n>.json   {"image": {"image_id", "width", "height", "file_name"},
                               "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str},
                                                "area", "bbox": [x, y, w, h], ...}, ...]}

Without ``index_file`` the images are the sorted ``sa_*.jpg`` of ``data_root``; with one, its entries in order:
a JSON ``{"images": [{"file_name": "sa_1.jpg", ...}, ...]}`` (the released code's index) or a JSON list of file
names, relative to ``data_root``. An annotation's instance id is its ``id`` (``instance_id`` when present);
annotations with ``area <= 0`` are left out, as the released code does.

Each view (F = ``view_size``, default ``expert_image_size``; the released code's F is 1024 for RADIO), with the
released parameters (absolute sizes there assume F = 1024 and are scaled here by F / 1024):

1. with probability 0.5: resize the shortest edge to one of 512, 544, …, 864 (longest edge at most F), then
   crop a random box of height and width each drawn from [480, 864] (clipped to the image);
2. resize the shortest edge to F with the longest edge at most F (so the longest edge is F);
3. horizontal flip with probability 0.5;
4. rotate by an angle in [-15°, 15°] about a centre drawn in [0.4, 0.6]² of the image (relative), no expansion,
   black outside;
5. pad right/bottom to F×F with grey 128 (masks with 0).

The released code samples by *clip* (``clip_frame_cnt=2``): the crop decision, sizes, crop box, flip and rotation
centre are drawn once and shared by both views, and only the rotation angle differs (two angles drawn, sorted,
reversed with probability 0.5). ``view_sampling='clip'`` (the default) reproduces that; ``'independent'`` draws
every parameter per view. Images are resampled bilinearly, masks with nearest neighbour through the very same PIL
operations (bit-packed into 32-bit images), so image and masks stay aligned pixel for pixel. Every draw comes from
``numpy.random.default_rng((seed, index))``: an item is the same whatever the epoch, worker or order.

Objects: a mask with fewer than ``min_object_pixels`` pixels in either view (view 1 at E×E, view 2 at F×F), or
that vanishes on the expert grid in either view (:func:`objects_on_grid`, the test of ``masks_to_grid``, with
``grid=expert_grid``, ``threshold=mask_threshold``), is dropped and counted (``objects_dropped_small``); of the
rest at most ``max_objects`` are kept, a seeded choice in annotation order (``objects_over_max``). An image left
with fewer than 2 objects is a bad sample (``too_few_objects``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .bad_samples import BadSampleError, MissingImageError, SkipsBadSamples
from .image_loading import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, UnreadableImageError, load_image
from .image_processing import process_image_inputs
from .llava_dataset import build_from_cfg
from .visual_prompts import decode_mask

__all__ = ['SA1B_BAD_SAMPLE_CAUSES', 'SA1B_NOTICES', 'SA1BPseudoVideoDataset', 'ViewParams', 'apply_view',
           'objects_on_grid', 'sample_view_params']

SA1B_BAD_SAMPLE_CAUSES: dict[str, str] = {
    'missing_image': 'check `data_root` / the index file, or remove the image',
    'unreadable_image': 'replace the image file or remove it',
    'image_too_large': 'or remove the image (the limit guards against decompression bombs)',
    'missing_annotations': 'put the sa_<n>.json beside its image, or remove the image from the index',
    'malformed_annotations': 'fix the annotation JSON (SA-1B layout: module docstring) or remove the image',
    'too_few_objects': 'lower min_object_pixels / mask_threshold, or leave the image out: a contrastive pair '
                       'needs at least 2 objects that survive augmentation',
}
SA1B_NOTICES = {
    'objects_dropped_small': 'objects too small in a view (pixels or expert grid); normal for SA-1B',
    'objects_over_max': 'objects left out by the max_objects cap',
}
_REF_SIZE = 1024  # the released code's view size, which its absolute sizes assume
_SHORT_EDGES = tuple(range(512, 865, 32))  # 512, 544, ..., 864
_CROP_RANGE = (480, 864)
_MAX_ANGLE = 15.0
_CENTRE_RANGE = (0.4, 0.6)
_PAD_GREY = 128
_BITS = 30  # masks per packed int32 image (bit 31 is the sign)


@dataclass(frozen=True)
class ViewParams:
    """One view's augmentation: optional zoom (resize the shortest edge to ``short``, then crop ``crop`` =
    (x0, y0, w, h)), the fit to ``size`` (longest edge), ``flip``, rotation ``angle`` (degrees,
    counter-clockwise) about ``centre`` (relative x, y)."""

    zoom_short: int | None
    crop: tuple[int, int, int, int] | None
    size: int
    flip: bool
    angle: float
    centre: tuple[float, float]


def objects_on_grid(masks: torch.Tensor, grid: int, threshold: float) -> torch.Tensor:
    """``valid [K]`` bool of masks ``[K, H, W]``: some cell of the g×g grid is above ``threshold`` after bilinear
    resizing — the test of :func:`mllm_align.models.object_adapter.masks_to_grid` (the model pools with it; data sits
    below models, so the few lines are repeated here, and ``tests/data/test_sa1b.py`` checks they agree)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    resized = F.interpolate(masks[:, None].float(), size=(grid, grid), mode='bilinear', align_corners=False)[:, 0]
    return (resized > threshold).flatten(1).any(dim=1)


def _shortest_edge_size(w: int, h: int, short: int, max_size: int) -> tuple[int, int]:
    """(w', h') with the shortest edge ``short`` and the longest at most ``max_size`` (rounded half up)."""
    scale = short / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return max(1, int(nw + 0.5)), max(1, int(nh + 0.5))


def _sample_geometry(rng: np.random.Generator, w: int, h: int, size: int) -> dict[str, Any]:
    k = size / _REF_SIZE
    zoom_short, crop = None, None
    if rng.random() < 0.5:
        zoom_short = max(1, round(float(rng.choice(_SHORT_EDGES)) * k))
        w1, h1 = _shortest_edge_size(w, h, zoom_short, size)
        lo, hi = max(1, round(_CROP_RANGE[0] * k)), max(1, round(_CROP_RANGE[1] * k))
        ch = int(rng.integers(min(h1, lo), min(h1, hi) + 1))
        cw = int(rng.integers(min(w1, lo), min(w1, hi) + 1))
        y0 = int(rng.integers(h1 - ch + 1))
        x0 = int(rng.integers(w1 - cw + 1))
        crop = (x0, y0, cw, ch)
    flip = bool(rng.random() < 0.5)
    centre = tuple(float(c) for c in rng.uniform(*_CENTRE_RANGE, size=2))
    return dict(zoom_short=zoom_short, crop=crop, size=size, flip=flip, centre=centre)


def sample_view_params(rng: np.random.Generator, width: int, height: int, size: int,
                       view_sampling: Literal['clip', 'independent'] = 'clip') -> tuple[ViewParams, ViewParams]:
    """The two views' parameters of an image ``width×height`` (module docstring, steps 1–5)."""
    if view_sampling == 'clip':
        geom = _sample_geometry(rng, width, height, size)
        angles = np.sort(rng.uniform(-_MAX_ANGLE, _MAX_ANGLE, size=2))
        if rng.random() < 0.5:
            angles = angles[::-1]
        return ViewParams(angle=float(angles[0]), **geom), ViewParams(angle=float(angles[1]), **geom)
    if view_sampling == 'independent':
        views = []
        for _ in range(2):
            geom = _sample_geometry(rng, width, height, size)
            views.append(ViewParams(angle=float(rng.uniform(-_MAX_ANGLE, _MAX_ANGLE)), **geom))
        return views[0], views[1]
    raise ValueError(f"view_sampling must be 'clip' (the released code) or 'independent', got {view_sampling!r}.")


def _apply_one(im: Image.Image, p: ViewParams, resample: int, fill: Any, pad: Any) -> Image.Image:
    if p.zoom_short is not None:
        im = im.resize(_shortest_edge_size(im.width, im.height, p.zoom_short, p.size), resample)
        x0, y0, cw, ch = p.crop  # type: ignore[misc]
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
    im = im.resize(_shortest_edge_size(im.width, im.height, p.size, p.size), resample)
    if p.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(p.angle, resample=resample, center=(p.centre[0] * im.width, p.centre[1] * im.height),
                   fillcolor=fill)
    canvas = Image.new(im.mode, (p.size, p.size), pad)
    canvas.paste(im.crop((0, 0, min(im.width, p.size), min(im.height, p.size))), (0, 0))
    return canvas


def _pack(masks: np.ndarray) -> list[Image.Image]:
    """``[K, H, W]`` bool → ⌈K/30⌉ int32 ``'I'`` images, mask k in bit k mod 30 of image k // 30."""
    out = []
    for start in range(0, masks.shape[0], _BITS):
        chunk = masks[start:start + _BITS]
        packed = np.zeros(masks.shape[1:], np.int32)
        for bit, m in enumerate(chunk):
            packed |= m.astype(np.int32) << bit
        out.append(Image.fromarray(packed))
    return out


def _unpack(images: Sequence[Image.Image], k: int) -> np.ndarray:
    arrays = [np.asarray(im, dtype=np.int32) for im in images]
    return np.stack([(arrays[j // _BITS] >> (j % _BITS)) & 1 for j in range(k)]).astype(bool)


def apply_view(image: Image.Image, masks: np.ndarray, params: ViewParams) -> tuple[Image.Image, np.ndarray]:
    """One augmented view: the RGB ``image`` (bilinear) and its ``[K, H, W]`` bool ``masks`` (nearest, through the
    same PIL operations) → the F×F view and ``[K, F, F]`` bool masks."""
    view = _apply_one(image.convert('RGB'), params, Image.Resampling.BILINEAR, (0, 0, 0), (_PAD_GREY,) * 3)
    packed = [_apply_one(im, params, Image.Resampling.NEAREST, 0, 0) for im in _pack(masks)]
    return view, _unpack(packed, masks.shape[0])


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    if masks.shape[1:] == (size, size):
        return masks
    packed = [im.resize((size, size), Image.Resampling.NEAREST) for im in _pack(masks)]
    return _unpack(packed, masks.shape[0])


class SA1BPseudoVideoDataset(SkipsBadSamples, Dataset):
    """SA-1B pseudo-video pairs for CoLVA's object pre-training (module docstring for layout and semantics).

    Args:
        data_root: folder of ``sa_<n>.jpg`` + ``sa_<n>.json``.
        image_processor: the base model's processor (or its config dict), applied to view 2 through
            :func:`~mllm_align.data.image_processing.process_image_inputs` (a Qwen2-VL one gives patches and
            ``image_grid_thw``).
        expert_image_size: E, the vision expert's input side (view 1 resized to E×E).
        expert_grid: g, the expert's patch grid (masks that vanish on it are dropped).
        mask_threshold: the grid threshold τ of :func:`masks_to_grid` (0.55 in CoLVA pre-training).
        min_object_pixels: fewest mask pixels an object keeps in each view.
        max_objects: most objects per item (a seeded choice among the survivors).
        seed: base seed; item ``i`` uses ``default_rng((seed, i))``.
        view_size: F, the side of the augmented views (default E).
        view_sampling: ``'clip'`` (the released code: only the rotation angle differs between the views) or
            ``'independent'``.
        index_file: optional list of images (module docstring); default: sorted ``sa_*.jpg`` of ``data_root``.
        on_bad_sample: ``'raise'`` or ``'skip'`` (count, log once per cause, return the next image's item).
        max_image_pixels: largest image decoded (``load_image``'s guard).
        directions: ``'both'`` (the released code: view 1 → expert with view 2 → base, and view 2 → expert with
            view 1 → base; V = 2 image pairs per item, objects kept when they survive in all four) or ``'one'``
            (view 1 → expert, view 2 → base; V = 1). The model pairs expert image j with base image j.

    Item (K objects, the same order and ids in both views)::

        {'id': str, 'input_ids': LongTensor [0], 'labels': LongTensor [0],
         'pixel_values': [view 2, view 1] through the processor (+ 'image_grid_thw' [V, 3] for patch grids),
         'expert_pixel_values': FloatTensor [V, 3, E, E] in [0, 1] ([view 1, view 2]),
         'expert_masks': V × BoolTensor [K, E, E], 'base_masks': V × BoolTensor [K, F, F],
         'instance_ids': LongTensor [K], 'notices': {'objects_dropped_small': n, 'objects_over_max': m}}

    Raises:
        FileNotFoundError: no ``data_root`` or index file. ValueError: bad arguments, no image; in ``'raise'`` mode
        :class:`~mllm_align.data.llava_dataset.BadSampleError` naming the file and the fix.
    """

    bad_sample_noun = 'image'

    def __init__(self, data_root: str | os.PathLike, image_processor: Any, expert_image_size: int,
                 expert_grid: int, mask_threshold: float = 0.55, min_object_pixels: int = 16,
                 max_objects: int = 64, seed: int = 0, view_size: int | None = None,
                 view_sampling: Literal['clip', 'independent'] = 'clip',
                 index_file: str | os.PathLike | None = None,
                 on_bad_sample: Literal['raise', 'skip'] = 'raise',
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 directions: Literal['both', 'one'] = 'both') -> None:
        if directions not in ('both', 'one'):
            raise ValueError(f"directions must be 'both' or 'one', got {directions!r}.")
        self.directions = directions
        if view_sampling not in ('clip', 'independent'):
            raise ValueError(f"view_sampling must be 'clip' or 'independent', got {view_sampling!r}.")
        if expert_image_size < 1 or expert_grid < 1 or max_objects < 2 or min_object_pixels < 1:
            raise ValueError(f'expert_image_size ({expert_image_size}), expert_grid ({expert_grid}) and '
                             f'min_object_pixels ({min_object_pixels}) must be positive, max_objects ({max_objects}) '
                             'at least 2.')
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f'mask_threshold={mask_threshold}: use a value in (0, 1) (0.55 in CoLVA pre-training).')
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise FileNotFoundError(f'SA-1B data_root {self.data_root} is not a directory (build the mini set: '
                                    'python data/prepare_real.py --only sa1b_mini).')
        self.image_processor = build_from_cfg(image_processor)
        self.expert_image_size = int(expert_image_size)
        self.expert_grid = int(expert_grid)
        self.mask_threshold = float(mask_threshold)
        self.min_object_pixels = int(min_object_pixels)
        self.max_objects = int(max_objects)
        self.seed = int(seed)
        self.view_size = int(view_size or expert_image_size)
        self.view_sampling = view_sampling
        self._init_bad_samples(on_bad_sample)
        self.max_image_pixels = max_image_pixels
        self.images = self._list_images(index_file)
        self.lengths = np.ones(len(self.images), dtype=np.int64)  # no text: one "token" each for the sampler
        self.modality_lengths = self.lengths.copy()  # positive: every item has images
        self.notice_counts: Counter[str] = Counter()

    def _list_images(self, index_file: str | os.PathLike | None) -> list[str]:
        if index_file is None:
            names = sorted(p.name for p in self.data_root.glob('sa_*.jpg'))
            if not names:
                raise ValueError(f'{self.data_root}: no sa_*.jpg images (SA-1B layout: sa_<n>.jpg + sa_<n>.json).')
            return names
        path = Path(index_file)
        if not path.is_file():
            raise FileNotFoundError(f'SA-1B index file {path} does not exist; give the index or index_file=None.')
        try:
            doc = json.loads(path.read_text(encoding='utf-8'))
        except json.JSONDecodeError as err:
            raise ValueError(f'{path} is not valid JSON ({err.msg}, line {err.lineno}).') from None
        entries = doc.get('images') if isinstance(doc, dict) else doc
        names = []
        for k, e in enumerate(entries if isinstance(entries, list) else []):
            name = e.get('file_name') if isinstance(e, dict) else e
            if not isinstance(name, str):
                raise ValueError(f'{path}: entry {k} has no file name; expected {{"images": [{{"file_name": …}}]}} '
                                 'or a list of file names.')
            names.append(name)
        if not names:
            raise ValueError(f'{path}: no images; expected {{"images": [{{"file_name": "sa_1.jpg"}}, …]}} or a list '
                             'of file names.')
        return names

    def __len__(self) -> int:
        return len(self.images)

    @property
    def metainfo(self) -> dict:
        """What mmengine's loops log about the dataset."""
        return dict(data_root=str(self.data_root), num_samples=len(self), expert_image_size=self.expert_image_size,
                    expert_grid=self.expert_grid, view_size=self.view_size, view_sampling=self.view_sampling)

    def _bad_sample_source(self) -> str:
        return str(self.data_root)

    def _bad(self, cause: str, where: str, what: str, error: type[BadSampleError] = BadSampleError) -> BadSampleError:
        hint = " Set on_bad_sample='skip' to skip such images (they are counted)." if self.on_bad_sample == 'raise' \
            else ''
        return error(f'{where}: {what}; {SA1B_BAD_SAMPLE_CAUSES[cause]}.{hint}', cause)

    def read_objects(self, index: int) -> tuple[Image.Image, np.ndarray, list[int]]:
        """Image ``index`` as RGB, its masks ``[K, H, W]`` bool and instance ids (annotation order).

        Raises:
            BadSampleError: a missing/unreadable image or annotation file, or annotations not in the SA-1B layout.
        """
        name = self.images[index]
        path = self.data_root / name
        ann_path = path.with_suffix('.json')
        if not path.is_file():
            raise self._bad('missing_image', str(path), 'the image does not exist', MissingImageError)
        if not ann_path.is_file():
            raise self._bad('missing_annotations', str(ann_path), 'the annotation file does not exist')
        try:
            image = load_image(path, self.max_image_pixels)
        except ImageTooLargeError as err:
            raise self._bad('image_too_large', str(path), str(err)) from None
        except UnreadableImageError as err:
            raise self._bad('unreadable_image', str(path), str(err)) from None
        try:
            doc = json.loads(ann_path.read_text(encoding='utf-8'))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self._bad('malformed_annotations', str(ann_path), f'not valid JSON ({err})') from None
        anns = doc.get('annotations') if isinstance(doc, dict) else None
        if not isinstance(anns, list):
            raise self._bad('malformed_annotations', str(ann_path), 'no "annotations" list')
        info = doc.get('image') if isinstance(doc.get('image'), dict) else {}
        w, h = image.size
        if (info.get('width', w), info.get('height', h)) != (w, h):
            raise self._bad('malformed_annotations', str(ann_path),
                            f'says {info.get("width")}×{info.get("height")} but {path.name} is {w}×{h}')
        masks, ids = [], []
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict) or 'segmentation' not in ann:
                raise self._bad('malformed_annotations', f'{ann_path} annotation {k}', 'no `segmentation`')
            if float(ann.get('area', 1)) <= 0:
                continue
            try:
                mask = decode_mask(ann['segmentation'], h, w)
            except (ValueError, TypeError, KeyError) as err:
                where = f'{ann_path} annotation {ann.get("id", k)}'
                raise self._bad('malformed_annotations', where, str(err)) from None
            masks.append(mask)
            ids.append(int(ann.get('instance_id', ann.get('id', k + 1))))
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return image, stacked, ids

    def _surviving(self, masks: np.ndarray) -> np.ndarray:
        """``[K]`` bool: at least ``min_object_pixels`` pixels and at least one expert-grid cell."""
        keep = masks.reshape(masks.shape[0], -1).sum(1) >= self.min_object_pixels
        if keep.any():
            valid = objects_on_grid(torch.from_numpy(masks[keep]), self.expert_grid, self.mask_threshold)
            keep[np.flatnonzero(keep)] = valid.numpy()
        return keep

    def _load(self, index: int) -> dict[str, Any]:
        image, masks, ids = self.read_objects(index)
        rng = np.random.default_rng((self.seed, index))
        p1, p2 = sample_view_params(rng, image.width, image.height, self.view_size, self.view_sampling)
        E = self.expert_image_size
        view1, masks1 = apply_view(image, masks, p1)
        view2, masks2 = apply_view(image, masks, p2)
        expert_img = view1.resize((E, E), Image.Resampling.BILINEAR)
        expert_masks = _resize_masks(masks1, E)
        both = self.directions == 'both'
        if both:
            expert_img2 = view2.resize((E, E), Image.Resampling.BILINEAR)
            expert_masks2 = _resize_masks(masks2, E)
        keep = np.zeros(len(ids), bool)
        if len(ids):
            keep = self._surviving(expert_masks) & self._surviving(masks2)
            if both:
                keep &= self._surviving(expert_masks2) & self._surviving(masks1)
        small = int(len(ids) - keep.sum())
        kept = np.flatnonzero(keep)
        over = max(0, len(kept) - self.max_objects)
        if over:
            kept = np.sort(rng.choice(kept, size=self.max_objects, replace=False))
        path = self.data_root / self.images[index]
        if len(kept) < 2:
            raise self._bad('too_few_objects', str(path),
                            f'{len(kept)} of its {len(ids)} objects survive augmentation ({small} too small in a view: '
                            f'min_object_pixels={self.min_object_pixels}, expert_grid={self.expert_grid}, '
                            f'mask_threshold={self.mask_threshold})')
        self.notice_counts['objects_dropped_small'] += small
        self.notice_counts['objects_over_max'] += over
        expert_imgs, base_imgs = [expert_img], [view2]
        e_masks, b_masks = [expert_masks[kept]], [masks2[kept]]
        if both:  # the other direction: the expert sees view 2, the base view 1
            expert_imgs.append(expert_img2)
            base_imgs.append(view1)
            e_masks.append(expert_masks2[kept])
            b_masks.append(masks1[kept])
        arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in expert_imgs])  # (V, E, E, 3)
        item = {'id': path.stem,
                'input_ids': torch.zeros(0, dtype=torch.long),
                'labels': torch.zeros(0, dtype=torch.long),
                **process_image_inputs(base_imgs, self.image_processor, pad_to_square=False),
                'expert_pixel_values': torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(),  # (V, 3, E, E)
                'expert_masks': [torch.from_numpy(m) for m in e_masks],  # V × (K, E, E)
                'base_masks': [torch.from_numpy(m) for m in b_masks],  # V × (K, F, F)
                'instance_ids': torch.tensor([ids[k] for k in kept], dtype=torch.long),
                'notices': {'objects_dropped_small': small, 'objects_over_max': over}}
        return item
