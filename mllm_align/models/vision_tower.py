"""Vision towers: any HF vision encoder from a local directory, with LLaVA's feature selection.

LLaVA takes the hidden states of layer ``select_layer`` (default −2, the penultimate layer, Liu et
al. 2023) and drops the CLS token (``select_feature='patch'``). Encoders differ in how many
non-patch tokens lead the sequence: CLIP has one CLS token, SigLIP none, DINOv2 one CLS token plus
``num_register_tokens`` registers. :class:`VisionTower` knows this per family, so ``'patch'`` always
yields exactly the ``(image_size / patch_size)²`` patch tokens.

Two knobs trade tokens for speed without touching the encoder: ``image_size`` runs the encoder at another
input size than its config's (DINOv2 and SigLIP interpolate their position embeddings; CLIP is passed
``interpolate_pos_encoding=True``), and ``pool=k`` average-pools the g×g patch grid in k×k windows,
``(g/k)²`` tokens (the 2×2 pooling of LLaVA-NeXT-style token reduction). Both change what the LLM sees,
so a dataset's ``num_image_tokens`` must follow (``num_tokens`` tells it; the config check compares).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from .builders import check_model_dir, load_config, resolve_dtype

SelectFeature = Literal['patch', 'cls_patch']


def _load_vision_model(path: str, dtype: torch.dtype | str, trust_remote_code: bool) -> nn.Module:
    config = load_config(path, trust_remote_code)
    model_type = getattr(config, 'model_type', '')
    from ..checkpoint_io import hf_weights_kwargs
    kwargs = dict(dtype=resolve_dtype(dtype), **hf_weights_kwargs(path))  # safetensors, or .bin weights_only
    if model_type in ('clip', 'clip_vision_model'):
        return CLIPVisionModel.from_pretrained(path, **kwargs)
    if model_type in ('siglip', 'siglip_vision_model'):
        return SiglipVisionModel.from_pretrained(path, **kwargs)
    if model_type in ('dinov2', 'dinov2_with_registers'):
        return (Dinov2Model if model_type == 'dinov2' else AutoModel).from_pretrained(path, **kwargs)
    if not trust_remote_code and getattr(config, 'auto_map', None):
        raise ValueError(
            f'Vision encoder {path!r} ({model_type or "custom"}) ships its own modelling code: set '
            '`trust_remote_code=True` in the visual_encoder config if you trust it.')
    return AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


def _vision_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, 'vision_config', config)


class VisionTower(nn.Module):
    """An HF vision encoder returning the selected layer's token features.

    Args:
        path: local directory of the vision model (CLIP, SigLIP, DINOv2, or remote code).
        select_layer: index into the encoder's hidden states (0 = embeddings); −2 by default.
        select_feature: ``'patch'`` drops leading CLS/register tokens, ``'cls_patch'`` keeps them.
        dtype: parameter dtype name.
        trust_remote_code: allow custom modelling code (e.g. RADIO, InternViT).
        model: an already built vision model instead of ``path`` (tests, composition).
        image_size: the input side the image processor delivers, if not the config's ``image_size``.
        pool: average-pool the patch grid in ``pool``×``pool`` windows (1 = off); the grid side must divide.

    Shapes: ``forward(pixel_values [N, 3, H, W]) -> [N, P, C]`` with P patch (+prefix) tokens.

    Implements the :class:`~mllm_align.models.base.VisionEncoder` protocol (``hidden_size``,
    ``num_prefix_tokens``, ``forward``, ``apply_lora``).
    """

    def __init__(self, path: str | None = None, select_layer: int = -2,
                 select_feature: SelectFeature = 'patch', dtype: str | torch.dtype = 'float32',
                 trust_remote_code: bool = False, model: nn.Module | None = None,
                 image_size: int | None = None, pool: int = 1) -> None:
        super().__init__()
        if model is None:
            if path is None:
                raise ValueError('VisionTower needs `path` (a local model directory) or `model`.')
            check_model_dir(path, 'Vision encoder', 'visual_encoder_name_or_path')
            model = _load_vision_model(str(path), dtype, trust_remote_code)
        if select_feature not in ('patch', 'cls_patch'):
            raise ValueError(f"select_feature={select_feature!r}: use 'patch' or 'cls_patch'.")
        self.model = model
        self.select_layer = select_layer
        self.select_feature = select_feature
        num_layers = _vision_config(model).num_hidden_layers
        if not -(num_layers + 1) <= select_layer <= num_layers:
            raise ValueError(f'select_layer={select_layer} is out of range for a vision encoder with '
                             f'{num_layers} layers (valid: {-(num_layers + 1)}..{num_layers}).')
        self.image_size = int(image_size or self.config.image_size)
        self.pool = int(pool)
        grid = self.image_size // self.config.patch_size
        if self.pool < 1 or grid % self.pool:
            raise ValueError(f'visual_encoder pool={pool}: the {grid}×{grid} patch grid (image_size '
                             f'{self.image_size} / patch {self.config.patch_size}) is not divisible by it; '
                             'choose a pool that divides the grid side, or another image_size.')

    @property
    def config(self) -> Any:
        return _vision_config(self.model)

    @property
    def hidden_size(self) -> int:
        """C, the feature width."""
        return self.config.hidden_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: 1 for CLIP/DINOv2 CLS, +registers, 0 for SigLIP."""
        if isinstance(self.config, SiglipVisionConfig):
            return 0
        if isinstance(self.config, CLIPVisionConfig):
            return 1
        if getattr(self.config, 'model_type', '').startswith('dinov2'):
            return 1 + int(getattr(self.config, 'num_register_tokens', 0) or 0)
        return int(getattr(self.config, 'num_prefix_tokens', 1))

    @property
    def grid_size(self) -> int:
        """g, the side of the patch grid before pooling: ``image_size // patch_size``."""
        return self.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image after pooling: ``(g // pool) ** 2``."""
        return (self.grid_size // self.pool) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens per image after feature selection (what the projector sees)."""
        extra = self.num_prefix_tokens if self.select_feature == 'cls_patch' else 0
        return self.num_patches + extra

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def apply_lora(self, lora_cfg: Any) -> None:
        """Wrap the encoder's linear layers with a peft LoRA adapter (the ``VisionEncoder`` protocol)."""
        from .base import apply_lora
        self.model = apply_lora(self.model, lora_cfg, config_key='visual_encoder_lora')

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(output_hidden_states=True)
        if self.image_size != self.config.image_size and isinstance(self.config, CLIPVisionConfig):
            kwargs['interpolate_pos_encoding'] = True  # DINOv2 and SigLIP interpolate by themselves
        out = self.model(pixel_values=pixel_values.to(self.dtype), **kwargs)
        feats = out.hidden_states[self.select_layer]  # (N, prefix + g², C)
        prefix, patches = feats[:, :self.num_prefix_tokens], feats[:, self.num_prefix_tokens:]
        if patches.shape[1] != self.grid_size ** 2:
            raise ValueError(f'Vision encoder returned {patches.shape[1]} patch tokens per image, expected '
                             f'{self.grid_size ** 2}: check that the image processor outputs '
                             f'{self.image_size}×{self.image_size} images (visual_encoder image_size).')
        if self.pool > 1:
            n, g, c, k = patches.shape[0], self.grid_size, patches.shape[-1], self.pool
            grid = patches.transpose(1, 2).reshape(n, c, g, g)  # (N, C, g, g), row-major patches
            patches = nn.functional.avg_pool2d(grid, k).flatten(2).transpose(1, 2)  # (N, (g/k)², C)
        return torch.cat([prefix, patches], dim=1) if self.select_feature == 'cls_patch' else patches
