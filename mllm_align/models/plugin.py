"""The alignment plug-in protocol: what a method (MoCa, CAL, visual words, …) may hook into.

A plug-in is an ``nn.Module`` (parameters, if any, are saved with the model's trainable state) that a
multimodal base (:class:`~mllm_align.models.base.MultimodalModel`) holds in an ordered container and
calls at fixed points of every step. A plug-in talks to the base's public interface only
(:class:`~mllm_align.models.base.MultimodalModel`), never to another plug-in and never to a private
attribute, so a method written once works on every base and combines with every other method.

Call order in one training step (``model(data, mode='loss')``)::

    features = base.encode_images(...)            # per image [P_i, D]
    for p in plugins: features = p.transform_image_features(features, base)
    inputs = splice(...)                          # MultimodalInputs: embeds, labels, image_mask, positions
    for p in plugins: p.before_llm_pass(inputs)   # every LLM pass, extra ones (CAL's) included
    positions = union of p.logits_positions(inputs, lm_positions)   # None: every position
    logits = base.run_llm(inputs, logits_to_keep=positions)
    losses = {'loss_lm': …} or the one plug-in with replaces_lm_loss's terms
    for p in plugins: losses |= p.loss(base, inputs, logits, positions)

Once, when the base is built: ``build_kwargs`` (sizes taken from the LLM) → constructor → ``attach(base)``.
After the tokenizer grows: ``resize_vocab(n)``. On HF export: ``export_files(base, out_dir)``; reloaded
from an export by the plug-in class's ``from_export(base, directory)`` and ``base.add_plugin(name, plugin)``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - typing only (base imports this module)
    from .base import MultimodalModel
    from .splice import MultimodalInputs

__all__ = ['AlignPlugin']


class AlignPlugin(nn.Module):
    """Base class of alignment plug-ins; every hook defaults to "do nothing".

    Class attributes:
        replaces_lm_loss: the plug-in's :meth:`loss` returns the ``loss_lm`` term itself (CAL re-weights
            it); at most one plug-in of a model may set it.
        exportable: the trained model can be exported to transformers with this plug-in (its state
            travels through :meth:`export_files`, or it has none that inference needs).
    """

    replaces_lm_loss: ClassVar[bool] = False
    exportable: ClassVar[bool] = True

    # ------------------------------------------------------------------ building
    @classmethod
    def build_kwargs(cls, model: 'MultimodalModel') -> dict[str, Any]:
        """Constructor arguments the base fills from the LLM (config values win). Default: none.

        MoCa takes ``num_layers`` and ``hidden_size``; visual words ``hidden_size`` and ``vocab_size``.
        """
        return {}

    def attach(self, model: 'MultimodalModel') -> None:
        """Called once after the base and this plug-in are built (hook layers, initialise heads).

        Raise ``ValueError`` naming what is missing when the base cannot host the plug-in.
        """

    # ------------------------------------------------------------------ every step
    def transform_image_features(self, features: list[torch.Tensor],
                                 model: 'MultimodalModel') -> list[torch.Tensor]:
        """Per-image projected features ``[P_i, D]`` → the features spliced into the LLM (default: as they are)."""
        return features

    def before_llm_pass(self, inputs: 'MultimodalInputs') -> None:
        """Called before every LLM pass with the inputs of that pass (and again with the main pass's inputs
        after a plug-in's extra pass, so state kept for backward recomputation matches the main pass)."""

    def logits_positions(self, inputs: 'MultimodalInputs', lm_positions: torch.Tensor) -> torch.Tensor | None:
        """``[P]`` sorted sequence positions whose logits :meth:`loss` reads; None: every position.

        ``lm_positions`` are the positions the plain LM loss reads (they predict a supervised label);
        returning that same tensor (the default) asks for nothing more.
        """
        return lm_positions

    def loss(self, model: 'MultimodalModel', inputs: 'MultimodalInputs', logits: torch.Tensor,
             positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Loss terms (``loss_*`` keys backprop; other keys are logged diagnostics). Default: none.

        Args:
            model: the base (its :meth:`~mllm_align.models.base.MultimodalModel.run_llm` runs extra passes).
            inputs: the spliced batch of the main pass.
            logits: ``[B, L, V]`` when ``positions`` is None, else ``[B, P, V]`` at ``positions``.
            positions: ``[P]`` the sequence positions of ``logits``' rows, or None.
        """
        return {}

    def resize_vocab(self, vocab_size: int) -> None:
        """The LLM's vocabulary was resized to ``vocab_size`` rows (resize vocabulary-sized heads)."""

    # ------------------------------------------------------------------ export
    def export_files(self, model: 'MultimodalModel', out_dir: str | os.PathLike) -> list[str]:
        """Write what inference needs into an HF export directory; return the file names written."""
        return []

    @classmethod
    def from_export(cls, model: 'MultimodalModel', directory: str | os.PathLike) -> 'AlignPlugin | None':
        """Rebuild this plug-in from an HF export written by :meth:`export_files` (``model``: the loaded export,
        a :class:`~mllm_align.models.base.MultimodalModel`); None when the directory holds nothing of it.
        The caller registers it with ``model.add_plugin(name, plugin)``, which attaches it."""
        return None
