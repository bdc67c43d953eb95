"""Build the tiny offline assets: random LLMs + tokenizers, vision towers + processors, shapes data, a tiny Qwen2-VL.

    python tools/build_tiny_assets.py            # into data/tiny (what the *_tiny_cpu configs use)
    python tools/build_tiny_assets.py --root /tmp/tiny --force

Safe to re-run: when ``ROOT/.complete`` matches the builder's version and parameters nothing is
rebuilt. A build goes to a temporary sibling directory and is renamed into place, so an
interrupted run never leaves half-written assets. The tiny Qwen2-VL (``ROOT/qwen2_vl``) has its
own stamp, so building it never rebuilds the rest (``--no-qwen2-vl`` skips it), as have the two tiny
InternVL bases (``ROOT/internvl2_remote``, remote code, and ``ROOT/internvl_hf``; ``--no-internvl`` skips
them). So does the tiny remote-code RADIO stand-in (``ROOT/radio``, CoLVA's vision expert; ``--no-radio`` skips
it). The work is done by
``mllm_align.testing.tiny_assets.build_tiny_assets`` and ``build_tiny_qwen2_vl``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.testing.spair import build_tiny_spair  # noqa: E402
from mllm_align.testing.tiny_assets import (  # noqa: E402
    STAMP_NAME,
    build_tiny_assets,
    build_tiny_qwen2_vl,
    summarize_tiny_assets,
)
from mllm_align.testing.tiny_colva_data import build_tiny_colva_data  # noqa: E402
from mllm_align.testing.tiny_internvl import build_tiny_internvl  # noqa: E402
from mllm_align.testing.tiny_radio import build_tiny_radio  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default='data/tiny',
                        help='output directory (default: data/tiny, gitignored)')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if ROOT/.complete says the assets are up to date')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the dataset and of every random initialisation (default: 0)')
    parser.add_argument('--num-train', type=int, default=600,
                        help='shapes training images (default: 600)')
    parser.add_argument('--num-eval', type=int, default=100,
                        help='held-out shapes images for eval.json (default: 100)')
    parser.add_argument('--vocab-size', type=int, default=1024,
                        help='upper bound of each trained tokenizer vocabulary (default: 1024)')
    parser.add_argument('--no-qwen2-vl', action='store_true',
                        help='do not build the tiny Qwen2-VL (ROOT/qwen2_vl; the Qwen2-VL tiny configs need it)')
    parser.add_argument('--no-internvl', action='store_true',
                        help='do not build the tiny InternVL bases (ROOT/internvl2_remote: remote code; '
                             'ROOT/internvl_hf: transformers InternVLForConditionalGeneration)')
    parser.add_argument('--no-radio', action='store_true',
                        help="do not build the tiny remote-code RADIO stand-in (ROOT/radio; CoLVA's expert tests)")
    return parser.parse_args(argv)


def _human_bytes(n: int) -> str:
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1024 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n} B'


def _print_table(rows: list[dict[str, object]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich comes with mmengine; plain text otherwise
        for row in rows:
            print(f"{row['name']:<14} {row['params']:>9,} {_human_bytes(row['bytes']):>9}  "
                  f"{row['detail']}")
        return
    table = Table(title='tiny assets')
    for column, justify in (('asset', 'left'), ('params', 'right'), ('size', 'right'),
                            ('details', 'left')):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(str(row['name']), f"{row['params']:,}" if row['params'] else '-',
                      _human_bytes(int(row['bytes'])), str(row['detail']))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.root).absolute()
    print(f'root={root} force={args.force} seed={args.seed} num_train={args.num_train} '
          f'num_eval={args.num_eval} vocab_size={args.vocab_size} qwen2_vl={not args.no_qwen2_vl}')
    stamp = root / STAMP_NAME
    before = stamp.stat().st_mtime_ns if stamp.exists() else None
    start = time.perf_counter()
    try:
        assets = build_tiny_assets(root, force=args.force, seed=args.seed,
                                   num_train=args.num_train, num_eval=args.num_eval,
                                   vocab_size=args.vocab_size)
        if not args.no_qwen2_vl:
            build_tiny_qwen2_vl(root, force=args.force, seed=args.seed, vocab_size=args.vocab_size)
        internvl = None if args.no_internvl else build_tiny_internvl(root, force=args.force, seed=args.seed,
                                                                     vocab_size=args.vocab_size)
        radio = None if args.no_radio else build_tiny_radio(root, force=args.force, seed=args.seed)
        spair = build_tiny_spair(root, seed=args.seed)  # the C score's synthetic pairs (law sweep twin)
        colva = build_tiny_colva_data(root, force=args.force, seed=args.seed)  # CoLVA twins' SA-1B + MMVM SFT
    except (OSError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    built = not stamp.exists() or stamp.stat().st_mtime_ns != before
    print(f'{"built" if built else "up to date, reused"}: {assets.root} ({elapsed:.1f} s)')
    _print_table(summarize_tiny_assets(assets))
    for name in ('pretrain_json', 'sft_json', 'sft_jsonl', 'eval_json', 'image_folder'):
        print(f'{name:<14} {getattr(assets, name)}')
    print(f'{"spair":<14} {spair}')
    print(f'{"colva":<14} {colva["root"]}')
    if radio is not None:
        print(f'{"radio":<14} {radio}')
    for name, path in (internvl or {}).items():
        print(f'{"internvl_" + name:<14} {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
