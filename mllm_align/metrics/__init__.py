"""Metrics: pure functions over tensors/arrays (no models, hooks or file IO)."""
from .ac_law import ACLawFit, PolicyResult, fit_ac_law, recommend_next, simulate_ac_policy
from .alignment import a_score_v1
from .correspondence import NoVisibleKeypoints, pck_pair, pck_pair_counts, predict_matches
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
    'ACLawFit',
    'NoVisibleKeypoints',
    'PolicyResult',
    'a_score_v1',
    'fit_ac_law',
    'pck_pair',
    'pck_pair_counts',
    'predict_matches',
    'recommend_next',
    'simulate_ac_policy',
    'SQRT_MODES',
    'MIRAccumulator',
    'MIRResult',
    'SqrtMode',
    'compute_mir',
    'compute_mir_streaming',
    'trace_sqrt_product',
]
