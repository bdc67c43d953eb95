"""Fit the AC law on a table of vision settings, plot it, simulate the AC policy, recommend the next run.

    python tools/ac_law.py data/law/v3_table6.csv                      # R² per benchmark and group
    python tools/ac_law.py TABLE.csv --plots out/ --features linear    # + predicted-vs-actual PNGs
    python tools/ac_law.py TABLE.csv --policy --budget 4 --top 3       # Recall@3 vs random
    python tools/ac_law.py TABLE.csv --recommend MMB                   # which setting to train next

The table: ``setting``, an A column (``A_v3`` or ``A``), ``C``, one column per benchmark (empty = not
trained). Method: docs/design.md, "Law of Vision Representation".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mllm_align.evaluation.law_table import (  # noqa: E402
    DEFAULT_GROUPS,
    fit_table,
    plot_fits,
    read_law_table,
)
from mllm_align.metrics.ac_law import FEATURE_SETS, recommend_next, simulate_ac_policy  # noqa: E402

POLICY_BENCHMARKS = ('MMB', 'OKV', 'SEED', 'TVQA', 'VizW', 'SQA')  # the paper's six (MME, MMMU excluded)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('table', help='CSV: setting, A_v3 (or A), C, benchmark columns')
    p.add_argument('--a-column', default=None, help='the A column (default: A_v3, else A)')
    p.add_argument('--features', default='quadratic', choices=sorted(FEATURE_SETS))
    p.add_argument('--benchmarks', default=None, help='comma-separated benchmark columns (default: all)')
    p.add_argument('--groups', nargs='*', default=None, metavar='NAME=B1,B2',
                   help='benchmark groups to average R² over (default: the paper\'s vision and ocr groups '
                        'where their columns exist)')
    p.add_argument('--plots', default=None, metavar='DIR', help='write predicted-vs-actual PNGs here')
    p.add_argument('--policy', action='store_true', help='simulate the AC policy (needs every score known)')
    p.add_argument('--budget', type=int, default=4)
    p.add_argument('--top', type=int, default=3)
    p.add_argument('--runs', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--policy-benchmarks', default=None,
                   help=f'comma-separated (default: {",".join(POLICY_BENCHMARKS)} where present, else all)')
    p.add_argument('--recommend', default=None, metavar='BENCH',
                   help='name the next setting to train for BENCH (empty cells = not trained)')
    return p.parse_args(argv)


def _groups(spec, benchmarks) -> dict[str, list[str]]:
    if spec is None:
        return {g: list(bs) for g, bs in DEFAULT_GROUPS.items() if all(b in benchmarks for b in bs)}
    out = {}
    for item in spec:
        name, _, members = item.partition('=')
        if not members:
            raise SystemExit(f'--groups {item!r}: write NAME=B1,B2,…')
        out[name] = members.split(',')
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    table = read_law_table(args.table, args.a_column)
    print(f'{table.path}: {len(table.settings)} settings, A column {table.a_column!r}, '
          f'benchmarks {list(table.scores) or "none"}')
    if args.recommend:
        if args.recommend not in table.scores:
            raise SystemExit(f'--recommend {args.recommend!r}: no such benchmark column (have {sorted(table.scores)}).')
        rec = recommend_next(table.A, table.C, table.scores[args.recommend], seed=args.seed, features=args.features)
        trained = [table.settings[i] for i in rec['trained']]
        print(f'{args.recommend}: {len(trained)} of {len(table.settings)} settings trained')
        print('next to train: ' + ('none (every setting has a score)' if rec['next'] is None
                                   else table.settings[rec['next']]))
        if rec['ranking'] is not None:
            print('current ranking (trained: known score; others: the law fitted on the trained ones):')
            for rank, i in enumerate(rec['ranking'][:10], 1):
                mark = '' if i in rec['trained'] else '  (predicted)'
                print(f'  {rank:2d}. {table.settings[i]:<28} {rec["predicted"][i]:10.3f}{mark}')
        return 0
    benchmarks = args.benchmarks.split(',') if args.benchmarks else None
    fits = fit_table(table, benchmarks, args.features)
    print(f'\nAC law ({args.features}: {", ".join(FEATURE_SETS[args.features])}), R² in %:')
    print(f'  {"benchmark":<12}{"settings":>9}{"in-sample":>11}{"leave-one-out":>15}')
    for b, fit in fits.items():
        loo = '—' if fit.loo_r2 is None else f'{100 * fit.loo_r2:.2f}'
        print(f'  {b:<12}{len(fit.fitted):>9}{100 * fit.r2:>11.2f}{loo:>15}')
    for name, members in _groups(args.groups, fits).items():
        missing = [b for b in members if b not in fits]
        if missing:
            raise SystemExit(f'--groups {name}: no fit for {missing} (benchmarks: {list(fits)}).')
        r2 = np.mean([fits[b].r2 for b in members])
        loos = [fits[b].loo_r2 for b in members]
        loo = '—' if any(v is None for v in loos) else f'{100 * np.mean(loos):.2f}'
        print(f'  {"mean " + name:<21}{100 * r2:>11.2f}{loo:>15}   ({", ".join(members)})')
    if args.plots:
        for path in plot_fits(table, fits, args.plots):
            print(f'  wrote {path}')
    if args.policy:
        names = args.policy_benchmarks.split(',') if args.policy_benchmarks else \
            [b for b in POLICY_BENCHMARKS if b in fits] or list(fits)
        print(f'\nAC policy: budget {args.budget}, Recall@{args.top} over {args.runs} runs (seed {args.seed})')
        recalls = []
        for b in names:
            s = table.scores[b]
            if not np.isfinite(s).all():
                raise SystemExit(f'--policy simulates on a complete table: {b} has empty cells '
                                 '(use --recommend for a table with gaps).')
            res = simulate_ac_policy(table.A, table.C, s, args.budget, args.top, args.runs, args.seed, args.features)
            recalls.append(res.recall)
            print(f'  {b:<12}{100 * res.recall:8.2f} %   random {100 * res.random_baseline:.2f} %')
        print(f'  {"mean":<12}{100 * np.mean(recalls):8.2f} %   random {100 * args.budget / len(table.settings):.2f} %')
    return 0


if __name__ == '__main__':
    sys.exit(main())
