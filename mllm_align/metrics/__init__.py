"""Metrics: pure functions over tensors/arrays (no models, hooks or file IO)."""
from .mir import (
    SQRT_MODES,
    MIRAccumulator,
    MIRResult,
    SqrtMode,
    compute_mir,
    compute_mir_streaming,
    trace_sqrt_product,
)

__all__ = [
    'SQRT_MODES',
    'MIRAccumulator',
    'MIRResult',
    'SqrtMode',
    'compute_mir',
    'compute_mir_streaming',
    'trace_sqrt_product',
]
