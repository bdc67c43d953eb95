"""The AC law fit and the AC policy against independent computations and the paper's table."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from mllm_align.metrics.ac_law import (
    fit_ac_law,
    recommend_next,
    region_sampling_order,
    simulate_ac_policy,
)

TABLE = Path(__file__).resolve().parents[2] / 'data' / 'law' / 'v3_table6.csv'
VISION = ('MMB', 'MME', 'OKV', 'SEED')
OCR = ('MMMU', 'TVQA', 'VizW', 'SQA')
# Per-benchmark in-sample R² of the quadratic law on the rounded table (data/law/README.md).
PER_BENCHMARK = dict(MMB=0.951, MME=0.953, OKV=0.933, SEED=0.926, MMMU=0.705, TVQA=0.957, VizW=0.780, SQA=0.908)


@pytest.fixture(scope='module')
def table():
    with TABLE.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != 'setting'}


def _reference_r2(A, C, s):
    """Normal equations in float64 (scipy), written out independently of the module."""
    n = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    a, c, y = n(A), n(C), n(s)
    X = np.column_stack([np.ones_like(a), a, c, a ** 2, a * c, c ** 2])
    beta = scipy.linalg.solve(X.T @ X, X.T @ y, assume_a='sym')
    res = y - X @ beta
    return 1 - res @ res / ((y - y.mean()) @ (y - y.mean())), beta


def test_v3_table_reproduction(table):
    fits = {b: fit_ac_law(table['A_v3'], table['C'], table[b]) for b in VISION + OCR}
    assert np.mean([fits[b].r2 for b in VISION]) * 100 == pytest.approx(94.08, abs=0.005)
    assert np.mean([fits[b].r2 for b in OCR]) * 100 == pytest.approx(83.77, abs=0.005)
    for b, want in PER_BENCHMARK.items():
        assert fits[b].r2 == pytest.approx(want, abs=5e-4), b
        r2, beta = _reference_r2(table['A_v3'], table['C'], table[b])
        assert fits[b].r2 == pytest.approx(r2, abs=1e-10)
        np.testing.assert_allclose(fits[b].coef, beta, atol=1e-8)


def test_exact_quadratic_is_recovered_and_predicts():
    rng = np.random.default_rng(3)
    A, C = rng.uniform(-3, -1, 12), rng.uniform(5, 30, 12)
    a, c = (A - A.min()) / np.ptp(A), (C - C.min()) / np.ptp(C)
    s = 40 + 10 * (0.2 + 0.5 * a - 0.3 * c + 0.4 * a * a + 0.1 * a * c + 0.6 * c * c)
    fit = fit_ac_law(A, C, s)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.loo_r2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(fit.predict(A, C), s, rtol=1e-10)
    np.testing.assert_allclose(fit.fitted, s, rtol=1e-10)
    # the coefficients live on the normalised scale: s̃ = (s − min s) / ptp(s) is itself a quadratic in ã, c̃
    X = np.column_stack([np.ones_like(a), a, c, a * a, a * c, c * c])
    np.testing.assert_allclose(X @ fit.coef, (s - s.min()) / np.ptp(s), atol=1e-10)


def test_loo_r2_against_explicit_loop(table):
    A, C, s = table['A_v3'], table['C'], table['MMB']
    held = []
    for i in range(len(s)):
        keep = np.arange(len(s)) != i
        fit = fit_ac_law(A[keep], C[keep], s[keep])
        held.append(fit.predict([A[i]], [C[i]])[0])
    held = np.array(held)
    expected = 1 - ((s - held) ** 2).sum() / ((s - s.mean()) ** 2).sum()
    assert fit_ac_law(A, C, s).loo_r2 == pytest.approx(expected, abs=1e-12)
    assert fit_ac_law(A, C, s).loo_r2 < fit_ac_law(A, C, s).r2


@pytest.mark.parametrize('features,k', [('linear', 3), ('a-only', 3), ('c-only', 3), ('quadratic', 6)])
def test_feature_sets(table, features, k):
    fit = fit_ac_law(table['A_v3'], table['C'], table['SEED'], features=features)
    assert len(fit.coef) == len(fit.feature_names) == k
    assert 0 <= fit.r2 <= 1
    # a subset of the quadratic's columns can never fit better in-sample
    assert fit.r2 <= fit_ac_law(table['A_v3'], table['C'], table['SEED']).r2 + 1e-12


@pytest.mark.parametrize('args,match', [
    (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), 'at least 6 settings'),
    (([1.0] * 7, list(range(7)), list(range(7))), 'A is constant'),
    ((list(range(7)), [2.0] * 7, list(range(7))), 'C is constant'),
    ((list(range(7)), list(range(7)), [3.0] * 7), 'scores is constant'),
    ((list(range(7)), list(range(7)), [0, 1, np.nan, 3, 4, 5, 6]), 'NaN'),
    ((list(range(7)), list(range(6)), list(range(7))), 'one value per setting'),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fit_ac_law(*args)


def test_region_sampling_order_by_hand():
    # Five settings: 0 alone in the low-low quadrant, 1 and 2 in high-high, 3 in low-high, 4 in high-low.
    a = np.array([0.1, 0.9, 0.8, 0.2, 0.7])
    c = np.array([0.1, 0.9, 0.6, 0.8, 0.3])
    for seed in range(20):
        order = region_sampling_order(a, c, np.random.default_rng(seed))
        assert sorted(order) == list(range(5))
        # level 0 trains one setting; level 1 then fills every other quadrant before any quadrant gets a second
        quadrant = lambda i: (a[i] >= 0.5, c[i] >= 0.5)  # noqa: E731
        assert len({quadrant(i) for i in order[:4]}) == 4
        assert order[4] in (1, 2)  # the only quadrant with two settings gives the last one
    first = region_sampling_order(a, c, np.random.default_rng(1))
    assert first == region_sampling_order(a, c, np.random.default_rng(1))
    # already trained settings block their cells
    nxt = region_sampling_order(a, c, np.random.default_rng(0), trained=[1, 0, 3, 4], count=1)
    assert nxt == [2]


def test_policy_far_above_random(table):
    recalls = []
    for b in ('MMB', 'OKV', 'SEED', 'TVQA', 'VizW', 'SQA'):
        res = simulate_ac_policy(table['A_v3'], table['C'], table[b], budget=4, top=3, runs=300, seed=0)
        assert res.random_baseline == pytest.approx(4 / 15)
        recalls.append(res.recall)
    # the paper reports 87.72 %; this implementation gives ~0.73 (docs/design.md says why it may differ)
    assert np.mean(recalls) > 2 * 4 / 15
    again = simulate_ac_policy(table['A_v3'], table['C'], table['MMB'], budget=4, runs=50, seed=7)
    assert np.array_equal(again.successes,
                          simulate_ac_policy(table['A_v3'], table['C'], table['MMB'], budget=4, runs=50,
                                             seed=7).successes)


def test_policy_full_budget_always_succeeds(table):
    res = simulate_ac_policy(table['A_v3'], table['C'], table['MME'], budget=15, top=1, runs=5)
    assert res.recall == 1.0  # every setting trained: its true score ranks it
    with pytest.raises(ValueError, match='budget=16'):
        simulate_ac_policy(table['A_v3'], table['C'], table['MME'], budget=16)


def test_recommend_next(table):
    s = table['MMB'].copy()
    s[:] = np.nan
    first = recommend_next(table['A_v3'], table['C'], s)
    assert first['next'] is not None and first['ranking'] is None and first['trained'] == []
    trained = region_sampling_order((table['A_v3'] - table['A_v3'].min()) / np.ptp(table['A_v3']),
                                    (table['C'] - table['C'].min()) / np.ptp(table['C']),
                                    np.random.default_rng(0), count=5)
    s[trained] = table['MMB'][trained]
    rec = recommend_next(table['A_v3'], table['C'], s)
    assert rec['next'] not in trained and sorted(rec['trained']) == sorted(trained)
    assert len(rec['ranking']) == 15 and sorted(rec['ranking']) == list(range(15))
    np.testing.assert_allclose(np.array(rec['predicted'])[trained], table['MMB'][trained])
    full = recommend_next(table['A_v3'], table['C'], table['MMB'])
    assert full['next'] is None and full['ranking'][0] == int(np.argmax(table['MMB']))
