"""InternVL's dynamic-resolution tiling: an image → a grid of square tiles (+ a thumbnail), PIL/numpy only.

Chen et al., "How Far Are We to GPT-4V? Closing the Gap to Commercial Multimodal Models with Open-Source
Suites" (InternVL 1.5, arXiv:2404.16821), Sec. 3.2 "Dynamic High-Resolution": the image of width W and height
H is given the grid of ``c × r`` tiles (``min_num_tiles ≤ c·r ≤ max_num_tiles``) whose aspect ratio c / r is
closest to W / H; on a tie the grid with more tiles wins while the image area still exceeds half of the
tiles' area, ``W·H > ½·S²·c·r`` (S the tile side). The image is resized to ``(c·S) × (r·S)`` and cut into the
c·r tiles in row-major order; when there is more than one tile, the whole image resized to ``S × S`` is
appended as a thumbnail (``use_thumbnail``). Each tile is then normalised with the ImageNet mean/std
(``(x / 255 − mean) / std``, float32). In the model one tile gives ``(S / patch)² · downsample_ratio²`` LLM
tokens: 256 for InternVL2's 448-px tiles, 14-px patches and ratio 0.5.

Reference code: InternVL's ``dynamic_preprocess`` / ``find_closest_aspect_ratio`` (the InternVL2 model cards,
``internvl_chat/internvl/train/dataset.py`` of OpenGVLab/InternVL) and transformers'
``GotOcr2ImageProcessor.crop_image_to_patches`` (``get_optimal_tiled_canvas``), which this follows. Candidate
grids are ordered by tile count and, within a count, by (columns, rows) as transformers orders them; InternVL
sorts a Python set by tile count, whose order within a count is CPython's hash order. The two can only differ
when two grids with the same tile count tie for the best ratio, which cannot happen while 1×1 is a candidate
(``min_num_tiles = 1``: the square grid is always strictly closer). Resizing is PIL's bicubic, as both.

mllm_align data carries ONE ``IMAGE_TOKEN_INDEX`` per image whatever its tile count: the tiles live in the
base adapter (``mllm_align.models.internvl``), which expands each placeholder to ``<img>`` + the image's
``tokens_per_tile · T_i`` feature rows + ``</img>``. :class:`InternVLTileProcessor` is the dataset's
``image_processor`` for InternVL bases: it returns ``num_tiles`` beside ``pixel_values`` and tells the
dataset each image's token count (:meth:`InternVLTileProcessor.image_token_counts`) for its length rule.

Shape letters: N images, T_i tiles of image i (grid + thumbnail), S tile side.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['InternVLTileProcessor', 'candidate_grids', 'closest_grid', 'IMAGENET_MEAN', 'IMAGENET_STD']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The per-image entry beside ``pixel_values`` (listed in ``mllm_align.data.collate.IMAGE_KEYS``).
NUM_TILES_KEY = 'num_tiles'


def candidate_grids(min_num_tiles: int, max_num_tiles: int) -> list[tuple[int, int]]:
    """Every ``(columns, rows)`` with ``min_num_tiles ≤ columns·rows ≤ max_num_tiles``, by tile count, then
    (columns, rows)."""
    grids = [(c, r) for c in range(1, max_num_tiles + 1) for r in range(1, max_num_tiles + 1)
             if min_num_tiles <= c * r <= max_num_tiles]
    return sorted(grids, key=lambda g: g[0] * g[1])  # stable: (c, r) order within a tile count


def closest_grid(width: int, height: int, tile_size: int, min_num_tiles: int = 1,
                 max_num_tiles: int = 12) -> tuple[int, int]:
    """The ``(columns, rows)`` grid whose aspect ratio is closest to ``width / height`` (module docstring).

    A later candidate with the same distance |W/H − c/r| replaces the best one when ``W·H > ½·S²·c·r``.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float('inf')
    for cols, rows in candidate_grids(min_num_tiles, max_num_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


class InternVLTileProcessor:
    """InternVL's dynamic tiling as an image processor (``LLaVADataset(image_processor=...)``, the base's own).

    ``processor(images)`` → ``{'pixel_values': FloatTensor [ΣT_i, 3, S, S], 'num_tiles': LongTensor [N]}``:
    image i's T_i tiles (grid row-major, then the thumbnail) follow image i-1's.

    Args:
        image_size: S, the tile side in pixels (448 for InternVL2).
        max_num_tiles: the largest grid (InternVL's ``max_dynamic_patch`` / ``max_num``; 12 in its chat demo).
        min_num_tiles: the smallest grid (``min_dynamic_patch``).
        use_thumbnail: append the whole image at S × S when the grid has more than one tile.
        tokens_per_tile: LLM tokens one tile becomes in the model ((S / patch)² · downsample_ratio²: 256);
            what :meth:`image_token_counts` multiplies the tile counts by (the dataset's length rule).
        image_mean, image_std: per-channel normalisation (ImageNet's).

    Raises:
        ValueError: a non-positive size or tile count, ``min_num_tiles > max_num_tiles``.
    """

    model_input_names = ['pixel_values', NUM_TILES_KEY]

    def __init__(self, image_size: int = 448, max_num_tiles: int = 12, min_num_tiles: int = 1,
                 use_thumbnail: bool = True, tokens_per_tile: int = 256,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD) -> None:
        if image_size < 1 or tokens_per_tile < 1 or min_num_tiles < 1 or max_num_tiles < min_num_tiles:
            raise ValueError(f'InternVLTileProcessor needs image_size ≥ 1, tokens_per_tile ≥ 1 and 1 ≤ min_num_tiles '
                             f'≤ max_num_tiles; got image_size={image_size}, tokens_per_tile={tokens_per_tile}, '
                             f'min_num_tiles={min_num_tiles}, max_num_tiles={max_num_tiles}.')
        self.image_size = int(image_size)
        self.max_num_tiles = int(max_num_tiles)
        self.min_num_tiles = int(min_num_tiles)
        self.use_thumbnail = bool(use_thumbnail)
        self.tokens_per_tile = int(tokens_per_tile)
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> 'InternVLTileProcessor':
        """The tiling an InternVL directory was trained with, ``overrides`` (e.g. ``max_num_tiles=6``) on top.

        Reads ``config.json`` only (no model code runs): a remote-code InternVL2 chat config
        (``force_image_size``, ``max_dynamic_patch``, ``min_dynamic_patch``, ``use_thumbnail``,
        ``downsample_ratio``, ``vision_config.patch_size``; ImageNet mean/std) or a transformers ``internvl``
        config plus its ``preprocessor_config.json`` (``size``, ``max_patches``, ``min_patches``, mean/std).

        Raises:
            FileNotFoundError: ``path`` has no ``config.json``.
            ValueError: an unknown override key (listing the valid ones).
        """
        directory = Path(path)
        config_path = directory / 'config.json'
        if not config_path.is_file():
            raise FileNotFoundError(f'{str(directory)!r} holds no config.json: point the InternVL image processor at '
                                    'the model directory.')
        config = json.loads(config_path.read_text())
        vision = config.get('vision_config') or {}
        ratio = float(config.get('downsample_ratio', 0.5))
        patch = vision.get('patch_size', 14)
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        settings: dict[str, Any] = {}
        if config.get('model_type') == 'internvl':
            size = vision.get('image_size', 448)
            settings['image_size'] = size[0] if isinstance(size, (list, tuple)) else size
            pre_path = directory / 'preprocessor_config.json'
            pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
            if isinstance(pre.get('size'), Mapping) and 'height' in pre['size']:
                settings['image_size'] = pre['size']['height']
            for ours, theirs in (('max_num_tiles', 'max_patches'), ('min_num_tiles', 'min_patches'),
                                 ('image_mean', 'image_mean'), ('image_std', 'image_std')):
                if theirs in pre:
                    settings[ours] = pre[theirs]
        else:
            settings['image_size'] = config.get('force_image_size') or vision.get('image_size', 448)
            for ours, theirs in (('max_num_tiles', 'max_dynamic_patch'), ('min_num_tiles', 'min_dynamic_patch'),
                                 ('use_thumbnail', 'use_thumbnail')):
                if theirs in config:
                    settings[ours] = config[theirs]
        settings['tokens_per_tile'] = round((settings['image_size'] // patch) ** 2 * ratio ** 2)
        valid = ('image_size', 'max_num_tiles', 'min_num_tiles', 'use_thumbnail', 'image_mean', 'image_std')
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f'Unknown InternVLTileProcessor setting(s) {unknown}; valid keys: {list(valid)}.')
        if overrides.get('image_size') is not None:
            settings['tokens_per_tile'] = round((int(overrides['image_size']) // patch) ** 2 * ratio ** 2)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The settings (what the constructor takes)."""
        return dict(image_size=self.image_size, max_num_tiles=self.max_num_tiles, min_num_tiles=self.min_num_tiles,
                    use_thumbnail=self.use_thumbnail, tokens_per_tile=self.tokens_per_tile,
                    image_mean=list(self.image_mean), image_std=list(self.image_std))

    def __repr__(self) -> str:
        return f'{type(self).__name__}({", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())})'

    # ------------------------------------------------------------------ tiling
    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(columns, rows)`` of an image of ``width × height`` pixels (:func:`closest_grid`)."""
        return closest_grid(width, height, self.image_size, self.min_num_tiles, self.max_num_tiles)

    def num_tiles(self, width: int, height: int) -> int:
        """T: the grid's tiles, plus the thumbnail when the grid has more than one."""
        cols, rows = self.grid(width, height)
        return cols * rows + int(self.use_thumbnail and cols * rows > 1)

    def tile_image(self, image: Image.Image) -> list[Image.Image]:
        """One RGB image → its T tiles of ``S × S`` (grid row-major, then the thumbnail)."""
        image = image.convert('RGB')
        side = self.image_size
        cols, rows = self.grid(*image.size)
        resized = image.resize((cols * side, rows * side), Image.Resampling.BICUBIC)
        tiles = [resized.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
                 for r in range(rows) for c in range(cols)]
        if self.use_thumbnail and len(tiles) > 1:
            tiles.append(image.resize((side, side), Image.Resampling.BICUBIC))
        return tiles

    def normalize(self, tile: Image.Image) -> np.ndarray:
        """``[S, S, 3]`` uint8 → ``[3, S, S]`` float32 ``(x / 255 − mean) / std``."""
        pixels = np.asarray(tile, dtype=np.float32) / np.float32(255.0)  # (S, S, 3)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1)  # (3, S, S)

    def __call__(self, images: Image.Image | Sequence[Image.Image], return_tensors: Any = None,
                 **kwargs: Any) -> dict[str, torch.Tensor]:
        """PIL images → ``{'pixel_values': [ΣT_i, 3, S, S], 'num_tiles': [N]}`` (``return_tensors`` is ignored:
        always torch tensors).

        Raises:
            ValueError: no image.
        """
        if isinstance(images, Image.Image):
            images = [images]
        if len(images) == 0:
            raise ValueError('InternVLTileProcessor needs at least one image.')
        tiles, counts = [], []
        for image in images:
            cut = self.tile_image(image)
            tiles.extend(self.normalize(t) for t in cut)
            counts.append(len(cut))
        pixel_values = torch.from_numpy(np.ascontiguousarray(np.stack(tiles)))  # (ΣT_i, 3, S, S)
        return {'pixel_values': pixel_values, NUM_TILES_KEY: torch.tensor(counts, dtype=torch.long)}

    preprocess = __call__

    def image_token_counts(self, image_inputs: Mapping[str, Any]) -> list[int]:
        """Positions each processed image takes in the spliced sequence, for the dataset's length rule:
        ``tokens_per_tile · T_i`` feature rows + the ``<img>`` and ``</img>`` the base puts around them."""
        return [self.tokens_per_tile * int(t) + 2 for t in image_inputs[NUM_TILES_KEY].tolist()]
