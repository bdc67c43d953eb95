"""CoLVA: a multimodal base plus an object-level vision expert, an object adapter and object tokens.

Zhou et al., "Are They the Same? Exploring Visual Correspondence Shortcomings of Multimodal LLMs"
(arXiv:2501.04670). A fine-grained vision expert (RADIO in production) sees the clean images; a small adapter
turns its patch features into one embedding per object (mask-average pooling on the expert grid), and each
embedding replaces one ``<VPT_CONTEXT>`` token of the text block

    Objects in Image-1: <query object><VPT_CONTEXT>.
    Objects in Image-2: <object-1><VPT_CONTEXT>, <object-2><VPT_CONTEXT>, …

while the base model (Qwen2-VL, InternVL2) sees the images with the visual prompts drawn on them::

    expert_pixel_values [N_e, 3, E, E] ─► expert ─► [N_e, g, g, C] ─► adapter ─► [N_e, g, g, D]
    expert_masks (per expert image [K, E, E]) ─► bilinear to g×g, > τ ─► mask pool ─► per object [D]
    base.prepare_inputs(data) ─► inputs_embeds; rows at <VPT_CONTEXT> ◄── the object embeddings, in order

Two stages, chosen by ``stage``:

* ``'pretrain'`` (only the adapter trains): each item holds views of one image for the expert and for the base,
  paired by position (expert image j ↔ base image j; the dataset pairs each view with the *other* view). Anchor
  a_k: the adapter's embedding of object k in expert image j; positive p_k: the base model's own embedding of
  the same object in base image j (its projected vision tokens mask-pooled over its token grid, τ = 0.55);
  negatives: the other objects there.  L = log(1 + Σ_neg exp(a·n − a·p)), averaged over valid anchors
  (:func:`~mllm_align.models.object_contrastive.object_contrastive_loss`). The LLM never runs.
* ``'sft'``: the base's usual next-token loss on text whose ``<VPT_CONTEXT>`` rows hold the object embeddings
  (τ = 0.5); LoRA on the LLM, expert and adapter frozen unless the config says otherwise.

Checkpoint keys: ``adapter.*`` (and the base's trained parameters under ``base.*``). The SFT recipe loads the
pre-trained adapter with ``adapter_pth`` (the ``adapter.*`` keys of a pre-training ``iter_N.pth``).

Shape letters: B batch, N_e expert images, E expert input side, g expert grid, C expert width, D LLM width,
K objects of an image.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from ..constants import VPT_TOKEN
from .base import MultimodalModel, build_module
from .object_adapter import ObjectAdapter, mask_pool, masks_to_grid
from .plugin import AlignPlugin
from .splice import MultimodalInputs

__all__ = ['COLVA_INFO_NAME', 'ADAPTER_FILE', 'CoLVAModel', 'load_colva_export']

#: Files a CoLVA export adds to its base's export directory.
COLVA_INFO_NAME = 'colva.json'
ADAPTER_FILE = 'colva_adapter.safetensors'
#: Mask thresholds on the expert grid by stage (the released code's values); the base grid always uses 0.55.
DEFAULT_THRESHOLDS = {'pretrain': 0.55, 'sft': 0.5}
BASE_MASK_THRESHOLD = 0.55
#: Batch entries that describe images to the base beside ``pixel_values`` (Qwen2-VL's grids, InternVL's tiles).
_BASE_IMAGE_KEYS = ('image_grid_thw', 'num_tiles', 'num_patches', 'image_num_tiles')


class CoLVAModel(MultimodalModel):
    """A base (any :class:`MultimodalModel` with ``image_token_grids``) with CoLVA's expert, adapter and object
    tokens (module docstring).

    Args:
        base: the base model or its config dict (``dict(type=Qwen2VLModel, path=…, llm_lora=…)``); built without
            plug-ins (CoLVA's own ``plugins`` see every LLM pass).
        expert: the vision expert or its config (``hidden_size``, ``grid_size``, ``image_size``,
            ``forward([N, 3, E, E] in [0, 1]) -> [N, g, g, C]``).
        stage: ``'pretrain'`` (contrastive adapter training, no LLM pass) or ``'sft'``.
        mask_threshold: τ on the expert grid (default 0.55 in pre-training, 0.5 in SFT).
        base_mask_threshold: τ on the base's token grid in pre-training (0.55).
        freeze_adapter: default: frozen in SFT, trained in pre-training.
        freeze_expert: the expert's parameters (default frozen; it then also stays in eval mode).
        adapter_pth: an ``iter_N.pth`` whose ``adapter.*`` tensors initialise the adapter (the pre-trained
            adapter, in SFT).
        pretrained_pth: an ``iter_N.pth`` of this model (all its trained keys), loaded last.
        plugins: alignment plug-ins on the LLM passes (MoCa, CAL); not in pre-training.

    Raises:
        ValueError: an unknown stage; a base without an image-token grid in pre-training; a trainable base part
            in pre-training (it would get no gradient); a plug-in that transforms image features; an
            ``adapter_pth`` without ``adapter.*`` keys.
    """

    _reserved_names = MultimodalModel._reserved_names | frozenset({'base', 'expert', 'adapter'})

    def __init__(self, base: Any, expert: Any, stage: Literal['pretrain', 'sft'] = 'sft',
                 mask_threshold: float | None = None, base_mask_threshold: float = BASE_MASK_THRESHOLD,
                 freeze_adapter: bool | None = None, freeze_expert: bool = True, adapter_pth: str | None = None,
                 pretrained_pth: str | None = None, plugins: Mapping[str, Any] | None = None,
                 max_new_tokens: int | None = None, data_preprocessor: Any = None, init_cfg: Any = None) -> None:
        if stage not in DEFAULT_THRESHOLDS:
            raise ValueError(f"model.stage={stage!r}: use 'pretrain' (adapter contrastive pre-training) or 'sft'.")
        if isinstance(base, Mapping) and base.get('plugins'):
            raise ValueError('model.base.plugins: put plug-ins on the CoLVA model (model.plugins), which runs the '
                             'LLM passes; the base is built without them.')
        base = build_module(base)
        if not isinstance(base, MultimodalModel):
            raise TypeError(f'model.base built a {type(base).__name__}, not a mllm_align MultimodalModel.')
        super().__init__(tokenizer=base.tokenizer, template=base.template,
                         max_new_tokens=max_new_tokens or base.max_new_tokens,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.base = base
        self.expert_cfg = _portable_cfg(expert)  # recorded in an export, to rebuild the expert from
        self.expert = build_module(expert)
        for attr in ('hidden_size', 'grid_size'):
            if not hasattr(self.expert, attr):
                raise TypeError(f'model.expert ({type(self.expert).__name__}) has no `{attr}`: use a VisionExpert '
                                '(mllm_align.models.vision_expert).')
        self.stage = stage
        self.mask_threshold = DEFAULT_THRESHOLDS[stage] if mask_threshold is None else float(mask_threshold)
        self.base_mask_threshold = float(base_mask_threshold)
        self.adapter = ObjectAdapter(int(self.expert.hidden_size), base.hidden_size)
        if not freeze_expert and getattr(self.expert, 'frozen', False):
            raise ValueError('model.freeze_expert=False (train the expert) but the expert was built frozen '
                             '(model.expert.freeze=True keeps it in eval mode): set model.expert.freeze=False too.')
        self.freeze_expert = freeze_expert
        self.expert.requires_grad_(not freeze_expert)
        if freeze_adapter is None:
            freeze_adapter = stage == 'sft'
        self.adapter.requires_grad_(not freeze_adapter)
        self.supports_logits_to_keep = base.supports_logits_to_keep
        self.vpt_token_id = self._ensure_vpt_token()
        if stage == 'pretrain':
            self._check_pretrain_setup(plugins)
        self.register_frozen_keys_hook()
        self.setup_plugins(plugins)
        for name, plugin in self.plugins.items():
            if type(plugin).transform_image_features is not AlignPlugin.transform_image_features:
                raise ValueError(f'model.plugins.{name} ({type(plugin).__name__}) transforms image features, which '
                                 'a CoLVA model does not route through its plug-ins; remove it.')
        if adapter_pth is not None:
            self.load_adapter(adapter_pth)
        self.load_pretrained(pretrained_pth)
        self.log_parameter_counts()

    # ------------------------------------------------------------------ set-up
    def _ensure_vpt_token(self) -> int:
        """The ``<VPT_CONTEXT>`` id, added to the tokenizer (and the embeddings grown) when missing."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ValueError('A CoLVA model needs the base tokenizer (it holds <VPT_CONTEXT>).')
        if VPT_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({'additional_special_tokens': [VPT_TOKEN]},
                                         replace_additional_special_tokens=False)
            print_log(f'Added {VPT_TOKEN} to the tokenizer; load the dataset tokenizer with '
                      f'load_tokenizer(..., extra_special_tokens=[{VPT_TOKEN!r}]) so both agree.',
                      logger='current', level=logging.WARNING)
        token_id = int(tokenizer.convert_tokens_to_ids(VPT_TOKEN))
        if token_id >= self.base.vocab_size:
            self.base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is overwritten
        return token_id

    def _check_pretrain_setup(self, plugins: Mapping[str, Any] | None) -> None:
        if plugins:
            raise ValueError('model.plugins: CoLVA pre-training never runs the LLM, so plug-ins have nothing to '
                             "act on; remove them (or use stage='sft').")
        trainable = sorted(n for n, p in self.base.named_parameters() if p.requires_grad)
        if trainable:
            raise ValueError(f'CoLVA pre-training trains only the adapter, but base parameters such as '
                             f'{trainable[:3]} are trainable: set model.base.freeze_llm / freeze_visual_encoder / '
                             'freeze_projector to True and drop any LoRA.')
        if getattr(type(self.base), 'image_token_grids', None) is getattr(MultimodalModel, 'image_token_grids', None):
            raise ValueError(f'{type(self.base).__name__} reports no image-token grid, which pre-training pools '
                             'the base\'s object embeddings over; use a Qwen2-VL or InternVL base.')

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Initialise the adapter from the ``adapter.*`` tensors of a checkpoint (a pre-training ``iter_N.pth``,
        plain or DeepSpeed) or an export's :data:`ADAPTER_FILE`.

        Raises:
            KeyError: the file holds no ``adapter.*`` tensor (the message lists a few of its keys).
        """
        path = Path(path)
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            state = {f'adapter.{k}': v for k, v in load_file(str(path)).items()}
        else:
            from ..checkpoint_io import load_checkpoint_file
            state = load_checkpoint_file(str(path))
            state = state.get('state_dict', state)
        adapter = {k[len('adapter.'):]: v for k, v in state.items() if k.startswith('adapter.')}
        if not adapter:
            raise KeyError(f'{str(path)!r} holds no adapter.* tensors (keys such as {sorted(state)[:4]}): '
                           'point model.adapter_pth at a CoLVA pre-training checkpoint.')
        self.adapter.load_state_dict(adapter)
        print_log(f'Loaded the object adapter from {path}', logger='current')

    def train(self, mode: bool = True) -> 'CoLVAModel':
        super().train(mode)
        if self.freeze_expert:
            self.expert.eval()  # a frozen expert never changes: no dropout, fixed norms
        return self

    # ------------------------------------------------------------------ the interface, through the base
    @property
    def language_model(self) -> nn.Module:
        return self.base.language_model

    @property
    def llm_config(self) -> Any:
        return self.base.llm_config

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.base.decoder_layers

    @property
    def pad_token_id(self) -> int:
        return self.base.pad_token_id

    def encode_images(self, pixel_values: torch.Tensor, **image_inputs: Any) -> list[torch.Tensor]:
        return self.base.encode_images(pixel_values, **image_inputs)

    def image_token_grids(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int]]:
        return self.base.image_token_grids(image_inputs)

    def process_images(self, images: list[Any]) -> dict[str, Any]:
        return self.base.process_images(images)

    def llm_forward(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        return self.base.llm_forward(inputs, **kwargs)

    def generate_ids(self, inputs: MultimodalInputs, data: dict, eos_token_id: Any,
                     max_new_tokens: int) -> torch.Tensor:
        return self.base.generate_ids(inputs, data, eos_token_id, max_new_tokens)

    def resize_token_embeddings(self, new_num_tokens: int, **kwargs: Any) -> None:
        self.base.resize_token_embeddings(new_num_tokens, **kwargs)
        for plugin in self.plugins.values():
            plugin.resize_vocab(self.vocab_size)

    # ------------------------------------------------------------------ object embeddings
    def expert_features(self, expert_pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N_e, 3, E, E]`` in [0, 1] → adapted features ``[N_e, g, g, D]``."""
        if expert_pixel_values.dim() != 4 or expert_pixel_values.shape[1] != 3:
            raise ValueError(f'expert_pixel_values must be [N, 3, E, E], got {tuple(expert_pixel_values.shape)}.')
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_expert):
            feats = self.expert(expert_pixel_values)  # (N, g, g, C)
        return self.adapter(feats.to(self.adapter.fc1.weight.dtype))

    def object_embeddings(self, expert_pixel_values: torch.Tensor, expert_masks: Sequence[torch.Tensor],
                          threshold: float | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per expert image: the adapter's object embeddings ``[K_j, D]`` and ``valid [K_j]`` (the mask keeps at
        least one grid cell above τ).

        ``expert_masks[j]``: ``[K_j, H, W]`` bool masks of image j (any resolution; resized to the grid).
        """
        if len(expert_masks) != expert_pixel_values.shape[0]:
            raise ValueError(f'{len(expert_masks)} mask sets for {expert_pixel_values.shape[0]} expert images: '
                             'give one [K, H, W] mask tensor per expert image.')
        adapted = self.expert_features(expert_pixel_values)  # (N, g, g, D)
        tau = self.mask_threshold if threshold is None else threshold
        embeds, valid = [], []
        for j, masks in enumerate(expert_masks):
            masks = masks.to(adapted.device)
            if masks.dim() != 3 or masks.shape[0] == 0:
                raise ValueError(f'expert image {j}: masks of shape {tuple(masks.shape)}; give [K, H, W] with K ≥ 1.')
            weights, ok = masks_to_grid(masks, tuple(adapted.shape[1:3]), tau)
            embeds.append(mask_pool(adapted[j], weights))
            valid.append(ok)
        return embeds, valid

    def base_object_embeddings(self, data: Mapping[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per base image: the base's own object embeddings (projected vision tokens mask-pooled over its token
        grid, τ = ``base_mask_threshold``) and ``valid``; ``data['base_masks'][j]``: ``[K_j, h, w]``."""
        image_inputs = {k: data[k] for k in _BASE_IMAGE_KEYS if data.get(k) is not None}
        features = self.base.encode_images(data['pixel_values'], **image_inputs)  # per image (P_j, D)
        grids = self.base.image_token_grids({'pixel_values': data['pixel_values'], **image_inputs})
        masks_list = data['base_masks']
        if not (len(features) == len(grids) == len(masks_list)):
            raise ValueError(f'{len(features)} base images, {len(grids)} token grids, {len(masks_list)} mask sets: '
                             'give one [K, h, w] base mask tensor per base image.')
        embeds, valid = [], []
        for j, (feat, grid, masks) in enumerate(zip(features, grids, masks_list)):
            if feat.shape[0] != grid[0] * grid[1]:
                raise ValueError(f'base image {j}: {feat.shape[0]} tokens but a {grid[0]}×{grid[1]} grid.')
            weights, ok = masks_to_grid(masks.to(feat.device), grid, self.base_mask_threshold)
            embeds.append(mask_pool(feat.reshape(grid[0], grid[1], -1), weights))
            valid.append(ok)
        return embeds, valid

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """The base's spliced inputs with each ``<VPT_CONTEXT>`` row replaced by its object's embedding.

        Objects are taken in batch order: sample by sample, each sample's expert images in order, each image's
        masks in order — the order of the ``<VPT_CONTEXT>`` tokens in the text. Nothing else moves.

        Raises:
            ValueError: a sample's ``<VPT_CONTEXT>`` count differs from its objects (naming the sample), object
                tokens without expert inputs, or an object whose mask vanishes on the expert grid.
        """
        inputs = self.base.prepare_inputs(data, padding_side)
        ids = inputs.input_ids
        is_vpt = (ids == self.vpt_token_id) & inputs.attention_mask.bool()
        pixel_values = data.get('expert_pixel_values')
        names = list(data.get('sample_ids') or range(ids.shape[0]))
        if pixel_values is None:
            if bool(is_vpt.any()):
                b = int(is_vpt.any(1).nonzero()[0, 0])
                raise ValueError(f'sample {names[b]!r} has {VPT_TOKEN} tokens but the batch has no expert images '
                                 '(expert_pixel_values): use the CoLVA dataset and colva_collate_fn.')
            return inputs
        counts = data.get('expert_counts')
        counts = [int(pixel_values.shape[0])] if counts is None else [int(c) for c in counts]
        embeds, valid = self.object_embeddings(pixel_values, data['expert_masks'])
        per_sample, j = [], 0
        for b, n_img in enumerate(counts):
            objs = embeds[j:j + n_img]
            for k, ok in enumerate(valid[j:j + n_img]):
                if not bool(ok.all()):
                    bad = (~ok).nonzero().squeeze(1).tolist()
                    raise ValueError(f'sample {names[b]!r}, expert image {k}: object mask(s) {bad} vanish on the '
                                     f'{self.expert.grid_size}×{self.expert.grid_size} expert grid at τ='
                                     f'{self.mask_threshold}; the dataset should skip such samples.')
            per_sample.append(torch.cat(objs) if objs else embeds[0].new_zeros(0, embeds[0].shape[1]))
            j += n_img
        for b, objs in enumerate(per_sample):
            n_tokens = int(is_vpt[b].sum())
            if n_tokens != objs.shape[0]:
                raise ValueError(f'sample {names[b]!r} has {n_tokens} {VPT_TOKEN} tokens but {objs.shape[0]} object '
                                 'masks: one token per object, query first.')
        rows = torch.cat(per_sample).to(inputs.inputs_embeds.dtype)  # in (b, t) order, as nonzero() lists them
        b_idx, t_idx = is_vpt.nonzero(as_tuple=True)
        inputs_embeds = inputs.inputs_embeds.index_put((b_idx, t_idx), rows)
        return replace(inputs, inputs_embeds=inputs_embeds)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_match(self, images: Sequence[Any], query_mask: Any, candidate_masks: Sequence[Any], *,
                      colour: str = 'cyan', seed: int = 0, question: int = 0) -> dict[str, Any]:
        """Answer one matching case: which candidate in image 2 is the query object of image 1.

        The case is drawn and worded as in SFT (:func:`~mllm_align.data.mmvm_sft.match_prompt_item`: query contour
        in ``colour``, candidates tagged with a seeded ID permutation, options over the sorted IDs + "None of the
        above"); the model answers greedily and the letter is read with the MMVM benchmark's strict extraction.

        Returns:
            ``{'prediction': text, 'choice': letter or None, 'candidate': index into candidate_masks, or None for
            "none of them" / no readable choice, 'options': {letter: text}, 'ids': tag drawn on each candidate}``.
        """
        from ..data.collate import colva_collate_fn
        from ..data.mmvm_sft import match_prompt_item
        from ..metrics.mmvm import extract_choice

        processor = getattr(self.base, 'image_processor', None)
        if processor is None:
            raise ValueError(f'{type(self.base).__name__} has no image_processor to draw the case for.')
        item, options, ids = match_prompt_item(
            list(images), query_mask, candidate_masks, self.tokenizer, self.template, processor,
            int(self.expert.image_size), colour=colour, seed=seed, question=question)
        data = colva_collate_fn([item], pad_token_id=self.pad_token_id)['data']
        data = self.data_preprocessor(dict(data=data), False)['data'] if self.data_preprocessor else data
        text = self.predict(data)[0]['prediction']
        letter = extract_choice(text, options)
        candidate = None
        if letter is not None and letter != list(options)[-1]:
            candidate = ids.index(list(options).index(letter) + 1)
        return {'prediction': text, 'choice': letter, 'candidate': candidate, 'options': options, 'ids': ids}

    # ------------------------------------------------------------------ losses
    def compute_loss(self, data: dict) -> dict[str, torch.Tensor]:
        """SFT: the base's next-token loss on object-token inputs (+ plug-in terms). Pre-training:
        ``{'loss_contrastive', 'num_anchors'}`` (module docstring); the LLM does not run."""
        if self.stage == 'sft':
            return super().compute_loss(data)
        from .object_contrastive import object_contrastive_loss

        for key in ('pixel_values', 'expert_pixel_values', 'expert_masks', 'base_masks'):
            if data.get(key) is None:
                raise ValueError(f"CoLVA pre-training needs `{key}` in the batch (SA1BPseudoVideoDataset + "
                                 'colva_collate_fn).')
        anchors, anchor_valid = self.object_embeddings(data['expert_pixel_values'], data['expert_masks'])
        positives, positive_valid = self.base_object_embeddings(data)
        if len(anchors) != len(positives):
            raise ValueError(f'{len(anchors)} expert images but {len(positives)} base images: pre-training pairs '
                             'expert image j with base image j.')
        loss, n = object_contrastive_loss(anchors, [p.to(a.dtype) for a, p in zip(anchors, positives)],
                                          anchor_valid, positive_valid)
        return {'loss_contrastive': loss, 'num_anchors': loss.new_tensor(float(n))}

    # ------------------------------------------------------------------ export
    def export_hf(self, out_dir: str | os.PathLike, overwrite: bool = False, **kwargs: Any) -> Path:
        """The base's HF export plus :data:`ADAPTER_FILE` and :data:`COLVA_INFO_NAME` (expert source, thresholds,
        the ``<VPT_CONTEXT>`` id); :func:`load_colva_export` rebuilds the model from it with the same logits.

        The whole directory is written to a temporary sibling and renamed into place.
        """
        from safetensors.torch import save_file

        from .export_dir import prepare_out_dir, staged_export_dir

        if self.plugins:
            raise ValueError(f'Exporting a CoLVA model with plug-ins {list(self.plugins)} is not supported: the '
                             'export holds the base, the adapter and the expert source only.')
        out_dir = Path(out_dir)
        prepare_out_dir(out_dir, overwrite)
        with staged_export_dir(out_dir) as tmp_dir:
            base_dir = tmp_dir / 'base'
            self.base.export_hf(base_dir, **kwargs)
            for entry in base_dir.iterdir():
                shutil.move(str(entry), tmp_dir / entry.name)
            base_dir.rmdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in self.adapter.state_dict().items()},
                      str(tmp_dir / ADAPTER_FILE))
            info = dict(format='mllm_align.CoLVAModel', expert=self.expert_cfg, mask_threshold=self.mask_threshold,
                        vpt_token=VPT_TOKEN, vpt_token_id=self.vpt_token_id,
                        expert_dim=int(self.expert.hidden_size), llm_dim=self.base.hidden_size)
            (tmp_dir / COLVA_INFO_NAME).write_text(json.dumps(info, indent=2) + '\n')
        print_log(f'Exported CoLVA to {out_dir} (base export + {ADAPTER_FILE})', logger='current')
        return out_dir


def load_colva_export(path: str | os.PathLike, expert: Any = None, *, device: str | torch.device = 'cpu',
                      dtype: Any = None, trust_remote_code: bool | None = None) -> CoLVAModel:
    """A CoLVA export (:meth:`CoLVAModel.export_hf`) as a frozen SFT-stage :class:`CoLVAModel`.

    The base is loaded from the directory by the HF-directory loader of its ``model_type``; the expert from
    ``expert`` (a built expert or its config) or, when None, the source recorded at export time.
    ``trust_remote_code``: allow modelling code that is not transformers': the base's own code in the directory
    (an export of a remote-code InternVL2 base ships it; :func:`~mllm_align.models.hf_llava.load_hf_dir`) and
    the recorded expert's (RADIO is loaded with ``trust_remote_code=True`` from the path it was trained from).
    None: allowed when ``MLLM_ALIGN_TRUST_REMOTE_CODE=1`` (the tools' ``--trust-remote-code``).

    Raises:
        FileNotFoundError: not a CoLVA export (no :data:`COLVA_INFO_NAME`).
        ValueError: no expert given and none recorded; modelling code in the directory, or a recorded expert
            that runs remote code, without ``trust_remote_code`` (naming the files or the expert and the flag).
    """
    from .hf_llava import load_hf_dir, resolve_trust_remote_code

    trust_remote_code = resolve_trust_remote_code(trust_remote_code)
    path = Path(path)
    info_path = path / COLVA_INFO_NAME
    if not info_path.is_file():
        raise FileNotFoundError(f'{str(path)!r} holds no {COLVA_INFO_NAME}: it is not a CoLVA export.')
    info = json.loads(info_path.read_text())
    if expert is None:
        expert = info.get('expert')
        if expert is None:
            raise ValueError(f'{str(info_path)!r} records no expert config (the model was built from an expert '
                             'object): pass expert= (the vision expert the model was trained with).')
        if expert.get('trust_remote_code') and not trust_remote_code:
            raise ValueError(f'{str(info_path)!r} records a vision expert loaded with its own modelling code '
                             f'({expert.get("path")!r}, trust_remote_code=True): pass '
                             'load_colva_export(path, trust_remote_code=True) if you trust that code, or pass '
                             'expert= (a built expert or its config).')
        expert = {**expert, 'type': _import_dotted(expert['type'])}
    base = load_hf_dir(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    model = CoLVAModel(base=base, expert=expert, stage='sft', mask_threshold=info.get('mask_threshold'),
                       adapter_pth=str(path / ADAPTER_FILE))
    if model.vpt_token_id != info.get('vpt_token_id', model.vpt_token_id):
        raise ValueError(f'{VPT_TOKEN} has id {model.vpt_token_id} in the exported tokenizer but '
                         f'{info["vpt_token_id"]} at export time.')
    return model.to(device).eval()


def _portable_cfg(cfg: Any) -> dict[str, Any] | None:
    """A JSON-able copy of an expert config dict (``type`` as a dotted path), or None for a built module."""
    if not isinstance(cfg, Mapping) or 'type' not in cfg:
        return None
    out = dict(cfg)
    obj_type = out['type']
    if not isinstance(obj_type, str):
        out['type'] = f'{obj_type.__module__}.{obj_type.__qualname__}'
    try:
        json.dumps(out)
    except TypeError:
        return None
    return out


def _import_dotted(name: str) -> Any:
    import importlib

    module, _, attr = name.rpartition('.')
    if not module:
        from mmengine.registry import MODELS
        return MODELS.get(name)
    return getattr(importlib.import_module(module), attr)
