"""Benchmark: MIR's exact trace term vs the scipy ``sqrtm`` reference, one layer.

    python benchmarks/bench_mir_sqrt.py            # ~2 min on 2 CPU cores

For each case it builds vision-like and text-like rows [N, D] (anisotropic power-law spectra, random
rotations, different means), then times on the same matrices:

* reference: ``np.trace(scipy.linalg.sqrtm(S_v @ S_t)).real`` in float64 (product included);
* exact: ``mllm_align.metrics.trace_sqrt_product`` (one Cholesky or a Householder row factor, one
  ``eigvalsh``; see its docstring).

Inputs are either the covariances (the path :class:`MIRAccumulator` takes) or the sample rows (the
path :func:`compute_mir` takes when rows <= D; the reference then also forms the two covariances).
Prints a markdown table: best-of-``--repeats`` wall times, speed-up, relative difference of the values,
and for rows < D each method's error against the nuclear norm of X_v X_tᵀ / √((N_v−1)(N_t−1)) from
a float64 SVD (an independent, backward-stable value of the same trace).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import scipy
import scipy.linalg
import torch

from mllm_align.metrics import trace_sqrt_product


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=2, help='timed runs per method; the best is reported')
    parser.add_argument('--seed', type=int, default=0, help='random seed for the synthetic hidden states')
    return parser.parse_args()


def _rows(rng: np.random.Generator, n: int, d: int, decay: float, shift: float) -> np.ndarray:
    """[n, d] rows with a power-law spectrum (variance_i ∝ i^-decay) in a random basis."""
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.arange(1, d + 1) ** (-decay / 2)
    return (rng.standard_normal((n, d)) * scales) @ rot + shift


def _cov(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=0)
    return xc.T @ xc / (x.shape[0] - 1)


def _best(fn, repeats: int) -> tuple[float, float]:
    best, value = float('inf'), float('nan')
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    args = parse_args()
    print(f'# args: repeats={args.repeats} seed={args.seed}')
    print(f'# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} '
          f'({torch.get_num_threads()} threads), numpy {np.__version__}, scipy {scipy.__version__}, '
          f'{datetime.date.today().isoformat()}')
    rng = np.random.default_rng(args.seed)
    # (D, N_v, N_t, input given to both methods)
    cases = [
        (1024, 2000, 2000, 'covariances'),
        (2048, 4000, 4000, 'covariances'),
        (2048, 2000, 2000, 'samples'),
        (2048, 2000, 2000, 'covariances'),
    ]
    rows = []
    data = {}
    for dim, n_v, n_t, given in cases:
        key = (dim, n_v, n_t)
        if key not in data:
            xv = _rows(rng, n_v, dim, decay=1.2, shift=0.5)
            xt = _rows(rng, n_t, dim, decay=0.8, shift=-0.2)
            data = {key: (xv, xt, _cov(xv), _cov(xt))}  # keep one case in memory
        xv, xt, sv, st = data[key]
        if given == 'samples':
            t_ref, ref = _best(lambda: float(np.trace(scipy.linalg.sqrtm(_cov(xv) @ _cov(xt))).real), args.repeats)
            t_new, new = _best(lambda: trace_sqrt_product(xv, xt, samples=True), args.repeats + 1)
        else:
            t_ref, ref = _best(lambda: float(np.trace(scipy.linalg.sqrtm(sv @ st)).real), args.repeats)
            t_new, new = _best(lambda: trace_sqrt_product(sv, st), args.repeats + 1)
        regime = 'rows > D' if min(n_v, n_t) > dim else 'rows < D'
        errors = '–'
        if regime == 'rows < D':
            xvc, xtc = xv - xv.mean(axis=0), xt - xt.mean(axis=0)
            truth = np.linalg.svd(xvc @ xtc.T, compute_uv=False).sum() / np.sqrt((n_v - 1) * (n_t - 1))
            errors = f'{abs(ref - truth) / truth:.0e} / {abs(new - truth) / truth:.0e}'
        rows.append((dim, n_v, n_t, regime, given, t_ref, t_new, t_ref / t_new, abs(new - ref) / abs(ref), errors))
        print(f'# done D={dim} N={n_v}/{n_t} {given}', flush=True)
    print()
    print('| D | N_v / N_t | regime | input | scipy sqrtm (s) | exact trace (s) | speed-up | rel. diff '
          '| error vs SVD: sqrtm / exact |')
    print('|---|---|---|---|---|---|---|---|---|')
    for dim, n_v, n_t, regime, given, t_ref, t_new, speedup, rel, errors in rows:
        print(f'| {dim} | {n_v} / {n_t} | {regime} | {given} | {t_ref:.2f} | {t_new:.3f} | {speedup:.1f}x '
              f'| {rel:.1e} | {errors} |')


if __name__ == '__main__':
    main()
