"""Modality Integration Rate (MIR): per-layer Fréchet distance between vision and text hidden states.

Paper: Huang et al., "Deciphering Cross-Modal Alignment in Large Vision-Language Models with Modality
Integration Rate", 2024, https://arxiv.org/abs/2410.07167 (ICCV 2025). Reference code:
https://github.com/shikiw/Modality-Integration-Rate at 0cebdad (``mir.py``, ``mir_util.py``).

Notation. For LLM layer k, ``V_k`` [N_v, D] holds the hidden states of all vision tokens and ``T_k``
[N_t, D] those of all text tokens, concatenated over the evaluation samples (N_v, N_t rows, D hidden
size). Per layer:

    (M1) text-centric scale   α_k = 1 / mean_i ‖T_k[i]‖₂            (before outlier handling)
                              V_k ← α_k V_k,  T_k ← α_k T_k
    (M2) outlier replacement, in each modality X ∈ {V_k, T_k} separately:
                              n_i = ‖X[i]‖₂,  m = median(n),  s = std(n)   (unbiased)
                              X[i] ← median_rows(X)   wherever |n_i − m| > 3 s
         ``median_rows`` is the coordinate-wise median row over all rows (outliers included). Both
         medians are *lower* medians (the element of rank ⌊(N−1)/2⌋), as ``torch.median`` in the seed.
    (M3) D_k = ‖μ_v − μ_t‖² + tr Σ_v + tr Σ_t − 2 tr((Σ_v Σ_t)^½)
         with μ the row mean and Σ the unbiased (N−1) covariance of each modality after (M1)-(M2).
         D_k is the squared 2-Wasserstein distance between N(μ_v, Σ_v) and N(μ_t, Σ_t).
    (M4) MIR = log10 Σ_k D_k.      Lower means better aligned.

The square-root term, and where the default departs from the seed:

* ``sqrt='exact'`` (default): tr((Σ_v Σ_t)^½) in float64, computed as Σ_i √λ_i of a small symmetric
  PSD matrix (see :func:`trace_sqrt_product`). It agrees with float64 ``scipy.linalg.sqrtm`` to
  ~1e-8 relative or better (where they differ, it is the more accurate) and is several times faster
  (``docs/benchmarks.md``).
* ``sqrt='seed-sqrtm'``: the seed's "accurate" path: ``scipy.linalg.sqrtm`` of the float32 product
  Σ_v Σ_t, real part, trace.
* ``sqrt='seed-fast'``: the seed's default "fast" path, a 5-step Newton-Schulz-like iteration in
  torch float32 (see ``_trace_sqrt_seed_fast``). It is a fixed point, not a square root: it
  returns ≈ Σ_v Σ_t itself (drifting through float32 inverses when Σ_v Σ_t is ill-conditioned), so
  its D_k is not a Fréchet distance. Offered only to reproduce published numbers.

Both seed modes differ from the seed code only by float32 rounding upstream of the trace term: here
(M1)-(M3) moments are computed in float64 and the covariances cast to float32 for the seed's trace
(the seed computes everything in float32 on the GPU). Which layers to pass (the seed skips the
embedding output) is the caller's choice; this module sees only arrays.

Memory: :func:`compute_mir` takes the concatenated hidden states. :class:`MIRAccumulator` (and the
wrapper :func:`compute_mir_streaming`) reads them one sample or batch at a time in two passes, with
memory that does not grow with the number of samples apart from one float64 row norm per row; see
its docstring for the protocol, its cost and its error bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence, Union

import numpy as np
import scipy.linalg
import torch

__all__ = [
    'SQRT_MODES',
    'MIRAccumulator',
    'MIRResult',
    'SqrtMode',
    'compute_mir',
    'compute_mir_streaming',
    'trace_sqrt_product',
]

SqrtMode = Literal['exact', 'seed-sqrtm', 'seed-fast']
SQRT_MODES: tuple[str, ...] = ('exact', 'seed-sqrtm', 'seed-fast')
ArrayLike = Union[np.ndarray, torch.Tensor]

_SEED_FAST_ITERS = 5  # mir_util.MatrixSquareRoot: max_iter = 5


@dataclass(frozen=True)
class MIRResult:
    """MIR of one model, with its per-layer parts.

    Attributes:
        per_layer: D_k for each layer, in the order the layers were given (Eq. M3).
        mir: log10 Σ_k D_k (Eq. M4); ``nan`` if Σ_k D_k <= 0 (possible only with ``seed-fast``).
        sqrt: the square-root mode used.
        alpha: α_k = 1 / mean text-row norm, per layer (Eq. M1).
        num_vision_rows / num_text_rows: rows per layer and modality.
        num_vision_replaced / num_text_replaced: rows replaced by the median row (Eq. M2).
        per_layer_bound: a bound on |D_k − exact D_k| from the streaming median-row estimate
            (see :class:`MIRAccumulator`); 0.0 when exact (:func:`compute_mir`, or nothing replaced);
            ``nan`` for seed modes in streaming (their trace term is not a metric, so no bound).
        mir_bound: the matching bound on |mir − exact mir| (same conventions).
    """

    per_layer: list[float]
    mir: float
    sqrt: str
    alpha: list[float]
    num_vision_rows: list[int]
    num_text_rows: list[int]
    num_vision_replaced: list[int]
    num_text_replaced: list[int]
    per_layer_bound: list[float] = field(default_factory=list)
    mir_bound: float = 0.0


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _check_sqrt(sqrt: str) -> None:
    if sqrt not in SQRT_MODES:
        raise ValueError(f'Unknown sqrt mode {sqrt!r}; valid modes are {", ".join(SQRT_MODES)}.')


def _as_float64(x: ArrayLike, what: str) -> torch.Tensor:
    """[rows, D] float64 tensor on the input's device (numpy → CPU), checked 2-D and finite.

    May share memory with ``x``: callers only write into results of arithmetic (fresh tensors).
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f'{what}: expected a real numeric array, got dtype {arr.dtype}.')
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f'{what}: expected a real floating-point array, got {t.dtype}.')
    if t.ndim != 2:
        raise ValueError(
            f'{what}: expected a 2-D [rows, hidden] array, got shape {tuple(t.shape)}.')
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(
            f'{what}: hidden states contain NaN or inf ({bad} of {t.shape[0]} rows); '
            'check the model dtype (fp16 overflow?) or the extraction code.')
    return t


def _check_layer_lists(vision_layers: Sequence, text_layers: Sequence, expected: int | None = None) -> int:
    nv, nt = len(vision_layers), len(text_layers)
    if nv != nt:
        raise ValueError(f'vision_layers has {nv} layers but text_layers has {nt}; give one entry per layer to both.')
    if expected is None and nv == 0:
        raise ValueError('Empty input: no layers were given (vision_layers and text_layers are empty).')
    if expected is not None and nv != expected:
        raise ValueError(f'Expected {expected} layers (num_layers) per update, got {nv}.')
    return nv


def _check_pair(xv: torch.Tensor, xt: torch.Tensor, layer: int) -> None:
    for x, name in ((xv, 'vision'), (xt, 'text')):
        if x.shape[0] < 2:
            raise ValueError(
                f'Layer {layer} {name}: {x.shape[0]} row(s); at least 2 are needed for an unbiased covariance.')
    if xv.shape[1] != xt.shape[1]:
        raise ValueError(f'Layer {layer}: vision hidden size {xv.shape[1]} != text hidden size {xt.shape[1]}.')


# --------------------------------------------------------------------------------------------
# Eq. (M1)-(M2): scale and outlier thresholds, shared by the batch and streaming paths
# --------------------------------------------------------------------------------------------
def _alpha(text_norms: torch.Tensor, layer: int) -> float:
    mean_norm = float(text_norms.mean())
    if not mean_norm > 0.0:
        raise ValueError(f'Layer {layer} text: every row is zero, so α = 1 / mean row norm is undefined.')
    return 1.0 / mean_norm


def _norm_thresholds(scaled_norms: torch.Tensor) -> tuple[float, float]:
    """(lower median, unbiased std) of the scaled row norms, as torch.median / torch.std in the seed."""
    return float(torch.median(scaled_norms)), float(torch.std(scaled_norms))


def _outlier_mask(scaled_norms: torch.Tensor, median: float, std: float, outlier_sigmas: float) -> torch.Tensor:
    return (scaled_norms - median).abs() > outlier_sigmas * std


# --------------------------------------------------------------------------------------------
# Eq. (M3): the square-root trace term
# --------------------------------------------------------------------------------------------
@dataclass
class _Gauss:
    """Moments of one modality: mean [D], N and either centred rows [N, D] or the covariance [D, D]."""

    mean: torch.Tensor
    n: int
    centered: torch.Tensor | None = None
    cov_: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def cov(self) -> torch.Tensor:
        if self.cov_ is None:  # built from the rows (every _Gauss holds one or the other)
            self.cov_ = self.centered.T @ self.centered / (self.n - 1)  # [D, D]
        return self.cov_

    def trace(self) -> float:
        if self.cov_ is None and self.centered is not None:
            return float(self.centered.square().sum()) / (self.n - 1)
        return float(torch.diagonal(self.cov()).sum())

    def factor_rows(self) -> int:
        """Rows of the cheapest factor A with Aᵀ A = Σ: N − 1 for data with N <= D, else D."""
        return self.n - 1 if self.uses_rows() else self.dim

    def uses_rows(self) -> bool:
        return self.centered is not None and self.n <= self.dim


def _row_factor(centered: torch.Tensor) -> torch.Tensor:
    """A [N−1, D] with Aᵀ A = Xᵀ X / (N−1) for centred X [N, D], without the structural null row.

    Centred rows sum to 0, so X has rank <= N−1. The Householder reflection P that maps 1/√N to e₁
    zeroes the first row of P X (it is 1ᵀX/√N = 0); dropping it keeps Xᵀ X = (P X)ᵀ (P X) and spares the
    eigensolver an exact zero eigenvalue (whose rounding would enter the trace as √(ε·λ_max)).
    """
    n = centered.shape[0]
    v = torch.full((n,), 1.0 / math.sqrt(n), dtype=centered.dtype, device=centered.device)
    v[0] -= 1.0  # v = 1/√N − e₁,  P = I − 2 v vᵀ / (vᵀ v)
    reflected = centered - (2.0 / float(v @ v)) * torch.outer(v, v @ centered)  # [N, D]
    return reflected[1:] / math.sqrt(n - 1)


def _cov_factor(cov: torch.Tensor) -> torch.Tensor:
    """A [p, D] with Aᵀ A = cov: Lᵀ from Cholesky (p = D), else from eigh keeping positive modes."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return chol.T
    evals, evecs = torch.linalg.eigh(cov)
    tol = evals.abs().max() * cov.shape[0] * torch.finfo(cov.dtype).eps
    keep = evals > tol
    return (evecs[:, keep] * evals[keep].sqrt()).T  # [rank, D]


def _trace_sqrt_exact(a: _Gauss, b: _Gauss) -> float:
    """tr((Σ_a Σ_b)^½) in float64 (math in :func:`trace_sqrt_product`)."""
    if a.factor_rows() > b.factor_rows():
        a, b = b, a  # the outer factor is the smaller one: M below is p × p with p = min
    fac = _row_factor(a.centered) if a.uses_rows() else _cov_factor(a.cov())  # [p, D], Aᵀ A = Σ_a
    if b.uses_rows():
        c = fac @ _row_factor(b.centered).T  # [p, N_b − 1] = A Bᵀ
        m = c @ c.T  # [p, p]
    else:
        m = fac @ b.cov() @ fac.T  # [p, p] = A Σ_b Aᵀ
    m = 0.5 * (m + m.T)
    evals = torch.linalg.eigvalsh(m).clamp(min=0.0)
    return float(evals.sqrt().sum())


def _trace_sqrt_seed_sqrtm(a: _Gauss, b: _Gauss) -> float:
    """Seed ``calculate_fid``: covmean = scipy.linalg.sqrtm(Σ_a·Σ_b) on float32 arrays; real part; trace."""
    cov_a = a.cov().to(torch.float32).cpu().numpy()  # the seed: cov.cpu().numpy() of float32 tensors
    cov_b = b.cov().to(torch.float32).cpu().numpy()
    covmean = scipy.linalg.sqrtm(cov_a.dot(cov_b))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_seed_fast(a: _Gauss, b: _Gauss, layer: int) -> float:
    """Seed ``MatrixSquareRoot.forward`` in torch float32 on the data's device:

        M = Σ_a Σ_b;  Y ← M, Z ← I;  repeat 5×:  Y ← ½(Y + Z⁻¹ M),  Z ← ½(Z + Y⁻¹ M)  (new Y);  return tr Y.

    From Y = M, Z = I the first step gives Y = M and Z = ½(I + M⁻¹M) = I, so (Y, Z) = (M, I) is a fixed
    point: the result is ≈ tr(Σ_a Σ_b) (plus float32 drift when M is ill-conditioned), not
    tr((Σ_a Σ_b)^½). A true Newton-Schulz/Denman-Beavers iteration would update from Y⁻¹, Z⁻¹ alone.
    """
    cov_a = a.cov().to(torch.float32)
    cov_b = b.cov().to(torch.float32)
    m = cov_a @ cov_b  # [D, D] float32
    y = m
    z = torch.eye(m.shape[0], dtype=torch.float32, device=m.device)
    try:
        for _ in range(_SEED_FAST_ITERS):
            y = 0.5 * (y + torch.inverse(z) @ m)
            z = 0.5 * (z + torch.inverse(y) @ m)
    except torch.linalg.LinAlgError as err:
        raise ValueError(
            f"Layer {layer}: sqrt='seed-fast' failed to invert a singular float32 matrix ({err}); this "
            "happens when rows < hidden size. Use sqrt='exact'.") from err
    return float(torch.trace(y))


def _frechet(gv: _Gauss, gt: _Gauss, sqrt: str, layer: int) -> float:
    """Eq. (M3) from the moments of both modalities."""
    mean_term = float((gv.mean - gt.mean).square().sum())
    if sqrt == 'exact':
        tr_sqrt = _trace_sqrt_exact(gv, gt)
    elif sqrt == 'seed-sqrtm':
        tr_sqrt = _trace_sqrt_seed_sqrtm(gv, gt)
    else:
        tr_sqrt = _trace_sqrt_seed_fast(gv, gt, layer)
    return mean_term + gv.trace() + gt.trace() - 2.0 * tr_sqrt


def trace_sqrt_product(a: ArrayLike, b: ArrayLike, *, samples: bool = False) -> float:
    """tr((Σ_a Σ_b)^½) for PSD Σ_a, Σ_b in float64, without a matrix square root.

    Math. Take any factors A [p, D], B [q, D] with Σ_a = Aᵀ A and Σ_b = Bᵀ B. The non-zero eigenvalues
    of Σ_a Σ_b = Aᵀ (A Bᵀ B) are those of A Bᵀ B Aᵀ = (A Bᵀ)(A Bᵀ)ᵀ = A Σ_b Aᵀ, a symmetric PSD p × p
    matrix, so they are real and >= 0, the principal square root of Σ_a Σ_b has eigenvalues √λ_i, and

        tr((Σ_a Σ_b)^½) = Σ_i √λ_i(A Σ_b Aᵀ) = ‖A Bᵀ‖_*   (nuclear norm).

    Factors, cheapest first: for N <= D centred samples X, A = P X / √(N−1) with its first row
    dropped (P the Householder reflection sending 1/√N to e₁; p = N − 1, no D × D work; see
    ``_row_factor``); otherwise A = Lᵀ from the Cholesky factor of Σ (p = D), or U_r Λ_r^½ from ``eigh``
    when Σ is singular to working precision. The smaller factor goes outside, so one ``eigvalsh`` of a
    min(p, q)-square matrix (plus at most one Cholesky and two products) replaces ``scipy.linalg.sqrtm``'s
    Schur decomposition of the non-symmetric D × D product. Eigenvalues are clamped at 0 before √.

    Accuracy. From samples the result is accurate to ~1e-12 relative (checked against 50-digit
    arithmetic in the tests). From covariances it is as accurate as the problem allows: when Σ_a or Σ_b
    is singular (N <= D), rounding of Σ itself moves the result by up to ~√ε relative (~1e-8), for
    this method and for ``sqrtm`` alike; with positive-definite Σ it is ~1e-12.

    Args:
        a, b: covariance matrices [D, D]; or, with ``samples=True``, sample rows [N_a, D] and [N_b, D]
            whose unbiased covariances (centred here, divided by N − 1) are meant. Any float dtype;
            computed in float64 on the input's device.
        samples: whether ``a`` and ``b`` are sample rows rather than covariances.

    Returns:
        The trace, a Python float.

    Raises:
        ValueError: on mismatched hidden sizes, non-square covariances or fewer than 2 sample rows.
    """
    ta = _as_float64(a, 'a')
    tb = _as_float64(b, 'b')
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f'a has {ta.shape[1]} columns but b has {tb.shape[1]}.')
    gauss = []
    for t, name in ((ta, 'a'), (tb, 'b')):
        if samples:
            if t.shape[0] < 2:
                raise ValueError(f'{name}: at least 2 sample rows are needed, got {t.shape[0]}.')
            mean = t.mean(dim=0)
            g = _Gauss(mean, t.shape[0], centered=t - mean)
            if g.n > g.dim:
                g.cov()
                g.centered = None
        else:
            if t.shape[0] != t.shape[1]:
                raise ValueError(f'{name}: a covariance must be square, got shape {tuple(t.shape)}.')
            # the mean and N are not used by the trace; N = D + 1 only marks "no rows"
            g = _Gauss(torch.zeros(t.shape[1], dtype=torch.float64, device=t.device), t.shape[0] + 1,
                       cov_=0.5 * (t + t.T))
        gauss.append(g)
    return _trace_sqrt_exact(gauss[0], gauss[1])


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------
def _mir_from_layers(per_layer: list[float]) -> float:
    total = sum(per_layer)
    return math.log10(total) if total > 0 else float('nan')


def compute_mir(
    vision_layers: Sequence[ArrayLike],
    text_layers: Sequence[ArrayLike],
    sqrt: SqrtMode = 'exact',
    outlier_sigmas: float = 3.0,
) -> MIRResult:
    """MIR from the concatenated hidden states of every layer (Eqs. M1-M4 in the module docstring).

    Args:
        vision_layers: per layer k, ``V_k`` [N_v, D]: the vision-token hidden states of all samples,
            concatenated. numpy arrays or torch tensors of any float dtype (bf16 included), on any
            device; the math runs in float64 on that device. The inputs are not modified.
        text_layers: per layer k, ``T_k`` [N_t, D], likewise. Same number of layers and same D.
        sqrt: square-root term of Eq. (M3): ``'exact'`` (default, float64), ``'seed-sqrtm'`` or
            ``'seed-fast'`` (reproduce the seed's accurate and fast paths; see the module docstring).
        outlier_sigmas: the 3 in Eq. (M2).

    Returns:
        :class:`MIRResult`. Layer indices in messages and lists are 0-based positions in the inputs.

    Raises:
        ValueError: unknown ``sqrt``; no layers; different layer counts; a layer that is not 2-D, has
            fewer than 2 rows in a modality, has different vision and text hidden sizes, contains
            NaN/inf, or has all-zero text rows.
    """
    _check_sqrt(sqrt)
    num_layers = _check_layer_lists(vision_layers, text_layers)
    per_layer, alphas, rows_v, rows_t, rep_v, rep_t = [], [], [], [], [], []
    for k in range(num_layers):
        xv = _as_float64(vision_layers[k], f'Layer {k} vision')
        xt = _as_float64(text_layers[k], f'Layer {k} text')
        _check_pair(xv, xt, k)
        norms_v = torch.linalg.vector_norm(xv, dim=1)
        norms_t = torch.linalg.vector_norm(xt, dim=1)
        alpha = _alpha(norms_t, k)  # Eq. (M1), before outlier handling
        gauss, replaced = [], []
        for x, norms in ((xv, norms_v), (xt, norms_t)):
            y = alpha * x  # fresh tensor: the caller's input is never written to
            scaled = alpha * norms
            mask = _outlier_mask(scaled, *_norm_thresholds(scaled), outlier_sigmas)  # Eq. (M2)
            num = int(mask.sum())
            if num:
                y[mask] = torch.median(y, dim=0).values  # lower coordinate-wise median, outliers included
            mean = y.mean(dim=0)
            centered = y - mean
            g = _Gauss(mean, y.shape[0], centered=centered)
            if y.shape[0] > y.shape[1]:
                g.cov()  # N > D: keep the D × D covariance, drop the rows
                g.centered = None
            gauss.append(g)
            replaced.append(num)
        per_layer.append(_frechet(gauss[0], gauss[1], sqrt, k))
        alphas.append(alpha)
        rows_v.append(xv.shape[0])
        rows_t.append(xt.shape[0])
        rep_v.append(replaced[0])
        rep_t.append(replaced[1])
    return MIRResult(
        per_layer=per_layer, mir=_mir_from_layers(per_layer), sqrt=sqrt, alpha=alphas,
        num_vision_rows=rows_v, num_text_rows=rows_t, num_vision_replaced=rep_v, num_text_replaced=rep_t,
        per_layer_bound=[0.0] * num_layers, mir_bound=0.0)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------
class _ModalityState:
    """Running statistics of one (layer, modality). Shapes: D hidden size, B median_bins."""

    def __init__(self) -> None:
        self.dim: int | None = None
        self.device: torch.device | None = None
        # pass 1
        self.norms: list[torch.Tensor] = []  # raw row norms, one float64 per row
        self.rows = 0
        self.coord_sum: torch.Tensor | None = None  # [D] Σ x
        self.coord_sumsq: torch.Tensor | None = None  # [D] Σ x²
        self.hist1: _MedianHistogram | None = None  # window set by the first non-empty update
        # set by start_second_pass
        self.norm_median = 0.0
        self.norm_std = 0.0
        self.shift: torch.Tensor | None = None  # [D] pass-1 coordinate means, subtracted before summing
        self.sigma_lo: torch.Tensor | None = None  # [D] μ − σ: the median is never below ...
        self.sigma_hi: torch.Tensor | None = None  # [D] μ + σ: ... nor above
        self.hist2: _MedianHistogram | None = None
        # pass 2
        self.rows2 = 0
        self.norm_sum2 = 0.0  # Σ ‖x‖ in pass 2, checked against pass 1
        self.replaced = 0
        self.sum1: torch.Tensor | None = None  # [D] Σ (x − shift) over kept rows
        self.sum2: torch.Tensor | None = None  # [D, D] Σ (x − shift)(x − shift)ᵀ over kept rows


class _MedianHistogram:
    """Per-coordinate histogram of B equal bins over [lo_j, lo_j + B·w_j], plus below-counts."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> None:
        self.bins = bins
        self.lo = lo  # [D]
        self.width = (hi - lo) / bins  # [D]
        self.below = torch.zeros(lo.shape[0], dtype=torch.int64, device=lo.device)  # [D]
        self.counts = torch.zeros(lo.shape[0], bins, dtype=torch.int32, device=lo.device)  # [D, B]

    @property
    def hi(self) -> torch.Tensor:
        return self.lo + self.bins * self.width

    def add(self, x: torch.Tensor) -> None:
        """Count the rows of x [rows, D]."""
        dim, bins = self.counts.shape
        pos = (x - self.lo) / self.width  # [rows, D] position in bin units
        self.below += (pos < 0).sum(dim=0)
        inside = (pos >= 0) & (pos < bins)
        flat = pos.clamp(0, bins - 1).floor().long() + torch.arange(dim, device=x.device) * bins  # [rows, D]
        self.counts += torch.bincount(flat[inside], minlength=dim * bins).view(dim, bins).to(torch.int32)

    def locate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per coordinate, where the value of 0-based rank ``rank`` lies.

        Returns (bin_lo [D], bin_hi [D], where [D]) with where = −1 below lo, +1 above hi, 0 inside
        [bin_lo, bin_hi] (up to float64 rounding of the bin edges).
        """
        cum = self.below[:, None] + self.counts.to(torch.int64).cumsum(dim=1)  # [D, B]
        bin_idx = (cum <= rank).sum(dim=1)  # first bin whose cumulative count passes the rank
        where = torch.zeros_like(bin_idx)
        where[bin_idx >= self.bins] = 1
        where[self.below > rank] = -1
        bin_lo = self.lo + bin_idx.clamp(max=self.bins - 1).to(torch.float64) * self.width
        return bin_lo, bin_lo + self.width, where


def _edge_pad(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Slack for float64 rounding of bin positions and edges."""
    return 1e-9 * (hi - lo) + 1e-13 * (lo.abs() + hi.abs()) + 1e-200


class MIRAccumulator:
    """MIR over data seen one sample (or batch) at a time, in two passes, with bounded memory.

    Protocol (both passes must feed the same rows; their order and batching may differ)::

        acc = MIRAccumulator(num_layers)
        for vision_layers, text_layers in data():  # pass 1: row norms, per-coordinate statistics
            acc.update(vision_layers, text_layers)
        acc.start_second_pass()
        for vision_layers, text_layers in data():  # pass 2: moments
            acc.update(vision_layers, text_layers)
        result = acc.compute()

    :func:`compute_mir_streaming` wraps this for a callable that re-creates the iterator.

    Why two passes. Eq. (M2) flags a row by comparing its norm with the median and std of *all* row
    norms (scaled by α_k, itself a mean over all text rows), so no row can be classified, and no moment
    accumulated, before every row has been seen once. Pass 1 keeps every row norm (one float64 per
    row: the only state that grows with the data) and per-coordinate Σx, Σx². Between passes α_k, the
    median norm and the std are computed from the stored norms exactly as in :func:`compute_mir`. Pass 2
    recomputes each row's norm, flags it against those thresholds, and accumulates the float64 shifted
    moments Σ(x−μ₁), Σ(x−μ₁)(x−μ₁)ᵀ (μ₁ = pass-1 mean, against cancellation) of the kept rows; the m
    replaced rows enter in :meth:`compute` as m copies of the median row. All of this is exact. As a
    guard against feeding different data, :meth:`compute` checks that both passes saw the same number
    of rows and the same sum of row norms (to 1e-3 relative, which tolerates non-deterministic kernels).

    The median row. The coordinate-wise median c needs every row, and exact selection in two passes
    with bounded memory is impossible in general, so it is bracketed, rigorously, per coordinate j:

    1. |median − mean| <= σ (population std) for any distribution, so c_j ∈ [μ_j − σ_j, μ_j + σ_j]
       (from pass 1's Σx, Σx²).
    2. Pass 1 also fills a histogram of B = ``median_bins`` bins over a window guessed from the first
       update's rows (their range, widened by half on each side). If rank ⌊(N−1)/2⌋ falls in one of its
       bins, that bin (∩ step 1) is the bracket; otherwise the step-1 bracket is.
    3. Pass 2 fills a histogram of B bins over that bracket; the bin holding the rank is the final
       bracket, of width w_j, and the estimate ĉ_j is its midpoint: ‖ĉ − c‖ <= ε = α_k · ½‖w‖.

    With the guess of step 2 right (the usual case) w_j = window_j / B², about 1e-5 σ_j for B = 1024
    and a first update spanning ±3σ_j: the streaming D_k match :func:`compute_mir` to ~1e-8 relative
    (the tests ask 1e-6, and a reported MIR bound below 1e-4). Only the m replaced rows move, so the
    empirical distribution moves by W₂ <= ε √(m/N). By Gelbrich's inequality
    the Gaussian fits (unbiased covariances) move by at most ε √(m/(N−1)), and √D_k is a metric (W₂
    between Gaussians), hence, for ``sqrt='exact'``::

        |√D̂_k − √D_k| <= β_k = ε_v √(m_v/(N_v−1)) + ε_t √(m_t/(N_t−1))
        |D̂_k − D_k| <= β_k (2 √D̂_k + β_k)            → ``per_layer_bound``
        |MIR̂ − MIR| <= log10(S / (S − E)),  S = Σ_k D̂_k,  E = Σ_k per_layer_bound   → ``mir_bound``

    (up to float64 rounding). Both are 0 when no row is replaced, and ``nan`` for the seed modes (their
    trace term is not a metric). Should the step-2 guess miss, the bound still holds, with the looser
    w_j = 2σ_j / B; the tests check it in that case too.

    Cost. Two forward passes of the model over the evaluation samples (the extraction code must be
    deterministic, e.g. eval mode, so that both passes see the same hidden states). Compute per layer
    and modality: pass 1 O(rows·D); pass 2 O(rows·D²) for the outer products, as for one batch
    covariance; :meth:`compute` one Cholesky, two D³ products and one ``eigvalsh`` per layer. Memory per
    layer and modality, on the device of the first update: the [D, D] float64 moment (134 MB at
    D = 4096), one [D, B] int32 histogram (16 MB at D = 4096, B = 1024), a few [D] vectors, and 8 bytes
    per row for the norms (the only part that grows with the number of samples): ~9.6 GB in all for a
    32-layer, D = 4096 LLM, whatever N (the seed holds ~55 GB of hidden states at N = 100).

    Args:
        num_layers: K, the number of layers in every update.
        sqrt: the square-root term, as in :func:`compute_mir`.
        median_bins: B, histogram bins per coordinate for the median row (memory D·B·4 bytes per layer
            and modality; the bracket shrinks as 1/B², or 1/B if the first-update guess misses).
        outlier_sigmas: the 3 in Eq. (M2).

    Raises:
        ValueError: unknown ``sqrt``, ``num_layers`` < 1 or ``median_bins`` < 1.
    """

    def __init__(
        self,
        num_layers: int,
        sqrt: SqrtMode = 'exact',
        median_bins: int = 1024,
        outlier_sigmas: float = 3.0,
    ) -> None:
        _check_sqrt(sqrt)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f'num_layers must be a positive int, got {num_layers!r}.')
        if not isinstance(median_bins, int) or median_bins < 1:
            raise ValueError(f'median_bins must be a positive int, got {median_bins!r}.')
        self.num_layers = num_layers
        self.sqrt = sqrt
        self.median_bins = median_bins
        self.outlier_sigmas = outlier_sigmas
        self._pass = 1
        self._num_updates = 0
        self._alpha: list[float] = [0.0] * num_layers
        self._states = [(_ModalityState(), _ModalityState()) for _ in range(num_layers)]

    @property
    def pass_index(self) -> int:
        """1 during the first pass, 2 after :meth:`start_second_pass`."""
        return self._pass

    def update(self, vision_layers: Sequence[ArrayLike], text_layers: Sequence[ArrayLike]) -> None:
        """Feed one sample or batch.

        Args:
            vision_layers: per layer, that sample's vision hidden states [rows_v, D] (rows_v may be 0).
            text_layers: per layer, its text hidden states [rows_t, D].

        Raises:
            ValueError: wrong layer count, non-2-D input, NaN/inf, a hidden size that differs from
                the other modality or from earlier updates, or more rows in pass 2 than in pass 1.
        """
        _check_layer_lists(vision_layers, text_layers, expected=self.num_layers)
        checked = []  # validate every layer before touching any state, so a bad update changes nothing
        for k in range(self.num_layers):
            xv = _as_float64(vision_layers[k], f'Layer {k} vision')
            xt = _as_float64(text_layers[k], f'Layer {k} text')
            if xv.shape[1] != xt.shape[1]:
                raise ValueError(f'Layer {k}: vision hidden size {xv.shape[1]} != text hidden size {xt.shape[1]}.')
            for x, state, name in ((xv, self._states[k][0], 'vision'), (xt, self._states[k][1], 'text')):
                if state.dim is not None and x.shape[1] != state.dim:
                    raise ValueError(
                        f'Layer {k} {name}: hidden size {x.shape[1]} differs from {state.dim} in earlier updates.')
                if self._pass == 2 and state.rows2 + x.shape[0] > state.rows:
                    raise ValueError(
                        f'Layer {k} {name}: pass 2 has seen more rows ({state.rows2 + x.shape[0]}) than pass 1 '
                        f'({state.rows}); both passes must feed the same data.')
                checked.append((x, state, k))
        for x, state, k in checked:
            if state.dim is None:
                state.dim, state.device = x.shape[1], x.device
            x = x.to(state.device)
            if self._pass == 1:
                self._update_pass1(state, x)
            else:
                self._update_pass2(state, x, self._alpha[k])
        self._num_updates += 1

    def _update_pass1(self, state: _ModalityState, x: torch.Tensor) -> None:
        if state.coord_sum is None:
            state.coord_sum = torch.zeros(state.dim, dtype=torch.float64, device=state.device)
            state.coord_sumsq = torch.zeros_like(state.coord_sum)
        if x.shape[0] == 0:
            return
        if state.hist1 is None:  # window guessed from the first rows seen: their range, widened by half
            lo, hi = x.min(dim=0).values, x.max(dim=0).values
            half = 0.5 * (hi - lo) + 1e-3 * torch.maximum(lo.abs(), hi.abs()) + 1e-200
            state.hist1 = _MedianHistogram(lo - half, hi + half, self.median_bins)
        state.norms.append(torch.linalg.vector_norm(x, dim=1))
        state.coord_sum += x.sum(dim=0)
        state.coord_sumsq += x.square().sum(dim=0)
        state.hist1.add(x)
        state.rows += x.shape[0]

    def _update_pass2(self, state: _ModalityState, x: torch.Tensor, alpha: float) -> None:
        if x.shape[0] == 0:
            return
        norms = torch.linalg.vector_norm(x, dim=1)
        state.norm_sum2 += float(norms.sum())
        scaled = alpha * norms
        mask = _outlier_mask(scaled, state.norm_median, state.norm_std, self.outlier_sigmas)
        kept = x[~mask] - state.shift  # [rows_kept, D]
        state.sum1 += kept.sum(dim=0)
        state.sum2 += kept.T @ kept
        state.replaced += int(mask.sum())
        state.rows2 += x.shape[0]
        state.hist2.add(x)  # all rows, outliers included, as torch.median(data, dim=0) in the seed

    def start_second_pass(self) -> None:
        """Fix α_k, the outlier thresholds and the median brackets from pass 1; switch to pass 2.

        Raises:
            ValueError: if called twice, before any update, or if a layer has < 2 rows in a modality
                or all-zero text rows.
        """
        if self._pass != 1:
            raise ValueError('start_second_pass() was already called.')
        if self._num_updates == 0:
            raise ValueError('Empty input: update() was never called before start_second_pass().')
        for k, (sv, st) in enumerate(self._states):
            for state, name in ((sv, 'vision'), (st, 'text')):
                if state.rows < 2:
                    raise ValueError(
                        f'Layer {k} {name}: {state.rows} row(s); at least 2 are needed for an unbiased covariance.')
        for k, (sv, st) in enumerate(self._states):
            alpha = _alpha(torch.cat(st.norms), k)
            self._alpha[k] = alpha
            for state in (sv, st):
                norms = torch.cat(state.norms)
                state.norms = [norms]
                state.norm_median, state.norm_std = _norm_thresholds(alpha * norms)
                mean = state.coord_sum / state.rows
                meansq = state.coord_sumsq / state.rows
                var = (meansq - mean.square()).clamp(min=0.0)
                # population std, padded so that |median − mean| <= σ survives the rounding of meansq − mean²
                sigma = (var + 1e-12 * meansq).sqrt() * (1 + 1e-9) + 1e-200
                state.shift = mean
                state.sigma_lo, state.sigma_hi = mean - sigma, mean + sigma
                # bracket for pass 2: the pass-1 bin holding the median, where it has one, ∩ [μ − σ, μ + σ]
                h1 = state.hist1
                bin_lo, bin_hi, where = h1.locate((state.rows - 1) // 2)
                pad = _edge_pad(h1.lo, h1.hi)
                inf = torch.full_like(bin_lo, math.inf)
                lo = torch.where(where == 0, bin_lo - pad, torch.where(where < 0, -inf, h1.hi - pad))
                hi = torch.where(where == 0, bin_hi + pad, torch.where(where < 0, h1.lo + pad, inf))
                lo = torch.maximum(lo, state.sigma_lo)
                hi = torch.minimum(hi, state.sigma_hi)
                bad = ~(lo < hi)  # only through rounding
                lo = torch.where(bad, state.sigma_lo, lo)
                hi = torch.where(bad, state.sigma_hi, hi)
                state.hist1 = None
                state.hist2 = _MedianHistogram(lo, hi, self.median_bins)
                state.sum1 = torch.zeros(state.dim, dtype=torch.float64, device=state.device)
                state.sum2 = torch.zeros(state.dim, state.dim, dtype=torch.float64, device=state.device)
        self._pass = 2

    @staticmethod
    def _median_row(state: _ModalityState) -> tuple[torch.Tensor, float]:
        """(ĉ [D], ‖ĉ − c‖ bound), raw units: the midpoint of each coordinate's final bracket."""
        h2 = state.hist2
        bin_lo, bin_hi, where = h2.locate((state.rows - 1) // 2)
        lo = torch.where(where == 0, bin_lo, torch.where(where < 0, state.sigma_lo, h2.hi))
        hi = torch.where(where == 0, bin_hi, torch.where(where < 0, h2.lo, state.sigma_hi))
        radius = 0.5 * (hi - lo) + _edge_pad(h2.lo, h2.hi)
        return 0.5 * (lo + hi), float(torch.linalg.vector_norm(radius))

    @classmethod
    def _gauss(cls, state: _ModalityState, alpha: float) -> tuple[_Gauss, float]:
        """Moments after Eqs. (M1)-(M2) in scaled units, and ε >= ‖ĉ − c‖ (scaled)."""
        n, m = state.rows, state.replaced
        sum1 = alpha * state.sum1
        sum2 = alpha * alpha * state.sum2
        eps = 0.0
        if m:
            estimate, radius = cls._median_row(state)
            z = alpha * (estimate - state.shift)  # the median row, shifted and scaled
            sum1 = sum1 + m * z
            sum2 = sum2 + m * torch.outer(z, z)
            eps = alpha * radius
        mean_shifted = sum1 / n
        cov = (sum2 - n * torch.outer(mean_shifted, mean_shifted)) / (n - 1)  # [D, D]
        cov = 0.5 * (cov + cov.T)
        return _Gauss(mean_shifted + alpha * state.shift, n, cov_=cov), eps

    def compute(self) -> MIRResult:
        """MIR from both passes (callable more than once).

        Raises:
            ValueError: before :meth:`start_second_pass`, or if pass 2 saw fewer rows than pass 1.
        """
        if self._pass != 2:
            raise ValueError('compute() needs both passes: call start_second_pass() and feed the data again.')
        per_layer, bounds, rep_v, rep_t = [], [], [], []
        for k, (sv, st) in enumerate(self._states):
            for state, name in ((sv, 'vision'), (st, 'text')):
                if state.rows2 != state.rows:
                    raise ValueError(
                        f'Layer {k} {name}: pass 2 saw {state.rows2} rows but pass 1 saw {state.rows}; '
                        'both passes must feed the same data.')
                norm_sum1 = float(state.norms[0].sum())
                if abs(state.norm_sum2 - norm_sum1) > 1e-3 * norm_sum1:
                    raise ValueError(
                        f'Layer {k} {name}: the row norms of pass 2 sum to {state.norm_sum2:.6g} but those of '
                        f'pass 1 to {norm_sum1:.6g}; both passes must feed the same data (same samples, '
                        'model in eval mode).')
            alpha = self._alpha[k]
            gv, eps_v = self._gauss(sv, alpha)
            gt, eps_t = self._gauss(st, alpha)
            d_k = _frechet(gv, gt, self.sqrt, k)
            per_layer.append(d_k)
            if self.sqrt != 'exact':
                bounds.append(float('nan'))
            else:
                beta = 0.0
                for eps, state in ((eps_v, sv), (eps_t, st)):
                    if state.replaced:
                        beta += eps * math.sqrt(state.replaced / (state.rows - 1))
                bounds.append(beta * (2.0 * math.sqrt(max(d_k, 0.0)) + beta) if beta else 0.0)
            rep_v.append(sv.replaced)
            rep_t.append(st.replaced)
        total, err = sum(per_layer), sum(bounds)
        if self.sqrt != 'exact':
            mir_bound = float('nan')
        elif err == 0.0:
            mir_bound = 0.0
        elif total - err > 0:
            mir_bound = math.log10(total / (total - err))
        else:
            mir_bound = float('inf')
        return MIRResult(
            per_layer=per_layer, mir=_mir_from_layers(per_layer), sqrt=self.sqrt, alpha=list(self._alpha),
            num_vision_rows=[s[0].rows for s in self._states], num_text_rows=[s[1].rows for s in self._states],
            num_vision_replaced=rep_v, num_text_replaced=rep_t, per_layer_bound=bounds, mir_bound=mir_bound)


def compute_mir_streaming(
    make_iter: Callable[[], Iterable[tuple[Sequence[ArrayLike], Sequence[ArrayLike]]]],
    num_layers: int,
    sqrt: SqrtMode = 'exact',
    median_bins: int = 1024,
    outlier_sigmas: float = 3.0,
) -> MIRResult:
    """Run both passes of :class:`MIRAccumulator` over ``make_iter()`` (called twice).

    Args:
        make_iter: returns a fresh iterable of ``(vision_layers, text_layers)`` per sample or batch,
            each a list of K arrays [rows, D]; both calls must yield the same rows (e.g. a model
            forward in eval mode over the same samples).
        num_layers, sqrt, median_bins, outlier_sigmas: as in :class:`MIRAccumulator`.

    Returns:
        :class:`MIRResult` with ``per_layer_bound`` / ``mir_bound`` from the median-row estimate.
    """
    acc = MIRAccumulator(num_layers, sqrt=sqrt, median_bins=median_bins, outlier_sigmas=outlier_sigmas)
    for vision_layers, text_layers in make_iter():
        acc.update(vision_layers, text_layers)
    acc.start_second_pass()
    for vision_layers, text_layers in make_iter():
        acc.update(vision_layers, text_layers)
    return acc.compute()
