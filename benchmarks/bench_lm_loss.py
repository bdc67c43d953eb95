"""Benchmark: the LM loss on kept logits (``logits_to_keep``) vs full ``[B, L, V]`` logits.

    python benchmarks/bench_lm_loss.py                      # fp32, ~1 min on 2 CPU cores
    python benchmarks/bench_lm_loss.py --dtype bfloat16     # the GPU training dtype

One pre-training step's LLM part (forward + backward; LLM frozen, the spliced embeddings are a leaf
that needs a gradient, standing for the projector output) in LLaVA-1.5's pre-training layout: BOS, 576
image slots, a caption of ``--caption`` tokens (all supervised). A random ``LlamaForCausalLM`` with
V = 32000 and a small hidden size, so that lm_head and the logits weigh what they weigh at 7B relative
to the rest of the memory. Variants:

* ``seed``  logits at every position, cross-entropy as LLaVA/HF compute it: the shifted ``[B, L-1, V]``
            logits upcast to float32 as a whole, ``ignore_index`` (mllm_align's code before this change).
* ``full``  logits at every position, :func:`mllm_align.models.causal_lm_loss` (supervised rows gathered
            before the upcast).
* ``kept``  what ``LLaVAModel.compute_loss`` now does: HF ``logits_to_keep`` = the positions that predict a
            label (:func:`mllm_align.models.supervised_positions`), so lm_head runs on those rows only.

Each variant runs in fresh processes, one per measure (see ``_common.run_child``): peak memory is the RSS
high-water mark of two steps above the RSS after the model and inputs are built; time is the best of 3
steps after a warm-up. Prints a markdown table for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure_step, print_report, run_variants  # noqa: E402

VARIANTS = ('seed', 'full', 'kept')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=4, help='B (default 4)')
    parser.add_argument('--caption', type=int, default=40, help='caption tokens per sample (default 40)')
    parser.add_argument('--vocab', type=int, default=32000, help='V (default 32000)')
    parser.add_argument('--hidden', type=int, default=256, help='D (default 256)')
    parser.add_argument('--layers', type=int, default=2, help='decoder layers (default 2)')
    parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process (default 1)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument('--measure', choices=['memory', 'time'], default='time', help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from mllm_align.constants import IGNORE_INDEX
    from mllm_align.models import causal_lm_loss, supervised_positions

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    D = args.hidden
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=D, intermediate_size=4 * D,
                                       num_hidden_layers=args.layers, num_attention_heads=4,
                                       num_key_value_heads=4, max_position_embeddings=2048,
                                       attn_implementation='sdpa')).to(dtype).requires_grad_(False)
    B, L = args.batch, 1 + 576 + args.caption
    embeds = (0.02 * torch.randn(B, L, D)).to(dtype).requires_grad_()  # (B, L, D) spliced inputs
    labels = torch.randint(0, args.vocab, (B, L))
    labels[:, :1 + 576] = IGNORE_INDEX  # BOS and the image are not supervised
    for b in range(B):  # captions of different lengths: right padding is unsupervised too
        labels[b, L - b * 3:] = IGNORE_INDEX

    def step() -> torch.Tensor:
        if args.child == 'kept':
            positions = supervised_positions(labels)
            logits = llm(inputs_embeds=embeds, logits_to_keep=positions, use_cache=False).logits
            return causal_lm_loss(logits, labels, positions)
        logits = llm(inputs_embeds=embeds, use_cache=False).logits  # (B, L, V)
        if args.child == 'full':
            return causal_lm_loss(logits, labels)
        shift = logits[:, :-1].float()  # (B, L-1, V) float32 copy
        return F.cross_entropy(shift.reshape(-1, shift.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)

    measure_step(step, lambda: setattr(embeds, 'grad', None), args.measure)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    options = {name: getattr(args, name) for name in ('batch', 'caption', 'vocab', 'hidden', 'layers', 'dtype')}
    results = run_variants(__file__, args.variants, options, args.threads)

    B, L, V = args.batch, 1 + 576 + args.caption, args.vocab
    print(f'\nB={B}, L={L} (BOS + 576 image + {args.caption} caption), V={V}, D={args.hidden}, '
          f'{args.layers} layers, {args.dtype}; one [B, L, V] {args.dtype} tensor = '
          f'{B * L * V * (4 if args.dtype == "float32" else 2) / 2**20:.0f} MiB')
    print_report(results, 'seed', args.threads, digits=2)


if __name__ == '__main__':
    main()
