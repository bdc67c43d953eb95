"""Summarise a training work dir: checkpoints, loss curve, chat samples, MIR results.

    python tools/summarize_run.py work_dirs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.run_summary import summarize_work_dir  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dir', help='a training work dir (holds iter_*.pth and a timestamped log dir)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work_dir = Path(args.work_dir)
    if not work_dir.is_dir():
        sys.exit(f'summarize_run: {work_dir} is not a directory')
    print(summarize_work_dir(work_dir))


if __name__ == '__main__':
    main()
