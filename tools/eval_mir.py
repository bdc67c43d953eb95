"""Score saved checkpoints with the Modality Integration Rate (MIR; lower = better aligned).

A whole series (the base model is built once; only the trained weights change per iteration):
    python tools/eval_mir.py work_dirs/demo --config CONFIG --eval-num 20 --out work_dirs/demo/mir
One checkpoint:
    python tools/eval_mir.py work_dirs/run/iter_2000.pth --config CONFIG
An HF model directory (a LlavaForConditionalGeneration written by tools/convert_to_hf.py, or any
model_type with a registered loader, see mllm_align.models.register_hf_dir_loader):
    python tools/eval_mir.py hf_out/ --images IMAGES_DIR [--template vicuna_v1]
(plug-ins the export recorded, e.g. MoCa's moca.safetensors, are re-attached as in training)
Paper-comparable setting (100 TextVQA images, CNN/DailyMail stories):
    python tools/eval_mir.py RUN --config CONFIG --images textvqa/train_images \
        --texts cnn/stories --eval-num 100 --device cuda --dtype bfloat16

Outputs in --out (default WORK_DIR/mir): mir.json (per-checkpoint, per-layer results + settings),
mir.csv (iteration,checkpoint,mir,num_layers,...,layer_<k>), mir_curve.png (MIR vs iteration) and
mir_layers.png (per-layer distance D_k, one line per iteration). Re-running skips checkpoints already
in mir.json (same file path, size and mtime); other settings are an error unless --overwrite.

Defaults: images = the config's train dataset (data_path + image_folder); texts = data/mir_texts
(32 short self-written paragraphs, for the offline demo). Each text is the assistant reply after
the bare image in the model's template (the seed's prompt layout), cut to --text-max-tokens tokens;
the text tokens are all positions after the image (--text-tokens after_image, the seed's choice).
The probe runs through the model twice (streaming, memory flat in N). Details:
mllm_align/engine/mir_eval.py (config → runner), mllm_align/evaluation/ (the checkpoint runner and
MIREvaluator), mllm_align/data/mir_probe.py, mllm_align/models/hidden_states.py, mllm_align/metrics/mir.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.data.mir_probe import DEFAULT_TEXT_MAX_TOKENS  # noqa: E402
from mllm_align.engine.checkpoint import add_trust_checkpoint_argument, add_trust_remote_code_argument  # noqa: E402
from mllm_align.engine.config_overrides import CfgOptionsAction  # noqa: E402
from mllm_align.metrics.mir import SQRT_MODES  # noqa: E402
from mllm_align.models.hidden_states import TEXT_TOKENS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', help='a work dir of iter_*.pth files (or DeepSpeed checkpoint directories), one '
                                       'checkpoint, or an HF model directory (e.g. a Llava export)')
    parser.add_argument('--config', help='the config the checkpoints were trained with (required for .pth)')
    parser.add_argument('--images', help="probe images: a folder or a LLaVA .json/.jsonl (default: the config's "
                                         'train dataset data_path)')
    parser.add_argument('--image-folder', help="root of the JSON's relative image paths (default: the config's "
                                               "image_folder, else the JSON's folder)")
    parser.add_argument('--texts', help='probe texts: a folder of .txt/.story files or a .jsonl of {"text": ...} '
                                        '(default: data/mir_texts)')
    parser.add_argument('--eval-num', type=int, default=100,
                        help='N image-text pairs (default 100, as the seed; fewer available → warning, all used)')
    parser.add_argument('--sqrt', choices=SQRT_MODES, default='exact',
                        help="trace square root: exact (default, float64) or the seed's seed-sqrtm / seed-fast")
    parser.add_argument('--layers', default='all',
                        help='LLM layers (HF hidden_states indices): all (1..K, default), "1-16", "1,3,5"')
    parser.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda if available)')
    parser.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'], default='auto',
                        help="cast the model before scoring (default auto: the config's dtype)")
    parser.add_argument('--text-tokens', choices=TEXT_TOKENS, default='after_image',
                        help='which non-vision positions count as text: after_image (seed, default), text (the '
                             'text tokens only), all (BOS and system prompt too)')
    parser.add_argument('--placement', choices=['reply', 'user'], default='reply',
                        help='put the text in the assistant reply after the image (seed, default) or in the user turn')
    parser.add_argument('--text-max-tokens', type=int, default=DEFAULT_TEXT_MAX_TOKENS,
                        help=f'cut each text to this many tokens (default {DEFAULT_TEXT_MAX_TOKENS}; 0 = no cap)')
    parser.add_argument('--seed', type=int, default=0, help='pairing permutation seed (default 0)')
    parser.add_argument('--sorted', action='store_true', help='pair in sorted order instead of a seeded permutation')
    parser.add_argument('--batch-size', type=int, default=1, help='pairs per forward pass (default 1)')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='skip files PIL cannot read instead of failing')
    parser.add_argument('--template', help='chat template for an HF directory (default: from its export info)')
    parser.add_argument('--out', help='output folder (default: WORK_DIR/mir)')
    parser.add_argument('--untrained', action='store_true',
                        help="also score the config's model before training (iteration 0: the projector at its "
                             'seeded random init), saved once as OUT/untrained/iter_0.pth')
    parser.add_argument('--overwrite', action='store_true', help='discard results computed with other settings')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                        help='override config settings as tools/train.py does (the run\'s own --cfg-options)')
    parser.add_argument('--no-plots', action='store_true', help='do not write the PNGs')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--replay-mb', type=float, default=1024,
                        help="MiB of the first pass's hidden states kept for the second pass instead of a second "
                             'forward over the probe (default 1024; 0: always run the model twice)')
    add_trust_checkpoint_argument(parser)
    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('eval_mir: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items()), flush=True)

    from mllm_align.engine.mir_eval import evaluate_mir

    try:
        evaluate_mir(args.target, args.config, out_dir=args.out, images=args.images, image_folder=args.image_folder,
                     texts=args.texts, eval_num=args.eval_num, sqrt=args.sqrt, layers=args.layers,
                     device=args.device, dtype=args.dtype, text_tokens=args.text_tokens, placement=args.placement,
                     text_max_tokens=args.text_max_tokens, seed=None if args.sorted else args.seed,
                     batch_size=args.batch_size, skip_bad_images=args.skip_bad_images, template=args.template,
                     overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots,
                     untrained=args.untrained, cfg_options=args.cfg_options, replay_mb=args.replay_mb)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'eval_mir: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
