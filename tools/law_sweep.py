"""The Law of Vision Representation's table in one command: stage 1 per vision setting, then A (v3) and C.

    python tools/law_sweep.py projects/law/sweeps/tiny_cpu.py            # the tiny CPU twin (a few minutes)
    python tools/law_sweep.py SWEEP.py --only clip_l14_336 --redo c_score
    python tools/law_sweep.py SWEEP.py --dry-run

Resumable: re-run the same command after an interruption. Writes <work_root>/law_table.csv
(setting, C, A_v3) for tools/ac_law.py. Sweep config format: mllm_align/engine/law_sweep.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402
from mllm_align.engine.law_sweep import STEPS, load_sweep_config, run_sweep  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('sweep', help='sweep config (projects/law/sweeps/*.py)')
    p.add_argument('--only', default=None, help='comma-separated setting names')
    p.add_argument('--redo', default='', help=f'comma-separated steps to recompute ({",".join(STEPS)})')
    p.add_argument('--work-root', default=None, help='instead of the config\'s work_root')
    p.add_argument('--dry-run', action='store_true')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE', default=None,
                   help='override top-level keys of the sweep config (e.g. nproc=2)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = dict(args.cfg_options or {})
    if args.work_root:
        overrides['work_root'] = args.work_root
    sweep = load_sweep_config(args.sweep, overrides)
    run_sweep(sweep, only=args.only.split(',') if args.only else None,
              redo=[s for s in args.redo.split(',') if s], dry_run=args.dry_run)
    return 0


if __name__ == '__main__':
    sys.exit(main())
