"""LLaVA-style multimodal LLM: the first base of the model interface (:mod:`mllm_align.models.base`).

    pixel_values ─► vision encoder ─► projector ─┐
                                                 ├─► splice ─► LLM ─► logits ─► loss_lm
    input_ids (with <image> placeholders) ───────┘

Liu et al., "Visual Instruction Tuning" (NeurIPS 2023) and "Improved Baselines with Visual
Instruction Tuning" (CVPR 2024). The model contract is mmengine's: ``forward(data, data_samples,
mode)`` with ``mode`` in ``loss`` / ``predict`` / ``tensor``; the loss, generation, plug-in handling and
the trainable-only checkpoints come from :class:`~mllm_align.models.base.MultimodalModel`. This file
holds what is LLaVA-specific: a vision encoder (any :class:`~mllm_align.models.base.VisionEncoder`) and a
projector in front of a decoder-only HF LLM, one placeholder per image replaced by its feature rows.

Checkpoints hold only what the run trains (``requires_grad`` parameters: projector, LoRA,
unfrozen towers, plug-in parameters); the frozen base is rebuilt from the config's model paths
(plus ``pretrained_pth``, e.g. the pre-training projector in SFT).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from torch import nn

from .base import (
    MultimodalModel,
    VisionEncoder,
    accepts_logits_to_keep,
    apply_lora,
    build_module,
    causal_lm_loss,
    find_linear_names,
    supervised_positions,
)
from .projector import build_projector
from .splice import MultimodalInputs, splice_image_features

__all__ = ['LLaVAModel', 'build_module', 'apply_lora', 'find_linear_names', 'supervised_positions',
           'causal_lm_loss']


class LLaVAModel(MultimodalModel):
    """LLaVA-style MLLM: vision encoder → projector → spliced into a decoder-only HF LLM.

    Args:
        llm: the LLM, or its config dict (``dict(type=load_llm, path=..., dtype=...)``).
        visual_encoder: a :class:`~mllm_align.models.base.VisionEncoder` (e.g. ``VisionTower``) or its config.
        projector: ``dict(type='mlp2x_gelu')`` (or ``'linear'``, ``'mlp{N}x_gelu'``), or a module.
        tokenizer: tokenizer or its config dict; needed for ``mode='predict'`` and chat hooks.
        template: chat template name used by ``predict`` prompts and chat hooks.
        image_processor: HF image processor or its config dict (:meth:`process_images`; MIR, chat hooks).
        freeze_llm: freeze the LLM (pre-training). LoRA adapters stay trainable.
        freeze_visual_encoder: freeze the vision encoder.
        freeze_projector: freeze the projector (rare; e.g. LoRA-only SFT ablations).
        llm_lora: a peft ``LoraConfig`` (or dict) applied to the LLM.
        visual_encoder_lora: a peft ``LoraConfig`` (or dict) applied through the encoder's ``apply_lora``.
        gradient_checkpointing: activation checkpointing in the LLM (non-reentrant).
        pretrained_pth: a checkpoint of this model (``iter_N.pth``) whose weights are loaded at
            build time, e.g. the pre-trained projector for SFT.
        max_new_tokens: generation length in ``predict``.
        plugins: ordered ``{name: dict(type=Plugin, ...)}`` of alignment plug-ins
            (:class:`~mllm_align.models.plugin.AlignPlugin`: MoCa, CAL, visual words, …); each is a child
            module under its name. Deleting an entry switches the method off.
        data_preprocessor: mmengine data preprocessor config (moves the batch to the device).

    Shapes: B batch, T text length, N images in the batch, P_i tokens of image i, L spliced length,
    D LLM hidden size, V vocabulary.

    Raises:
        TypeError: the visual encoder does not implement the ``VisionEncoder`` protocol.
        ValueError: a projector config key the projector builder does not take.
    """

    def __init__(self, llm: Any, visual_encoder: Any, projector: Any = None, tokenizer: Any = None,
                 template: str | None = None, image_processor: Any = None, freeze_llm: bool = True,
                 freeze_visual_encoder: bool = True, freeze_projector: bool = False,
                 llm_lora: Any = None, visual_encoder_lora: Any = None,
                 gradient_checkpointing: bool = False, pretrained_pth: str | None = None,
                 max_new_tokens: int = 64, plugins: Mapping[str, Any] | None = None,
                 data_preprocessor: Any = None, init_cfg: Any = None) -> None:
        super().__init__(tokenizer=tokenizer, template=template, max_new_tokens=max_new_tokens,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.llm = build_module(llm)
        self.visual_encoder = build_module(visual_encoder)
        if not isinstance(self.visual_encoder, VisionEncoder):
            raise TypeError('model.visual_encoder must build a vision encoder (hidden_size, num_prefix_tokens, '
                            f'forward, apply_lora: e.g. mllm_align.models.VisionTower), got '
                            f'{type(self.visual_encoder).__name__}.')
        self.image_processor = build_module(image_processor)
        self.projector = self._build_projector(projector)

        self.llm.requires_grad_(not freeze_llm)
        self.visual_encoder.requires_grad_(not freeze_visual_encoder)
        self.projector.requires_grad_(not freeze_projector)
        if llm_lora is not None:
            self.llm = apply_lora(self.llm, llm_lora, config_key='model.llm_lora')
        if visual_encoder_lora is not None:
            self.visual_encoder.apply_lora(visual_encoder_lora)
        # HF `logits_to_keep` (a tensor of positions): the LM loss then runs lm_head only where a label
        # is predicted (MultimodalModel.compute_loss).
        self.setup_plugins(plugins)  # after LoRA: plug-ins hook the final modules
        self.supports_logits_to_keep = accepts_logits_to_keep(self.llm)
        if gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={'use_reentrant': False})
            self.llm.config.use_cache = False
        self.register_frozen_keys_hook()
        self.load_pretrained(pretrained_pth)  # after the plug-ins: a trained vm_head / MoCa in it wins
        self.log_parameter_counts()

    def _build_projector(self, projector: Any) -> nn.Module:
        projector = projector if projector is not None else dict(type='mlp2x_gelu')
        if not isinstance(projector, Mapping):
            return projector
        extra = sorted(set(projector) - {'type'})
        if extra:
            raise ValueError(f'model.projector.{extra[0]}: the projector builder takes only `type` '
                             "('linear' or 'mlp{N}x_gelu'); its sizes come from the encoder and the LLM. "
                             'Remove the key.')
        return build_projector(projector['type'], self.visual_encoder.hidden_size, self.llm.config.hidden_size)

    # ------------------------------------------------------------------ the interface
    @property
    def language_model(self) -> nn.Module:
        """The HF causal LM (peft-wrapped when ``llm_lora`` is set)."""
        return self.llm

    def encode_images(self, pixel_values: torch.Tensor | list[torch.Tensor],
                      **image_inputs: Any) -> list[torch.Tensor]:
        """Vision encoder → projector: one ``[P_i, D]`` tensor per image, in the LLM's embedding dtype.

        ``pixel_values`` is ``[N, 3, H, W]``, or a list of ``[3, H_i, W_i]`` (images of different sizes,
        encoded one size at a time and returned in the given order).
        """
        if isinstance(pixel_values, torch.Tensor):
            return list(self._encode_same_size(pixel_values).unbind(0))
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(pixel_values):
            groups.setdefault(tuple(image.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(pixel_values)
        for indices in groups.values():
            feats = self._encode_same_size(torch.stack([pixel_values[i] for i in indices]))  # (n, P, D)
            for i, f in zip(indices, feats.unbind(0)):
                out[i] = f
        return out  # type: ignore[return-value]

    def _encode_same_size(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, P, D]``."""
        feats = self.visual_encoder(pixel_values)  # (N, P, C)
        proj_dtype = next(self.projector.parameters()).dtype
        # parameters(), not `.weight`: under ZeRO-3 an attribute read would keep E gathered all step
        embed_dtype = next(self.input_embeddings.parameters()).dtype
        return self.projector(feats.to(proj_dtype)).to(embed_dtype)  # (N, P, D)

    def process_images(self, images: list[Any]) -> dict[str, Any]:
        """PIL images → ``{'pixel_values': [N, 3, H, W]}`` with the configured image processor (square
        padding as in training is the dataset's job; MIR probes and chat hooks pass images as they are)."""
        if self.image_processor is None:
            return super().process_images(images)
        out = self.image_processor(images=images, return_tensors='pt')
        return {'pixel_values': out['pixel_values']}

    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """Splice image features into the text embeddings; returns the LLM inputs and the image mask.

        ``data`` holds ``input_ids [B, T]``, ``attention_mask [B, T]``, optional ``labels [B, T]``
        and ``pixel_values`` (``[N, 3, H, W]``, a list of ``[3, H_i, W_i]``, or None). It is not modified.
        """
        pixel_values = data.get('pixel_values')
        image_features = None if pixel_values is None else self.get_image_features(pixel_values)
        input_ids = data['input_ids']
        attention_mask = data.get('attention_mask')
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return splice_image_features(input_ids, attention_mask, self.input_embeddings, image_features,
                                     labels=data.get('labels'), pad_token_id=self.pad_token_id,
                                     padding_side=padding_side, sample_ids=data.get('sample_ids'))

    def export_hf(self, out_dir: Any, **kwargs: Any) -> Any:
        """Export to a transformers ``LlavaForConditionalGeneration`` directory (``models/export.py``)."""
        from .export import export_llava_to_hf
        return export_llava_to_hf(self, out_dir, **kwargs)
