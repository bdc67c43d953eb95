"""Tests for mllm_align/metrics/mir.py.

Expected numbers come from independent float64 transcriptions of the definitions written in this
file (``_ref_*``: numpy + ``scipy.linalg.sqrtm``, lower medians by sorting), and from hand-worked
cases with closed forms (1-D and diagonal covariances: D = ‖Δμ‖² + Σ_i (σ_v,i − σ_t,i)²).
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mllm_align.metrics import (
    SQRT_MODES,
    MIRAccumulator,
    MIRResult,
    compute_mir,
    compute_mir_streaming,
    trace_sqrt_product,
)


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def _ref_clean(x: np.ndarray, alpha: float, sigmas: float = 3.0) -> tuple[np.ndarray, int]:
    """Scale, then replace rows whose norm is > 3 std from the lower-median norm by the lower-median row."""
    x = alpha * np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    norms = np.sqrt((x * x).sum(axis=1))
    med = np.sort(norms)[(n - 1) // 2]
    out = np.abs(norms - med) > sigmas * norms.std(ddof=1)
    med_row = np.sort(x, axis=0)[(n - 1) // 2]
    x = x.copy()
    x[out] = med_row
    return x, int(out.sum())


def _ref_moments(xv, xt):
    xt64 = np.asarray(xt, dtype=np.float64)
    alpha = 1.0 / np.sqrt((xt64 * xt64).sum(axis=1)).mean()
    v, _ = _ref_clean(xv, alpha)
    t, _ = _ref_clean(xt, alpha)
    return v.mean(0), np.cov(v, rowvar=False, ddof=1), t.mean(0), np.cov(t, rowvar=False, ddof=1)


def _ref_frechet(xv, xt, trace_sqrt) -> float:
    mv, sv, mt, st = _ref_moments(xv, xt)
    sv, st = np.atleast_2d(sv), np.atleast_2d(st)
    return float(((mv - mt) ** 2).sum() + np.trace(sv) + np.trace(st) - 2.0 * trace_sqrt(sv, st))


def _ref_trace_sqrtm64(sv, st) -> float:
    return float(np.trace(scipy.linalg.sqrtm(sv @ st)).real)


def _ref_trace_seed_sqrtm(sv, st) -> float:
    sv32, st32 = sv.astype(np.float32), st.astype(np.float32)
    return float(np.trace(np.real(scipy.linalg.sqrtm(sv32.dot(st32)))))


def _ref_trace_seed_fast(sv, st) -> float:
    a = torch.from_numpy(sv).float()
    b = torch.from_numpy(st).float()
    m = a @ b
    y, z = m, torch.eye(m.shape[0])
    for _ in range(5):
        y = 0.5 * (y + torch.linalg.inv(z) @ m)
        z = 0.5 * (z + torch.linalg.inv(y) @ m)
    return float(torch.trace(y))


def _make_modality(rng, rows, dim, shift, scales, outlier_frac=0.03, outlier_gain=9.0):
    """Anisotropic Gaussian rows (per-direction scales, random rotation) with norm outliers."""
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = (rng.standard_normal((rows, dim)) * scales) @ rot + shift
    idx = rng.choice(rows, size=max(1, int(outlier_frac * rows)), replace=False)
    x[idx] *= outlier_gain
    return x


def _make_layers(seed, num_layers, rows_v, rows_t, dim, well_conditioned=False):
    """Per-layer vision/text rows. ``well_conditioned``: spectra within 4x, so that float32 inverses
    in the seed's fast iteration stay accurate; otherwise they span ~1e4 (vision) and 1e2 (text)."""
    rng = np.random.default_rng(seed)
    scales_v = np.linspace(1.0, 2.0, dim) if well_conditioned else np.geomspace(4.0, 0.05, dim)
    scales_t = np.linspace(0.5, 1.0, dim) if well_conditioned else np.geomspace(0.2, 2.0, dim)
    vision, text = [], []
    for k in range(num_layers):
        vision.append(_make_modality(rng, rows_v, dim, 0.8 + 0.1 * k, scales_v))
        text.append(_make_modality(rng, rows_t, dim, -0.3, scales_t))
    return vision, text


def _rel(a, b) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------------------------
# Exact mode vs the float64 scipy.linalg.sqrtm reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'rows_v, rows_t, dim',
    [
        (400, 300, 24),  # rows > D: covariance path
        (20, 28, 48),  # rows < D in both: data (Gram) path, singular covariances
        (30, 500, 40),  # mixed
    ],
)
def test_exact_matches_float64_sqrtm_reference(rows_v, rows_t, dim):
    vision, text = _make_layers(0, 3, rows_v, rows_t, dim)
    res = compute_mir(vision, text)
    assert isinstance(res, MIRResult) and res.sqrt == 'exact'
    assert sum(res.num_vision_replaced) > 0 and sum(res.num_text_replaced) > 0  # outliers were handled
    for k in range(3):
        expected = _ref_frechet(vision[k], text[k], _ref_trace_sqrtm64)
        assert _rel(res.per_layer[k], expected) < 1e-6, (k, res.per_layer[k], expected)
    assert res.mir == pytest.approx(math.log10(sum(res.per_layer)), rel=1e-12)
    assert res.num_vision_rows == [rows_v] * 3 and res.num_text_rows == [rows_t] * 3
    assert res.per_layer_bound == [0.0] * 3 and res.mir_bound == 0.0
    for k in range(3):
        alpha = 1.0 / np.linalg.norm(text[k], axis=1).mean()
        assert res.alpha[k] == pytest.approx(alpha, rel=1e-12)
        assert res.num_vision_replaced[k] == _ref_clean(vision[k], alpha)[1]
        assert res.num_text_replaced[k] == _ref_clean(text[k], alpha)[1]


def test_trace_sqrt_product_all_forms_agree_with_sqrtm():
    rng = np.random.default_rng(1)
    # (rows_a, rows_b, D, tolerance vs sqrtm): sqrtm itself is only ~1e-8 accurate on singular products
    for rows_a, rows_b, dim, tol in [(200, 150, 12, 1e-10), (9, 14, 30, 1e-6)]:
        xa = rng.standard_normal((rows_a, dim)) * np.geomspace(3, 0.1, dim)
        xb = rng.standard_normal((rows_b, dim)) @ rng.standard_normal((dim, dim))
        xa -= xa.mean(0)
        xb -= xb.mean(0)
        sa, sb = xa.T @ xa / (rows_a - 1), xb.T @ xb / (rows_b - 1)
        expected = _ref_trace_sqrtm64(sa, sb)
        from_cov = trace_sqrt_product(sa, sb)
        assert _rel(from_cov, expected) < tol
        assert _rel(trace_sqrt_product(sb, sa), expected) < tol
        assert _rel(trace_sqrt_product(xa, xb, samples=True), expected) < tol
        assert _rel(trace_sqrt_product(xa + 5.0, xb - 1.0, samples=True), expected) < tol  # centred inside
        assert _rel(trace_sqrt_product(torch.from_numpy(xa).float(), torch.from_numpy(xb).float(),
                                       samples=True), expected) < 1e-5


def test_trace_sqrt_product_singular_case_matches_high_precision():
    # tr((Σ_a Σ_b)^½) = nuclear norm of X_a X_bᵀ / √((N_a−1)(N_b−1)), here in 50-digit arithmetic
    mpmath = pytest.importorskip('mpmath')
    rng = np.random.default_rng(1)
    xa = rng.standard_normal((9, 30)) * np.geomspace(3, 0.1, 30)
    xb = rng.standard_normal((14, 30)) @ rng.standard_normal((30, 30))
    xa -= xa.mean(0)
    xb -= xb.mean(0)
    with mpmath.workdps(50):  # centred in float64 above, so both sides see the same Σ
        gram = mpmath.matrix(xa.tolist()) * mpmath.matrix(xb.tolist()).T
        truth = float(sum(mpmath.svd_r(gram, compute_uv=False)) / mpmath.sqrt(8 * 13))
    assert _rel(trace_sqrt_product(xa, xb, samples=True), truth) < 1e-12
    assert _rel(trace_sqrt_product(xa.T @ xa / 8, xb.T @ xb / 13), truth) < 1e-7  # singular Σ: ~√ε


def test_trace_sqrt_product_errors():
    with pytest.raises(ValueError, match='columns'):
        trace_sqrt_product(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match='square'):
        trace_sqrt_product(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match='at least 2 sample rows'):
        trace_sqrt_product(np.ones((1, 4)), np.ones((3, 4)), samples=True)


# ---------------------------------------------------------------------------------------------
# Seed modes vs direct transcriptions of their definitions
# ---------------------------------------------------------------------------------------------
def test_seed_sqrtm_matches_transcription():
    vision, text = _make_layers(2, 2, 300, 250, 16)
    res = compute_mir(vision, text, sqrt='seed-sqrtm')
    for k in range(2):
        expected = _ref_frechet(vision[k], text[k], _ref_trace_seed_sqrtm)
        assert _rel(res.per_layer[k], expected) < 1e-5
    exact = compute_mir(vision, text)
    assert all(_rel(s, e) < 1e-3 for s, e in zip(res.per_layer, exact.per_layer))  # float32 vs float64 only


def test_seed_fast_matches_transcription_and_is_a_fixed_point():
    vision, text = _make_layers(3, 2, 400, 300, 8, well_conditioned=True)
    res = compute_mir(vision, text, sqrt='seed-fast')
    exact = compute_mir(vision, text)
    for k in range(2):
        expected = _ref_frechet(vision[k], text[k], _ref_trace_seed_fast)
        assert _rel(res.per_layer[k], expected) < 1e-4
        # the iteration returns ≈ Σ_v Σ_t, so its trace term is tr(Σ_v Σ_t), not tr((Σ_v Σ_t)^½)
        # (on ill-conditioned Σ_v Σ_t it drifts away from that too, through float32 inverses)
        assert _rel(res.per_layer[k], _ref_frechet(vision[k], text[k], lambda a, b: np.trace(a @ b))) < 1e-4
        assert _rel(res.per_layer[k], exact.per_layer[k]) > 0.01


def test_seed_fast_singular_raises():
    vision = [np.random.default_rng(0).standard_normal((10, 3))]
    text = [np.ones((4, 3))]  # identical rows: Σ_t = 0, so the iteration inverts a zero matrix
    with pytest.raises(ValueError, match="Layer 0: sqrt='seed-fast'.*sqrt='exact'"):
        compute_mir(vision, text, sqrt='seed-fast')


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------
def test_hand_worked_1d():
    # text [1, 3] → α = 1/2 → [0.5, 1.5]: μ_t = 1, σ_t² = 0.5; vision [2, 6, 4] → [1, 3, 2]: μ_v = 2, σ_v² = 1.
    # D = (2 − 1)² + (1 − √0.5)² = 2.5 − √2.
    res = compute_mir([np.array([[2.0], [6.0], [4.0]])], [np.array([[1.0], [3.0]])])
    assert res.alpha == [0.5]
    assert res.per_layer[0] == pytest.approx(2.5 - math.sqrt(2.0), rel=1e-12)
    assert res.mir == pytest.approx(math.log10(2.5 - math.sqrt(2.0)), rel=1e-12)
    assert res.num_vision_replaced == [0] and res.num_text_replaced == [0]


def test_hand_worked_diagonal_two_layers():
    # text rows (±1, 0), (0, ±1): all norms 1 → α = 1, μ_t = 0, Σ_t = diag(2/3, 2/3).
    # vision rows (1, 1) + (±1, 0), (0, ±2): μ_v = (1, 1), Σ_v = diag(2/3, 8/3).
    # D = ‖(1, 1)‖² + (√(2/3) − √(2/3))² + (√(8/3) − √(2/3))² = 2 + 2/3 = 8/3.
    text = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    vision = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0], [1.0, -1.0]])
    res = compute_mir([vision, vision], [text, text])
    assert res.per_layer == pytest.approx([8 / 3, 8 / 3], rel=1e-12)
    assert res.mir == pytest.approx(math.log10(16 / 3), rel=1e-12)
    for mode in ('seed-sqrtm', 'seed-fast'):  # commuting diagonal Σ: √(Σ_vΣ_t) exists, seed-sqrtm agrees
        assert compute_mir([vision], [text], sqrt=mode).per_layer[0] == pytest.approx(
            8 / 3 if mode == 'seed-sqrtm' else 2 + 10 / 3 + 4 / 3 - 2 * (4 / 9 + 16 / 9), rel=1e-5)


def test_hand_worked_outlier_replaced_by_median_row():
    # vision 1-D: five 1s, five 2s and a 50; text [1, 3] → α = 1/2. Scaled vision norms: lower median 1,
    # std ≈ 7.3, |25 − 1| > 3·std, so 25 → the lower median row 1: five 0.5s and six 1s.
    # μ_v = 17/22, σ_v² = 3/44; μ_t = 1, σ_t² = 1/2.  D = (5/22)² + 3/44 + 1/2 − 2√(3/88).
    vision = np.array([[1.0], [2.0]] * 5 + [[50.0]])
    res = compute_mir([vision], [np.array([[1.0], [3.0]])])
    assert res.num_vision_replaced == [1]
    expected = (5 / 22) ** 2 + 3 / 44 + 0.5 - 2 * math.sqrt(3 / 88)
    assert res.per_layer[0] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def test_bf16_and_float32_tensors_are_accepted():
    vision, text = _make_layers(4, 2, 120, 90, 16)
    v16 = [torch.from_numpy(v).to(torch.bfloat16) for v in vision]
    t16 = [torch.from_numpy(t).to(torch.bfloat16) for t in text]
    res = compute_mir(v16, t16)
    ref = compute_mir([v.double().numpy() for v in v16], [t.double().numpy() for t in t16])
    assert res.per_layer == pytest.approx(ref.per_layer, rel=1e-12)
    res32 = compute_mir([torch.from_numpy(v).float() for v in vision], [torch.from_numpy(t).float() for t in text])
    assert res32.per_layer == pytest.approx(compute_mir(vision, text).per_layer, rel=1e-5)


def test_inputs_are_not_modified():
    vision, text = _make_layers(5, 1, 100, 80, 8)
    tv, tt = torch.from_numpy(vision[0].copy()), torch.from_numpy(text[0].copy())
    res = compute_mir([tv], [tt])
    assert res.num_vision_replaced[0] > 0
    assert torch.equal(tv, torch.from_numpy(vision[0])) and torch.equal(tt, torch.from_numpy(text[0]))


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------
def _batches(vision, text, sizes_v, sizes_t, order=None):
    """Split per-layer arrays into samples (rows_v_i, rows_t_i), optionally in another order."""
    cuts_v, cuts_t = np.cumsum([0, *sizes_v]), np.cumsum([0, *sizes_t])
    order = range(len(sizes_v)) if order is None else order
    for i in order:
        yield ([v[cuts_v[i]:cuts_v[i + 1]] for v in vision], [t[cuts_t[i]:cuts_t[i + 1]] for t in text])


def test_streaming_matches_batch_with_outliers():
    num_samples, rows_v, dim = 12, 40, 16
    sizes_t = [25, 31, 18, 40, 22, 35, 28, 19, 33, 26, 30, 23]
    vision, text = _make_layers(6, 3, num_samples * rows_v, sum(sizes_t), dim)
    batch = compute_mir(vision, text)
    acc = MIRAccumulator(3)
    assert acc.pass_index == 1
    for v, t in _batches(vision, text, [rows_v] * num_samples, sizes_t):
        acc.update(v, t)
    acc.start_second_pass()
    assert acc.pass_index == 2
    # pass 2 in another order: only the set of rows matters
    for v, t in _batches(vision, text, [rows_v] * num_samples, sizes_t, order=np.random.default_rng(0).permutation(12)):
        acc.update(v, t)
    res = acc.compute()
    assert res.num_vision_replaced == batch.num_vision_replaced and min(res.num_text_replaced) > 0
    for k in range(3):
        assert _rel(res.per_layer[k], batch.per_layer[k]) < 1e-6
        assert abs(res.per_layer[k] - batch.per_layer[k]) <= res.per_layer_bound[k]
        assert 0 < res.per_layer_bound[k] < 1e-4 * res.per_layer[k]
    assert abs(res.mir - batch.mir) <= res.mir_bound < 1e-4
    assert res.alpha == pytest.approx(batch.alpha, rel=1e-12)
    assert acc.compute().per_layer == res.per_layer  # compute() is repeatable


def test_streaming_exact_when_nothing_is_replaced():
    vision, text = _make_layers(7, 2, 200, 150, 12)
    batch = compute_mir(vision, text, outlier_sigmas=1e9)
    res = compute_mir_streaming(lambda: _batches(vision, text, [20] * 10, [15] * 10), 2, outlier_sigmas=1e9)
    assert res.num_vision_replaced == [0, 0] and res.per_layer_bound == [0.0, 0.0] and res.mir_bound == 0.0
    assert res.per_layer == pytest.approx(batch.per_layer, rel=1e-10)


@pytest.mark.parametrize('median_bins', [1, 4])
def test_streaming_bound_holds_when_the_first_window_guess_misses(median_bins):
    # The first update (2 far-away rows) gives a pass-1 window that misses the median, so it is
    # bracketed by [μ − σ, μ + σ] only; with few bins and 8 % of rows replaced the estimate is poor,
    # and the reported bound must still cover the error.
    rng = np.random.default_rng(8)
    vision, text = [], []
    for _ in range(2):
        v = rng.standard_normal((300, 10)) + 1.0
        v[:2] = 10.0 + rng.standard_normal((2, 10))
        v[2:24] *= 8.0
        vision.append(v)
        text.append(rng.standard_normal((200, 10)) * 0.5)
    batch = compute_mir(vision, text)
    res = compute_mir_streaming(lambda: _batches(vision, text, [2, 298], [100, 100]), 2, median_bins=median_bins)
    assert res.num_vision_replaced == batch.num_vision_replaced
    assert min(res.num_vision_replaced) >= 15
    for k in range(2):
        assert abs(res.per_layer[k] - batch.per_layer[k]) <= res.per_layer_bound[k]
        assert res.per_layer[k] != batch.per_layer[k]  # the estimate is visibly off here
    assert abs(res.mir - batch.mir) <= res.mir_bound


def test_streaming_rows_below_hidden_size():
    vision, text = _make_layers(9, 2, 30, 24, 40)
    batch = compute_mir(vision, text)
    res = compute_mir_streaming(lambda: _batches(vision, text, [10] * 3, [8] * 3), 2)
    for k in range(2):
        assert _rel(res.per_layer[k], batch.per_layer[k]) < 1e-6


@pytest.mark.parametrize('mode', ['seed-sqrtm', 'seed-fast'])
def test_streaming_seed_modes(mode):
    vision, text = _make_layers(10, 2, 400, 300, 8, well_conditioned=True)
    batch = compute_mir(vision, text, sqrt=mode)
    res = compute_mir_streaming(lambda: _batches(vision, text, [40] * 10, [30] * 10), 2, sqrt=mode)
    assert res.sqrt == mode
    assert res.per_layer == pytest.approx(batch.per_layer, rel=1e-4)
    assert all(math.isnan(b) for b in res.per_layer_bound) and math.isnan(res.mir_bound)


def test_streaming_accepts_empty_updates_and_tensors():
    vision, text = _make_layers(11, 1, 60, 40, 6)
    batch = compute_mir(vision, text)
    acc = MIRAccumulator(1)
    for _ in range(2):
        with pytest.raises(ValueError, match='NaN'):  # a rejected update leaves the state untouched
            acc.update([torch.from_numpy(vision[0][:30])], [torch.full((3, 6), float('nan'))])
        acc.update([torch.from_numpy(vision[0][:30])], [torch.from_numpy(text[0])])
        acc.update([torch.from_numpy(vision[0][30:])], [torch.zeros(0, 6)])
        if acc.pass_index == 1:
            acc.start_second_pass()
    assert _rel(acc.compute().per_layer[0], batch.per_layer[0]) < 1e-6


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def _ok(rows=5, dim=4, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, dim))


def test_compute_mir_errors():
    with pytest.raises(ValueError, match="Unknown sqrt mode 'fast'.*exact, seed-sqrtm, seed-fast"):
        compute_mir([_ok()], [_ok()], sqrt='fast')
    with pytest.raises(ValueError, match='Empty input'):
        compute_mir([], [])
    with pytest.raises(ValueError, match='vision_layers has 2 layers but text_layers has 1'):
        compute_mir([_ok(), _ok()], [_ok()])
    with pytest.raises(ValueError, match='Layer 1: vision hidden size 4 != text hidden size 3'):
        compute_mir([_ok(), _ok()], [_ok(), _ok(dim=3)])
    with pytest.raises(ValueError, match='Layer 0 vision: 1 row'):
        compute_mir([_ok(rows=1)], [_ok()])
    with pytest.raises(ValueError, match='Layer 0 text: 0 row'):
        compute_mir([_ok()], [np.zeros((0, 4))])
    bad = _ok()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match='Layer 1 vision: hidden states contain NaN or inf'):
        compute_mir([_ok(), bad], [_ok(), _ok()])
    bad = torch.from_numpy(_ok()).to(torch.bfloat16)
    bad[0, 0] = float('inf')
    with pytest.raises(ValueError, match='Layer 0 text: hidden states contain NaN or inf'):
        compute_mir([_ok()], [bad])
    with pytest.raises(ValueError, match=r'Layer 0 vision: expected a 2-D \[rows, hidden\] array, got shape \(2, 5, '):
        compute_mir([np.zeros((2, 5, 4))], [_ok()])
    with pytest.raises(ValueError, match='Layer 0 text: every row is zero'):
        compute_mir([_ok()], [np.zeros((3, 4))])


def test_accumulator_errors():
    with pytest.raises(ValueError, match='Unknown sqrt mode'):
        MIRAccumulator(2, sqrt='sqrtm')
    with pytest.raises(ValueError, match='num_layers must be a positive int'):
        MIRAccumulator(0)
    with pytest.raises(ValueError, match='median_bins must be a positive int'):
        MIRAccumulator(1, median_bins=0)
    acc = MIRAccumulator(2)
    with pytest.raises(ValueError, match='Empty input'):
        acc.start_second_pass()
    with pytest.raises(ValueError, match='needs both passes'):
        acc.compute()
    with pytest.raises(ValueError, match=r'Expected 2 layers \(num_layers\) per update, got 1'):
        acc.update([_ok()], [_ok()])
    with pytest.raises(ValueError, match='vision_layers has 2 layers but text_layers has 1'):
        acc.update([_ok(), _ok()], [_ok()])
    acc.update([_ok(), _ok()], [_ok(), _ok()])
    with pytest.raises(ValueError, match='Layer 1 vision: hidden size 3 differs from 4 in earlier updates'):
        acc.update([_ok(), _ok(dim=3)], [_ok(), _ok(dim=3)])
    with pytest.raises(ValueError, match='Layer 0: vision hidden size 4 != text hidden size 5'):
        acc.update([_ok(), _ok()], [_ok(dim=5), _ok()])
    bad = _ok()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match='Layer 1 vision: hidden states contain NaN or inf'):
        acc.update([_ok(), bad], [_ok(), _ok()])
    acc.start_second_pass()
    with pytest.raises(ValueError, match='already called'):
        acc.start_second_pass()
    acc.update([_ok(rows=3), _ok(rows=3)], [_ok(), _ok()])
    with pytest.raises(ValueError, match='Layer 0 vision: pass 2 saw 3 rows but pass 1 saw 5'):
        acc.compute()
    with pytest.raises(ValueError, match=r'Layer 0 vision: pass 2 has seen more rows \(6\) than pass 1 \(5\)'):
        acc.update([_ok(rows=3), _ok()], [_ok(), _ok()])


def test_accumulator_rejects_different_data_in_pass_2():
    acc = MIRAccumulator(1)
    acc.update([_ok(rows=6)], [_ok(rows=6)])
    acc.start_second_pass()
    acc.update([_ok(rows=6, seed=1)], [_ok(rows=6)])
    with pytest.raises(ValueError, match='Layer 0 vision: the row norms of pass 2 sum to .* both passes must feed'):
        acc.compute()


def test_accumulator_too_few_rows():
    acc = MIRAccumulator(1)
    acc.update([_ok()], [_ok(rows=1)])
    with pytest.raises(ValueError, match='Layer 0 text: 1 row'):
        acc.start_second_pass()


def test_sqrt_modes_constant():
    assert SQRT_MODES == ('exact', 'seed-sqrtm', 'seed-fast')
