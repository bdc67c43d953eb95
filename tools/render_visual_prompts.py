"""Draw an MMVM-layout bench's visual prompts from its clean images and masks, as one PNG gallery.

    python tools/render_visual_prompts.py data/real/mmvm_mini --out gallery.png [--limit 8] [--height 200]

Each row is one question: the query image (FRAME00_ORI + its mask, contour in cyan) beside the candidate image
(FRAME01_ORI + the candidates' masks in ID order, contours and white ID tags), drawn by
mllm_align/data/visual_prompts.py — to check a bench's masks, or how the prompts look at a given size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('bench', help='a folder in the MMVM layout (mllm_match_eval_full.tsv + match_bench/)')
    p.add_argument('--out', required=True, help='the PNG to write')
    p.add_argument('--limit', type=int, default=8, help='questions (rows) to draw (default 8)')
    p.add_argument('--height', type=int, default=200, help='row height in pixels (default 200)')
    p.add_argument('--query-colour', default='cyan')
    return p.parse_args(argv)


def render_gallery(bench: str | Path, out: str | Path, limit: int = 8, height: int = 200,
                   query_colour: str = 'cyan') -> Path:
    from PIL import Image

    from mllm_align.data.image_loading import load_image
    from mllm_align.data.mmvm import case_masks, load_mmvm
    from mllm_align.data.visual_prompts import draw_candidates, draw_query

    rows = []
    for case in load_mmvm(bench, limit=limit):
        query, cands = case_masks(case)
        left = draw_query(load_image(case.case_dir / 'FRAME00_ORI.jpg'), query, query_colour)
        right = draw_candidates(load_image(case.case_dir / 'FRAME01_ORI.jpg'), cands,
                                list(range(1, len(cands) + 1)), query_colour)
        pair = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in (left, right)]
        row = Image.new('RGB', (pair[0].width + pair[1].width + 8, height), 'white')
        row.paste(pair[0], (0, 0))
        row.paste(pair[1], (pair[0].width + 8, 0))
        rows.append(row)
    sheet = Image.new('RGB', (max(r.width for r in rows), sum(r.height + 8 for r in rows)), 'white')
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 8
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = render_gallery(args.bench, args.out, args.limit, args.height, args.query_colour)
    except (ValueError, FileNotFoundError) as exc:
        print(f'render_visual_prompts: error: {exc}', file=sys.stderr)
        return 1
    print(f'render_visual_prompts: wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
