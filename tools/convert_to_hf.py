"""Convert a trained mllm_align LLaVA checkpoint into a transformers LlavaForConditionalGeneration directory.

    python tools/convert_to_hf.py CONFIG work_dirs/CONFIG/iter_5000.pth hf_out/
    python tools/convert_to_hf.py CONFIG CKPT OUT --overwrite --dtype bfloat16
    python tools/convert_to_hf.py CONFIG CKPT OUT --no-verify

The model is rebuilt from CONFIG (frozen base weights from its model paths) and the checkpoint's
trained weights are loaded on top; LoRA adapters are merged. The image processor comes from
--image-processor, else the config (``image_processor``), else the vision tower directory.

The export is made for evaluation harnesses (lmms-eval ``llava_hf``, VLMEvalKit): its chat template
is the one the model was trained with, taken from CONFIG (``model.template``, else the train
dataset's ``template``; ``plain``, ``vicuna_v1``, ``llama3``, ``qwen2``, ``phi3``, ``mistral``), so
``processor.apply_chat_template(messages, add_generation_prompt=True)`` with
``{"type": "image"}`` / ``{"type": "text"}`` content gives the training prompt; the image processor
pads to a square when the train dataset did (``pad_image_to_square``, default True); the
tokenizer adds no BOS of its own and returns no ``token_type_ids``, so ``processor(images=...,
text=prompt, return_tensors="pt")`` goes straight into ``model.generate(**inputs)``, which stops at
the template's stop tokens.

By default the export is verified: it is loaded back with ``from_pretrained`` and its logits on
one synthetic sample (a random image + a short prompt) are compared with the mllm_align model's;
the script exits with status 1 if the max abs difference exceeds --atol.

The saved processor is also loaded back and checked against mllm_align's own prompt ids and
pixel values (a mismatch stops the export).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mllm_align.engine.build import (  # noqa: E402
    build_model_from_config,
    export_settings_from_config,
    image_processor_from_config,
)
from mllm_align.engine.checkpoint import UnsafeCheckpointError, add_trust_checkpoint_argument  # noqa: E402
from mllm_align.models.export import compare_logits  # noqa: E402

# Default tolerance on max |logit diff|. An fp32 export matches to rounding. A half-precision
# export is by default verified in fp32 (weights upcast exactly); what remains is the rounding of
# LoRA deltas merged into half-precision weights.
DEFAULT_ATOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the mllm_align config the checkpoint was trained with; the chat template '
                        "(model.template) and image padding (train dataset's pad_image_to_square) come from it")
    parser.add_argument('checkpoint', help="the run's checkpoint (iter_N.pth; trained weights only)")
    parser.add_argument('out_dir', help='output directory for the HF model (must be new or empty)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT if it holds a previous export (never a non-export directory)')
    parser.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'],
                        help='cast the model to this dtype before export (default: keep the LLM dtype)')
    parser.add_argument('--image-processor', metavar='DIR',
                        help='directory of the HF image processor to save with the export '
                             '(default: from the config or the vision tower directory)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip loading the export back and comparing logits')
    parser.add_argument('--verify-dtype', choices=['float32', 'native'], default='float32',
                        help='dtype of the verification forward passes: float32 (default; upcasts both '
                             'models, needs fp32 memory for both) or the export dtype (native)')
    parser.add_argument('--atol', type=float,
                        help='max abs logit difference accepted by the verification '
                             '(default: 1e-3 for a float32 export, 5e-2 for bfloat16/float16)')
    parser.add_argument('--device', default='cpu', help="device for building and verifying (e.g. 'cuda')")
    add_trust_checkpoint_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('convert_to_hf: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items()), flush=True)

    from mllm_align.engine.build import load_config
    from mllm_align.models.builders import load_image_processor, resolve_dtype

    cfg = load_config(args.config)
    try:
        settings = export_settings_from_config(cfg)
    except ValueError as exc:
        print(f'convert_to_hf: error: {exc}', file=sys.stderr)
        return 1
    try:
        model = build_model_from_config(cfg, args.checkpoint)
    except UnsafeCheckpointError as exc:
        print(f'convert_to_hf: error: {exc}', file=sys.stderr)
        return 1
    if args.dtype is not None:
        model.to(resolve_dtype(args.dtype))
    model.to(args.device)
    image_processor = (load_image_processor(args.image_processor) if args.image_processor
                       else image_processor_from_config(cfg))
    # The model writes itself (LLaVAModel.export_hf → mllm_align.models.export.export_llava_to_hf).
    out = model.export_hf(args.out_dir, image_processor=image_processor, overwrite=args.overwrite,
                          source_config=str(Path(args.config).resolve()),
                          source_checkpoint=str(Path(args.checkpoint).resolve()), **settings)

    rows = [('output', str(out)), ('image processor', type(image_processor).__name__ if image_processor
                                   else 'none (no LlavaProcessor saved)'),
            ('chat template', f"{settings['template']} (from the config)" if settings['template']
             else "the tokenizer's own (the config sets no template)"),
            ('image padding', 'pad to square (as training)' if settings['pad_image_to_square'] else 'none')]
    status = 0
    if not args.no_verify:
        export_dtype = next(model.language_model.parameters()).dtype
        atol = args.atol if args.atol is not None else DEFAULT_ATOL.get(export_dtype, 5e-2)
        if args.verify_dtype == 'float32':
            model.float()  # the export is written; upcasting the source is exact for its weights
        diff = compare_logits(model, out)
        ok = diff <= atol
        verify_dtype = str(next(model.language_model.parameters()).dtype).replace('torch.', '')
        rows.append((f'verify ({verify_dtype}): max abs logit diff',
                     f'{diff:.3e} (atol {atol:.0e}) {"OK" if ok else "FAILED"}'))
        status = 0 if ok else 1
    else:
        rows.append(('verify', 'skipped (--no-verify)'))
    width = max(len(k) for k, _ in rows)
    print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows), flush=True)
    if status:
        print(f'Verification failed: the export in {out} does not reproduce the mllm_align logits. '
              'Check the config matches the checkpoint, or rerun with --atol if the dtype explains it.',
              file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(main())
