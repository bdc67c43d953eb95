"""C score (PCK@α on SPair-format pairs) of a config's vision representation.

    python tools/c_score.py CONFIG --spair DIR [--split test] [--convention geoaware|law-repo]
        [--match argmax|window-soft-argmax] [--window-radius 7] [--alpha 0.1] [--average image|keypoint]
        [--limit N] [--cfg-options vision_setting=NAME …] [--out result.json] [--device cuda]

Only the config's vision encoder and image processor are built. Method: docs/design.md, "Law of Vision
Representation".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.c_score_eval import c_score_from_config  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('--spair', required=True, help='SPair-71k-format directory')
    p.add_argument('--split', default='test', choices=['trn', 'val', 'test'])
    p.add_argument('--categories', default=None, help='comma-separated (default: all)')
    p.add_argument('--convention', default='geoaware', choices=['geoaware', 'law-repo'])
    p.add_argument('--match', default='argmax', choices=['argmax', 'window-soft-argmax'])
    p.add_argument('--window-radius', type=int, default=7,
                   help='window-soft-argmax: r cells around the argmax, window 2r+1 (the law repository: 7)')
    p.add_argument('--alpha', type=float, default=0.10)
    p.add_argument('--average', default='image', choices=['image', 'keypoint'])
    p.add_argument('--limit', type=int, default=None, help='score the first N pairs only')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--device', default=None)
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default=None, metavar='KEY=VALUE')
    p.add_argument('--out', default=None, help='write the result as JSON')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = c_score_from_config(
        args.config, spair_root=args.spair, split=args.split,
        cfg_options=args.cfg_options,
        categories=args.categories.split(',') if args.categories else None, limit=args.limit,
        convention=args.convention, match=args.match, alpha=args.alpha, average=args.average,
        window_radius=args.window_radius,
        batch_size=args.batch_size, device=args.device, progress=True)
    print(f'C score (PCK@{args.alpha:g}, {args.convention}, {args.match}, per {args.average}): '
          f'{100 * result.pck:.2f} %  ({result.pairs} pairs, {result.keypoints} keypoints, '
          f'{result.skipped} skipped: no mutually visible keypoint)')
    for cat, v in result.per_category.items():
        print(f'  {cat:<14}{100 * v:7.2f} %')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.as_dict(), indent=2) + '\n')
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
