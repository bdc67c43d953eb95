"""Qwen2-VL as a multimodal base: transformers' own ``Qwen2VLForConditionalGeneration``, loaded from a local directory.

    pixel_values [S, C·T·p·p] ─► visual (ViT, 2-D RoPE) ─► merger (2×2 → D) ─┐ per image [P_i, D]
                                                                           ├─► splice ─► M-RoPE ─► LLM ─► logits
    input_ids (one IMAGE_TOKEN_INDEX per image, after <|vision_start|>) ──┘

Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution"
(arXiv:2409.12191): images keep their aspect ratio and resolution (within ``min_pixels`` /
``max_pixels``); the image processor cuts each image into p×p patches (two frames per temporal
patch) and reports its grid ``image_grid_thw = (t, h, w)`` in patches; the merger joins 2×2
neighbouring patches, so image i gives ``P_i = t·h·w / merge²`` LLM tokens (Sec. 2.1, "Naive
Dynamic Resolution"). Positions are M-RoPE (Sec. 2.1, "Multimodal Rotary Position Embedding"):
three position ids (temporal, height, width) per token: text tokens have all three equal and
counting on, image token (t, y, x) gets ``offset + (t, y, x)``, the text after an image continues at
``1 + max`` of everything before it. They are computed by HF's own ``get_rope_index`` on the
spliced sequence, so they are exactly what the HF model computes for its own expanded inputs.

mllm_align data carries ONE ``IMAGE_TOKEN_INDEX`` per image (the ``qwen2_vl`` chat template writes
``<|vision_start|><image><|vision_end|>``); :meth:`Qwen2VLModel.prepare_inputs` replaces each by the
image's P_i feature rows with :func:`~mllm_align.models.splice.splice_image_features` and then asks
``get_rope_index`` for the positions, with the image rows written as ``config.image_token_id``
(``<|image_pad|>``) as HF's processor would have expanded them. Logits therefore equal
``Qwen2VLForConditionalGeneration(input_ids=<HF-expanded ids>, pixel_values, image_grid_thw)``
(``tests/models/test_qwen2_vl.py``).

Parts and what trains: ``llm`` = ``model.language_model`` + ``lm_head``; ``visual`` = the vision
transformer without its merger; ``merger`` = the projector (``freeze_projector``). LoRA is injected
in place (no peft wrapper, so module paths and plug-in hooks stay as they are) into the LLM's
decoder (``llm_lora``) or the vision blocks (``visual_encoder_lora``), and merged on export.

Shape letters: B batch, T text length (with placeholders), L spliced length, N images, P_i tokens of
image i, S = Σ t·h·w patches, D LLM hidden size, V vocabulary.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from ..constants import IMAGE_TOKEN_INDEX
from .base import MultimodalModel, build_module, lora_config
from .builders import (
    check_attn_implementation,
    check_model_dir,
    load_image_processor,
    load_tokenizer,
    resolve_dtype,
)
from .export_dir import EXPORT_INFO_NAME, export_merged_base, merged_state_dict
from .splice import MultimodalInputs, placeholder_fields, splice_image_features

__all__ = ['Qwen2VLModel', 'EXPORT_INFO_NAME', 'load_qwen2_vl_image_processor', 'load_qwen2_vl_dir', 'inject_lora',
           'merged_state_dict']


# Constructor keys of LLaVAModel that mean nothing here, with what to do instead.
_LLAVA_ONLY_KEYS: dict[str, str] = {
    'llm': 'Qwen2-VL loads its LLM, vision transformer and merger from one directory: set `path=`',
    'visual_encoder': 'Qwen2-VL has its own vision transformer (inside `path`); remove the key '
                      '(LoRA on it: `visual_encoder_lora=`)',
    'projector': "Qwen2-VL's projector is its merger, loaded from `path`; remove the key "
                 '(freeze it with `freeze_projector=True`)',
    'moca': 'plug-ins go in `plugins=dict(moca=dict(type=MoCa, ...))`',
    'cal': 'plug-ins go in `plugins=dict(cal=dict(type=CAL, ...))`',
    'visual_words': 'plug-ins go in `plugins=dict(visual_words=dict(type=VisualWords, ...))`',
}
# Linear layers of the vision blocks (Qwen2VLVisionBlock: attn.qkv, attn.proj, mlp.fc1, mlp.fc2).
_VISION_BLOCK_SCOPE = r'blocks\.\d+\.(?:.*\.)?'
_LLM_SCOPE = r'layers\.\d+\.(?:.*\.)?'


def load_qwen2_vl_image_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None,
                                  **kwargs: Any) -> Any:
    """The ``Qwen2VLImageProcessor`` saved in ``path``, with its pixel budget optionally changed.

    ``min_pixels`` / ``max_pixels`` bound ``h·w`` of every resized image (so its token count
    ``h·w / (p·merge)²``). They are written into ``size`` too: transformers 4.57 resizes by ``size`` and
    silently ignores a ``max_pixels=`` passed to ``from_pretrained``.
    """
    processor = load_image_processor(path, **kwargs)
    size = dict(getattr(processor, 'size', None) or {})
    if min_pixels is not None:
        size['shortest_edge'] = processor.min_pixels = int(min_pixels)
    if max_pixels is not None:
        size['longest_edge'] = processor.max_pixels = int(max_pixels)
    if size:
        processor.size = size
    return processor


def _linear_names(module: nn.Module, scope: str) -> list[str]:
    """Leaf names of the ``nn.Linear`` layers of ``module`` whose path matches ``scope`` + a name."""
    pattern = re.compile(scope + r'\w+')
    return sorted({name.split('.')[-1] for name, m in module.named_modules()
                   if isinstance(m, nn.Linear) and pattern.fullmatch(name)})


def inject_lora(module: nn.Module, lora_cfg: Any, scope: str, config_key: str) -> list[str]:
    """Inject LoRA layers in place into the linear layers of ``module`` under ``scope`` (a path regex).

    ``target_modules`` (leaf names, e.g. ``['q_proj', 'v_proj']``) are matched only under ``scope``
    (the decoder layers, or the vision blocks: never the merger or the LM head); None: every linear
    layer there. Every parameter of ``module`` that is not a LoRA parameter is frozen (peft's rule).

    Returns:
        The leaf names targeted.

    Raises:
        ValueError: ``target_modules`` matches no layer under ``scope``; the message names
            ``config_key`` and lists the names that exist.
    """
    from peft import inject_adapter_in_model

    cfg = lora_config(lora_cfg)
    available = _linear_names(module, scope)
    targets = cfg.target_modules
    if targets is None:
        names = available
    elif isinstance(targets, str):
        names = [targets]
    else:
        names = sorted(targets)
    missing = [n for n in names if n not in available]
    if not names or missing:
        raise ValueError(f'{config_key}.target_modules = {names} names no linear layer of the {type(module).__name__} '
                         f'({missing} not found); its layers are {available}. Fix `{config_key}.target_modules` '
                         '(or leave it None for every one of them).')
    cfg.target_modules = scope + '(?:' + '|'.join(re.escape(n) for n in names) + ')'
    inject_adapter_in_model(cfg, module)
    return names


class Qwen2VLModel(MultimodalModel):
    """Qwen2-VL (``Qwen2VLForConditionalGeneration``) as an mllm_align base.

    Args:
        path: local directory of a Qwen2-VL checkpoint (``config.json``, safetensors; e.g.
            Qwen2-VL-2B-Instruct). Never downloaded.
        dtype: parameter dtype (``'bfloat16'`` on GPU, ``'float32'`` on CPU).
        attn_implementation: ``'sdpa'``, ``'eager'`` or ``'flash_attention_2'``.
        tokenizer: a tokenizer or its config dict; None loads the one in ``path``.
        image_processor: a ``Qwen2VLImageProcessor``, its config dict (``type=``), or a dict of
            settings for the one in ``path`` (``dict(min_pixels=..., max_pixels=...)``); None: ``path``'s.
        template: chat template (``'qwen2_vl'`` writes ``<|vision_start|>`` before each image, as
            M-RoPE needs).
        freeze_llm: freeze the language model and LM head (LoRA adapters stay trainable).
        freeze_visual_encoder: freeze the vision transformer (its blocks and patch embedding).
        freeze_projector: freeze the merger.
        llm_lora: a peft ``LoraConfig`` (or dict) for the decoder layers; ``target_modules`` leaf names
            (None: all of q/k/v/o_proj, gate/up/down_proj). With it the LLM's own weights are frozen.
        visual_encoder_lora: the same for the vision blocks (qkv, proj, fc1, fc2).
        gradient_checkpointing: activation checkpointing in the LLM and the vision transformer.
        pretrained_pth: an ``iter_N.pth`` of this model loaded at build time.
        max_new_tokens: generation length in ``predict``.
        plugins: alignment plug-ins ``{name: dict(type=…)}``, in order (MoCa, CAL, visual words).
        data_preprocessor: mmengine data preprocessor config.

    Raises:
        ValueError: a LLaVA-only key (``projector``, ``visual_encoder``, ``llm``, a plug-in outside
            ``plugins``) or any other unknown key; LoRA targets that match nothing; ``path`` not a
            Qwen2-VL directory.
    """

    _reserved_names = MultimodalModel._reserved_names | frozenset({'vlm', 'image_processor'})

    def __init__(self, path: str, dtype: str | torch.dtype = 'float32', attn_implementation: str = 'sdpa',
                 tokenizer: Any = None, image_processor: Any = None, template: str | None = 'qwen2_vl',
                 freeze_llm: bool = True, freeze_visual_encoder: bool = True, freeze_projector: bool = False,
                 llm_lora: Any = None, visual_encoder_lora: Any = None, gradient_checkpointing: bool = False,
                 pretrained_pth: str | None = None, max_new_tokens: int = 64, plugins: Mapping[str, Any] | None = None,
                 data_preprocessor: Any = None, init_cfg: Any = None, **unknown: Any) -> None:
        for key in unknown:
            hint = _LLAVA_ONLY_KEYS.get(key)
            if hint is not None:
                raise ValueError(f'model.{key} is a LLaVAModel setting that Qwen2VLModel cannot use: {hint}.')
        if unknown:
            valid = [p for p in type(self).__init__.__code__.co_varnames[1:type(self).__init__.__code__.co_argcount]]
            raise ValueError(f'Unknown Qwen2VLModel setting(s) {sorted(unknown)}; valid keys: {valid}.')
        from transformers import Qwen2VLForConditionalGeneration

        from ..checkpoint_io import hf_weights_kwargs

        directory = check_model_dir(path, 'Qwen2-VL', 'model.path (qwen2_vl_name_or_path)')
        config = json.loads((directory / 'config.json').read_text())
        if config.get('model_type') != 'qwen2_vl':
            raise ValueError(f'{str(directory)!r} holds a {config.get("model_type")!r} model, not Qwen2-VL '
                             "(config.json model_type 'qwen2_vl'); point `path` at a Qwen2-VL directory.")
        if tokenizer is None:
            tokenizer = load_tokenizer(str(directory))
        super().__init__(tokenizer=tokenizer, template=template, max_new_tokens=max_new_tokens,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.vlm = Qwen2VLForConditionalGeneration.from_pretrained(
            str(directory), dtype=resolve_dtype(dtype),
            attn_implementation=check_attn_implementation(attn_implementation), **hf_weights_kwargs(directory))
        if image_processor is None:
            image_processor = load_qwen2_vl_image_processor(str(directory))
        elif isinstance(image_processor, Mapping) and 'type' not in image_processor:
            image_processor = load_qwen2_vl_image_processor(str(directory), **image_processor)
        self.image_processor = build_module(image_processor)
        self._check_image_processor()

        self.vlm.requires_grad_(False)
        self._llm_parts().requires_grad_(not freeze_llm)
        self._visual_parts().requires_grad_(not freeze_visual_encoder)
        self.vlm.model.visual.merger.requires_grad_(not freeze_projector)
        self.lora_targets: dict[str, list[str]] = {}
        if llm_lora is not None:
            self.lora_targets['llm'] = inject_lora(self.vlm.model.language_model, llm_lora, _LLM_SCOPE, 'llm_lora')
            self.vlm.lm_head.requires_grad_(False)  # as peft does for an LLM: only the adapters train
        if visual_encoder_lora is not None:
            self.lora_targets['visual'] = inject_lora(self.vlm.model.visual, visual_encoder_lora,
                                                      _VISION_BLOCK_SCOPE, 'visual_encoder_lora')
            self.vlm.model.visual.merger.requires_grad_(not freeze_projector)  # peft froze the whole tower
        self.supports_logits_to_keep = True  # llm_forward runs lm_head at the kept rows only
        if gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
            self.vlm.config.use_cache = False
        self.register_frozen_keys_hook()
        self.setup_plugins(plugins)
        self.load_pretrained(pretrained_pth)
        self.log_parameter_counts()

    # ------------------------------------------------------------------ parts
    def _llm_parts(self) -> nn.ModuleList:
        return nn.ModuleList([self.vlm.model.language_model, self.vlm.lm_head])

    def _visual_parts(self) -> nn.ModuleList:
        visual = self.vlm.model.visual
        return nn.ModuleList([m for name, m in visual.named_children() if name != 'merger'])

    def _check_image_processor(self) -> None:
        vision = self.vlm.config.vision_config
        proc = self.image_processor
        want = dict(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                    merge_size=vision.spatial_merge_size)
        have = {k: getattr(proc, k, None) for k in want}
        if have != want:
            raise ValueError(f'model.image_processor ({type(proc).__name__}) has {have} but the Qwen2-VL vision '
                             f'config has {want}: use the Qwen2VLImageProcessor saved with the model (leave '
                             '`image_processor` None, or give only min_pixels/max_pixels).')

    @property
    def language_model(self) -> nn.Module:
        """The whole ``Qwen2VLForConditionalGeneration`` (its decoder is ``model.language_model``)."""
        return self.vlm

    @property
    def llm_config(self) -> Any:
        """The text config (``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ``rope_scaling``)."""
        return self.vlm.config.text_config

    @property
    def image_token_id(self) -> int:
        """``<|image_pad|>``: what HF's processor repeats P_i times per image."""
        return int(self.vlm.config.image_token_id)

    @property
    def vision_start_token_id(self) -> int:
        return int(self.vlm.config.vision_start_token_id)

    def log_parameter_counts(self) -> None:
        """Log trainable / frozen parameter counts of llm, visual, merger and each plug-in."""
        parts = {'llm': self._llm_parts(), 'visual': self._visual_parts(), 'merger': self.vlm.model.visual.merger}
        parts.update(self.plugins)
        rows = []
        for name, part in parts.items():
            n_train = sum(p.numel() for p in part.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in part.parameters())
            rows.append(f'{name}: trainable {n_train:,} / frozen {n_all - n_train:,}')
        print_log('Parameters — ' + '; '.join(rows), logger='current')

    # ------------------------------------------------------------------ images
    def process_images(self, images: Sequence[Any]) -> dict[str, Any]:
        """PIL images → ``{'pixel_values': [S, C·T·p·p], 'image_grid_thw': [N, 3]}`` (this model's processor)."""
        from ..data.image_processing import process_image_inputs
        return process_image_inputs(images, self.image_processor, pad_to_square=False)

    def encode_images(self, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                      image_grid_thw: torch.Tensor | None = None, **image_inputs: Any) -> list[torch.Tensor]:
        """Vision transformer + merger: ``[S, C·T·p·p]`` patches → N tensors ``[P_i, D]``, P_i = t·h·w / merge².

        Raises:
            ValueError: no ``image_grid_thw``, or its patch count differs from ``pixel_values``' rows.
        """
        if image_grid_thw is None:
            raise ValueError('Qwen2-VL images need `image_grid_thw` beside `pixel_values`: process them with the '
                             "model's Qwen2VLImageProcessor (LLaVADataset does when its image_processor is one).")
        if not isinstance(pixel_values, torch.Tensor):
            pixel_values = torch.cat(list(pixel_values), 0)
        grid = image_grid_thw.to(torch.long)
        num_patches = int(grid.prod(-1).sum())
        if pixel_values.dim() != 2 or pixel_values.shape[0] != num_patches:
            raise ValueError(f'pixel_values has shape {tuple(pixel_values.shape)} but image_grid_thw {grid.tolist()} '
                             f'describes {num_patches} patches: pass the two entries the same processor made.')
        visual = self.vlm.model.visual
        dtype = next(visual.parameters()).dtype
        feats = visual(pixel_values.to(dtype), grid_thw=grid)  # (Σ P_i, D)
        embed_dtype = next(self.input_embeddings.parameters()).dtype
        counts = (grid.prod(-1) // visual.spatial_merge_size ** 2).tolist()
        return list(torch.split(feats.to(embed_dtype), counts))

    def image_token_grids(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int]]:
        """Each image's LLM-token grid ``(h / merge, w / merge)`` from ``image_grid_thw`` (its P_i rows in row-major
        order: the merger joins merge×merge patches).

        Raises:
            ValueError: an entry with t ≠ 1 (a video, or frames of one image), which is not one grid.
        """
        merge = int(self.vlm.config.vision_config.spatial_merge_size)
        grids = []
        for k, (t, h, w) in enumerate(image_inputs['image_grid_thw'].tolist()):
            if t != 1:
                raise ValueError(f'image {k} has image_grid_thw ({t}, {h}, {w}) with t = {t}: its tokens are {t} '
                                 'grids, not one; image_token_grids takes single images (t = 1).')
            grids.append((h // merge, w // merge))
        return grids

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """Splice per-image features into the text and compute M-RoPE positions ``[3, B, L]``.

        ``data``: ``input_ids [B, T]`` (one ``IMAGE_TOKEN_INDEX`` per image, each right after
        ``<|vision_start|>``), ``attention_mask``, optional ``labels``, ``pixel_values [S, C·T·p·p]`` and
        ``image_grid_thw [N, 3]`` (or None), optional ``sample_ids``. Not modified.

        Raises:
            ValueError: placeholders and images disagree in number (naming each sample's placeholders
                and both totals), a placeholder not preceded by ``<|vision_start|>``, or ``<|image_pad|>``
                typed in the text.
        """
        input_ids, valid, is_image, names = placeholder_fields(data)
        pixel_values, grid = data.get('pixel_values'), data.get('image_grid_thw')
        num_images = 0 if pixel_values is None or grid is None else int(grid.shape[0])
        if pixel_values is not None and grid is None:
            raise ValueError('The batch has pixel_values but no image_grid_thw: Qwen2-VL needs both (use the '
                             "model's Qwen2VLImageProcessor in the dataset).")
        if int(is_image.sum()) != num_images:
            per_sample = ', '.join(f'sample {names[b]!r}: {n}' for b, n in enumerate(is_image.sum(1).tolist()))
            raise ValueError(f'The batch has {int(is_image.sum())} image placeholders ({per_sample}) but '
                             f'{num_images} images (image_grid_thw rows): every <image> needs exactly one image.')
        self._check_vision_start(input_ids, is_image, valid, names)
        features = None if num_images == 0 else self.get_image_features(pixel_values, image_grid_thw=grid)
        inputs = splice_image_features(input_ids, valid, self.input_embeddings, features,
                                       labels=data.get('labels'), pad_token_id=self.pad_token_id,
                                       padding_side=padding_side, sample_ids=names)
        positions = self.rope_positions(inputs.input_ids, inputs.attention_mask, grid if num_images else None)
        return replace(inputs, position_ids=positions)

    def _check_vision_start(self, input_ids: torch.Tensor, is_image: torch.Tensor, valid: torch.Tensor,
                            names: list[Any]) -> None:
        pad_typed = (input_ids == self.image_token_id) & valid
        if pad_typed.any():
            b = int(pad_typed.nonzero()[0, 0])
            raise ValueError(f'sample {names[b]!r}: the text holds <|image_pad|> (id {self.image_token_id}); images '
                             'are written as <image> in the data (one per image).')
        b_img, t_img = is_image.nonzero(as_tuple=True)
        before = input_ids[b_img, (t_img - 1).clamp(min=0)]
        bad = (t_img == 0) | (before != self.vision_start_token_id)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            raise ValueError(f'sample {names[int(b_img[k])]!r}: image placeholder at token {int(t_img[k])} does not '
                             f'follow <|vision_start|> (id {self.vision_start_token_id}), which M-RoPE positions need; '
                             "encode the data with template='qwen2_vl'.")

    def rope_positions(self, spliced_ids: torch.Tensor, attention_mask: torch.Tensor,
                       image_grid_thw: torch.Tensor | None) -> torch.Tensor:
        """M-RoPE position ids ``[3, B, L]`` of a spliced batch, by HF's ``get_rope_index``.

        Image rows (``IMAGE_TOKEN_INDEX`` in ``spliced_ids``) are given to it as ``<|image_pad|>``;
        padding gets position 1 (HF's convention; it is masked out).
        """
        ids = spliced_ids.masked_fill(spliced_ids == IMAGE_TOKEN_INDEX, self.image_token_id)
        ids = ids.masked_fill(~attention_mask.bool(), self.pad_token_id)
        positions, _ = self.vlm.model.get_rope_index(ids, image_grid_thw, None, attention_mask.long())
        return positions  # (3, B, L)

    # ------------------------------------------------------------------ LLM passes
    def llm_forward(self, inputs: MultimodalInputs, logits_to_keep: torch.Tensor | int | None = None,
                    **kwargs: Any) -> Any:
        """One pass on ``inputs_embeds`` with explicit M-RoPE ``position_ids`` (``[3, B, L]``, or ``[B, L]``
        for text); ``logits_to_keep`` (positions ``[P]``, or the last k): lm_head only there (``[B, P, V]``)."""
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLCausalLMOutputWithPast

        out = self.vlm.model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                             position_ids=inputs.position_ids, use_cache=False, **kwargs)
        hidden = out.last_hidden_state  # (B, L, D)
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        elif logits_to_keep is not None:
            hidden = hidden[:, logits_to_keep]  # (B, P, D)
        return Qwen2VLCausalLMOutputWithPast(logits=self.vlm.lm_head(hidden), hidden_states=out.hidden_states,
                                             attentions=out.attentions)

    @torch.no_grad()
    def generate_ids(self, inputs: MultimodalInputs, data: dict, eos_token_id: Any,
                     max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding from left-padded spliced inputs with a KV cache: ``[B, new tokens]``.

        M-RoPE while decoding, as HF's generate: the k-th new token (k ≥ 0) of sample b sits at position
        ``L + k + Δ_b`` in all three sections, Δ_b = 1 + max prompt position − L. Finished samples get
        the pad id; decoding stops when every sample has produced an ``eos_token_id``.
        """
        eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                           device=inputs.inputs_embeds.device)
        mask = inputs.attention_mask.long()
        positions = inputs.position_ids
        if positions.dim() == 2:
            positions = positions[None].expand(3, -1, -1)
        B, L = mask.shape
        delta = positions.masked_fill(~inputs.attention_mask.bool()[None], -1).amax(dim=(0, 2)) + 1 - L  # (B,)
        out = self.vlm(inputs_embeds=inputs.inputs_embeds, attention_mask=mask, position_ids=positions,
                       use_cache=True)
        cache = out.past_key_values
        done = torch.zeros(B, dtype=torch.bool, device=mask.device)
        tokens = []
        for k in range(max_new_tokens):
            next_ids = out.logits[:, -1].argmax(-1)  # (B,)
            next_ids = torch.where(done, torch.full_like(next_ids, self.pad_token_id), next_ids)
            tokens.append(next_ids)
            done |= torch.isin(next_ids, eos)
            if bool(done.all()) or k == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
            step = (L + k + delta).view(1, B, 1).expand(3, B, 1)  # (3, B, 1)
            out = self.vlm(inputs_embeds=self.input_embeddings(next_ids[:, None]), attention_mask=mask,
                           position_ids=step, past_key_values=cache, use_cache=True,
                           cache_position=torch.tensor([L + k], device=mask.device))
            cache = out.past_key_values
        if not tokens:
            return torch.zeros(B, 0, dtype=torch.long, device=mask.device)
        return torch.stack(tokens, 1)

    # ------------------------------------------------------------------ export
    def export_hf(self, out_dir: str | os.PathLike, overwrite: bool = False, dtype: str | torch.dtype | None = None,
                  template: Any = None, source_config: str | None = None, source_checkpoint: str | None = None,
                  max_shard_size: str = '5GB') -> Path:
        """Write a directory that ``Qwen2VLForConditionalGeneration.from_pretrained`` loads with the same logits.

        Holds the model (LoRA merged: W = W₀ + (α/r)·B·A), ``generation_config`` (EOS = the template's stop
        tokens), the tokenizer with the trained chat template as Jinja (images as
        ``<|vision_start|><|image_pad|><|vision_end|>``, as training placed them), the image processor,
        each plug-in's files (``plugin.export_files``) and :data:`EXPORT_INFO_NAME`
        (``{"plugins": [{"name", "class", "files"}], "template": …}``). Written to a temporary sibling
        and renamed into place. The model is not modified. The steps are those every one-model base shares
        (:func:`~mllm_align.models.export_dir.export_merged_base`); the image processor is Qwen2-VL's own.

        Raises:
            ValueError: a plug-in that cannot be exported (``exportable`` False).
            FileExistsError: ``out_dir`` is not empty and not a previous export, or ``overwrite`` is False.
        """
        from transformers import Qwen2VLForConditionalGeneration

        def save_image_processor(tmp_dir: Path) -> list[str]:
            if self.image_processor is None:
                return []
            self.image_processor.save_pretrained(tmp_dir)
            return ['image_processor']

        info = dict(format='transformers.Qwen2VLForConditionalGeneration', base='qwen2_vl',
                    image_token='<|image_pad|>', image_token_id=self.image_token_id)
        return export_merged_base(
            self, self.vlm, out_dir, Qwen2VLForConditionalGeneration, info=info, chat_image_token='<|image_pad|>',
            save_extra=save_image_processor, overwrite=overwrite, dtype=dtype, template=template,
            source_config=source_config, source_checkpoint=source_checkpoint, max_shard_size=max_shard_size)


def load_qwen2_vl_dir(path: str | os.PathLike, *, template: str | None = None, dtype: torch.dtype | str | None = None,
                      device: str | torch.device = 'cpu') -> Qwen2VLModel:
    """A Qwen2-VL directory (an export of this model, or a stock checkpoint) as a frozen :class:`Qwen2VLModel`.

    The loader :func:`~mllm_align.models.hf_llava.load_hf_dir` uses for ``model_type='qwen2_vl'`` (MIR
    scoring, the evaluation runner). ``template`` None: the export's recorded template, else
    ``'qwen2_vl'``. Exported plug-ins (MoCa) are re-attached in their recorded order.
    """
    from .hf_llava import attach_exported_plugins

    info_path = Path(path) / EXPORT_INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    model = Qwen2VLModel(path=str(path), dtype=dtype if dtype is not None else 'float32',
                         template=template or info.get('template') or 'qwen2_vl', freeze_projector=True)
    if info.get('plugins'):
        attach_exported_plugins(model, path, info)
    return model.to(device).eval()


def _register() -> None:
    from .hf_llava import register_hf_dir_loader
    register_hf_dir_loader('qwen2_vl', load_qwen2_vl_dir)


_register()
