"""MMVM (visual matching) accuracy: run a model on the bench, or score a predictions file; per-category report.

A work dir's checkpoints (with their config), one checkpoint, an HF directory, and the untrained model:
    python tools/eval_mmvm.py work_dirs/sft --config CONFIG --bench data/real/mmvm_mini [--untrained]
    python tools/eval_mmvm.py hf_out/ --bench MMVM_DIR [--template qwen2] [--limit 100]
An existing predictions file (our JSONL with index + prediction, or the evaluation kit's .xlsx / .tsv):
    python tools/eval_mmvm.py --predictions kit_output.xlsx --bench MMVM_DIR --policy vlmevalkit
Several runs side by side (their mmvm.json files, or predictions files) in one chart:
    python tools/eval_mmvm.py --compare work_dirs/a/mmvm/mmvm.json work_dirs/b/mmvm/mmvm.json --out cmp/

The bench is the released layout (MMVM_DIR/mllm_match_eval_full.tsv + match_bench/case_xxx/...), or the
real-photo mini bench `python data/prepare_real.py --only mmvm_mini` writes to data/real/mmvm_mini. Each
question is asked as the kit asks it (both images, then the question with its options), greedy decoding.
Answers are read with --policy strict (default: JSON, markdown and "answer is b" are read; the pronoun "I",
the article "A", "10" for "1" and two-choice answers are not) or vlmevalkit (the kit's rules exactly, to
compare with published numbers); --circular asks each question once per rotation of its candidates and
counts it right only if right every time. Outputs in --out (default WORK_DIR/mmvm): mmvm.json (per checkpoint:
overall, the eight categories, accuracy by candidate count, per-question predictions and choices), mmvm.csv,
mmvm_curve.png, mmvm_categories.png, predictions/<checkpoint>.jsonl (written as it goes: a killed run resumes).
The work is mllm_align/engine/mmvm_eval.py; the rules: mllm_align/metrics/mmvm.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.checkpoint import add_trust_checkpoint_argument, add_trust_remote_code_argument  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('target', nargs='?', help='a work dir of iter_*.pth, one checkpoint, or an HF model directory')
    p.add_argument('--config', help='the config the checkpoints were trained with (required for .pth, --untrained)')
    p.add_argument('--bench', help='the MMVM folder (mllm_match_eval_full.tsv + match_bench/)')
    p.add_argument('--tsv', help='another TSV of the bench (default BENCH/mllm_match_eval_full.tsv)')
    p.add_argument('--predictions', help='score this predictions file instead of running a model')
    p.add_argument('--compare', nargs='+', metavar='MMVM_JSON', help='plot these runs side by side (mmvm.json files)')
    p.add_argument('--policy', choices=['strict', 'vlmevalkit'], default='strict')
    p.add_argument('--circular', action='store_true', help='ask every rotation of the candidates; right only if '
                                                           'right every time')
    p.add_argument('--limit', type=int, help='only the first N questions (default: all)')
    p.add_argument('--checkpoint', default='all', help='with a work dir: "all" (default) or one iter_N.pth name')
    p.add_argument('--latest', action='store_true', help='with a work dir: only its newest checkpoint')
    p.add_argument('--untrained', action='store_true', help="also score the config's model with no checkpoint")
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--max-new-tokens', type=int, default=32)
    p.add_argument('--device')
    p.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'], default='auto')
    p.add_argument('--template', help='chat template for an HF directory (default: from its export info)')
    p.add_argument('--out', help='output folder (default WORK_DIR/mmvm; required for --compare)')
    p.add_argument('--overwrite', action='store_true', help='discard results computed with other settings')
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE')
    add_trust_checkpoint_argument(p)
    add_trust_remote_code_argument(p)
    return p.parse_args(argv)


def _print_record(rec: dict) -> None:
    from rich.console import Console

    from mllm_align.evaluation.mmvm import report_table
    Console().print(report_table(rec))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('eval_mmvm: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items()), flush=True)
    from mllm_align.engine.mmvm_eval import compare_runs, evaluate_mmvm, score_predictions_file
    try:
        if args.compare:
            if not args.out:
                raise ValueError('--compare needs --out (where the chart goes).')
            runs = {}
            for path in args.compare:
                doc = json.loads(Path(path).read_text())
                for rec in doc.get('results', []):
                    runs[f'{Path(path).parent.parent.name}/{Path(rec["checkpoint"]).name}'] = rec
            Path(args.out).mkdir(parents=True, exist_ok=True)
            print(f'eval_mmvm: wrote {compare_runs(runs, Path(args.out) / "mmvm_compare.png")}')
            return 0
        if not args.bench:
            raise ValueError('--bench is required (the MMVM folder).')
        if args.predictions:
            rec = score_predictions_file(args.predictions, bench=args.bench, tsv=args.tsv, policy=args.policy)
            _print_record(rec)
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / 'mmvm_predictions_score.json').write_text(json.dumps(rec, indent=1) + '\n')
            return 0
        evaluate_mmvm(args.target, args.config, bench=args.bench, tsv=args.tsv, limit=args.limit, out_dir=args.out,
                      checkpoint=args.checkpoint, latest=args.latest, untrained=args.untrained,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, policy=args.policy,
                      circular=args.circular, device=args.device, dtype=args.dtype, template=args.template,
                      overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots,
                      cfg_options=args.cfg_options)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'eval_mmvm: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
