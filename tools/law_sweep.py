"""The Law of Vision Representation's table in one command: stage 1 per vision setting, then A (v3) and C.

    python tools/law_sweep.py projects/law/sweeps/tiny_cpu.py            # the tiny CPU twin (a few minutes)
    python tools/law_sweep.py projects/law/sweeps/easyvqa_real.py        # real weights (data/prepare_real.py)
    python tools/law_sweep.py SWEEP.py --only tiny_clip,tiny_dinov2 --redo c_score
    python tools/law_sweep.py SWEEP.py --dry-run                         # the commands, nothing run
    python tools/law_sweep.py SWEEP.py --cfg-options a_score.num_pairs=8 cfg_options.max_iters=4

Each setting is trained with `bash tools/dist.sh train STAGE1 NPROC --resume auto --cfg-options
vision_setting=NAME ...` (log: <work_root>/<setting>/sweep_train.log), unless its work dir already holds the
final checkpoint. Resumable: re-run the same command after an interruption; finished steps with the same
settings are reused (<work_root>/sweep_state.json). A run whose training settings changed stops with what
changed; --redo train moves the old work dir aside and trains again. Writes <work_root>/law_table.csv
(setting, C in percent, A_v3) for tools/ac_law.py. Sweep config format: mllm_align/engine/law_sweep.py.
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
    p.add_argument('--only', default=None, help='comma-separated setting names to run (default: all)')
    p.add_argument('--redo', default='', help='comma-separated steps to recompute even if finished '
                                              f'({",".join(STEPS)}); train moves the old work dir aside')
    p.add_argument('--work-root', default=None, help="instead of the sweep config's work_root")
    p.add_argument('--dry-run', action='store_true', help='print the training commands and steps; run nothing')
    p.add_argument('--no-progress', action='store_true', help='no per-step lines (the final table is printed)')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE', default=None,
                   help='override sweep config keys: nproc=2, a_score.num_pairs=8; cfg_options.KEY=VALUE adds a '
                        "stage-1 --cfg-options item for every setting (cfg_options.max_iters=4)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print('law_sweep: ' + ', '.join(f'{k}={v!r}' for k, v in vars(args).items()))
    overrides = dict(args.cfg_options or {})
    if args.work_root:
        overrides['work_root'] = args.work_root
    sweep = load_sweep_config(args.sweep, overrides)
    run_sweep(sweep, only=args.only.split(',') if args.only else None,
              redo=[s for s in args.redo.split(',') if s], dry_run=args.dry_run, progress=not args.no_progress)
    return 0


if __name__ == '__main__':
    sys.exit(main())
