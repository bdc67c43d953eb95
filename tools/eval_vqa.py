"""Score checkpoints with VQA accuracy: exact match of the one-word answer, against the majority-answer baseline.

A whole series, plus the model before training (the config's model with no checkpoint, as iteration 0):
    python tools/eval_vqa.py work_dirs/sft --config CONFIG --data test.json --image-folder IMAGES \
        --untrained --out work_dirs/sft/vqa --show 8
The newest checkpoint of a work dir only, or one by name:
    python tools/eval_vqa.py work_dirs/sft --config CONFIG --data test.json --latest
    python tools/eval_vqa.py work_dirs/sft --config CONFIG --data test.json --checkpoint iter_50.pth
One checkpoint file, or an HF model directory written by tools/convert_to_hf.py:
    python tools/eval_vqa.py work_dirs/sft/iter_50.pth --config CONFIG --data test.json
    python tools/eval_vqa.py hf_out/ --data test.json --image-folder IMAGES [--template vicuna_v1]
A quick look: --limit 64 (the first 64 questions, always the same ones).

The data is LLaVA JSON/JSONL: per sample an "image" (relative to --image-folder, default the JSON's folder) and
"conversations" whose first human turn holds the question with one <image> and whose next gpt turn is the answer.
Answers are greedy (at most --max-new-tokens tokens, stopped at the template's stop tokens). Scoring
(mllm_align/evaluation/vqa.py): lower-cased words, punctuation and a leading article dropped; --match
first_word (default) compares the prediction's first word with the answer ("Red." and "red circle" count for
red, "The shape is red." does not), --match exact all its words. Per question type = the question's first two
words ("what colour", "how many"). The majority baseline always answers the most frequent answer of the
evaluated set (or of --baseline-data, e.g. the training JSON).

Outputs in --out (default WORK_DIR/vqa): vqa.json (per checkpoint: accuracy, baseline, per-type and per-answer
tables, predictions; the settings), vqa.csv (iteration,checkpoint,accuracy,...,type:<t>), vqa_curve.png,
predictions/<checkpoint>.jsonl (one line per question) and, with --show N, answers/<checkpoint>.png (N answered
images, green = correct, red = wrong). Re-running skips checkpoints already in vqa.json (same path, size and
mtime); other settings are an error unless --overwrite. The work is mllm_align/engine/vqa_eval.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.checkpoint import add_trust_checkpoint_argument, add_trust_remote_code_argument  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402
from mllm_align.evaluation.vqa import ANSWER_MATCHES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', nargs='?', help='a work dir of iter_*.pth files, one checkpoint, or an HF model '
                                                  'directory (omit it with --untrained to score only the untrained '
                                                  'model)')
    parser.add_argument('--config', help='the config the checkpoints were trained with (required for .pth and '
                                         '--untrained)')
    parser.add_argument('--data', required=True, help='the LLaVA JSON/JSONL of questions and answers (the test split)')
    parser.add_argument('--image-folder', help="root of the JSON's image paths (default: the JSON's folder)")
    parser.add_argument('--limit', type=int, help='only the first N questions, in file order (default: all)')
    parser.add_argument('--checkpoint', default='all',
                        help='with a work dir: "all" (default) or one checkpoint name such as iter_50.pth')
    parser.add_argument('--latest', action='store_true', help="with a work dir: only its newest checkpoint")
    parser.add_argument('--untrained', action='store_true',
                        help="also score the config's model with no checkpoint (iteration 0: accuracy before training)")
    parser.add_argument('--batch-size', type=int, default=8, help='questions per generation batch (default 8)')
    parser.add_argument('--max-new-tokens', type=int, default=8, help='answer length cap in tokens (default 8)')
    parser.add_argument('--match', choices=ANSWER_MATCHES, default='first_word',
                        help="first_word (default): the prediction's first word must be the answer; exact: all of it")
    parser.add_argument('--baseline-data', help='a LLaVA JSON whose most frequent answer is the majority baseline '
                                                '(default: the evaluated answers)')
    parser.add_argument('--show', type=int, default=0,
                        help='write answers/<checkpoint>.png with the first N answered questions (default 0: none)')
    parser.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda if available)')
    parser.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'], default='auto',
                        help="cast the model before scoring (default auto: the config's / the export's dtype)")
    parser.add_argument('--template', help='chat template for an HF directory (default: from its export info)')
    parser.add_argument('--out', help='output folder (default: WORK_DIR/vqa; required without a target)')
    parser.add_argument('--overwrite', action='store_true', help='discard results computed with other settings')
    parser.add_argument('--no-plots', action='store_true', help='do not write vqa_curve.png')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                        help='override config settings as tools/train.py does (e.g. pretrained_pth=PATH: the '
                             'stage-1 checkpoint the untrained SFT model starts from)')
    add_trust_checkpoint_argument(parser)
    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('eval_vqa: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items()), flush=True)

    from mllm_align.engine.vqa_eval import evaluate_vqa

    try:
        evaluate_vqa(args.target, args.config, data=args.data, image_folder=args.image_folder, out_dir=args.out,
                     limit=args.limit, checkpoint=args.checkpoint, latest=args.latest, untrained=args.untrained,
                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, match=args.match,
                     baseline_data=args.baseline_data, show=args.show, device=args.device, dtype=args.dtype,
                     template=args.template, overwrite=args.overwrite, progress=not args.no_progress,
                     plots=not args.no_plots, cfg_options=args.cfg_options)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'eval_vqa: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
