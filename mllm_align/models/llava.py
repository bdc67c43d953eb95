"""LLaVA-style multimodal LLM as an mmengine ``BaseModel``.

    pixel_values ─► VisionTower ─► projector ─┐
                                              ├─► splice ─► LLM ─► logits ─► loss_lm
    input_ids (with <image> placeholders) ────┘

Liu et al., "Visual Instruction Tuning" (NeurIPS 2023) and "Improved Baselines with Visual
Instruction Tuning" (CVPR 2024). The model contract is mmengine's: ``forward(data, data_samples,
mode)`` with ``mode`` in ``loss`` / ``predict`` / ``tensor``. Every step is a public method
(:meth:`get_image_features`, :meth:`prepare_inputs`) so hooks, alignment plug-ins and scripts
call them instead of copying them.

Checkpoints hold only what the run trains (``requires_grad`` parameters: projector, LoRA,
unfrozen towers, plug-in parameters); the frozen base is rebuilt from the config's model paths
(plus ``pretrained_pth``, e.g. the pre-training projector in SFT).
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Literal

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from ..constants import IGNORE_INDEX
from .builders import resolve_pad_token_id
from .projector import build_projector
from .splice import MultimodalInputs, splice_image_features
from .vision_tower import VisionTower

Mode = Literal['loss', 'predict', 'tensor']


def build_module(cfg: Any, **defaults: Any) -> Any:
    """Build ``cfg`` if it is an mmengine-style dict (``type`` a callable or registry name), else return it.

    ``defaults`` fill arguments the config does not set (e.g. the LLM's sizes for a plug-in).
    """
    if isinstance(cfg, dict) and 'type' in cfg:
        cfg = {**defaults, **cfg}
        obj_type = cfg.pop('type')
        if isinstance(obj_type, str):
            from mmengine.registry import MODELS
            return MODELS.build(dict(type=obj_type, **cfg))
        return obj_type(**cfg)
    return cfg


def find_linear_names(model: nn.Module, exclude: tuple[str, ...] = ('lm_head', 'output_layer')) -> list[str]:
    """Leaf names of every ``nn.Linear`` in ``model`` except the output head (LoRA's default targets)."""
    names = {name.split('.')[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(n for n in names if n not in exclude)


def apply_lora(model: nn.Module, lora_cfg: Any) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter built from ``lora_cfg`` (a ``LoraConfig`` or its dict)."""
    from peft import LoraConfig, get_peft_model

    if isinstance(lora_cfg, dict):
        lora_cfg = dict(lora_cfg)
        lora_cfg.pop('type', None)
        lora_cfg = LoraConfig(**lora_cfg)
    if lora_cfg.target_modules is None:
        lora_cfg.target_modules = find_linear_names(model)
    return get_peft_model(model, lora_cfg)


class LLaVAModel(BaseModel):
    """LLaVA-style MLLM: vision tower → projector → spliced into a decoder-only HF LLM.

    Args:
        llm: the LLM, or its config dict (``dict(type=load_llm, path=..., dtype=...)``).
        visual_encoder: a :class:`VisionTower` or its config dict.
        projector: ``dict(type='mlp2x_gelu')`` (or ``'linear'``, ``'mlp{N}x_gelu'``), or a module.
        tokenizer: tokenizer or its config dict; needed for ``mode='predict'`` and chat hooks.
        template: chat template name used by ``predict`` prompts and chat hooks.
        freeze_llm: freeze the LLM (pre-training). LoRA adapters stay trainable.
        freeze_visual_encoder: freeze the vision tower.
        freeze_projector: freeze the projector (rare; e.g. LoRA-only SFT ablations).
        llm_lora: a peft ``LoraConfig`` (or dict) applied to the LLM.
        visual_encoder_lora: a peft ``LoraConfig`` (or dict) applied to the vision tower.
        gradient_checkpointing: activation checkpointing in the LLM (non-reentrant).
        pretrained_pth: a checkpoint of this model (``iter_N.pth``) whose weights are loaded at
            build time, e.g. the pre-trained projector for SFT.
        max_new_tokens: generation length in ``predict``.
        moca: MoCa calibration config (``dict(type=MoCa, ...)``, :mod:`mllm_align.align.moca`); built
            with the LLM's ``num_layers`` and ``hidden_size``, then ``attach``ed to its decoder layers.
        cal: CAL loss re-weighting config (``dict(type=CAL, ...)``, :mod:`mllm_align.align.cal`).
        visual_words: visual-word supervision config (``dict(type=VisualWords, ...)``,
            :mod:`mllm_align.align.visual_words`); built with ``hidden_size`` and ``vocab_size``.
        data_preprocessor: mmengine data preprocessor config (moves the batch to the device).

    Alignment plug-ins are optional children; deleting their config block switches them off. The
    protocol they follow:

    * ``moca``: an ``nn.Module`` with ``attach(llm)`` (hooks the decoder layers once) and
      ``set_image_mask(image_mask [B, L] | None)``, called before every LLM pass.
    * ``cal``: an object with ``compute_loss(model, inputs, logits [B, L, V]) -> dict`` that replaces
      the plain ``loss_lm``. Optionally ``logits_positions(labels [B, L]) -> [P] | None``: the
      with-image logits it needs (HF ``logits_to_keep``; None: all); compute_loss is then called as
      ``compute_loss(model, inputs, logits [B, P, V], positions)``.
    * ``visual_words``: an ``nn.Module`` with ``compute_loss(model, inputs, logits) -> dict`` (added
      to the losses), a ``pif`` flag and ``pseudo_image_features(features [N, P, D], embed_weight
      [V, D]) -> [N, P, D]`` applied to projected image features when ``pif`` is set;
      ``attach(llm)`` (called once after it is built) and ``resize(n)`` (called by
      :meth:`resize_token_embeddings`).

    Shapes: B batch, T text length, N images in the batch, L spliced length, V vocabulary.
    """

    def __init__(self, llm: Any, visual_encoder: Any, projector: Any = None, tokenizer: Any = None,
                 template: str | None = None, freeze_llm: bool = True,
                 freeze_visual_encoder: bool = True, freeze_projector: bool = False,
                 llm_lora: Any = None, visual_encoder_lora: Any = None,
                 gradient_checkpointing: bool = False, pretrained_pth: str | None = None,
                 max_new_tokens: int = 64, moca: Any = None, cal: Any = None,
                 visual_words: Any = None, data_preprocessor: Any = None,
                 init_cfg: Any = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.llm = build_module(llm)
        self.visual_encoder = build_module(visual_encoder)
        if not isinstance(self.visual_encoder, VisionTower):
            raise TypeError('visual_encoder must build a mllm_align.models.VisionTower, got '
                            f'{type(self.visual_encoder).__name__}.')
        self.tokenizer = build_module(tokenizer)
        self.template = template
        self.max_new_tokens = max_new_tokens
        projector = projector if projector is not None else dict(type='mlp2x_gelu')
        if isinstance(projector, dict):
            self.projector = build_projector(projector['type'], self.visual_encoder.hidden_size,
                                             self.llm.config.hidden_size)
        else:
            self.projector = projector

        self.llm.requires_grad_(not freeze_llm)
        self.visual_encoder.requires_grad_(not freeze_visual_encoder)
        self.projector.requires_grad_(not freeze_projector)
        if llm_lora is not None:
            self.llm = apply_lora(self.llm, llm_lora)
        if visual_encoder_lora is not None:
            self.visual_encoder.model = apply_lora(self.visual_encoder.model, visual_encoder_lora)
        llm_config = self.llm.config
        self.moca = build_module(moca, num_layers=llm_config.num_hidden_layers,
                                 hidden_size=llm_config.hidden_size)
        if self.moca is not None:
            self.moca.attach(self.llm)
        self.cal = build_module(cal)
        self.visual_words = build_module(visual_words, hidden_size=llm_config.hidden_size,
                                         vocab_size=self.embed_tokens.weight.shape[0])
        if self.visual_words is not None:
            self.visual_words.attach(self.llm)  # vm_head init from the LLM, if configured
        # HF `logits_to_keep` (a tensor of positions): the plain LM loss then runs lm_head only where
        # a label is predicted (see compute_loss).
        base_llm = self.llm.get_base_model() if hasattr(self.llm, 'get_base_model') else self.llm
        self._logits_to_keep = 'logits_to_keep' in inspect.signature(type(base_llm).forward).parameters
        if gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={'use_reentrant': False})
            self.llm.config.use_cache = False
        # Frozen base weights are rebuilt from the config: loading a trainable-only checkpoint must
        # not report them as missing, while a missing *trainable* key still is.
        self.register_load_state_dict_post_hook(LLaVAModel._ignore_frozen_missing_keys)
        if pretrained_pth is not None:
            from ..engine.checkpoint import load_trained_weights
            load_trained_weights(self, pretrained_pth)
        self.log_parameter_counts()

    # ------------------------------------------------------------------ building blocks
    def init_weights(self) -> None:
        """No-op: weights come from pretrained directories (mmengine would re-initialise HF modules)."""

    @property
    def embed_tokens(self) -> nn.Module:
        """The LLM's input embedding table."""
        return self.llm.get_input_embeddings()

    @property
    def pad_token_id(self) -> int:
        return resolve_pad_token_id(self.llm.config, self.tokenizer)

    def resize_token_embeddings(self, new_num_tokens: int, **kwargs: Any) -> None:
        """Resize the LLM's input/output embeddings after tokens were added to the tokenizer, and the
        vocabulary-sized plug-in heads with them (visual words' ``vm_head``). Call before the optimizer
        is built; ``kwargs`` go to HF ``resize_token_embeddings`` (e.g. ``pad_to_multiple_of``)."""
        self.llm.resize_token_embeddings(new_num_tokens, **kwargs)
        if self.visual_words is not None:
            self.visual_words.resize(self.embed_tokens.weight.shape[0])

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower → projector. ``[N, 3, H, W] -> [N, P, D]`` in the LLM's embedding dtype."""
        feats = self.visual_encoder(pixel_values)  # (N, P, C)
        proj_dtype = next(self.projector.parameters()).dtype
        # parameters(), not `.weight`: under ZeRO-3 an attribute read would keep E gathered all step
        embed_weight = next(self.embed_tokens.parameters())  # (V, D)
        feats = self.projector(feats.to(proj_dtype)).to(embed_weight.dtype)  # (N, P, D)
        if self.visual_words is not None and self.visual_words.pif:
            feats = self.visual_words.pseudo_image_features(feats, embed_weight)
        return feats

    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """Splice image features into the text embeddings; returns the LLM inputs and the image mask.

        ``data`` holds ``input_ids [B, T]``, ``attention_mask [B, T]``, optional ``labels [B, T]``
        and ``pixel_values [N, 3, H, W]`` or None. It is not modified.
        """
        pixel_values = data.get('pixel_values')
        image_features = None if pixel_values is None else self.get_image_features(pixel_values)
        input_ids = data['input_ids']
        attention_mask = data.get('attention_mask')
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return splice_image_features(input_ids, attention_mask, self.embed_tokens, image_features,
                                     labels=data.get('labels'), pad_token_id=self.pad_token_id,
                                     padding_side=padding_side)

    def run_llm(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """One LLM forward pass on spliced inputs; returns the HF output (``.logits [B, L, V]``)."""
        if self.moca is not None:
            self.moca.set_image_mask(inputs.image_mask)
        return self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                        position_ids=inputs.position_ids, use_cache=False, **kwargs)

    # ------------------------------------------------------------------ mmengine contract
    def forward(self, data: dict, data_samples: Any = None, mode: Mode = 'tensor') -> Any:
        if mode == 'loss':
            return self.compute_loss(data)
        if mode == 'predict':
            return self.predict(data)
        if mode == 'tensor':
            return self.run_llm(self.prepare_inputs(data)).logits
        raise ValueError(f"Unknown mode {mode!r}: LLaVAModel.forward accepts 'loss', 'predict' or 'tensor'.")

    def compute_loss(self, data: dict) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy over supervised tokens: ``{'loss_lm': mean CE}``, plus the plug-ins' losses.

        Without visual words (which read logits at every position), the LLM computes logits only at the
        positions that predict a label in some sample of the batch (HF ``logits_to_keep``): in
        pre-training that skips lm_head and the ``[B, L, V]`` logits over the image and prompt tokens.
        With CAL the positions come from ``cal.logits_positions`` (:meth:`CAL.logits_positions`: all of
        them for ``'flat'`` pooling), and CAL's no-image pass keeps only the rows it needs as well.
        """
        inputs = self.prepare_inputs(data)
        if inputs.labels is None:
            raise ValueError("mode='loss' needs `labels` in the batch.")
        if self.cal is None and self.visual_words is None and self._logits_to_keep:
            positions = supervised_positions(inputs.labels)  # (P,)
            logits = self.run_llm(inputs, logits_to_keep=positions).logits  # (B, P, V)
            return {'loss_lm': causal_lm_loss(logits, inputs.labels, positions)}
        if (self.cal is not None and self.visual_words is None and self._logits_to_keep
                and hasattr(self.cal, 'logits_positions')):
            positions = self.cal.logits_positions(inputs.labels)  # (P,), or None: every position
            keep = {} if positions is None else {'logits_to_keep': positions}
            logits = self.run_llm(inputs, **keep).logits  # (B, P, V), or (B, L, V)
            return dict(self.cal.compute_loss(self, inputs, logits, positions))
        logits = self.run_llm(inputs).logits  # (B, L, V)
        if self.cal is not None:
            losses = dict(self.cal.compute_loss(self, inputs, logits))
        else:
            losses = {'loss_lm': causal_lm_loss(logits, inputs.labels)}
        if self.visual_words is not None:
            losses.update(self.visual_words.compute_loss(self, inputs, logits))
        return losses

    @torch.no_grad()
    def predict(self, data: dict) -> list[dict[str, Any]]:
        """Greedy generation for prompts that end with an open assistant turn.

        Returns one ``{'prediction': text, 'token_ids': list[int]}`` per sample.
        """
        if self.tokenizer is None:
            raise ValueError("mode='predict' needs a tokenizer: pass `tokenizer=` to LLaVAModel.")
        inputs = self.prepare_inputs(data, padding_side='left')
        if self.template is not None:
            from ..data.templates import get_template
            eos = get_template(self.template).stop_token_ids(self.tokenizer)
        else:
            eos = self.llm.generation_config.eos_token_id or self.tokenizer.eos_token_id
        if self.moca is not None:
            self.moca.set_image_mask(inputs.image_mask)  # prefill; 1-token decode steps are skipped
        out = self.llm.generate(inputs_embeds=inputs.inputs_embeds,
                                attention_mask=inputs.attention_mask.long(),
                                max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                eos_token_id=eos, pad_token_id=self.pad_token_id,
                                temperature=None, top_p=None, top_k=None)
        results = []
        for ids in out.tolist():
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append({'prediction': text, 'token_ids': ids})
        return results

    # ------------------------------------------------------------------ checkpoints
    def trainable_names(self) -> set[str]:
        """Names of parameters this run trains (what ``state_dict`` saves)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> 'OrderedDict[str, torch.Tensor]':
        """Only the trained parameters (the frozen base is rebuilt from the config)."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        keep = {prefix + n for n in self.trainable_names()}
        return OrderedDict((k, v) for k, v in full.items() if k in keep)

    @staticmethod
    def _ignore_frozen_missing_keys(module: 'LLaVAModel', incompatible_keys: Any) -> None:
        trainable = module.trainable_names()
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k in trainable]

    def log_parameter_counts(self) -> None:
        """Log trainable / frozen parameter counts per component (a wrong freeze shows at once)."""
        rows = []
        for name, child in self.named_children():
            if name == 'data_preprocessor':
                continue
            n_train = sum(p.numel() for p in child.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in child.parameters())
            rows.append(f'{name}: trainable {n_train:,} / frozen {n_all - n_train:,}')
        print_log('Parameters — ' + '; '.join(rows), logger='current')


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L] -> [P]``: sorted positions t whose next label ``labels[:, t + 1]`` is supervised in at least
    one sample (the rows of the logits a causal LM loss reads)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts ``labels[t + 1]``; ``IGNORE_INDEX`` skipped.

    loss = 1/|S| Σ_{(b,t)∈S} −log softmax(logits[b, t])[labels[b, t+1]],  S = {(b, t): labels[b, t+1] ≠ ignore}.
    Only the rows in S are upcast to float32 (never a float32 copy of the whole ``[B, L, V]``).

    Args:
        logits: ``[B, L, V]``, or ``[B, P, V]`` at ``positions`` (HF ``logits_to_keep``).
        labels: ``[B, L]``.
        positions: ``[P]`` sequence positions of the logits' rows (e.g. :func:`supervised_positions`);
            None: every position.
    """
    if positions is None:
        logits, targets = logits[:, :-1], labels[:, 1:]  # (B, L-1, V), (B, L-1)
    else:
        targets = labels[:, positions + 1]  # (B, P)
    supervised = targets != IGNORE_INDEX
    if not supervised.any():
        # No supervised token in the batch: a zero loss that still touches the graph.
        return logits.sum() * 0.0
    return F.cross_entropy(logits[supervised].float(), targets[supervised])
