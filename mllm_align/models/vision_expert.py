"""CoLVA's vision expert: a frozen fine-grained encoder whose patch grid feeds the object adapter.

CoLVA (Zhou et al. 2025, "Are They the Same? Exploring Visual Correspondence Shortcomings of Multimodal
LLMs", arXiv:2501.04670, reference code github.com/zhouyiks/CoLVA) runs NVIDIA RADIO beside the MLLM on the
clean images and pools its patch features under each object's mask (:mod:`mllm_align.models.object_adapter`).
The contract the CoLVA model codes against is :class:`VisionExpert`::

    F = expert(x),   x [N, 3, E, E] in [0, 1]  →  F [N, g, g, C],   g = E / p   (p: patch size)

The caller resizes every image to E×E (:func:`resize_for_expert`, PIL bilinear, aspect not kept, as CoLVA
feeds RADIO) and never normalises: the expert does it once, inside ``forward``.

:class:`HFVisionExpert` implements it for two kinds of local directory:

* **RADIO-style remote code** (``config.json`` has ``auto_map``; NVIDIA RADIO, the offline stand-in
  ``mllm_align.testing.tiny_radio``): ``summary, features = model(x)``. RADIO's input conditioner computes
  ``(x − μ) / σ`` inside its forward, so the expert passes x as it is. ``summary [N, n_cls·C]`` holds the
  summary (CLS, one per teacher) tokens and is not used; ``features [N, h·w, C]`` are the patch tokens alone
  (summary and register tokens already removed), reshaped row-major to ``[N, h, w, C]``. A 1024² input
  gives RADIO-H's 64×64×1280 grid. The output may be a tuple, an object with ``.summary`` / ``.features``
  (RADIO's ``RadioOutput``) or RADIO's adaptor dict (``backbone`` entry used).
* **Plain HF vision models** (DINOv2, CLIP / SigLIP vision, ViT): ``x̂ = (x − μ) / σ`` with the image
  processor's ``image_mean`` / ``image_std`` (read once at build time from ``preprocessor_config.json``;
  ``do_normalize=False`` → no normalisation), tokens = ``last_hidden_state`` (``select_layer=-1``, after the
  final LayerNorm for DINOv2/SigLIP) or ``hidden_states[select_layer]``; the leading prefix tokens are dropped
  (DINOv2: 1 CLS + ``num_register_tokens``; CLIP and ViT: 1 CLS; SigLIP: none) and the ``g²`` patch tokens
  reshaped to ``[N, g, g, C]``. At a side other than the config's ``image_size`` the position embeddings are
  interpolated: ``interpolate_pos_encoding=True`` where the forward takes it (CLIP, SigLIP, ViT); DINOv2
  always interpolates.

Remote code runs only with ``trust_remote_code=True`` (config key ``model.expert.trust_remote_code``). The
expert is frozen by default: no parameter requires grad and ``train()`` leaves it in eval mode, so dropout,
drop-path and batch-norm statistics never change while the rest of CoLVA trains.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, CLIPVisionModel, SiglipVisionModel
from transformers.utils import ModelOutput

from .builders import check_model_dir, load_image_processor, resolve_dtype

__all__ = ['VisionExpert', 'HFVisionExpert', 'build_vision_expert', 'resize_for_expert']

_KEY = 'model.expert'
# Values a resized [0, 1] image may reach (bicubic resizes overshoot a little); beyond them the caller
# most likely passed 0–255 pixels or already normalised ones.
_RANGE_SLACK = 0.05


class VisionExpert(nn.Module):
    """CoLVA's vision-expert contract: square images in [0, 1] → a patch-feature grid.

    Attributes:
        hidden_size: C, the feature width.
        image_size: E, the square input side the expert is fed (pixels).
        patch_size: p, pixels per patch side.
        grid_size: g = E // p, the side of the feature grid.

    ``forward(pixel_values [N, 3, E, E], floats in [0, 1]) -> [N, g, g, C]``; the expert applies its own
    normalisation inside ``forward``.
    """

    hidden_size: int
    image_size: int
    patch_size: int
    grid_size: int

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f'{type(self).__name__} must implement forward(pixel_values [N, 3, E, E]) '
                                  '-> [N, g, g, C].')


def resize_for_expert(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images → ``[N, 3, E, E]`` float32 in [0, 1]: each converted to RGB and bilinearly resized to E×E.

    The aspect ratio is not kept (CoLVA resizes the clean images straight to RADIO's 1024²). Images should come
    from :func:`mllm_align.data.image_loading.load_image` (EXIF, alpha and 16-bit handled); here a non-RGB
    mode is converted with PIL's ``convert('RGB')``.

    Raises:
        ValueError: ``size`` is not a positive integer.
        TypeError: an item is not a PIL image.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f'resize_for_expert: size must be a positive int (the expert image_size), got {size!r}.')
    size = int(size)
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f'resize_for_expert: item {i} is a {type(image).__name__}, not a PIL image.')
        rgb = image if image.mode == 'RGB' else image.convert('RGB')
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)  # (E, E, 3)
    if not arrays:
        return torch.empty(0, 3, size, size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, E, E)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as err:
        raise ValueError(f'Vision expert: cannot read {path} ({err}); set `{_KEY}.path` to a valid HF '
                         'model directory.') from err


def _check_remote_code(path: Path, auto_map: Any, trust_remote_code: bool) -> None:
    """Refuse remote code that is not trusted, trusted code that is not there, and code in another repo."""
    has_code = any(path.glob('*.py'))
    if auto_map and not trust_remote_code:
        raise ValueError(
            f'Vision expert {str(path)!r} ships its own modelling code (config.json auto_map: '
            f'{sorted(auto_map)}): set `{_KEY}.trust_remote_code=True` in the config if you trust the code '
            'in that directory (RADIO needs it).')
    if not trust_remote_code:
        return
    if not has_code:
        raise ValueError(
            f'`{_KEY}.trust_remote_code=True` but {str(path)!r} holds no *.py modelling code: set '
            f'`{_KEY}.trust_remote_code=False` for a plain HF vision model, or copy the remote-code files '
            '(e.g. RADIO\'s modeling/configuration *.py) into the directory.')
    if not auto_map:
        return
    if 'AutoModel' not in auto_map:
        raise ValueError(f'Vision expert {str(path)!r}: config.json auto_map has no AutoModel entry '
                         f'({sorted(auto_map)}); the expert loads remote code through AutoModel.')
    for name, ref in auto_map.items():
        refs = ref if isinstance(ref, (list, tuple)) else [ref]
        for one in refs:
            if one is None:
                continue
            if '--' in one:
                raise ValueError(f'Vision expert {str(path)!r}: auto_map[{name!r}] = {one!r} points at code in '
                                 'another repository, which mllm_align never downloads; copy that code into '
                                 'the directory and drop the "repo--" prefix.')
            module_file = path / (one.rsplit('.', 1)[0] + '.py')
            if not module_file.is_file():
                raise ValueError(f'Vision expert {str(path)!r}: auto_map[{name!r}] = {one!r} needs '
                                 f'{module_file.name}, which is not in the directory; copy the remote code there.')


def _load_plain_model(path: Path, model_type: str, kwargs: dict) -> nn.Module:
    if model_type in ('clip', 'clip_vision_model'):
        return CLIPVisionModel.from_pretrained(str(path), **kwargs)
    if model_type in ('siglip', 'siglip_vision_model'):
        return SiglipVisionModel.from_pretrained(str(path), **kwargs)
    return AutoModel.from_pretrained(str(path), **kwargs)


def _vision_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, 'vision_config', config)


def _first_attr(objects: Sequence[Any], name: str) -> Any:
    for obj in objects:
        value = getattr(obj, name, None) if obj is not None else None
        if value is not None:
            return value
    return None


def _square_side(resolution: Any, what: str) -> int | None:
    """An int from RADIO's ``Resolution(height, width)``, a ``[h, w]`` list, a size dict or an int."""
    if resolution is None:
        return None
    if isinstance(resolution, dict):
        resolution = [resolution.get('height'), resolution.get('width')]
    if isinstance(resolution, (list, tuple)):
        sides = {int(s) for s in resolution if s is not None}
        if len(sides) != 1:
            raise ValueError(f'Vision expert: {what} is {resolution!r}, not square; set `{_KEY}.image_size` '
                             '(the square side the expert is fed).')
        return sides.pop()
    return int(resolution)


def _processor_size(processor: Any) -> int | None:
    crop = getattr(processor, 'crop_size', None)
    if crop and getattr(processor, 'do_center_crop', False):
        return _square_side(crop, 'the image processor crop_size')
    size = getattr(processor, 'size', None)
    if isinstance(size, dict):
        if 'shortest_edge' in size:
            return int(size['shortest_edge'])
        if 'height' in size:
            return _square_side(size, 'the image processor size')
    return None


def _num_prefix_tokens(config: Any) -> int | None:
    """Leading non-patch tokens of a plain HF model: CLS + registers (None: infer from the token count)."""
    model_type = getattr(config, 'model_type', '')
    if model_type.startswith('siglip'):
        return 0
    if model_type.startswith('dinov2'):
        return 1 + int(getattr(config, 'num_register_tokens', 0) or 0)
    if model_type.startswith('clip') or model_type in ('vit', 'deit'):
        return 1
    value = getattr(config, 'num_prefix_tokens', None)
    return None if value is None else int(value)


# --------------------------------------------------------------------------------------------------
# The expert
# --------------------------------------------------------------------------------------------------
class HFVisionExpert(VisionExpert):
    """A :class:`VisionExpert` on a local HF directory: RADIO-style remote code or a plain HF vision model.

    In a config: ``expert=dict(type=HFVisionExpert, path=expert_name_or_path, trust_remote_code=True)``
    (``type='HFVisionExpert'`` also works: the class is in mmengine's ``MODELS`` registry).

    Args:
        path: local model directory (``config.json`` + weights; RADIO also its ``*.py`` code).
        image_size: E, the square input side; None → the model's own: RADIO's ``preferred_resolution``
            (config, else the model's property), an HF model's processor crop (or resize) size, else the
            config's ``image_size``. Must be a multiple of the patch size (× RADIO's ViTDet window, if any).
        trust_remote_code: run the directory's own modelling code (needed for RADIO; refused otherwise).
        dtype: parameter dtype name (``'float32'``, ``'bfloat16'``, …). Normalisation runs in float32 first.
        select_layer: −1 → ``last_hidden_state``; else ``hidden_states[select_layer]`` (0 = embeddings).
            RADIO returns only its final features: −1 only.
        freeze: no gradients and ``train()`` keeps eval mode (CoLVA never trains the expert).

    Shapes: ``forward(pixel_values [N, 3, E, E] in [0, 1]) -> [N, g, g, C]``, g = E / patch, in the model's
    output dtype (RADIO: float32).

    Raises:
        FileNotFoundError: ``path`` is not a local HF directory.
        ValueError: remote code without ``trust_remote_code``, ``trust_remote_code`` without code, E not a
            multiple of the patch size, ``select_layer`` out of range (or ≠ −1 for RADIO), an HF model with no
            image processor to normalise with.
    """

    def __init__(self, path: str, image_size: int | None = None, trust_remote_code: bool = False,
                 dtype: str | torch.dtype = 'float32', select_layer: int = -1, freeze: bool = True) -> None:
        super().__init__()
        p = check_model_dir(path, 'Vision expert', f'{_KEY}.path')
        raw_config = _read_json(p / 'config.json')
        auto_map = raw_config.get('auto_map')
        _check_remote_code(p, auto_map, bool(trust_remote_code))
        from ..checkpoint_io import hf_weights_kwargs
        kwargs = dict(dtype=resolve_dtype(dtype), **hf_weights_kwargs(p))
        self.is_remote = bool(auto_map)
        if self.is_remote:
            model = AutoModel.from_pretrained(str(p), trust_remote_code=True, **kwargs)
        else:
            model = _load_plain_model(p, raw_config.get('model_type', ''), kwargs)
        self.model = model.eval()
        self.select_layer = int(select_layer)
        config = _vision_config(model)
        inner = getattr(model, 'radio_model', None)  # HF RADIO wraps its RADIOModel here

        if self.is_remote:
            if self.select_layer != -1:
                raise ValueError(f'`{_KEY}.select_layer={select_layer}`: a RADIO-style expert returns only its '
                                 'final patch features; use select_layer=-1.')
            self.patch_size = int(_first_attr((config, model, inner), 'patch_size') or 0)
            preferred = _first_attr((config, model, inner), 'preferred_resolution')
            default_size = _square_side(preferred, 'preferred_resolution') or getattr(config, 'image_size', None)
            step = int(_first_attr((model, inner), 'min_resolution_step') or self.patch_size)
            self.max_resolution = _first_attr((config, model, inner), 'max_resolution')
            # RADIO strips its summary and register tokens itself; a remote model that returns an HF
            # ModelOutput instead has its prefix inferred from the token count
            self.num_prefix_tokens = None
            mean = std = None
        else:
            num_layers = int(config.num_hidden_layers)
            if not -(num_layers + 1) <= self.select_layer <= num_layers:
                raise ValueError(f'`{_KEY}.select_layer={select_layer}` is out of range for a vision model with '
                                 f'{num_layers} layers (valid: {-(num_layers + 1)}..{num_layers}).')
            try:
                processor = load_image_processor(str(p))
            except (OSError, ValueError) as err:
                raise ValueError(
                    f'Vision expert {str(p)!r}: no usable image processor ({err}). The expert normalises with '
                    "the processor's image_mean/image_std: save it there (`processor.save_pretrained(dir)`, "
                    'a preprocessor_config.json).') from err
            self.patch_size = int(config.patch_size)
            default_size = _processor_size(processor) or getattr(config, 'image_size', None)
            step = self.patch_size
            self.max_resolution = None
            self.num_prefix_tokens = _num_prefix_tokens(config)
            do_normalize = getattr(processor, 'do_normalize', True)
            mean = getattr(processor, 'image_mean', None) if do_normalize else None
            std = getattr(processor, 'image_std', None) if do_normalize else None
            if do_normalize and (mean is None or std is None):
                raise ValueError(f'Vision expert {str(p)!r}: the image processor normalises but has no '
                                 'image_mean/image_std; fix its preprocessor_config.json.')
        if self.patch_size < 1:
            raise ValueError(f'Vision expert {str(p)!r}: no patch_size in its config or model; the expert needs '
                             'a patch-based encoder.')
        self.image_size = self._check_image_size(image_size if image_size is not None else default_size, step)
        self.grid_size = self.image_size // self.patch_size
        native = getattr(config, 'image_size', None)
        takes_flag = 'interpolate_pos_encoding' in inspect.signature(model.forward).parameters
        self._forward_kwargs: dict[str, Any] = {}
        if not self.is_remote:
            self._forward_kwargs['output_hidden_states'] = self.select_layer != -1
            if takes_flag and native is not None and int(native) != self.image_size:
                self._forward_kwargs['interpolate_pos_encoding'] = True
        self.normalize = mean is not None
        # (1, 3, 1, 1) float32, not persistent: rebuilt from the processor, never in a checkpoint
        self.register_buffer('image_mean', torch.tensor(mean or [0.0] * 3, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('image_std', torch.tensor(std or [1.0] * 3, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.hidden_size = self._find_hidden_size(config, inner)
        self.frozen = bool(freeze)
        if self.frozen:
            self.model.requires_grad_(False)
        self.train(False)

    def _check_image_size(self, size: Any, step: int) -> int:
        if size is None:
            raise ValueError(f'Vision expert: no preferred input size found in the model or its processor; set '
                             f'`{_KEY}.image_size` (a multiple of {step}).')
        if isinstance(size, bool) or int(size) != size or int(size) < step:
            raise ValueError(f'`{_KEY}.image_size={size!r}`: use a positive multiple of {step}.')
        size = int(size)
        if size % step:
            lower, upper = size // step * step, (size // step + 1) * step
            raise ValueError(f'`{_KEY}.image_size={size}` is not a multiple of the expert\'s patch step {step} '
                             f'(patch {self.patch_size}); use {lower or upper} or {upper}.')
        if self.max_resolution is not None and size > int(self.max_resolution):
            raise ValueError(f'`{_KEY}.image_size={size}` exceeds the expert\'s max_resolution '
                             f'{self.max_resolution}; use a smaller multiple of {step}.')
        return size

    def _find_hidden_size(self, config: Any, inner: Any) -> int:
        width = getattr(config, 'hidden_size', None)
        if width is None:  # RADIO's config has none: its timm ViT knows (embed_dim / num_features)
            backbone = _first_attr((self.model, inner), 'model')
            width = _first_attr((backbone,), 'embed_dim') or _first_attr((backbone,), 'num_features')
        if width is None:  # last resort: one small forward at the smallest grid that fits
            with torch.no_grad():
                width = self._patch_tokens(self._run(torch.zeros(1, 3, self.patch_size, self.patch_size)), 1)
                width = width.shape[-1]
        return int(width)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> HFVisionExpert:
        """Set training mode; a frozen expert (``freeze=True``) stays in eval mode whatever ``mode`` says."""
        return super().train(False if self.frozen else mode)

    def _run(self, pixel_values: torch.Tensor) -> Any:
        x = pixel_values
        if self.normalize:
            x = (x.float() - self.image_mean) / self.image_std  # (N, 3, E, E), the processor's normalisation
        x = x.to(self.dtype)
        if self.is_remote:
            return self.model(x)  # RADIO normalises with its own input conditioner
        return self.model(pixel_values=x, **self._forward_kwargs)

    def _patch_tokens(self, out: Any, cells: int) -> torch.Tensor:
        """The ``cells`` patch tokens ``[N, cells, C]`` of one model output (RADIO-style or HF)."""
        if isinstance(out, ModelOutput):
            if self.select_layer == -1 or self.is_remote:
                tokens = out.last_hidden_state
            else:
                tokens = out.hidden_states[self.select_layer]
            prefix = self.num_prefix_tokens if self.num_prefix_tokens is not None else tokens.shape[1] - cells
            if tokens.shape[1] != prefix + cells:
                raise ValueError(f'Vision expert returned {tokens.shape[1]} tokens per image, expected {prefix} '
                                 f'prefix + {cells} patch tokens: feed {self.image_size}×{self.image_size} '
                                 f'images (`{_KEY}.image_size`).')
            return tokens[:, prefix:]  # (N, g², C)
        if isinstance(out, dict) and 'backbone' in out:  # RADIO with adaptors: {'backbone': RadioOutput, …}
            out = out['backbone']
        features = getattr(out, 'features', None)
        if features is None and isinstance(out, (tuple, list)) and len(out) == 2:
            features = out[1]  # (summary, features)
        if not isinstance(features, torch.Tensor):
            raise ValueError(f'Vision expert output {type(out).__name__} is neither an HF ModelOutput nor '
                             "RADIO's (summary, features): the expert cannot find the patch features.")
        if features.dim() == 4:  # spatial (N, C, h, w) features
            features = features.flatten(2).transpose(1, 2)  # (N, h·w, C)
        if features.dim() != 3 or features.shape[1] != cells:
            raise ValueError(f'Vision expert returned features of shape {tuple(features.shape)}, expected '
                             f'[N, {cells}, C] for {self.image_size}×{self.image_size} images '
                             f'(`{_KEY}.image_size`).')
        return features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, E, E]`` images in [0, 1] (unnormalised) → patch features ``[N, g, g, C]``.

        Raises:
            ValueError: not ``[N, 3, E, E]``, or values outside [0, 1] (0–255 pixels, or normalised twice).
        """
        e = self.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, e, e):
            raise ValueError(f'Vision expert takes [N, 3, {e}, {e}] images, got {tuple(pixel_values.shape)}: '
                             f'resize with resize_for_expert(images, {e}) (`{_KEY}.image_size`).')
        if pixel_values.numel():
            low, high = float(pixel_values.min()), float(pixel_values.max())
            if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
                raise ValueError(f'Vision expert takes unnormalised pixels in [0, 1], got values in '
                                 f'[{low:.3g}, {high:.3g}]: pass resize_for_expert(...) output; the expert '
                                 'normalises by itself.')
        n, g = pixel_values.shape[0], self.grid_size
        tokens = self._patch_tokens(self._run(pixel_values), g * g)
        return tokens.reshape(n, g, g, tokens.shape[-1])  # (N, g, g, C), row-major patches


def build_vision_expert(path: str, image_size: int | None = None, trust_remote_code: bool = False,
                        dtype: str | torch.dtype = 'float32', select_layer: int = -1,
                        freeze: bool = True) -> HFVisionExpert:
    """Build CoLVA's vision expert from a local directory: ``HFVisionExpert(...)`` (see it for the args)."""
    return HFVisionExpert(path, image_size=image_size, trust_remote_code=trust_remote_code, dtype=dtype,
                          select_layer=select_layer, freeze=freeze)


def _register() -> None:
    from mmengine.registry import MODELS
    MODELS.register_module(name='HFVisionExpert', module=HFVisionExpert, force=True)


_register()
