"""Draw the visual words of an image: the argmax token of q = softmax(vm_head(F)) per patch.

    python tools/visualize_visual_words.py IMAGE [IMAGE ...] --config CONFIG --checkpoint work_dirs/run/iter_N.pth \
        [--out-dir OUT] [--top-k 5] [--cell-size 64]

For each image, writes to --out-dir (default: the checkpoint's folder / visual_words):
  <stem>_visual_words.png   the (square-padded) image upscaled to grid × cell-size pixels, with the
                            argmax token of every patch written in its cell;
  <stem>_visual_words.json  per patch (row-major): row, col, argmax id/token, entropy of q, and the
                            top-k tokens with their probabilities; plus the settings used.
The patch grid is the vision tower's (√ of its patch tokens). Re-running overwrites the outputs.
The work is done in mllm_align/align/visual_words_viz.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files (any format PIL reads)')
    parser.add_argument('--config', required=True, help='the config the checkpoint was trained with '
                                                        '(its model must have a VisualWords plug-in)')
    parser.add_argument('--checkpoint', help='an iter_N.pth of that run (trainable weights: projector, vm_head); '
                                             'omit to draw the untrained model')
    parser.add_argument('--out-dir', help="output folder (default: <checkpoint folder>/visual_words, or "
                                          "work_dirs/visual_words without a checkpoint)")
    parser.add_argument('--top-k', type=int, default=5, help='tokens per patch in the JSON (default 5)')
    parser.add_argument('--cell-size', type=int, default=64, help='pixels per patch cell in the PNG (default 64)')
    parser.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:1')
    parser.add_argument('--no-pad', action='store_true',
                        help='do not pad images to a square before the processor (training pads by default)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(args.checkpoint).parent / 'visual_words' if args.checkpoint else Path('work_dirs/visual_words'))
    print(f'visualize_visual_words: config={args.config} checkpoint={args.checkpoint} images={args.images} '
          f'out_dir={out_dir} top_k={args.top_k} cell_size={args.cell_size} device={args.device}')
    if args.top_k < 1 or args.cell_size < 8:
        print('error: --top-k must be >= 1 and --cell-size >= 8', file=sys.stderr)
        return 2
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f'error: image files not found: {missing}', file=sys.stderr)
        return 2

    from mllm_align.align.visual_words_viz import visualize_image
    from mllm_align.data.image_loading import load_image
    from mllm_align.engine.build import build_model_from_config, image_processor_from_config

    try:
        model = build_model_from_config(args.config, args.checkpoint).to(args.device)
        image_processor = image_processor_from_config(args.config)
        if image_processor is None:
            raise ValueError(f'Config {args.config} names no image processor (PART 2 `image_processor`).')
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for path in args.images:
            img = load_image(path)  # size guard, EXIF, bit depth, alpha: as in training
            drawing, records = visualize_image(model, img, image_processor, top_k=args.top_k,
                                               cell_px=args.cell_size, pad_to_square=not args.no_pad)
            stem = Path(path).stem
            png, js = out_dir / f'{stem}_visual_words.png', out_dir / f'{stem}_visual_words.json'
            drawing.save(png)
            grid = int(round(len(records) ** 0.5))
            js.write_text(json.dumps(dict(image=str(path), config=str(args.config), checkpoint=args.checkpoint,
                                          grid=grid, top_k=args.top_k, patches=records),
                                     ensure_ascii=False, indent=1), encoding='utf-8')
            distinct = len({r['argmax_id'] for r in records})
            rows.append((stem, f'{grid}x{grid}', distinct, str(png), str(js)))
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1

    from rich.console import Console
    from rich.table import Table
    table = Table(title='Visual words')
    for col in ('image', 'grid', 'distinct argmax tokens', 'png', 'json'):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(x) for x in row))
    Console().print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
