"""MoCa overhead: training-step time of a frozen LLM with MoCa attached over the same LLM without.

    python benchmarks/bench_moca_overhead.py [--reps 12] [--threads 1] [--shapes pretrain sft] [--hidden 512 --layers 8]

One step = forward + backward of a small random LLaMA (frozen, fp32, sdpa attention) on
``inputs_embeds`` that require grad (they stand in for the projector output, so the backward runs
through every layer as in LLaVA pre-training), next-token cross-entropy on the text tokens; no
optimiser step. LLaVA-1.5-shaped batches:

* ``pretrain``: <s> + 576 image tokens + 60 caption tokens (637 tokens), batch 2;
* ``sft``: <s> + 40 prompt tokens + 576 image tokens + 400 text tokens (1017 tokens), batch 1.

Variants, in the same process on the same model, interleaved (each repetition runs both, the order
alternating), after one warm-up step each: ``baseline`` (no MoCa) and ``moca`` (``MoCa.attach``,
u, v trainable and perturbed away from the identity, the image mask set before the pass; ``detach``
in between). Reported: median step time, min–max, and the overhead as the median over repetitions
of the per-repetition ratio moca / baseline (min–max in brackets). Also MoCa's own work timed alone
(:func:`moca_op_time`: the map and its backward for all K layers on the step's ``[B, L, D]``) and
its share of the baseline step: a floor-noise-free estimate of the overhead on a busy machine.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mllm_align.align import MoCa  # noqa: E402

NUM_IMAGE_TOKENS = 576  # (336 / 14) ** 2, CLIP ViT-L/14-336
SHAPES = {  # name: (batch, text tokens before the image, text tokens after the image)
    'pretrain': (2, 1, 60),
    'sft': (1, 41, 400),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reps', type=int, default=12, help='timed repetitions per variant and shape')
    parser.add_argument('--shapes', nargs='+', choices=list(SHAPES), default=list(SHAPES),
                        help='batch shapes to time')
    parser.add_argument('--hidden', type=int, default=512, help='LLM hidden size D')
    parser.add_argument('--layers', type=int, default=8, help='LLM decoder layers K')
    parser.add_argument('--vocab', type=int, default=32000, help='LLM vocabulary size')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default); 1 is far steadier on a CPU shared with '
                             'other jobs, where multi-threaded elementwise kernels wait on descheduled threads')
    return parser.parse_args(argv)


def build_llm(hidden: int, layers: int, vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         num_key_value_heads=max(hidden // 64, 1), max_position_embeddings=2048,
                         attn_implementation='sdpa')
    llm = LlamaForCausalLM(config).train()
    llm.requires_grad_(False)  # frozen, as in pre-training
    return llm


def make_batch(shape: str, hidden: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``inputs_embeds [B, L, D]`` (requires grad), ``labels [B, L]``, ``image_mask [B, L]``."""
    batch, before, after = SHAPES[shape]
    length = before + NUM_IMAGE_TOKENS + after
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(batch, length, hidden, generator=gen) * 0.02
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    image_mask = torch.zeros(batch, length, dtype=torch.bool)
    image_mask[:, before:before + NUM_IMAGE_TOKENS] = True
    labels[:, :before + NUM_IMAGE_TOKENS] = -100  # image and prompt positions are not supervised
    return embeds, labels, image_mask


def step(llm: torch.nn.Module, embeds: torch.Tensor, labels: torch.Tensor) -> float:
    x = embeds.detach().requires_grad_(True)
    t0 = time.perf_counter()
    logits = llm(inputs_embeds=x, use_cache=False).logits  # (B, L, V)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    loss.backward()
    return time.perf_counter() - t0


def moca_op_time(moca: MoCa, image_mask: torch.Tensor, hidden: int, reps: int) -> float:
    """Median time of MoCa's own work in one step: the map and its backward on ``[B, L, D]``, for all K layers.

    Isolated from the LLM, so much less sensitive to other jobs on the machine than the step ratio.
    """
    B, L = image_mask.shape
    gen = torch.Generator().manual_seed(2)
    hs = [torch.randn(B, L, hidden, generator=gen).requires_grad_(True) for _ in range(moca.num_layers)]
    grad = torch.randn(B, L, hidden, generator=gen)
    mask = image_mask[..., None]  # (B, L, 1)
    times = []
    for _ in range(reps + 1):  # first one is a warm-up
        t0 = time.perf_counter()
        outs = [moca.calibrate(h, k, mask) for k, h in enumerate(hs)]
        torch.autograd.backward(outs, [grad] * len(outs))
        times.append(time.perf_counter() - t0)
        moca.u.grad = moca.v.grad = None
        for h in hs:
            h.grad = None
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print('bench_moca_overhead: ' + ', '.join(f'{k}={v}' for k, v in vars(args).items())
          + f', torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}', flush=True)
    llm = build_llm(args.hidden, args.layers, args.vocab)
    moca = MoCa(args.layers, args.hidden)
    with torch.no_grad():  # trained-looking u, v (the identity would change nothing but the cost is the same)
        moca.u.add_(torch.randn(moca.u.shape) * 0.1)
        moca.v.add_(torch.randn(moca.v.shape) * 0.1)

    def run(variant: str, embeds, labels, image_mask) -> float:
        if variant == 'moca':
            moca.attach(llm)
            moca.set_image_mask(image_mask)
        try:
            return step(llm, embeds, labels)
        finally:
            if variant == 'moca':
                moca.detach()
                moca.u.grad = moca.v.grad = None

    rows = []
    for shape in args.shapes:
        embeds, labels, image_mask = make_batch(shape, args.hidden, args.vocab)
        for variant in ('baseline', 'moca'):  # warm-up
            run(variant, embeds, labels, image_mask)
        times: dict[str, list[float]] = {'baseline': [], 'moca': []}
        for rep in range(args.reps):
            order = ('baseline', 'moca') if rep % 2 == 0 else ('moca', 'baseline')
            for variant in order:
                times[variant].append(run(variant, embeds, labels, image_mask))
        ratios = [m / b for m, b in zip(times['moca'], times['baseline'])]
        B, L = labels.shape
        op = moca_op_time(moca, image_mask, args.hidden, args.reps)
        rows.append((shape, B, L, times, ratios, op))
        print(f'{shape}: B={B} L={L} baseline {statistics.median(times["baseline"]):.3f} s, '
              f'moca {statistics.median(times["moca"]):.3f} s, overhead '
              f'{(statistics.median(ratios) - 1) * 100:+.1f} %; MoCa op alone {op * 1e3:.1f} ms', flush=True)

    print('\n| shape | B × L | baseline step (s), median [min–max] | MoCa step (s), median [min–max] '
          '| overhead: median of ratios [min–max] | ratio of medians | MoCa op alone (ms) | op / baseline step |')
    print('|---|---|---|---|---|---|---|---|')
    for shape, B, L, times, ratios, op in rows:
        b, m = times['baseline'], times['moca']
        print(f'| {shape} | {B} × {L} | {statistics.median(b):.3f} [{min(b):.3f}–{max(b):.3f}] '
              f'| {statistics.median(m):.3f} [{min(m):.3f}–{max(m):.3f}] '
              f'| {(statistics.median(ratios) - 1) * 100:+.1f} % '
              f'[{(min(ratios) - 1) * 100:+.1f} – {(max(ratios) - 1) * 100:+.1f} %] '
              f'| {(statistics.median(m) / statistics.median(b) - 1) * 100:+.1f} % '
              f'| {op * 1e3:.1f} | {op / statistics.median(b) * 100:.2f} % |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
