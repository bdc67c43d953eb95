"""DeepSpeed ZeRO-3 support shared by the plug-ins that read parameters outside their owner's forward.

ZeRO-3 keeps every parameter partitioned and gathers a module's OWN parameters (not its children's)
just before that module's forward and again before its backward. A plug-in that reads a parameter
owned by another module (MoCa's u, v inside the decoder layers; visual words' ``vm_head`` and the
LLM embedding matrix) registers it as an *external parameter* of the module whose forward reads it.
Partitioned parameters carry ``ds_id``; with none of them, nothing is imported or registered, so a
plain CPU/DDP run never touches deepspeed.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def zero3_gather_in(module: nn.Module, params: Iterable[torch.Tensor]) -> None:
    """Under ZeRO-3, make ``module``'s forward and backward gather ``params`` (idempotent; else a no-op).

    Pass parameters obtained without attribute access (``m.parameters()``), so that DeepSpeed's own
    discovery of attribute reads does not also keep them gathered for the whole step.
    """
    partitioned = [p for p in params if hasattr(p, 'ds_id')]
    if not partitioned:
        return
    import deepspeed  # `deepspeed.zero` is an attribute, not an importable module path
    for p in partitioned:
        deepspeed.zero.register_external_parameter(module, p)


def zero3_release_from(module: nn.Module, params: Iterable[torch.Tensor]) -> None:
    """Undo :func:`zero3_gather_in` for those of ``params`` registered on ``module`` (no-op if none)."""
    registered = getattr(module, '_external_params', None) or {}
    params = [p for p in params if id(p) in registered]
    if not params:
        return
    from deepspeed.runtime.zero.partition_parameters import unregister_external_parameter  # not in deepspeed.zero
    for p in params:
        unregister_external_parameter(module, p)
