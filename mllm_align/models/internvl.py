"""InternVL as a multimodal base, in both formats its checkpoints exist in.

    pixel_values [ΣT_i, 3, S, S] ─► ViT ─► pixel shuffle (2×2 → 1) ─► mlp1 ─┐ image i: [P·T_i, D]
                                                                          ├─► <img> rows </img> ─► LLM ─► logits
    input_ids (one IMAGE_TOKEN_INDEX per image) ─────────────────────────┘

Chen et al., "How Far Are We to GPT-4V? Closing the Gap to Commercial Multimodal Models with Open-Source
Suites" (InternVL 1.5, arXiv:2404.16821), Sec. 3.2: each image is cut into T_i tiles of S = 448 px
(dynamic high resolution, :mod:`mllm_align.data.internvl_tiles`: the closest-aspect-ratio grid of at most
``max_num_tiles`` tiles + a thumbnail); InternViT encodes every tile into a (S/14)² = 32×32 patch grid; the
pixel shuffle folds each 2×2 neighbourhood into one feature of 4× the width (``downsample_ratio`` 0.5), so a
tile gives P = (S/14)²·0.5² = 256 tokens, a 16×16 grid; the MLP projector ``mlp1`` (LayerNorm → Linear → GELU
→ Linear) maps them to the LLM width D. In the text an image is ``<img>`` + P·T_i ``<IMG_CONTEXT>`` + ``</img>``
and the LLM's input embedding rows at ``<IMG_CONTEXT>`` are replaced by the features in order.

The two formats:

* ``'remote'``: the original checkpoints (``OpenGVLab/InternVL2-4B``: ``InternVLChatModel`` = InternViT +
  ``mlp1`` + Phi-3), with their own modelling code (``config.json`` → ``auto_map``). Loaded by
  ``AutoModel.from_pretrained(path, trust_remote_code=True)``, ONLY when the config says
  ``trust_remote_code=True``. Image features are the model's own ``extract_feature(pixel_values)``; the LLM
  is its ``language_model`` (a causal LM with its head).
* ``'hf'``: transformers' ``InternVLForConditionalGeneration`` (model_type ``internvl``; e.g.
  ``OpenGVLab/InternVL3-1B-hf``). Image features are its ``get_image_features``; the LLM is the whole model
  (its decoder ``model.language_model`` + ``lm_head``), as Qwen2-VL's base does.

ONE class serves both: the format is read from the directory (``auto_map`` vs ``model_type``), so a recipe
switches checkpoints by ``path`` (and ``trust_remote_code``) alone; the formats differ only in where the
vision encoder, projector and decoder sit and in the feature call, which :meth:`InternVLModel._tile_features`
and the ``_vision`` / ``_projector`` / ``_decoder`` accessors isolate — two classes would repeat the
constructor, splicing, tiling, LoRA and freezing code around those four lines.

mllm_align data carries ONE ``IMAGE_TOKEN_INDEX`` per image; the tiles live here, not in the chat templates:
:meth:`InternVLModel.prepare_inputs` writes ``<img>`` before and ``</img>`` after each placeholder and
replaces the placeholder by the image's P·T_i feature rows with
:func:`~mllm_align.models.splice.splice_image_features` (``image_mask`` true on those rows only); positions
are 1-D (``[B, L]``). Logits therefore equal the model's own forward on ids expanded as InternVL's processor
does (``tests/models/test_internvl.py``, both formats).

Parts and what trains: ``llm`` (decoder + LM head; ``freeze_llm``), ``visual`` (the ViT;
``freeze_visual_encoder``), ``projector`` (``mlp1`` / ``multi_modal_projector``; ``freeze_projector``). LoRA
is injected in place (:func:`~mllm_align.models.qwen2_vl.inject_lora`) into the LLM's decoder layers
(``llm_lora``) or the ViT's encoder layers (``visual_encoder_lora``).

Shape letters: B batch, T text length (with placeholders), L spliced length, N images, T_i tiles of image i,
S tile side, P tokens per tile, D LLM hidden size, V vocabulary.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..data.internvl_tiles import NUM_TILES_KEY, InternVLTileProcessor
from .base import MultimodalModel, accepts_logits_to_keep
from .builders import check_attn_implementation, check_model_dir, load_tokenizer, resolve_dtype
from .export_dir import EXPORT_INFO_NAME, export_merged_base
from .qwen2_vl import inject_lora
from .splice import MultimodalInputs, placeholder_fields, splice_image_features

__all__ = ['InternVLModel', 'IMG_START_TOKEN', 'IMG_END_TOKEN', 'IMG_CONTEXT_TOKEN', 'internvl_checkpoint_format',
           'load_internvl_dir']

IMG_START_TOKEN = '<img>'
IMG_END_TOKEN = '</img>'
IMG_CONTEXT_TOKEN = '<IMG_CONTEXT>'
Format = Literal['remote', 'hf']

# InternVL's conversation templates (remote config.json `template`) → mllm_align chat templates.
_TEMPLATES = {'phi3-chat': 'phi3'}
# Linear layers of the decoder layers, and of the ViT's encoder layers (InternViT: encoder.layers.i.attn.qkv, …;
# transformers' InternVLVisionModel: encoder.layer.i.attention.q_proj, …).
_LLM_SCOPE = r'layers\.\d+\.(?:.*\.)?'
_VISION_SCOPE = r'encoder\.layers?\.\d+\.(?:.*\.)?'
_LLAVA_ONLY_KEYS = {
    'llm': 'InternVL loads its LLM, vision model and projector from one directory: set `path=`',
    'visual_encoder': 'InternVL has its own vision model (inside `path`); remove the key',
    'projector': "InternVL's projector (mlp1) is loaded from `path`; remove the key (freeze it with "
                 '`freeze_projector=True`)',
    'image_processor': "InternVL tiles images itself: set `max_num_tiles`, `use_thumbnail`, `image_size`",
}


def internvl_checkpoint_format(path: str | os.PathLike, trust_remote_code: bool) -> Format:
    """Which InternVL format the directory ``path`` holds, checked against ``trust_remote_code``.

    Raises:
        FileNotFoundError: not a model directory.
        ValueError: remote code (``auto_map``) without ``trust_remote_code``; ``trust_remote_code`` for a
            directory without remote code; a model type that is neither (each names the key to fix).
    """
    directory = check_model_dir(path, 'InternVL', 'model.path')
    config = json.loads((directory / 'config.json').read_text())
    auto_map = config.get('auto_map') or {}
    code = sorted(p.name for p in directory.glob('*.py'))
    model_type = config.get('model_type')
    if auto_map and not trust_remote_code:
        raise ValueError(f'{str(directory)!r} ships its own modelling code (config.json auto_map: {sorted(auto_map)}; '
                         f'files {code}), which runs only with `model.trust_remote_code=True`: set it if you trust '
                         "that code, or use a transformers-format ('internvl') checkpoint such as InternVL3-1B-hf.")
    if trust_remote_code and (not auto_map or not code):
        raise ValueError(f'`model.trust_remote_code=True` but {str(directory)!r} holds no remote modelling code '
                         f'(auto_map: {sorted(auto_map)}, *.py files: {code}): set `model.trust_remote_code=False` '
                         f'for a transformers-format InternVL directory (model_type {model_type!r}), or point '
                         '`model.path` at a remote-code InternVL2 checkpoint.')
    if trust_remote_code:
        if model_type != 'internvl_chat' or 'AutoModel' not in auto_map:
            raise ValueError(f'{str(directory)!r} is a remote-code {model_type!r} model (auto_map {sorted(auto_map)}), '
                             "not an InternVL chat checkpoint (model_type 'internvl_chat' with an AutoModel entry): "
                             'point `model.path` at an InternVL2 directory.')
        return 'remote'
    if model_type != 'internvl':
        raise ValueError(f"{str(directory)!r} holds a {model_type!r} model, not InternVL (model_type 'internvl' for "
                         "transformers' InternVLForConditionalGeneration, or 'internvl_chat' with remote code and "
                         '`model.trust_remote_code=True`); point `model.path` at an InternVL directory.')
    return 'hf'


class InternVLModel(MultimodalModel):
    """InternVL (remote-code ``InternVLChatModel`` or transformers' ``InternVLForConditionalGeneration``) as a base.

    Args:
        path: local InternVL directory (InternVL2-4B remote code, or an ``internvl`` HF checkpoint). Never
            downloaded.
        dtype: parameter dtype (``'bfloat16'`` on GPU, ``'float32'`` on CPU).
        attn_implementation: ``'sdpa'``, ``'eager'`` or ``'flash_attention_2'``. Remote code chooses its own
            attention: there it only sets ``use_flash_attn`` (True for ``'flash_attention_2'``).
        trust_remote_code: run the directory's own modelling code (required for the remote format, refused for a
            directory without it).
        tokenizer: a tokenizer or its config dict; None loads the one in ``path``. It must hold ``<img>``,
            ``</img>`` and ``<IMG_CONTEXT>``.
        template: chat template; None: ``'phi3'`` for a remote checkpoint whose ``template`` is ``'phi3-chat'``
            (InternVL2-4B), ``'chatml'`` for the HF format.
        freeze_llm: freeze the decoder and LM head (LoRA adapters stay trainable).
        freeze_visual_encoder: freeze the ViT.
        freeze_projector: freeze ``mlp1`` / ``multi_modal_projector``.
        llm_lora: a peft ``LoraConfig`` (or dict) for the decoder layers; ``target_modules`` leaf names (None:
            every linear layer there: Phi-3's qkv_proj, o_proj, gate_up_proj, down_proj).
        visual_encoder_lora: the same for the ViT's encoder layers.
        gradient_checkpointing: activation checkpointing in the LLM (and the ViT when it supports it).
        pretrained_pth: an ``iter_N.pth`` of this model loaded at build time.
        max_new_tokens: generation length in ``predict``.
        plugins: alignment plug-ins ``{name: dict(type=…)}``, in order.
        max_num_tiles: the largest tile grid (None: the checkpoint's, 12 for InternVL2); 1 gives one tile per image.
        use_thumbnail: append a whole-image tile to multi-tile grids (None: the checkpoint's, True).
        image_size: tile side S in pixels (None: the checkpoint's, 448).
        data_preprocessor: mmengine data preprocessor config.

    Raises:
        ValueError: a LLaVA-only or unknown key (listing the valid ones); remote code not allowed / absent; a
            directory that is not InternVL; LoRA targets that match nothing; a tokenizer without the image
            tokens.
    """

    _reserved_names = MultimodalModel._reserved_names | frozenset({'vlm', 'image_processor'})

    def __init__(self, path: str, dtype: str | torch.dtype = 'float32', attn_implementation: str = 'sdpa',
                 trust_remote_code: bool = False, tokenizer: Any = None, template: str | None = None,
                 freeze_llm: bool = True, freeze_visual_encoder: bool = True, freeze_projector: bool = False,
                 llm_lora: Any = None, visual_encoder_lora: Any = None, gradient_checkpointing: bool = False,
                 pretrained_pth: str | None = None, max_new_tokens: int = 64, plugins: Mapping[str, Any] | None = None,
                 max_num_tiles: int | None = None, use_thumbnail: bool | None = None, image_size: int | None = None,
                 data_preprocessor: Any = None, init_cfg: Any = None, **unknown: Any) -> None:
        for key in unknown:
            hint = _LLAVA_ONLY_KEYS.get(key)
            if hint is not None:
                raise ValueError(f'model.{key} is not an InternVLModel setting: {hint}.')
        if unknown:
            code = type(self).__init__.__code__
            raise ValueError(f'Unknown InternVLModel setting(s) {sorted(unknown)}; valid keys: '
                             f'{list(code.co_varnames[1:code.co_argcount])}.')
        from ..checkpoint_io import hf_weights_kwargs

        self.format: Format = internvl_checkpoint_format(path, bool(trust_remote_code))
        directory = Path(path).expanduser()
        config = json.loads((directory / 'config.json').read_text())
        if template is None:
            template = 'chatml' if self.format == 'hf' else _TEMPLATES.get(config.get('template'))
            if template is None:
                raise ValueError(f"{str(directory)!r} uses InternVL's {config.get('template')!r} conversation "
                                 f'template, which has no default here ({sorted(_TEMPLATES)} do): set `model.template` '
                                 '(and the dataset template) to the mllm_align template that renders it.')
        if tokenizer is None:
            tokenizer = load_tokenizer(str(directory), trust_remote_code=bool(trust_remote_code))
        super().__init__(tokenizer=tokenizer, template=template, max_new_tokens=max_new_tokens,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        weights = hf_weights_kwargs(directory)
        self.source_dir = directory  # a remote export copies its modelling code from here
        if self.format == 'remote':
            from transformers import AutoModel

            check_attn_implementation(attn_implementation)
            # The remote constructor's own argument; the export rebuilds the class with it.
            self._remote_kwargs = dict(use_flash_attn=attn_implementation == 'flash_attention_2')
            self.vlm = AutoModel.from_pretrained(str(directory), trust_remote_code=True, dtype=resolve_dtype(dtype),
                                                 **self._remote_kwargs, **weights)
            interface = ('vision_model', 'mlp1', 'language_model', 'extract_feature')
            missing = [a for a in interface if not hasattr(self.vlm, a)]
            if missing:
                raise ValueError(f'The remote code of {str(directory)!r} built a {type(self.vlm).__name__} without '
                                 f"{missing}: it is not InternVL's InternVLChatModel interface.")
        else:
            from transformers import InternVLForConditionalGeneration

            self.vlm = InternVLForConditionalGeneration.from_pretrained(
                str(directory), dtype=resolve_dtype(dtype),
                attn_implementation=check_attn_implementation(attn_implementation), **weights)
        self._token_ids = self._image_token_ids()  # fails now on a tokenizer without them
        if self.format == 'remote':
            self.vlm.img_context_token_id = self.img_context_token_id  # what its own forward substitutes
        self.image_processor = InternVLTileProcessor.from_pretrained(
            directory, max_num_tiles=max_num_tiles, use_thumbnail=use_thumbnail, image_size=image_size)

        self.vlm.requires_grad_(False)
        self._llm_parts().requires_grad_(not freeze_llm)
        self._vision.requires_grad_(not freeze_visual_encoder)
        self._projector.requires_grad_(not freeze_projector)
        self.lora_targets: dict[str, list[str]] = {}
        if llm_lora is not None:
            self.lora_targets['llm'] = inject_lora(self._decoder, llm_lora, _LLM_SCOPE, 'llm_lora')
            self.output_head.requires_grad_(False)  # as peft does for an LLM: only the adapters train
        if visual_encoder_lora is not None:
            self.lora_targets['visual'] = inject_lora(self._vision, visual_encoder_lora, _VISION_SCOPE,
                                                      'visual_encoder_lora')
        self.supports_logits_to_keep = accepts_logits_to_keep(self.language_model)
        if gradient_checkpointing:
            kwargs = {'gradient_checkpointing_kwargs': {'use_reentrant': False}}
            if self.format == 'hf':
                self.vlm.gradient_checkpointing_enable(**kwargs)
            else:
                self.vlm.language_model.gradient_checkpointing_enable(**kwargs)
                if getattr(self._vision, 'supports_gradient_checkpointing', False):
                    self._vision.gradient_checkpointing_enable(**kwargs)
            self.llm_config.use_cache = False
        self.register_frozen_keys_hook()
        self.setup_plugins(plugins)
        self.load_pretrained(pretrained_pth)
        self.log_parameter_counts()

    # ------------------------------------------------------------------ parts
    @property
    def _vision(self) -> nn.Module:
        return self.vlm.vision_model if self.format == 'remote' else self.vlm.model.vision_tower

    @property
    def _projector(self) -> nn.Module:
        return self.vlm.mlp1 if self.format == 'remote' else self.vlm.model.multi_modal_projector

    @property
    def _decoder(self) -> nn.Module:
        """The decoder (embeddings + layers + final norm) without the LM head: where LLM LoRA goes."""
        return self.vlm.language_model.model if self.format == 'remote' else self.vlm.model.language_model

    def _llm_parts(self) -> nn.ModuleList:
        if self.format == 'remote':
            return nn.ModuleList([self.vlm.language_model])
        return nn.ModuleList([self.vlm.model.language_model, self.vlm.lm_head])

    @property
    def language_model(self) -> nn.Module:
        """Remote: the chat model's ``language_model`` (Phi-3 with its head); HF: the whole
        ``InternVLForConditionalGeneration`` (its decoder is ``model.language_model``)."""
        return self.vlm.language_model if self.format == 'remote' else self.vlm

    @property
    def llm_config(self) -> Any:
        """The LLM's config (``hidden_size``, ``num_hidden_layers``, ``vocab_size``)."""
        return self.vlm.language_model.config if self.format == 'remote' else self.vlm.config.text_config

    def _image_token_ids(self) -> tuple[int, int, int]:
        vocab = self.tokenizer.get_vocab() if self.tokenizer is not None else {}
        tokens = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise ValueError(f'The tokenizer ({type(self.tokenizer).__name__}) has no {missing}: InternVL writes each '
                             f'image as {IMG_START_TOKEN} + {IMG_CONTEXT_TOKEN} rows + {IMG_END_TOKEN}; use the '
                             "checkpoint's own tokenizer (leave `model.tokenizer` None).")
        ids = tuple(int(vocab[t]) for t in tokens)
        if self.format == 'hf' and int(self.vlm.config.image_token_id) != ids[2]:
            raise ValueError(f'config.json image_token_id = {self.vlm.config.image_token_id} but the tokenizer has '
                             f'{IMG_CONTEXT_TOKEN} = {ids[2]}: use the tokenizer saved with the model.')
        return ids  # type: ignore[return-value]

    @property
    def img_start_token_id(self) -> int:
        return self._token_ids[0]

    @property
    def img_end_token_id(self) -> int:
        return self._token_ids[1]

    @property
    def img_context_token_id(self) -> int:
        """``<IMG_CONTEXT>``: what InternVL's processor repeats P·T_i times per image."""
        return self._token_ids[2]

    @property
    def patch_size(self) -> int:
        vision = self.vlm.config.vision_config
        patch = vision.patch_size
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    @property
    def downsample_ratio(self) -> float:
        return float(self.vlm.config.downsample_ratio)

    def log_parameter_counts(self) -> None:
        """Log trainable / frozen parameter counts of llm, visual, projector and each plug-in."""
        parts: dict[str, nn.Module] = {'llm': self._llm_parts(), 'visual': self._vision, 'projector': self._projector}
        parts.update(self.plugins)
        rows = []
        for name, part in parts.items():
            n_train = sum(p.numel() for p in part.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in part.parameters())
            rows.append(f'{name}: trainable {n_train:,} / frozen {n_all - n_train:,}')
        print_log(f'Parameters ({self.format} InternVL) — ' + '; '.join(rows), logger='current')

    # ------------------------------------------------------------------ images
    def process_images(self, images: Sequence[Any]) -> dict[str, Any]:
        """PIL images → ``{'pixel_values': [ΣT_i, 3, S, S], 'num_tiles': [N]}`` (InternVL's dynamic tiling)."""
        from ..data.image_processing import process_image_inputs
        return process_image_inputs(images, self.image_processor, pad_to_square=False)

    def _tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[ΣT, 3, S, S]`` tiles → ``[ΣT, P, D]``: ViT, CLS dropped, pixel shuffle, projector (the model's own)."""
        dtype = next(self._vision.parameters()).dtype
        if self.format == 'remote':
            return self.vlm.extract_feature(pixel_values.to(dtype))
        return self.vlm.model.get_image_features(pixel_values=pixel_values.to(dtype))

    def encode_images(self, pixel_values: torch.Tensor | Sequence[torch.Tensor], num_tiles: torch.Tensor | None = None,
                      **image_inputs: Any) -> list[torch.Tensor]:
        """Tiles → one ``[P·T_i, D]`` tensor per image (its tiles' P = 256 rows each, grid row-major, then the
        thumbnail's).

        Args:
            pixel_values: ``[ΣT_i, 3, S, S]`` (or a list of ``[3, S, S]`` / ``[T_i, 3, S, S]``).
            num_tiles: ``[N]`` tiles per image; None: one tile per image.

        Raises:
            ValueError: ``pixel_values`` is not square tiles, or ``num_tiles`` does not add up to its rows.
        """
        if not isinstance(pixel_values, torch.Tensor):
            parts = list(pixel_values)
            pixel_values = torch.stack(parts) if parts[0].dim() == 3 else torch.cat(parts)
        if pixel_values.dim() != 4 or pixel_values.shape[-1] != pixel_values.shape[-2]:
            raise ValueError(f'InternVL takes square tiles [ΣT, 3, S, S], got pixel_values of shape '
                             f'{tuple(pixel_values.shape)}: process the images with its InternVLTileProcessor.')
        if num_tiles is None:
            num_tiles = torch.ones(pixel_values.shape[0], dtype=torch.long)
        num_tiles = torch.as_tensor(num_tiles, dtype=torch.long).reshape(-1).cpu()
        if int(num_tiles.sum()) != pixel_values.shape[0]:
            raise ValueError(f'num_tiles {num_tiles.tolist()} adds up to {int(num_tiles.sum())} tiles but pixel_values '
                             f'has {pixel_values.shape[0]}: pass the two entries the same processor made.')
        feats = self._tile_features(pixel_values)  # (ΣT, P, D)
        embed_dtype = next(self.input_embeddings.parameters()).dtype
        flat = feats.to(embed_dtype).reshape(-1, feats.shape[-1])  # (ΣT·P, D)
        return list(torch.split(flat, (num_tiles * feats.shape[1]).tolist()))

    def image_token_grids(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int]]:
        """Each image's LLM-token grid ``(rows, columns)``: ``(S/patch·r, S/patch·r)`` = 16×16 for one 448 tile.

        Raises:
            ValueError: an image with more than one tile: its P·T_i rows are several grids (and a thumbnail), and
                CoLVA's pre-training pools object masks over a single-tile grid; process its images with
                ``max_num_tiles=1``.
        """
        pixel_values = image_inputs['pixel_values']
        side = int(pixel_values[0].shape[-1])
        num_tiles = image_inputs.get(NUM_TILES_KEY)
        counts = [1] * len(pixel_values) if num_tiles is None else [int(t) for t in num_tiles]
        many = [k for k, t in enumerate(counts) if t != 1]
        if many:
            raise ValueError(f'image {many[0]} has {counts[many[0]]} tiles: a token grid exists for single-tile images '
                             "only (CoLVA's pre-training pools object masks over one tile's grid); set the image "
                             'processor / model `max_num_tiles=1`.')
        cells = round(side // self.patch_size * self.downsample_ratio)
        return [(cells, cells)] * len(counts)

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """``<img>`` + image rows + ``</img>`` for each placeholder, spliced; 1-D positions ``[B, L]``.

        ``data``: ``input_ids [B, T]`` (one ``IMAGE_TOKEN_INDEX`` per image), ``attention_mask``, optional
        ``labels``, ``pixel_values [ΣT_i, 3, S, S]`` and ``num_tiles [N]`` (or None), optional ``sample_ids``.
        ``<img>`` / ``</img>`` get ``IGNORE_INDEX`` labels. Not modified.

        Raises:
            ValueError: placeholders and images disagree in number (naming each sample's placeholders and both
                totals); ``<img>``, ``</img>`` or ``<IMG_CONTEXT>`` typed in the text (naming the sample).
        """
        input_ids, valid, is_image, names = placeholder_fields(data)
        pixel_values, num_tiles = data.get('pixel_values'), data.get(NUM_TILES_KEY)
        if pixel_values is None:
            num_images = 0
        elif num_tiles is not None:
            num_images = int(len(num_tiles))
        else:
            num_images = len(pixel_values)
        if int(is_image.sum()) != num_images:
            per_sample = ', '.join(f'sample {names[b]!r}: {n}' for b, n in enumerate(is_image.sum(1).tolist()))
            raise ValueError(f'The batch has {int(is_image.sum())} image placeholders ({per_sample}) but {num_images} '
                             'images (num_tiles entries): every <image> needs exactly one image.')
        start_id, end_id, context_id = self._token_ids
        typed = torch.isin(input_ids, torch.tensor([start_id, end_id, context_id], device=input_ids.device)) & valid
        if typed.any():
            b = int(typed.nonzero()[0, 0])
            raise ValueError(f'sample {names[b]!r}: the text holds {IMG_START_TOKEN}, {IMG_END_TOKEN} or '
                             f'{IMG_CONTEXT_TOKEN}; the data writes each image as ONE <image> and the InternVL base '
                             'adds those tokens itself.')
        ids, mask, labels = _wrap_placeholders(input_ids, valid, data.get('labels'), start_id, end_id,
                                               self.pad_token_id)
        features = None
        if num_images:
            features = self.get_image_features(pixel_values, num_tiles=num_tiles)
        return splice_image_features(ids, mask, self.input_embeddings, features, labels=labels,
                                     pad_token_id=self.pad_token_id, padding_side=padding_side, sample_ids=names)

    # ------------------------------------------------------------------ export
    def export_hf(self, out_dir: str | os.PathLike, overwrite: bool = False, dtype: str | torch.dtype | None = None,
                  template: Any = None, source_config: str | None = None, source_checkpoint: str | None = None,
                  max_shard_size: str = '5GB') -> Path:
        """Write a directory that loads, in the base's own format, with the same logits as this model.

        Both formats hold the model with LoRA merged (W = W₀ + (α/r)·B·A) as safetensors under the keys its class
        expects, ``generation_config.json`` (EOS = the template's stop tokens), the tokenizer with the trained
        chat template as Jinja, each plug-in's files and :data:`EXPORT_INFO_NAME` (with the tiling, which
        :func:`load_internvl_dir` restores); the steps are those every one-model base shares
        (:func:`~mllm_align.models.export_dir.export_merged_base`), written to a temporary sibling and renamed into
        place. The model is not modified.

        * ``'hf'``: an ``InternVLForConditionalGeneration`` directory; an image is ``<IMG_CONTEXT>`` in the chat
          template (InternVL's processor expands it to ``<img>`` + P·T_i ``<IMG_CONTEXT>`` + ``</img>``) and the
          tiling is a ``GotOcr2ImageProcessor`` config.
        * ``'remote'``: the checkpoint's own remote-code class (``InternVLChatModel``), loaded by
          ``AutoModel.from_pretrained(out_dir, trust_remote_code=True)``: ``config.json`` keeps the source's
          ``auto_map`` and records the trained tiling in the fields the remote code reads (``max_dynamic_patch``,
          ``min_dynamic_patch``, ``use_thumbnail``, ``force_image_size``); every ``*.py`` of the source directory
          is copied byte for byte (:meth:`_save_remote_code`); an image is ``<image>`` in the chat template, the
          placeholder InternVL's own ``chat`` expands. mllm_align re-loads it only when the caller passes
          ``trust_remote_code=True`` (:func:`~mllm_align.models.hf_llava.load_hf_dir`,
          :func:`~mllm_align.models.colva.load_colva_export`).

        Raises:
            ValueError: a plug-in that cannot be exported.
            FileExistsError: ``out_dir`` is not empty and not a previous export, or ``overwrite`` is False.
            RuntimeError: (remote) the copied code lacks a module ``config.json``'s ``auto_map`` names.
        """
        settings = dict(overwrite=overwrite, dtype=dtype, template=template, source_config=source_config,
                        source_checkpoint=source_checkpoint, max_shard_size=max_shard_size)
        tiles = self.image_processor
        if self.format == 'hf':
            from transformers import GotOcr2ImageProcessor, InternVLForConditionalGeneration

            def save_image_processor(tmp_dir: Path) -> list[str]:
                GotOcr2ImageProcessor(
                    size={'height': tiles.image_size, 'width': tiles.image_size}, crop_to_patches=True,
                    min_patches=tiles.min_num_tiles, max_patches=tiles.max_num_tiles, image_mean=tiles.image_mean,
                    image_std=tiles.image_std, do_convert_rgb=True).save_pretrained(tmp_dir)
                return ['image_processor']

            info = dict(format='transformers.InternVLForConditionalGeneration', base='internvl',
                        image_token=IMG_CONTEXT_TOKEN, image_token_id=self.img_context_token_id, tiling=tiles.to_dict())
            return export_merged_base(self, self.vlm, out_dir, InternVLForConditionalGeneration, info=info,
                                      chat_image_token=IMG_CONTEXT_TOKEN, save_extra=save_image_processor, **settings)
        code = sorted(p.name for p in self.source_dir.glob('*.py'))
        info = dict(format=f'remote_code.{type(self.vlm).__name__}', base='internvl', trust_remote_code=True,
                    code_files=code, image_token='<image>', image_context_token=IMG_CONTEXT_TOKEN,
                    image_context_token_id=self.img_context_token_id, tiling=tiles.to_dict())
        tiling = dict(max_dynamic_patch=tiles.max_num_tiles, min_dynamic_patch=tiles.min_num_tiles,
                      use_thumbnail=tiles.use_thumbnail, force_image_size=tiles.image_size)
        return export_merged_base(self, self.vlm, out_dir, type(self.vlm), info=info, chat_image_token='<image>',
                                  save_extra=self._save_remote_code, model_kwargs=self._remote_kwargs,
                                  config_updates=tiling, **settings)

    def _save_remote_code(self, out_dir: Path) -> list[str]:
        """Copy every ``*.py`` of the source directory into ``out_dir`` (overwriting) and check ``auto_map``.

        ``save_pretrained`` of a class transformers loaded through an auto class already copies that class's
        module and its relative imports, but from transformers' module cache and only those: a module reached
        otherwise (a remote tokenizer, a helper imported by name) would be missing. Copying the source's files
        makes the export carry exactly the code the source directory ships.

        Raises:
            RuntimeError: a module named in ``config.json``'s ``auto_map`` is not in ``out_dir``.
        """
        for path in sorted(self.source_dir.glob('*.py')):
            shutil.copyfile(path, out_dir / path.name)
        auto_map = json.loads((out_dir / 'config.json').read_text()).get('auto_map') or {}
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, (list, tuple)) else [v]) if r]
        needed = {r.split('--')[-1].rsplit('.', 1)[0] + '.py' for r in refs}  # 'repo--module.Class' → module.py
        missing = sorted(needed - {p.name for p in out_dir.glob('*.py')})
        if missing:
            raise RuntimeError(f"config.json's auto_map {auto_map} names {missing}, which neither "
                               f'{str(self.source_dir)!r} nor save_pretrained provided: copy the checkpoint\'s '
                               'remote-code files into that directory and export again.')
        return ['code']


def _wrap_placeholders(input_ids: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor | None, start_id: int,
                       end_id: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Write ``start_id`` before and ``end_id`` after every ``IMAGE_TOKEN_INDEX`` (vectorised over the batch).

    Returns ``ids [B, T']``, ``attention_mask [B, T']`` (right-padded: ``splice_image_features`` rebuilds the
    padding side) and ``labels`` with ``IGNORE_INDEX`` at the inserted tokens (None without labels).
    """
    B = input_ids.shape[0]
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & valid
    width = valid.long() + 2 * is_image.long()  # (B, T): 3 for a placeholder, 1 for text, 0 for padding
    lengths = width.sum(1)  # (B,)
    T_new = int(lengths.max()) if B else 0
    start = torch.cumsum(width, 1) - width  # (B, T) first new slot of each token
    ids = torch.full((B, T_new), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    new_labels = None if labels is None else torch.full((B, T_new), IGNORE_INDEX, dtype=labels.dtype,
                                                        device=labels.device)
    b_tok, t_tok = valid.nonzero(as_tuple=True)
    dst = start[b_tok, t_tok] + is_image[b_tok, t_tok].long()  # a placeholder moves one right, after <img>
    ids[b_tok, dst] = input_ids[b_tok, t_tok]
    if new_labels is not None:
        new_labels[b_tok, dst] = labels[b_tok, t_tok]
    b_img, t_img = is_image.nonzero(as_tuple=True)
    ids[b_img, start[b_img, t_img]] = start_id
    ids[b_img, start[b_img, t_img] + 2] = end_id
    mask = torch.arange(T_new, device=input_ids.device)[None, :] < lengths[:, None]  # (B, T')
    return ids, mask, new_labels


def load_internvl_dir(path: str | os.PathLike, *, template: str | None = None, dtype: torch.dtype | str | None = None,
                      device: str | torch.device = 'cpu', trust_remote_code: bool = False) -> InternVLModel:
    """An InternVL directory (an export of this model in either format, or a stock checkpoint) as a frozen
    :class:`InternVLModel`; the loader :func:`~mllm_align.models.hf_llava.load_hf_dir` uses for
    ``model_type='internvl'`` and ``'internvl_chat'`` (remote code). Exported plug-ins are re-attached in their
    recorded order and the export's tiling is restored.

    Raises:
        ValueError: the directory ships modelling code (a remote-code export) and ``trust_remote_code`` is False
            (:func:`~mllm_align.models.hf_llava.check_remote_code_trusted`).
    """
    from .hf_llava import attach_exported_plugins, check_remote_code_trusted

    remote = check_remote_code_trusted(path, trust_remote_code)
    info_path = Path(path) / EXPORT_INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    tiling = info.get('tiling') or {}
    model = InternVLModel(path=str(path), dtype=dtype if dtype is not None else 'float32', trust_remote_code=remote,
                          template=template or info.get('template'), freeze_projector=True,
                          max_num_tiles=tiling.get('max_num_tiles'), use_thumbnail=tiling.get('use_thumbnail'),
                          image_size=tiling.get('image_size'))
    if info.get('plugins'):
        attach_exported_plugins(model, path, info)
    return model.to(device).eval()
