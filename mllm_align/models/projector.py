"""Vision-to-language projectors.

``linear`` maps each vision feature with one ``nn.Linear(C, D)``; ``mlp{N}x_gelu`` is LLaVA-1.5's
multi-layer projector: ``Linear(C, D)`` then ``N - 1`` times ``GELU, Linear(D, D)`` (Liu et al.,
"Improved Baselines with Visual Instruction Tuning", 2023, §3.2). Layers sit in an
``nn.Sequential`` so parameter names (``0.weight``, ``2.weight``, …) follow LLaVA's
``mm_projector`` and map one-to-one onto transformers' ``LlavaMultiModalProjector`` for export.
"""
from __future__ import annotations

import re

from torch import nn

_MLP_PATTERN = re.compile(r'^mlp(\d+)x_gelu$')


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """Build a projector mapping vision features ``[..., C]`` to LLM embeddings ``[..., D]``.

    Args:
        projector_type: ``'linear'`` or ``'mlp{N}x_gelu'`` with ``N >= 1`` (LLaVA-1.5 uses ``mlp2x_gelu``).
        in_dim: C, the vision tower's hidden size.
        out_dim: D, the LLM's hidden size.

    Raises:
        ValueError: for an unknown projector type.
    """
    if projector_type == 'linear':
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    match = _MLP_PATTERN.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"Unknown projector type {projector_type!r}: use 'linear' or 'mlp{{N}}x_gelu' "
            "(for example 'mlp2x_gelu', LLaVA-1.5's projector).")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
