"""Summarise a demo run (tools/demo.sh): training losses, MIR per iteration, easy-VQA accuracy against baselines.

    python tools/summarize_demo.py work_dirs/demo_real

Reads what the demo's steps wrote (layout: mllm_align/engine/demo_summary.py), prints the report and writes
DEMO_DIR/summary.md and DEMO_DIR/loss_curve.png. Builds no model; safe to re-run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.demo_summary import write_demo_report  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('demo_dir', help='the demo work dir (holds pretrain/ and sft/)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    demo_dir = Path(args.demo_dir)
    if not demo_dir.is_dir():
        sys.exit(f'summarize_demo: {demo_dir} is not a directory (run bash tools/demo.sh first)')
    text, written = write_demo_report(demo_dir)
    print(text)
    print('Written: ' + ', '.join(str(p) for p in written))


if __name__ == '__main__':
    main()
