"""A score of stage-1 checkpoints: v3 (caption log-likelihood) over a series, or v1 (cosine to references).

    python tools/a_score.py v3 WORK_DIR_OR_CKPT_OR_HF_DIR --config CFG [--num-pairs 100] [--seed 0] [--untrained]
        [--data JSON --image-folder DIR] [--cfg-options vision_setting=NAME …] [--out DIR]
    python tools/a_score.py v1 --target CFG CKPT --reference CFG CKPT [--reference CFG CKPT …]
        [--data JSON --image-folder DIR] [--num-images 100]

v3 writes a_score.json / a_score.csv / a_score_curve.png (default in <work dir>/a_score, <hf dir>_a_score) and skips
checkpoints already scored with the same settings. Method: docs/design.md, "Law of Vision Representation".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.a_score_eval import evaluate_a_score, evaluate_a_score_v1  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='version', required=True)
    v3 = sub.add_parser('v3', help='mean caption log-likelihood under the frozen stage-1 model')
    v3.add_argument('target', nargs='?', default=None,
                    help='work dir of iter_*.pth, one checkpoint, or an HF directory (an export of --config: '
                         'scored on the pairs --config makes, after checking they match)')
    v3.add_argument('--config', required=True)
    v3.add_argument('--num-pairs', type=int, default=100)
    v3.add_argument('--seed', type=int, default=0)
    v3.add_argument('--batch-size', type=int, default=8)
    v3.add_argument('--untrained', action='store_true', help='also score the model before training (iteration 0)')
    v3.add_argument('--out', default=None)
    v3.add_argument('--overwrite', action='store_true')
    v3.add_argument('--no-plots', action='store_true')
    v3.add_argument('--no-progress', action='store_true')
    v3.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE', default=None)
    v1 = sub.add_parser('v1', help='cosine alignment of projected tokens with reference stage-1 models')
    v1.add_argument('--target', nargs=2, required=True, metavar=('CONFIG', 'CKPT'))
    v1.add_argument('--reference', nargs=2, action='append', required=True, metavar=('CONFIG', 'CKPT'))
    v1.add_argument('--num-images', type=int, default=100)
    v1.add_argument('--seed', type=int, default=0)
    v1.add_argument('--batch-size', type=int, default=8)
    for sp in (v3, v1):
        sp.add_argument('--data', default=None, help='LLaVA JSON of image–caption pairs (default: the train data)')
        sp.add_argument('--image-folder', default=None)
        sp.add_argument('--device', default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.version == 'v1':
        score = evaluate_a_score_v1(tuple(args.target), [tuple(r) for r in args.reference], data=args.data,
                                    image_folder=args.image_folder, num_images=args.num_images, seed=args.seed,
                                    batch_size=args.batch_size, device=args.device)
        print(f'A score v1: {score:.4f} ({len(args.reference)} reference(s), {args.num_images} images requested)')
        return 0
    records = evaluate_a_score(args.target, args.config, data=args.data, image_folder=args.image_folder,
                               num_pairs=args.num_pairs, seed=args.seed, batch_size=args.batch_size,
                               device=args.device, out_dir=args.out, cfg_options=args.cfg_options,
                               untrained=args.untrained, progress=not args.no_progress, plots=not args.no_plots,
                               overwrite=args.overwrite)
    for r in records:
        print(f'iteration {r.get("iteration")}: A_v3 {r["a_score_v3"]:.4f} ({r["pairs"]} pairs, {r["tokens"]} tokens)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
