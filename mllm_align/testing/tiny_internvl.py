"""Tiny InternVL checkpoints in both of InternVL's formats, built offline into ``root/internvl2_remote`` and
``root/internvl_hf``.

* ``internvl2_remote``: a stand-in for the original remote-code checkpoints (``OpenGVLab/InternVL2-4B``:
  ``InternVLChatModel`` = InternViT + ``mlp1`` + Phi-3, ``config.json`` → ``auto_map``), loaded with
  ``AutoModel.from_pretrained(path, trust_remote_code=True)`` and refused without it. Its modelling code is
  ours, written out from the two source strings below (so the stamp's source hash covers it), and keeps the
  interface of the real one: ``vision_model`` (a two-layer ViT with a CLS token), ``mlp1`` (LayerNorm →
  Linear → GELU → Linear), ``language_model`` (transformers' ``Phi3ForCausalLM``), ``pixel_shuffle``,
  ``extract_feature(pixel_values) -> [T, 256, D]``, ``num_image_token``, ``img_context_token_id``, a
  ``forward(pixel_values, input_ids, attention_mask, image_flags)`` that writes the tiles' features over the
  ``<IMG_CONTEXT>`` rows, and the config fields ``force_image_size``, ``downsample_ratio``, ``template``,
  ``select_layer``, ``ps_version``, ``llm_config``, ``vision_config``, ``max_dynamic_patch``,
  ``use_thumbnail``. The tokenizer is the tiny Phi-3 one (``<|user|>``, ``<|assistant|>``, ``<|end|>``,
  ``<|system|>`` single ids) with ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` added as special tokens.
* ``internvl_hf``: transformers' own ``InternVLForConditionalGeneration`` (model_type ``internvl``, as
  ``OpenGVLab/InternVL3-1B-hf``) on a tiny Qwen2 text model, with a Qwen2 tokenizer that names its image
  tokens as the InternVL-hf tokenizers do (``start_image_token`` ``<img>``, ``end_image_token`` ``</img>``,
  ``context_image_token`` ``<IMG_CONTEXT>``, ``video_token`` ``<video>``), a ``GotOcr2ImageProcessor``
  config (448-px patches, ImageNet mean/std) and ``processor_config.json`` (``image_seq_length`` 256).

Both keep InternVL2's geometry: 448-px tiles, 14-px patches (a 32×32 grid), pixel shuffle with
``downsample_ratio`` 0.5, so one tile = 16×16 = 256 LLM tokens; the sizes are tiny (ViT hidden 16, LLM
hidden 64, 2 layers each), so each directory is well under 1 MB. Like ``build_tiny_qwen2_vl`` each has its
own ``.complete`` stamp and is built into a temporary sibling and renamed into place under a file lock; a
rebuild of the assets around them removes them and the next call builds them again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import tokenizers
import torch
import transformers

from mllm_align.testing import shapes
from mllm_align.testing.tiny_assets import (
    _TEMPLATE_TEXTS,
    LLM_HIDDEN_SIZE,
    LLM_INTERMEDIATE_SIZE,
    LLM_NUM_HEADS,
    LLM_NUM_KV_HEADS,
    LLM_NUM_LAYERS,
    STAMP_NAME,
    _file_lock,
    build_tiny_assets,
    tiny_assets_paths,
)
from mllm_align.testing.tiny_tokenizer import build_tiny_tokenizer

logger = logging.getLogger(__name__)

__all__ = ['TINY_INTERNVL_VERSION', 'INTERNVL_REMOTE_DIR', 'INTERNVL_HF_DIR', 'INTERNVL_IMAGE_SIZE',
           'INTERNVL_PATCH_SIZE', 'INTERNVL_TOKENS_PER_TILE', 'INTERNVL_IMAGE_TOKENS', 'build_tiny_internvl2_remote',
           'build_tiny_internvl_hf', 'build_tiny_internvl']

# Bump when the content changes in a way the stamp cannot see.
TINY_INTERNVL_VERSION = '1'
INTERNVL_REMOTE_DIR = 'internvl2_remote'
INTERNVL_HF_DIR = 'internvl_hf'
INTERNVL_IMAGE_SIZE = 448
INTERNVL_PATCH_SIZE = 14
INTERNVL_DOWNSAMPLE_RATIO = 0.5
INTERNVL_TOKENS_PER_TILE = 256  # (448 / 14)² · 0.5²
INTERNVL_MAX_TILES = 12
INTERNVL_VISION_HIDDEN = 16
INTERNVL_VISION_LAYERS = 2
INTERNVL_VISION_HEADS = 2
#: InternVL's image tokens: start, end, and the context token the HF format repeats 256·T times per image.
INTERNVL_IMAGE_TOKENS = ('<img>', '</img>', '<IMG_CONTEXT>')
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

CONFIGURATION_SOURCE = '''\
"""Configuration of the tiny InternVL2 stand-in (mllm_align's offline test assets)."""
from transformers import Phi3Config, PretrainedConfig


class TinyInternVisionConfig(PretrainedConfig):
    """A small ViT: tile side, patch side, width, depth, heads."""

    model_type = 'tiny_intern_vit'

    def __init__(self, image_size=448, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 mlp_ratio=2, layer_norm_eps=1e-6, initializer_range=0.02, **kwargs):
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class TinyInternVLChatConfig(PretrainedConfig):
    """InternVL2's chat config: a vision config, a Phi-3 LLM config and the image-token geometry."""

    model_type = 'internvl_chat'
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, force_image_size=None, downsample_ratio=0.5,
                 template='phi3-chat', select_layer=-1, ps_version='v2', dynamic_image_size=True, use_thumbnail=True,
                 min_dynamic_patch=1, max_dynamic_patch=12, **kwargs):
        super().__init__(**kwargs)
        if isinstance(vision_config, PretrainedConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, PretrainedConfig):
            llm_config = llm_config.to_dict()
        self.vision_config = TinyInternVisionConfig(**(vision_config or {}))
        self.llm_config = Phi3Config(**(llm_config or {}))
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.select_layer = select_layer
        self.ps_version = ps_version
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch

    def to_dict(self):
        out = super().to_dict()
        out['vision_config'] = self.vision_config.to_dict()
        out['llm_config'] = self.llm_config.to_dict()
        return out
'''

MODELING_SOURCE = '''\
"""The tiny InternVL2 stand-in: InternViT-like encoder + pixel shuffle + mlp1 + Phi-3, InternVLChatModel's interface."""
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Phi3ForCausalLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast

from .configuration_tiny_internvl import TinyInternVisionConfig, TinyInternVLChatConfig


class TinyVisionBlock(nn.Module):
    """Pre-norm block: y = x + proj(Attn(LN(x))); out = y + fc2(GELU(fc1(LN(y))))."""

    def __init__(self, config):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, config.mlp_ratio * width)
        self.mlp.fc2 = nn.Linear(config.mlp_ratio * width, width)

    def forward(self, x):
        n, t, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, T, C / heads)
        x = x + self.attn.proj(attn.transpose(1, 2).reshape(n, t, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TinyVisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(TinyVisionBlock(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, output_hidden_states=False):
        states = [x]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x)
            else:
                x = layer(x)
            states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


class TinyInternVisionModel(PreTrainedModel):
    """[T, 3, S, S] tiles -> [T, 1 + (S / p)^2, C] (CLS first); position grid interpolated for other sides."""

    config_class = TinyInternVisionConfig
    main_input_name = 'pixel_values'
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        width, patch = config.hidden_size, config.patch_size
        grid = config.image_size // patch
        self.embeddings = nn.Module()
        self.embeddings.class_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.embeddings.patch_embedding = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.embeddings.position_embedding = nn.Parameter(torch.zeros(1, 1 + grid * grid, width))
        self.encoder = TinyVisionEncoder(config)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, TinyInternVisionModel):
            nn.init.normal_(module.embeddings.class_embedding, std=std)
            nn.init.normal_(module.embeddings.position_embedding, std=std)

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        emb = self.embeddings
        grid = emb.patch_embedding(pixel_values.to(emb.patch_embedding.weight.dtype))  # (T, C, h, w)
        t, c, h, w = grid.shape
        pos = emb.position_embedding
        side = int((pos.shape[1] - 1) ** 0.5)
        pos_grid = pos[:, 1:]
        if (h, w) != (side, side):
            pos_grid = pos_grid.reshape(1, side, side, c).permute(0, 3, 1, 2)
            pos_grid = F.interpolate(pos_grid, size=(h, w), mode='bicubic', align_corners=False)
            pos_grid = pos_grid.flatten(2).transpose(1, 2)
        tokens = torch.cat([emb.class_embedding.expand(t, -1, -1) + pos[:, :1],
                            grid.flatten(2).transpose(1, 2) + pos_grid], dim=1)  # (T, 1 + h*w, C)
        last, states = self.encoder(tokens, output_hidden_states)
        return BaseModelOutput(last_hidden_state=last, hidden_states=states)


class TinyInternVLChatModel(PreTrainedModel):
    """vision_model -> pixel_shuffle -> mlp1 -> Phi-3, with InternVLChatModel's attributes and methods."""

    config_class = TinyInternVLChatConfig
    main_input_name = 'pixel_values'
    base_model_prefix = 'language_model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['TinyVisionBlock', 'Phi3DecoderLayer']

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.num_image_token = int((image_size // patch_size) ** 2 * config.downsample_ratio ** 2)
        use_flash_attn = use_flash_attn and importlib.util.find_spec('flash_attn') is not None
        config.llm_config._attn_implementation = 'flash_attention_2' if use_flash_attn else 'eager'
        self.vision_model = vision_model or TinyInternVisionModel(config.vision_config)
        self.language_model = language_model or Phi3ForCausalLM(config.llm_config)
        vit_width = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2
        llm_width = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(vit_width), nn.Linear(vit_width, llm_width), nn.GELU(),
                                  nn.Linear(llm_width, llm_width))
        self.img_context_token_id = None
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def pixel_shuffle(self, x, scale_factor=0.5):
        """[T, w, h, C] -> [T, w*s, h*s, C/s^2]: each 2x2 neighbourhood (s = 0.5) into one feature."""
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version != 'v1':
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values):
        """[T, 3, S, S] tiles -> [T, num_image_token, D] LLM features (CLS dropped, pixel shuffle, mlp1)."""
        if self.select_layer == -1:
            feats = self.vision_model(pixel_values=pixel_values).last_hidden_state
        else:
            feats = self.vision_model(pixel_values=pixel_values, output_hidden_states=True
                                      ).hidden_states[self.select_layer]
        feats = feats[:, 1:, :]
        side = int(feats.shape[1] ** 0.5)
        feats = feats.reshape(feats.shape[0], side, side, -1)
        feats = self.pixel_shuffle(feats, scale_factor=self.downsample_ratio)
        feats = feats.reshape(feats.shape[0], -1, feats.shape[-1])
        return self.mlp1(feats)

    def forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """The LLM on input_ids whose <IMG_CONTEXT> rows (img_context_token_id) take the tiles' features."""
        embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        feats = self.extract_feature(pixel_values)
        if image_flags is not None:
            feats = feats[image_flags.squeeze(-1) == 1]
        b, n, c = embeds.shape
        embeds = embeds.reshape(b * n, c)
        selected = input_ids.reshape(b * n) == self.img_context_token_id
        if int(selected.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(f'{int(selected.sum())} <IMG_CONTEXT> tokens but {feats.shape[0] * feats.shape[1]} '
                             'image features.')
        embeds[selected] = embeds[selected] * 0.0 + feats.reshape(-1, c).to(embeds.dtype)
        embeds = embeds.reshape(b, n, c)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  past_key_values=past_key_values, use_cache=use_cache,
                                  output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)
'''

_SOURCES = {'configuration_tiny_internvl.py': CONFIGURATION_SOURCE, 'modeling_tiny_internvl.py': MODELING_SOURCE}


def _corpus(root: Path) -> list[str]:
    files = tiny_assets_paths(root)
    return shapes.corpus_texts(files.pretrain_json, files.sft_json, files.eval_json) + list(_TEMPLATE_TEXTS)


def _stamp_text(params: dict) -> str:
    package = Path(__file__).parents[1]
    source = hashlib.sha256()
    for rel in ('testing/tiny_internvl.py', 'testing/tiny_tokenizer.py'):
        source.update(rel.encode() + b'\0' + (package / rel).read_bytes())
    stamp = {'version': TINY_INTERNVL_VERSION, 'params': params,
             'libraries': {'torch': torch.__version__, 'transformers': transformers.__version__,
                           'tokenizers': tokenizers.__version__, 'pillow': PIL.__version__, 'numpy': np.__version__},
             'source_sha256': source.hexdigest()}
    return json.dumps(stamp, indent=1, sort_keys=True) + '\n'


def _stamp_matches(out: Path, stamp: str) -> bool:
    try:
        return (out / STAMP_NAME).read_text(encoding='utf-8') == stamp
    except OSError:
        return False


def _build_once(root: str | Path, name: str, params: dict, build: Callable[[Path, list[str]], None],
                force: bool) -> Path:
    """Build ``root/name`` with ``build(out_dir, corpus)`` unless its stamp matches; atomic, under a file lock."""
    root = Path(root).absolute()
    if not (root / STAMP_NAME).is_file():
        build_tiny_assets(root)  # the tokenizers train on the shapes dataset's text
    out = root / name
    stamp = _stamp_text({**params, 'assets_stamp': (root / STAMP_NAME).read_text()})
    if not force and _stamp_matches(out, stamp):
        return out
    with _file_lock(out):
        if not force and _stamp_matches(out, stamp):
            return out
        tmp = root / f'.{name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        try:
            # Build in tmp/<name>: HF caches remote code under the directory's basename, so the temporary build
            # shares the final directory's module name instead of leaving one per build.
            (tmp / name).mkdir(parents=True)
            build(tmp / name, _corpus(root))
            (tmp / name / STAMP_NAME).write_text(stamp, encoding='utf-8')
            if out.exists():
                old = root / f'.{name}.old-{uuid.uuid4().hex[:8]}'
                os.replace(out, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp / name, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info('Tiny InternVL (%s) ready in %s', name, out)
    return out


def _add_image_tokens(tokenizer, extra: tuple[str, ...] = ()) -> None:
    tokenizer.add_special_tokens({'additional_special_tokens': [*INTERNVL_IMAGE_TOKENS, *extra]},
                                 replace_additional_special_tokens=False)


def _token_ids(tokenizer, tokens) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(f'The tiny InternVL tokenizer lacks {missing}; the builder must add them.')
    return {t: vocab[t] for t in tokens}


def _build_remote(out_dir: Path, corpus: list[str], vocab_size: int, seed: int) -> None:
    from transformers import AutoConfig, AutoModel, GenerationConfig

    tokenizer = build_tiny_tokenizer('phi3', corpus, vocab_size=vocab_size)
    _add_image_tokens(tokenizer)
    ids = _token_ids(tokenizer, ('<|end|>', '<|endoftext|>', '<|user|>', '<|assistant|>', '<|system|>', '<s>'))
    pad_id = tokenizer.pad_token_id
    llm_config = dict(
        architectures=['Phi3ForCausalLM'], vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN_SIZE,
        intermediate_size=LLM_INTERMEDIATE_SIZE, num_hidden_layers=LLM_NUM_LAYERS,
        num_attention_heads=LLM_NUM_HEADS, num_key_value_heads=LLM_NUM_KV_HEADS, max_position_embeddings=4096,
        original_max_position_embeddings=4096, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=ids['<s>'], eos_token_id=ids['<|endoftext|>'], pad_token_id=pad_id)
    vision_config = dict(image_size=INTERNVL_IMAGE_SIZE, patch_size=INTERNVL_PATCH_SIZE,
                         hidden_size=INTERNVL_VISION_HIDDEN, num_hidden_layers=INTERNVL_VISION_LAYERS,
                         num_attention_heads=INTERNVL_VISION_HEADS, mlp_ratio=2)
    config = {
        'model_type': 'internvl_chat', 'architectures': ['TinyInternVLChatModel'],
        'auto_map': {'AutoConfig': 'configuration_tiny_internvl.TinyInternVLChatConfig',
                     'AutoModel': 'modeling_tiny_internvl.TinyInternVLChatModel',
                     'AutoModelForCausalLM': 'modeling_tiny_internvl.TinyInternVLChatModel'},
        'vision_config': vision_config, 'llm_config': llm_config, 'force_image_size': INTERNVL_IMAGE_SIZE,
        'downsample_ratio': INTERNVL_DOWNSAMPLE_RATIO, 'template': 'phi3-chat', 'select_layer': -1,
        'ps_version': 'v2', 'dynamic_image_size': True, 'use_thumbnail': True, 'min_dynamic_patch': 1,
        'max_dynamic_patch': INTERNVL_MAX_TILES, 'tie_word_embeddings': False,
    }
    for name, text in _SOURCES.items():
        (out_dir / name).write_text(text, encoding='utf-8')
    (out_dir / 'config.json').write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    hf_config = AutoConfig.from_pretrained(str(out_dir), trust_remote_code=True)
    torch.manual_seed(seed + 41)
    model = AutoModel.from_config(hf_config, trust_remote_code=True).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids['<s>'], pad_token_id=pad_id,
                                               eos_token_id=[ids['<|end|>'], ids['<|endoftext|>']])
    model.save_pretrained(out_dir, safe_serialization=True)
    for name, text in _SOURCES.items():  # save_pretrained copies the module files; rewrite them so the bytes are ours
        (out_dir / name).write_text(text, encoding='utf-8')
    tokenizer.save_pretrained(out_dir)


def _build_hf(out_dir: Path, corpus: list[str], vocab_size: int, seed: int) -> None:
    from transformers import (
        GenerationConfig,
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    base = build_tiny_tokenizer('qwen2', corpus, vocab_size=vocab_size)
    extra = dict(start_image_token='<img>', end_image_token='</img>', context_image_token='<IMG_CONTEXT>',
                 video_token='<video>')
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, chat_template=base.chat_template, padding_side='right',
        clean_up_tokenization_spaces=False, model_max_length=1_000_000, eos_token=base.eos_token,
        pad_token=base.pad_token, additional_special_tokens=[*INTERNVL_IMAGE_TOKENS, '<video>'],
        extra_special_tokens=extra)
    ids = _token_ids(tokenizer, (*INTERNVL_IMAGE_TOKENS, '<|im_end|>', '<|endoftext|>'))
    pad_id = tokenizer.pad_token_id
    stop_ids = [ids['<|im_end|>'], ids['<|endoftext|>']]
    text_config = dict(
        model_type='qwen2', vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN_SIZE,
        intermediate_size=LLM_INTERMEDIATE_SIZE, num_hidden_layers=LLM_NUM_LAYERS, num_attention_heads=LLM_NUM_HEADS,
        num_key_value_heads=LLM_NUM_KV_HEADS, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=ids['<|endoftext|>'], eos_token_id=ids['<|im_end|>'],
        pad_token_id=pad_id)
    vision_config = dict(
        image_size=INTERNVL_IMAGE_SIZE, patch_size=INTERNVL_PATCH_SIZE, hidden_size=INTERNVL_VISION_HIDDEN,
        num_hidden_layers=INTERNVL_VISION_LAYERS, num_attention_heads=INTERNVL_VISION_HEADS,
        intermediate_size=2 * INTERNVL_VISION_HIDDEN)
    config = InternVLConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=ids['<IMG_CONTEXT>'],
        image_seq_length=INTERNVL_TOKENS_PER_TILE, downsample_ratio=INTERNVL_DOWNSAMPLE_RATIO,
        tie_word_embeddings=False, architectures=['InternVLForConditionalGeneration'])
    torch.manual_seed(seed + 42)
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids['<|endoftext|>'], eos_token_id=stop_ids,
                                               pad_token_id=pad_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    GotOcr2ImageProcessor(
        size={'height': INTERNVL_IMAGE_SIZE, 'width': INTERNVL_IMAGE_SIZE}, crop_to_patches=True, min_patches=1,
        max_patches=INTERNVL_MAX_TILES, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
        do_convert_rgb=True).save_pretrained(out_dir)
    # InternVLProcessor's own file (its video processor needs torchvision, so it is written, not saved).
    (out_dir / 'processor_config.json').write_text(json.dumps(
        {'image_seq_length': INTERNVL_TOKENS_PER_TILE, 'processor_class': 'InternVLProcessor'}, indent=2) + '\n')


def _params(seed: int, vocab_size: int) -> dict:
    return dict(seed=seed, vocab_size=vocab_size, image_size=INTERNVL_IMAGE_SIZE, patch_size=INTERNVL_PATCH_SIZE,
                downsample_ratio=INTERNVL_DOWNSAMPLE_RATIO, vision_hidden=INTERNVL_VISION_HIDDEN,
                llm_hidden=LLM_HIDDEN_SIZE)


def build_tiny_internvl2_remote(root: str | Path, force: bool = False, *, seed: int = 0,
                                vocab_size: int = 1024) -> Path:
    """Build (or reuse) the tiny remote-code InternVL2 stand-in at ``root/internvl2_remote`` and return it.

    ``AutoModel.from_pretrained(path, trust_remote_code=True)`` loads it (``TinyInternVLChatModel``); without
    ``trust_remote_code`` transformers refuses. The assets under ``root`` are built first when ``root`` holds
    none (the tokenizer trains on their text).
    """
    return _build_once(root, INTERNVL_REMOTE_DIR, _params(seed, vocab_size),
                       lambda out, corpus: _build_remote(out, corpus, vocab_size, seed), force)


def build_tiny_internvl_hf(root: str | Path, force: bool = False, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Build (or reuse) the tiny transformers ``InternVLForConditionalGeneration`` at ``root/internvl_hf``."""
    return _build_once(root, INTERNVL_HF_DIR, _params(seed, vocab_size),
                       lambda out, corpus: _build_hf(out, corpus, vocab_size, seed), force)


def build_tiny_internvl(root: str | Path, force: bool = False, *, seed: int = 0,
                        vocab_size: int = 1024) -> dict[str, Path]:
    """Both tiny InternVL directories: ``{'remote': root/internvl2_remote, 'hf': root/internvl_hf}``."""
    return {'remote': build_tiny_internvl2_remote(root, force, seed=seed, vocab_size=vocab_size),
            'hf': build_tiny_internvl_hf(root, force, seed=seed, vocab_size=vocab_size)}
