"""Benchmark: memory and time of the visual-word loss vs dense [B, L, V] formulations.

    python benchmarks/bench_visual_words_memory.py            # ~1-2 min on 2 CPU cores
    python benchmarks/bench_visual_words_memory.py --batch 2  # B = 2

One training step's loss part (forward + backward) at L = 2048 positions, V = 32000, D = 64, with
576 image slots per sample right after a BOS (LLaVA-1.5's layout), logits given as a float32 leaf
tensor that needs a gradient (it stands for the LLM output). Variants:

* ``vw``        :func:`mllm_align.align.visual_word_loss` (rows t−1 gathered chunk by chunk, fused KL).
* ``gathered``  the same maths written plainly: gather the M rows → [M, V], ``log_softmax`` both sides,
                ``kl_div`` (what "compute only at image slots" gives without chunking).
* ``dense``     softmax targets scattered into a dense [B, L, V] tensor, KL at every position, masked
                (the reference's label layout, ``vw_pif_arch.py``).
* ``seed``      the reference's own non-pif code path (``vw_llama.py``): ``vm_head`` over every
                position ([B, L, V]), ``.contiguous()`` shifted copies of logits and targets, boolean
                selection, ``KLDivLoss('batchmean')``.
* ``ce``, ``ce+vw``, ``ce+dense``  the same with the text cross-entropy the step computes anyway
                (``causal_lm_loss`` on the text positions), to show what the visual loss adds to it.

Each variant runs in two fresh processes (OMP_NUM_THREADS=1 by default), one per measure:

* memory: the RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over two steps minus
  the RSS after the inputs are built (libraries imported first), so it counts everything the step
  allocates, the gradient of the logits included; glibc's mmap threshold is lowered so that RSS follows
  the live tensors (``_common.run_child``).
* time: best of 3 steps after one warm-up, with the default allocator.

Prints a markdown table for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure_step, print_report, run_variants  # noqa: E402

VARIANTS = ('vw', 'gathered', 'dense', 'seed', 'ce', 'ce+vw', 'ce+dense')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=1, help='B (default 1)')
    parser.add_argument('--length', type=int, default=2048, help='L (default 2048)')
    parser.add_argument('--vocab', type=int, default=32000, help='V (default 32000)')
    parser.add_argument('--hidden', type=int, default=64, help='D (default 64)')
    parser.add_argument('--slots', type=int, default=576, help='image slots per sample (default 576)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads per process (default 1: steadier timings on a shared machine)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument('--measure', choices=['memory', 'time'], default='time', help=argparse.SUPPRESS)
    return parser.parse_args()


def _losses(variant: str, logits, embeds, weight, image_mask, labels):
    import torch
    import torch.nn.functional as F

    from mllm_align.align import visual_word_loss
    from mllm_align.models import causal_lm_loss

    def gathered():
        b, t = image_mask.nonzero(as_tuple=True)
        keep = t > 0
        b, t = b[keep], t[keep]
        log_p = torch.log_softmax(logits[b, t - 1], -1)  # (M, V)
        log_q = torch.log_softmax(embeds[b, t] @ weight.T, -1)  # (M, V)
        return F.kl_div(log_p, log_q, log_target=True, reduction='batchmean')

    def dense():
        q = torch.softmax(embeds[image_mask] @ weight.T, -1)  # (S, V)
        labels_vw = torch.zeros_like(logits)
        labels_vw[image_mask] = q  # (B, L, V) dense targets
        log_p = torch.log_softmax(logits[:, :-1], -1)  # (B, L-1, V)
        kl = F.kl_div(log_p, labels_vw[:, 1:], reduction='none').sum(-1)  # (B, L-1)
        mask = image_mask[:, 1:]
        return (kl * mask).sum() / mask.sum()

    def seed():
        visual_labels = F.linear(embeds, weight)  # (B, L, V): vm_head at every position
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = visual_labels[..., 1:, :].contiguous()
        mask = image_mask[..., 1:].contiguous()
        log_p = F.log_softmax(shift_logits[mask], -1)
        q = F.softmax(shift_labels[mask], -1)
        return torch.nn.KLDivLoss(reduction='batchmean')(log_p, q)

    vw = {'vw': lambda: visual_word_loss(logits, embeds, weight, image_mask),
          'gathered': gathered, 'dense': dense, 'seed': seed}
    total = 0
    parts = variant.split('+')
    if 'ce' in parts:
        total = total + causal_lm_loss(logits, labels)
    for p in parts:
        if p != 'ce':
            total = total + vw[p]()
    return total


def child(args: argparse.Namespace) -> None:
    import torch

    import mllm_align.align  # noqa: F401 - imported before the baseline RSS is read
    import mllm_align.models  # noqa: F401
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, L, V, D = args.batch, args.length, args.vocab, args.hidden
    logits = torch.randn(B, L, V, requires_grad=True)  # (B, L, V) the LLM output
    embeds = torch.randn(B, L, D, requires_grad=True)  # (B, L, D)
    weight = (0.5 * torch.randn(V, D)).requires_grad_()  # (V, D) vm_head
    image_mask = torch.zeros(B, L, dtype=torch.bool)
    image_mask[:, 1:1 + args.slots] = True  # BOS, then the image
    labels = torch.randint(0, V, (B, L))
    labels[:, :1 + args.slots] = -100
    def zero_grad() -> None:
        for t in (logits, embeds, weight):
            t.grad = None

    measure_step(lambda: _losses(args.child, logits, embeds, weight, image_mask, labels), zero_grad, args.measure)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    options = dict(batch=args.batch, length=args.length, vocab=args.vocab, hidden=args.hidden, slots=args.slots)
    results = run_variants(__file__, args.variants, options, args.threads)

    B, L, V = args.batch, args.length, args.vocab
    print(f'\nB={B}, L={L}, V={V}, D={args.hidden}, {args.slots} image slots per sample; one [B, L, V] float32 '
          f'tensor = {B * L * V * 4 / 2**20:.0f} MiB')
    print_report(results, 'vw', args.threads, digits=1)
    if {'ce', 'ce+vw', 'ce+dense'} <= results.keys():
        extra_vw = results['ce+vw']['peak_mib'] - results['ce']['peak_mib']
        extra_dense = results['ce+dense']['peak_mib'] - results['ce']['peak_mib']
        print(f'\nMemory the visual loss adds to a step with the text CE: vw {extra_vw:.0f} MiB, dense '
              f'{extra_dense:.0f} MiB ({extra_dense / max(extra_vw, 1e-9):.1f}x).')


if __name__ == '__main__':
    main()
