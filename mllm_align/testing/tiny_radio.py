"""A tiny remote-code stand-in for NVIDIA RADIO (CoLVA's vision expert), built offline into ``root/radio``.

NVIDIA RADIO ships as an HF directory with its own modelling code (``config.json`` → ``auto_map``), loaded
with ``AutoModel.from_pretrained(path, trust_remote_code=True)``; ``summary, features = model(x)`` takes
images ``x [N, 3, H, W]`` in [0, 1] (its input conditioner normalises them inside ``forward``), works at any
side that is a multiple of the patch (16), and returns the summary tokens ``[N, n_cls·C]`` apart from the
patch tokens ``features [N, (H/16)·(W/16), C]`` (register tokens are dropped). The stand-in keeps exactly that
interface on a two-layer ViT, so the expert code path that loads RADIO is tested without the 2.6 GB model::

    radio/
      configuration_tiny_radio.py  TinyRadioConfig (model_type 'tiny_radio')
      modeling_tiny_radio.py       TinyRadioModel: input conditioner (norm_mean / norm_std buffers),
                                   16-px patch conv, learned 4×4 position grid (bilinear to any grid),
                                   2 summary (CLS) + 2 register tokens, 2 pre-norm blocks, final LayerNorm
      config.json                  auto_map → the two files above; preferred_resolution [64, 64]
      model.safetensors            seeded random weights (about 45k parameters, ~0.2 MB)
      .complete                    stamp: version, parameters, library versions, this file's hash

The conditioner uses the ImageNet mean/std, not 0.5, so normalising twice (or not at all) changes the
features. The modelling code is written out from the two source strings below, so the stamp's source hash
covers it. Like ``build_tiny_qwen2_vl``, the directory has its own stamp and is built into a temporary
sibling and renamed into place; a rebuild of the assets around it removes it and the next call builds it
again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers

from mllm_align.testing.tiny_assets import STAMP_NAME, _file_lock, build_tiny_assets

logger = logging.getLogger(__name__)

__all__ = ['TINY_RADIO_VERSION', 'TINY_RADIO_DIR', 'TINY_RADIO_PATCH_SIZE', 'TINY_RADIO_IMAGE_SIZE',
           'TINY_RADIO_HIDDEN_SIZE', 'TINY_RADIO_NUM_CLS_TOKENS', 'TINY_RADIO_NUM_REGISTERS', 'TINY_RADIO_MEAN',
           'TINY_RADIO_STD', 'build_tiny_radio', 'tiny_radio_path']

# Bump when the content changes in a way the stamp cannot see.
TINY_RADIO_VERSION = '1'
TINY_RADIO_DIR = 'radio'
TINY_RADIO_PATCH_SIZE = 16
TINY_RADIO_IMAGE_SIZE = 64  # preferred resolution: a 4×4 patch grid
TINY_RADIO_HIDDEN_SIZE = 32
TINY_RADIO_NUM_LAYERS = 2
TINY_RADIO_NUM_HEADS = 2
TINY_RADIO_NUM_CLS_TOKENS = 2  # RADIO keeps one summary token per teacher
TINY_RADIO_NUM_REGISTERS = 2
TINY_RADIO_MEAN = (0.485, 0.456, 0.406)
TINY_RADIO_STD = (0.229, 0.224, 0.225)

CONFIGURATION_SOURCE = '''\
"""Configuration of the tiny RADIO stand-in (mllm_align's offline test assets)."""
from transformers import PretrainedConfig


class TinyRadioConfig(PretrainedConfig):
    """Sizes of a small ViT with RADIO's interface: patch, preferred input side, summary/register tokens."""

    model_type = 'tiny_radio'

    def __init__(self, patch_size=16, preferred_resolution=(64, 64), max_resolution=512, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, num_cls_tokens=2, num_registers=2,
                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), initializer_range=0.02,
                 **kwargs):
        self.patch_size = patch_size
        self.preferred_resolution = list(preferred_resolution)
        self.max_resolution = max_resolution
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.num_cls_tokens = num_cls_tokens
        self.num_registers = num_registers
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
'''

MODELING_SOURCE = '''\
"""The tiny RADIO stand-in: summary, features = model(x) for images x in [0, 1] of any side divisible by 16."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_radio import TinyRadioConfig


class TinyInputConditioner(nn.Module):
    """x -> (x - mean) / std per channel; the model applies it itself, callers pass raw [0, 1] pixels."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer('norm_mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer('norm_std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, x):
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)


class TinyBlock(nn.Module):
    """Pre-norm transformer block: y = x + Attn(LN(x)); out = y + MLP(LN(y))."""

    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, C / heads)
        x = x + self.proj(attn.transpose(1, 2).reshape(n, t, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyRadioModel(PreTrainedModel):
    """A two-layer ViT that returns (summary [N, n_cls * C], features [N, h * w, C]) like RADIO."""

    config_class = TinyRadioConfig
    base_model_prefix = 'tiny_radio'
    main_input_name = 'x'

    def __init__(self, config):
        super().__init__(config)
        width, patch = config.hidden_size, config.patch_size
        base_grid = config.preferred_resolution[0] // patch
        self.input_conditioner = TinyInputConditioner(config.image_mean, config.image_std)
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, width, base_grid, base_grid))
        self.cls_tokens = nn.Parameter(torch.zeros(1, config.num_cls_tokens, width))
        self.registers = nn.Parameter(torch.zeros(1, config.num_registers, width))
        self.blocks = nn.ModuleList(TinyBlock(width, config.num_attention_heads, config.mlp_ratio)
                                    for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(width)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, TinyRadioModel):
            for param in (module.pos_embed, module.cls_tokens, module.registers):
                nn.init.normal_(param, std=std)

    @property
    def patch_size(self):
        return self.config.patch_size

    @property
    def preferred_resolution(self):
        return tuple(self.config.preferred_resolution)

    @property
    def num_summary_tokens(self):
        return self.config.num_cls_tokens

    def forward(self, x):
        patch = self.config.patch_size
        if x.dim() != 4 or x.shape[-2] % patch or x.shape[-1] % patch:
            raise ValueError(f'TinyRadioModel takes [N, 3, H, W] with H and W multiples of {patch}, '
                             f'got {tuple(x.shape)}.')
        x = self.input_conditioner(x.to(self.patch_embed.weight.dtype))
        grid = self.patch_embed(x)  # (N, C, h, w)
        pos = self.pos_embed
        if pos.shape[-2:] != grid.shape[-2:]:
            pos = F.interpolate(pos, size=grid.shape[-2:], mode='bilinear', align_corners=False)
        patches = (grid + pos).flatten(2).transpose(1, 2)  # (N, h * w, C)
        n = patches.shape[0]
        tokens = torch.cat([self.cls_tokens.expand(n, -1, -1), self.registers.expand(n, -1, -1), patches], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)  # (N, n_cls + n_reg + h * w, C)
        skip = self.config.num_cls_tokens + self.config.num_registers
        summary = tokens[:, :self.config.num_cls_tokens].flatten(1)  # (N, n_cls * C)
        return summary.float(), tokens[:, skip:].float()
'''

_SOURCES = {'configuration_tiny_radio.py': CONFIGURATION_SOURCE, 'modeling_tiny_radio.py': MODELING_SOURCE}


def tiny_radio_path(root: str | Path) -> Path:
    """``root/radio``, where :func:`build_tiny_radio` puts the stand-in."""
    return Path(root).absolute() / TINY_RADIO_DIR


def _params(seed: int) -> dict:
    return dict(seed=seed, patch_size=TINY_RADIO_PATCH_SIZE, image_size=TINY_RADIO_IMAGE_SIZE,
                hidden_size=TINY_RADIO_HIDDEN_SIZE, num_layers=TINY_RADIO_NUM_LAYERS,
                num_heads=TINY_RADIO_NUM_HEADS, num_cls_tokens=TINY_RADIO_NUM_CLS_TOKENS,
                num_registers=TINY_RADIO_NUM_REGISTERS, mean=list(TINY_RADIO_MEAN), std=list(TINY_RADIO_STD))


def _stamp_text(params: dict) -> str:
    stamp = {'version': TINY_RADIO_VERSION, 'params': params,
             'libraries': {'torch': torch.__version__, 'transformers': transformers.__version__,
                           'pillow': PIL.__version__, 'numpy': np.__version__},
             'source_sha256': hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return json.dumps(stamp, indent=1, sort_keys=True) + '\n'


def _stamp_matches(out: Path, stamp: str) -> bool:
    try:
        return (out / STAMP_NAME).read_text(encoding='utf-8') == stamp
    except OSError:
        return False


def _write_sources(folder: Path) -> None:
    for name, text in _SOURCES.items():
        (folder / name).write_text(text, encoding='utf-8')


def _build_radio(out_dir: Path, seed: int) -> None:
    """Write the code and config into ``out_dir``, build the seeded model through HF's remote-code path, save."""
    from transformers import AutoConfig, AutoModel

    out_dir.mkdir(parents=True)
    _write_sources(out_dir)
    config = {
        'model_type': 'tiny_radio', 'architectures': ['TinyRadioModel'],
        'auto_map': {'AutoConfig': 'configuration_tiny_radio.TinyRadioConfig',
                     'AutoModel': 'modeling_tiny_radio.TinyRadioModel'},
        'patch_size': TINY_RADIO_PATCH_SIZE, 'preferred_resolution': [TINY_RADIO_IMAGE_SIZE] * 2,
        'max_resolution': 8 * TINY_RADIO_IMAGE_SIZE, 'hidden_size': TINY_RADIO_HIDDEN_SIZE,
        'num_hidden_layers': TINY_RADIO_NUM_LAYERS, 'num_attention_heads': TINY_RADIO_NUM_HEADS, 'mlp_ratio': 2,
        'num_cls_tokens': TINY_RADIO_NUM_CLS_TOKENS, 'num_registers': TINY_RADIO_NUM_REGISTERS,
        'image_mean': list(TINY_RADIO_MEAN), 'image_std': list(TINY_RADIO_STD), 'initializer_range': 0.02,
    }
    (out_dir / 'config.json').write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    hf_config = AutoConfig.from_pretrained(str(out_dir), trust_remote_code=True)
    torch.manual_seed(seed + 31)
    model = AutoModel.from_config(hf_config, trust_remote_code=True).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    _write_sources(out_dir)  # save_pretrained copies the module files; rewrite them so the bytes are ours


def build_tiny_radio(root: str | Path, force: bool = False, *, seed: int = 0) -> Path:
    """Build (or reuse) the tiny RADIO stand-in at ``root/radio`` and return that directory.

    The assets under ``root`` are built first (default parameters) when ``root`` holds none, so ``root``
    stays a tree that :func:`~mllm_align.testing.tiny_assets.build_tiny_assets` recognises; existing ones are
    used as they are. Nothing is done when ``root/radio/.complete`` matches this builder's version,
    parameters, library versions and source; otherwise the directory is built in a temporary sibling and
    renamed into place under a file lock. ``AutoModel.from_pretrained(path, trust_remote_code=True)`` loads
    it; without ``trust_remote_code`` transformers refuses.

    Args:
        root: the tiny-assets root (``data/tiny``).
        force: rebuild even when the stamp matches.
        seed: seed of the random initialisation (``seed + 31``).
    """
    root = Path(root).absolute()
    if not (root / STAMP_NAME).is_file():
        build_tiny_assets(root)
    out = tiny_radio_path(root)
    stamp = _stamp_text(_params(seed))
    if not force and _stamp_matches(out, stamp):
        return out
    with _file_lock(out):
        if not force and _stamp_matches(out, stamp):
            return out
        tmp = root / f'.{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        try:
            # Build in tmp/radio: HF caches remote code under the directory's basename, so the temporary
            # build shares the final directory's module name instead of leaving one per build.
            _build_radio(tmp / TINY_RADIO_DIR, seed)
            (tmp / TINY_RADIO_DIR / STAMP_NAME).write_text(stamp, encoding='utf-8')
            if out.exists():
                old = root / f'.{out.name}.old-{uuid.uuid4().hex[:8]}'
                os.replace(out, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp / TINY_RADIO_DIR, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info('Tiny RADIO stand-in ready in %s', out)
    return out
