"""The AC law of vision representation and the AC policy (Yang et al., arXiv 2408.16357, v3 at COLM 2025).

The law predicts an MLLM's benchmark score from two cheap numbers per vision setting: A, the cross-modal
alignment after stage 1, and C, the correspondence quality of the vision features. With A, C and the score
each min-max normalised over the n settings, ``x̃ = (x − min x) / (max x − min x)``, the quadratic law is the
ordinary least-squares fit

    s̃ ≈ β₀ + β₁ ã + β₂ c̃ + β₃ ã² + β₄ ã c̃ + β₅ c̃²,

reported by its in-sample coefficient of determination R² = 1 − Σ(s̃ − ŝ)² / Σ(s̃ − mean s̃)². Other feature
sets: ``linear`` [1, ã, c̃]; ``a-only`` [1, ã, ã²] and ``c-only`` [1, c̃, c̃²] (the quadratic in one score:
what the law says without the other). Leave-one-out R² (not in the paper) refits without each setting in
turn and scores the held-out predictions — an honest estimate with 15 settings and 6 coefficients.

The AC policy chooses which settings to train fully. Region sampling on the normalised (ã, c̃) square: at
level ℓ = 0, 1, 2, … the square is cut into 2^ℓ × 2^ℓ cells; the cells of a level are visited in random
order, a cell that holds no setting or already holds a trained one is skipped, and from every other cell one
random untrained setting is trained, until the budget is spent. The law is then fitted on the trained
settings (scores min-max normalised over them; fewer settings than coefficients give numpy's minimum-norm
least-squares solution) and the settings are ranked, trained ones by their known score and the others by
the prediction. A run succeeds when the true best setting is among the top ``top``; Recall@top is the
fraction of successful runs. Training ``budget`` settings at random finds the best with probability
budget / n, the baseline the paper quotes (4/15 = 26.7 %).

Pure numpy: no model, no IO. ``tools/ac_law.py`` reads a table, prints and plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

__all__ = ['FEATURE_SETS', 'ACLawFit', 'PolicyResult', 'fit_ac_law', 'ac_features', 'minmax',
           'region_sampling_order', 'simulate_ac_policy', 'recommend_next', 'r2_score']

Features = Literal['quadratic', 'linear', 'a-only', 'c-only']
#: feature names per set, in column order
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    'quadratic': ('1', 'a', 'c', 'a^2', 'ac', 'c^2'),
    'linear': ('1', 'a', 'c'),
    'a-only': ('1', 'a', 'a^2'),
    'c-only': ('1', 'c', 'c^2'),
}


def _as_vector(x: Sequence[float], name: str, allow_nan: bool = False) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f'{name} must be one value per setting (a 1-D sequence), got shape {arr.shape}.')
    bad = ~np.isfinite(arr) if not allow_nan else np.isinf(arr)
    if bad.any():
        raise ValueError(f'{name} has a missing, NaN or infinite value at setting(s) {np.flatnonzero(bad).tolist()}: '
                         'fill it in or drop the setting.')
    return arr


def minmax(x: np.ndarray, name: str = 'values') -> tuple[np.ndarray, float, float]:
    """``(x − min) / (max − min)`` with the min and max; a constant ``x`` has no min-max scale: ValueError."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not hi > lo:
        raise ValueError(f'{name} is constant over the settings ({lo!r}): min-max normalisation is undefined. '
                         'The law needs settings that differ in it; add settings or drop this column.')
    return (x - lo) / (hi - lo), lo, hi


def ac_features(a: np.ndarray, c: np.ndarray, features: str = 'quadratic') -> np.ndarray:
    """The design matrix ``[n, k]`` of normalised scores ``a``, ``c`` for a feature set of :data:`FEATURE_SETS`."""
    one = np.ones_like(a)
    cols = {'1': one, 'a': a, 'c': c, 'a^2': a * a, 'ac': a * c, 'c^2': c * c}
    if features not in FEATURE_SETS:
        raise ValueError(f'features={features!r}: use one of {sorted(FEATURE_SETS)}.')
    return np.stack([cols[f] for f in FEATURE_SETS[features]], axis=1)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 − Σ(y − pred)² / Σ(y − mean y)², a fraction (1 = perfect; can be negative out of sample)."""
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot


@dataclass(frozen=True)
class ACLawFit:
    """One benchmark's AC-law fit.

    Attributes:
        features: the feature set name; ``feature_names`` its columns.
        coef: β, one per feature, on the normalised scale.
        r2: in-sample R² (a fraction) on the normalised scores.
        loo_r2: leave-one-out R² (each setting predicted by a fit without it, normalisation recomputed on the
            remaining settings, predictions mapped back to score units), None when there are too few settings.
        a_range, c_range, score_range: (min, max) of the fit's settings, the normalisation ``predict`` applies.
        fitted: in-sample predictions in score units.
    """

    features: str
    coef: np.ndarray
    r2: float
    loo_r2: float | None
    a_range: tuple[float, float]
    c_range: tuple[float, float]
    score_range: tuple[float, float]
    fitted: np.ndarray = field(repr=False)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_SETS[self.features]

    def predict(self, A: Sequence[float], C: Sequence[float]) -> np.ndarray:
        """Scores (original units) for settings with scores ``A``, ``C``, normalised with the fit's ranges
        (values outside them extrapolate)."""
        a = (_as_vector(A, 'A') - self.a_range[0]) / (self.a_range[1] - self.a_range[0])
        c = (_as_vector(C, 'C') - self.c_range[0]) / (self.c_range[1] - self.c_range[0])
        lo, hi = self.score_range
        return lo + (hi - lo) * (ac_features(a, c, self.features) @ self.coef)


def _solve(A: np.ndarray, C: np.ndarray, s: np.ndarray, features: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Least squares on min-max normalised inputs: (coef, normalised predictions, ranges)."""
    a, a_lo, a_hi = minmax(A, 'A')
    c, c_lo, c_hi = minmax(C, 'C')
    y, s_lo, s_hi = minmax(s, 'the benchmark scores')
    X = ac_features(a, c, features)
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return coef, X @ coef, ((a_lo, a_hi), (c_lo, c_hi), (s_lo, s_hi))


def fit_ac_law(A: Sequence[float], C: Sequence[float], scores: Sequence[float],
               features: Features = 'quadratic') -> ACLawFit:
    """Fit the AC law for one benchmark: OLS of min-max normalised ``scores`` on the features of normalised A, C.

    Args:
        A, C, scores: one value per setting (same length n).
        features: ``'quadratic'`` (the paper's), ``'linear'``, ``'a-only'`` or ``'c-only'``.

    Raises:
        ValueError: lengths differ; a NaN / missing / infinite value; A, C or scores constant; fewer
            settings than the feature set has coefficients (the fit would interpolate, R² = 1 by construction).
    """
    A_, C_, s_ = _as_vector(A, 'A'), _as_vector(C, 'C'), _as_vector(scores, 'scores')
    if not len(A_) == len(C_) == len(s_):
        raise ValueError(f'A, C and scores need one value per setting: got {len(A_)}, {len(C_)} and {len(s_)}.')
    k = len(ac_features(np.zeros(1), np.zeros(1), features)[0])
    if len(s_) < k:
        raise ValueError(f'{len(s_)} settings cannot fit the {features!r} AC law ({k} coefficients): it needs at '
                         f'least {k} settings (more for a meaningful R²), or a smaller feature set (linear: 3).')
    coef, pred, (a_rng, c_rng, s_rng) = _solve(A_, C_, s_, features)
    y = (s_ - s_rng[0]) / (s_rng[1] - s_rng[0])
    r2 = r2_score(y, pred)
    loo = _loo_r2(A_, C_, s_, features, k)
    fitted = s_rng[0] + (s_rng[1] - s_rng[0]) * pred
    return ACLawFit(features, coef, r2, loo, a_rng, c_rng, s_rng, fitted)


def _loo_r2(A: np.ndarray, C: np.ndarray, s: np.ndarray, features: str, k: int) -> float | None:
    """Leave-one-out R² in score units; None when a held-out fit would have fewer than k + 1 settings, or
    leaving one out makes A, C or the scores constant."""
    n = len(s)
    if n - 1 < k + 1:
        return None
    held = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        try:
            coef, _, (a_rng, c_rng, s_rng) = _solve(A[keep], C[keep], s[keep], features)
        except ValueError:
            return None
        a = (A[i] - a_rng[0]) / (a_rng[1] - a_rng[0])
        c = (C[i] - c_rng[0]) / (c_rng[1] - c_rng[0])
        x = ac_features(np.array([a]), np.array([c]), features)[0]
        held[i] = s_rng[0] + (s_rng[1] - s_rng[0]) * float(x @ coef)
    return r2_score(s, held)


# ---------------------------------------------------------------------------------------------- AC policy
def _cells(a: np.ndarray, c: np.ndarray, level: int) -> np.ndarray:
    """Cell index of each setting on the 2^level × 2^level grid over [0, 1]² (the top edge in the last cell)."""
    side = 2 ** level
    ia = np.minimum((a * side).astype(np.int64), side - 1)
    ic = np.minimum((c * side).astype(np.int64), side - 1)
    return ia * side + ic


_MAX_LEVEL = 30  # 2^30 cells per side: settings closer than that are treated as one point


def region_sampling_order(a: np.ndarray, c: np.ndarray, rng: np.random.Generator,
                          trained: Sequence[int] = (), count: int | None = None) -> list[int]:
    """The next ``count`` settings (default: all untrained) in the AC policy's region-sampling order.

    ``a``, ``c`` normalised to [0, 1]; ``trained`` already-trained setting indices (their cells count as
    sampled). Level by level, cells in random order; skip cells with no setting or with a trained one; train
    one random untrained setting of each other cell. Settings that no level separates (equal A and C) are
    taken in random order after the last level.
    """
    n = len(a)
    done = list(trained)
    taken = set(done)
    want = n - len(taken) if count is None else min(count, n - len(taken))
    out: list[int] = []
    level = 0
    while len(out) < want and level <= _MAX_LEVEL:
        cells = _cells(a, c, level)
        sampled_cells = {int(cells[i]) for i in taken}
        occupied = sorted({int(x) for x in cells})
        for cell in rng.permutation(occupied):
            if len(out) >= want:
                break
            if int(cell) in sampled_cells:
                continue
            members = [i for i in range(n) if cells[i] == cell and i not in taken]
            pick = int(rng.choice(members))
            out.append(pick)
            taken.add(pick)
            sampled_cells.add(int(cell))
        level += 1
    rest = [i for i in range(n) if i not in taken]
    if len(out) < want:
        out.extend(int(i) for i in rng.permutation(rest)[:want - len(out)])
    return out


def _predicted_ranking(a: np.ndarray, c: np.ndarray, s: np.ndarray, trained: list[int], features: str) -> np.ndarray:
    """Settings ranked best first: trained ones by their score, the rest by the law fitted on the trained ones.

    Scores are min-max normalised over the trained settings; with fewer trained settings than coefficients
    the fit is numpy's minimum-norm least-squares solution. One trained setting predicts every other as equal
    to it (a constant); ties keep index order.
    """
    t = np.asarray(trained)
    lo, hi = float(s[t].min()), float(s[t].max())
    y = (s[t] - lo) / (hi - lo) if hi > lo else np.zeros(len(t))
    coef = np.linalg.lstsq(ac_features(a[t], c[t], features), y, rcond=None)[0]
    pred = ac_features(a, c, features) @ coef
    pred[t] = y
    return np.argsort(-pred, kind='stable')


@dataclass(frozen=True)
class PolicyResult:
    """Recall@top of the AC policy at one budget, beside the random baseline.

    Attributes:
        recall: fraction of runs whose true best setting is in the predicted top ``top``.
        random_baseline: budget / n, the chance that ``budget`` settings trained at random include the best.
        budget, top, runs, n_settings: the simulation's settings.
        successes: per-run success flags.
    """

    recall: float
    random_baseline: float
    budget: int
    top: int
    runs: int
    n_settings: int
    successes: np.ndarray = field(repr=False)


def simulate_ac_policy(A: Sequence[float], C: Sequence[float], scores: Sequence[float], budget: int,
                       top: int = 3, runs: int = 1000, seed: int = 0,
                       features: Features = 'quadratic') -> PolicyResult:
    """Simulate the AC policy ``runs`` times on a fully known table (module docstring).

    Args:
        A, C, scores: one value per setting, all known (the simulation hides the scores of untrained settings).
        budget: settings trained per run (1 ≤ budget ≤ n).
        top: success when the true best setting ranks in the top ``top``.
        runs: independent runs; ``seed`` seeds one numpy Generator for all of them (deterministic).
        features: the law's feature set.

    Raises:
        ValueError: as :func:`fit_ac_law` for the inputs; budget or top out of range.
    """
    A_, C_, s_ = _as_vector(A, 'A'), _as_vector(C, 'C'), _as_vector(scores, 'scores')
    if not len(A_) == len(C_) == len(s_):
        raise ValueError(f'A, C and scores need one value per setting: got {len(A_)}, {len(C_)} and {len(s_)}.')
    n = len(s_)
    if not 1 <= budget <= n:
        raise ValueError(f'budget={budget}: train between 1 and {n} settings (the table has {n}).')
    if not 1 <= top <= n:
        raise ValueError(f'top={top}: use 1..{n}.')
    if runs < 1:
        raise ValueError(f'runs={runs}: simulate at least one run.')
    a, _, _ = minmax(A_, 'A')
    c, _, _ = minmax(C_, 'C')
    best = int(np.argmax(s_))
    rng = np.random.default_rng(seed)
    successes = np.zeros(runs, dtype=bool)
    for r in range(runs):
        trained = region_sampling_order(a, c, rng, count=budget)
        ranking = _predicted_ranking(a, c, s_, trained, features)
        successes[r] = best in ranking[:top]
    return PolicyResult(float(successes.mean()), budget / n, budget, top, runs, n, successes)


def recommend_next(A: Sequence[float], C: Sequence[float], scores_with_gaps: Sequence[float], seed: int = 0,
                   features: Features = 'quadratic') -> dict:
    """The next setting to train for a table where only some settings have a score (NaN = not trained).

    The pick follows the policy's region sampling (lowest grid level with an occupied cell that holds no
    trained setting; seeded). With two or more trained settings the current ranking is returned too.

    Returns:
        ``{'next': index or None (all trained), 'trained': [...], 'ranking': [...] or None,
        'predicted': [...] or None}`` (``predicted``: scores in the table's units, trained ones as given).
    """
    A_, C_ = _as_vector(A, 'A'), _as_vector(C, 'C')
    s_ = _as_vector(scores_with_gaps, 'scores', allow_nan=True)
    if not len(A_) == len(C_) == len(s_):
        raise ValueError(f'A, C and scores need one value per setting: got {len(A_)}, {len(C_)} and {len(s_)}.')
    a, _, _ = minmax(A_, 'A')
    c, _, _ = minmax(C_, 'C')
    trained = [int(i) for i in np.flatnonzero(np.isfinite(s_))]
    order = region_sampling_order(a, c, np.random.default_rng(seed), trained=trained, count=1)
    out: dict = {'next': order[0] if order else None, 'trained': trained, 'ranking': None, 'predicted': None}
    if len(trained) >= 2:
        t = np.asarray(trained)
        lo, hi = float(s_[t].min()), float(s_[t].max())
        ranking = _predicted_ranking(a, c, np.where(np.isfinite(s_), s_, 0.0), trained, features)
        y = (s_[t] - lo) / (hi - lo) if hi > lo else np.zeros(len(t))
        coef = np.linalg.lstsq(ac_features(a[t], c[t], features), y, rcond=None)[0]
        pred = lo + (hi - lo) * (ac_features(a, c, features) @ coef)
        pred[t] = s_[t]
        out['ranking'] = [int(i) for i in ranking]
        out['predicted'] = [float(x) for x in pred]
    return out
