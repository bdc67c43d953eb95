"""Ask a model questions about an image in the terminal (as xtuner's `chat`).

One question:
    python tools/chat.py CONFIG work_dirs/sft/iter_50.pth --image cat.png --question "What colour is the cat?"
An interactive session (questions from stdin until an empty line or EOF; earlier turns are kept as history):
    python tools/chat.py CONFIG work_dirs/sft/iter_50.pth --image cat.png
    printf 'What shape is it?\nWhat colour?\n' | python tools/chat.py CONFIG CKPT --image cat.png
An HF model directory written by tools/convert_to_hf.py (its own image processor and recorded template):
    python tools/chat.py hf_out/ --image cat.png
The config's model without a checkpoint (e.g. before SFT): omit CKPT.

Answers are greedy by default (--temperature 0); --temperature T > 0 samples with --seed. Each answer is
printed as "A: <answer>"; the resolved model source is printed first. The work is
mllm_align/engine/vqa_eval.py (load_model_source) and mllm_align/evaluation/chat.py (ChatSession).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_align.engine.checkpoint import add_trust_checkpoint_argument, add_trust_remote_code_argument  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help='an mllm_align config (.py) or an HF model directory')
    parser.add_argument('checkpoint', nargs='?', help='an iter_N.pth of the config\'s run (omit: the model as the '
                                                      'config builds it; not with an HF directory)')
    parser.add_argument('--image', required=True, help='the image to ask about')
    parser.add_argument('--question', help='ask this one question and exit (default: read questions from stdin)')
    parser.add_argument('--max-new-tokens', type=int, default=64, help='answer length cap in tokens (default 64)')
    parser.add_argument('--temperature', type=float, default=0.0,
                        help='0 (default): greedy; > 0: sample at this temperature with --seed')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (default 0)')
    parser.add_argument('--system', help="system prompt (default: the template's)")
    parser.add_argument('--template', help='chat template for an HF directory (default: from its export info)')
    parser.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda if available)')
    parser.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'], default='auto',
                        help="model precision (default auto: the config's / the export's)")
    add_trust_checkpoint_argument(parser)
    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def _questions(one: str | None):
    if one is not None:
        yield one
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print('Q: ', end='', flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():  # EOF or an empty line ends the session
            return
        yield line.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('chat: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items()), flush=True)

    from mllm_align.data.image_loading import load_image
    from mllm_align.engine.vqa_eval import load_model_source
    from mllm_align.evaluation.chat import ChatSession

    try:
        if args.temperature < 0:
            raise ValueError(f'--temperature must be >= 0 (0 = greedy), got {args.temperature}.')
        if args.max_new_tokens < 1:
            raise ValueError(f'--max-new-tokens must be >= 1, got {args.max_new_tokens}.')
        if not Path(args.image).is_file():
            raise FileNotFoundError(f'--image {args.image!r} does not exist.')
        image = load_image(args.image)
        source = load_model_source(args.source, args.checkpoint, template=args.template, device=args.device,
                                   dtype=args.dtype)
        print(f'chat: model source: {source.description}', flush=True)
        session = ChatSession(source.model, image, image_processor=source.image_processor,
                              pad_to_square=source.pad_to_square, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=args.seed, system=args.system)
        for question in _questions(args.question):
            print(f'A: {session.ask(question)}', flush=True)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'chat: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
