"""Several vision encoders as one representation: features concatenated channel-wise on one token grid.

The Law of Vision Representation studies combinations such as "C+D" (CLIP + DINOv2): every tower encodes
the image with its own preprocessing, its patch tokens ``[N, g_t², C_t]`` are laid out as a ``[N, C_t, g_t,
g_t]`` map, resized to the common grid g (default: the first tower's) by ``F.interpolate`` (``mode``,
bilinear by default, ``align_corners=False``, antialiased when shrinking), and concatenated along channels:
``[N, g², Σ_t C_t]``. To the rest of the toolkit it is one :class:`~mllm_align.models.base.VisionEncoder`.

Preprocessing travels with the images: :class:`MultiTowerImageProcessor` runs each tower's own HF processor
and packs the results into one flat tensor per image, ``pixel_values [N, Σ_t 3·S_t²]`` (tower t's
``[3, S_t, S_t]`` image flattened, towers in order), which the datasets, collate and the LLaVA base pass
through unchanged; :meth:`MultiTowerEncoder.forward` unpacks it. Each tower therefore sees exactly what it
would see alone. LLaVA's pad-to-square fill colour is the first tower's mean (``image_mean``).

A multi-tower model has no transformers Llava equivalent (one tower there): HF export refuses it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .base import VisionEncoder, build_module

__all__ = ['MultiTowerEncoder', 'MultiTowerImageProcessor', 'processor_size']


def processor_size(processor: Any) -> int:
    """The square side an HF image processor outputs (its crop when it centre-crops, else its resize)."""
    size = getattr(processor, 'crop_size', None) if getattr(processor, 'do_center_crop', False) else None
    size = size or getattr(processor, 'size', None)
    if isinstance(size, dict):
        side = size.get('height') or size.get('shortest_edge')
        if side is None or size.get('width', side) != side:
            raise ValueError(f'{type(processor).__name__} outputs {size}: a multi-tower representation needs square '
                             'images from every tower processor (set size / crop_size to a square).')
        return int(side)
    if isinstance(size, int):
        return size
    raise ValueError(f'Cannot tell the output size of {type(processor).__name__} (size={size!r}).')


class MultiTowerImageProcessor:
    """Every tower's own image processor, packed into one ``pixel_values [N, Σ_t 3·S_t²]`` (module docstring).

    Args:
        processors: one HF image processor (or its config dict, e.g. ``dict(type=load_image_processor,
            path=…)``) per tower, in the tower order of the :class:`MultiTowerEncoder`.
    """

    model_input_names = ['pixel_values']

    def __init__(self, processors: Sequence[Any]) -> None:
        if len(processors) < 2:
            raise ValueError('MultiTowerImageProcessor needs two or more processors (one tower: use its processor).')
        self.processors = [build_module(p) for p in processors]
        self.sizes = [processor_size(p) for p in self.processors]
        first = self.processors[0]
        self.image_mean = getattr(first, 'image_mean', None)  # LLaVA's square-padding colour
        self.image_std = getattr(first, 'image_std', None)

    @property
    def packed_length(self) -> int:
        return sum(3 * s * s for s in self.sizes)

    def __call__(self, images: Any = None, return_tensors: str | None = 'pt', **kwargs: Any) -> dict[str, Any]:
        images = kwargs.pop('images', images)
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.call_per_processor([list(images)] * len(self.processors), return_tensors)

    def call_per_processor(self, images_per_processor: Sequence[Sequence[Any]],
                           return_tensors: str | None = 'pt') -> dict[str, Any]:
        """Pack the outputs of processor t on ``images_per_processor[t]`` (the same N images, each prepared for
        that processor: e.g. the C score frames an image for each processor's own centre crop)."""
        if len(images_per_processor) != len(self.processors):
            raise ValueError(f'{len(images_per_processor)} image lists for {len(self.processors)} processors.')
        n = len(images_per_processor[0])
        parts = []
        for proc, side, images in zip(self.processors, self.sizes, images_per_processor):
            if len(images) != n:
                raise ValueError(f'Image lists of different lengths ({n} and {len(images)}): give every processor '
                                 'the same images.')
            out = proc(images=list(images), return_tensors='np')
            pv = np.asarray(out['pixel_values'], dtype=np.float32)  # (N, 3, S, S)
            if pv.shape[1:] != (3, side, side):
                raise ValueError(f'{type(proc).__name__} returned images of shape {pv.shape[1:]}, expected '
                                 f'(3, {side}, {side}).')
            parts.append(pv.reshape(n, -1))
        packed = np.concatenate(parts, axis=1)  # (N, Σ 3·S²)
        return {'pixel_values': torch.from_numpy(packed) if return_tensors == 'pt' else packed}

    def unpack(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[N, Σ_t 3·S_t²]`` → one ``[N, 3, S_t, S_t]`` per tower (views)."""
        return unpack(pixel_values, self.sizes)


def unpack(pixel_values: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    total = sum(3 * s * s for s in sizes)
    if pixel_values.dim() != 2 or pixel_values.shape[1] != total:
        raise ValueError(f'Multi-tower pixel_values must be [N, {total}] (towers of {list(sizes)} px packed by '
                         f'MultiTowerImageProcessor), got {tuple(pixel_values.shape)}: give the dataset the '
                         'MultiTowerImageProcessor of the same towers.')
    out, start = [], 0
    for s in sizes:
        out.append(pixel_values[:, start:start + 3 * s * s].view(-1, 3, s, s))
        start += 3 * s * s
    return out


class MultiTowerEncoder(nn.Module):
    """Vision towers whose patch grids are resized to one grid and concatenated channel-wise.

    Args:
        towers: vision encoders (``VisionTower`` with ``select_feature='patch'``, ``CNNFeatureMapTower``, …)
            or their config dicts; each must expose ``image_size`` (its input side) and return ``[N, g_t², C_t]``.
        grid: the common grid side g (default: the first tower's).
        mode: ``F.interpolate`` mode for towers on another grid (``'bilinear'``, ``'bicubic'``, ``'nearest'``…).
        dtype: parameter dtype of every tower (a default for tower configs that do not set one; built towers are
            cast), e.g. the recipe's ``llm_dtype``. None: as each tower is.

    Shapes: ``forward(pixel_values [N, Σ_t 3·S_t²]) -> [N, g², Σ_t C_t]``.
    """

    def __init__(self, towers: Sequence[Any], grid: int | None = None, mode: str = 'bilinear',
                 dtype: str | torch.dtype | None = None) -> None:
        super().__init__()
        if len(towers) < 2:
            raise ValueError('MultiTowerEncoder needs two or more towers (one tower: use it directly).')
        defaults = {} if dtype is None else {'dtype': dtype}
        built = [build_module(t, **defaults) for t in towers]
        if dtype is not None:
            from .builders import resolve_dtype
            built = [t.to(resolve_dtype(dtype)) if isinstance(t, nn.Module) else t for t in built]
        for i, t in enumerate(built):
            if not isinstance(t, VisionEncoder):
                raise TypeError(f'towers[{i}] ({type(t).__name__}) is not a vision encoder (hidden_size, '
                                'num_prefix_tokens, forward, apply_lora).')
            if getattr(t, 'select_feature', 'patch') != 'patch':
                raise ValueError(f"towers[{i}] keeps its CLS/prefix tokens (select_feature='cls_patch'); a "
                                 "multi-tower grid takes patch tokens only: set select_feature='patch'.")
            if not isinstance(getattr(t, 'image_size', None), int):
                raise ValueError(f'towers[{i}] ({type(t).__name__}) has no integer `image_size` (its input side).')
        self.towers = nn.ModuleList(built)
        self.mode = mode
        self.grid_size = int(grid or self._tower_grid(0))
        if self.grid_size < 1:
            raise ValueError(f'grid={grid}: the common grid side must be positive.')

    def _tower_grid(self, i: int) -> int:
        t = self.towers[i]
        if hasattr(t, 'num_patches'):
            side = int(round(t.num_patches ** 0.5))
        else:
            side = int(round(t.num_tokens ** 0.5))
        return side

    @property
    def image_sizes(self) -> list[int]:
        return [int(t.image_size) for t in self.towers]

    @property
    def hidden_size(self) -> int:
        return sum(int(t.hidden_size) for t in self.towers)

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def apply_lora(self, lora_cfg: Any) -> None:
        """LoRA on every tower (each through its own ``apply_lora``)."""
        for t in self.towers:
            t.apply_lora(lora_cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        g = self.grid_size
        maps = []
        for tower, images in zip(self.towers, unpack(pixel_values, self.image_sizes)):
            tokens = tower(images)  # (N, g_t², C_t)
            n, p, c = tokens.shape
            side = int(round(p ** 0.5))
            if side * side != p:
                raise ValueError(f'{type(tower).__name__} returned {p} tokens per image, not a square grid.')
            fmap = tokens.transpose(1, 2).reshape(n, c, side, side)
            if side != g:
                kwargs = {} if self.mode == 'nearest' else dict(align_corners=False, antialias=side > g)
                fmap = nn.functional.interpolate(fmap.float(), size=(g, g), mode=self.mode, **kwargs).to(tokens.dtype)
            maps.append(fmap)
        dtype = maps[0].dtype
        return torch.cat([m.to(dtype) for m in maps], dim=1).flatten(2).transpose(1, 2)  # (N, g², Σ C_t)
