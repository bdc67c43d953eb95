"""CAL overhead: training-step time with CAL over without, this implementation vs the original's formulation.

    python benchmarks/bench_cal_overhead.py [--reps 8] [--shapes pretrain sft] [--hidden 512 --layers 8]

A real :class:`LLaVAModel` step (vision tower → projector → splice → LLM → loss, then backward; no
optimiser step) on LLaVA-1.5-shaped batches with a small random LLaMA (vocabulary 32000) and a small
random CLIP at 336 px / patch 14 (576 image tokens):

* ``pretrain``: <s> <image> + ~60 caption tokens (all supervised); LLM frozen, projector trains.
* ``sft``: <s> + a ~40-token prompt + <image> + ~400 text tokens (multi-turn: ~30 % prompt, ~70 %
  answers supervised); LLM and projector train.

Variants, timed in the same process, interleaved (each repetition runs every variant once, in a
rotated order), after one warm-up step each:

* ``baseline``: no CAL: ``LLaVAModel``'s plain loss, which asks the LLM for logits only at the
  positions that predict a label (HF ``logits_to_keep``) and upcasts only those rows.
* ``baseline_lean``: no second pass, ``cal_loss`` with all weights 1 on full ``[B, L, V]`` logits (a
  plug-in without ``logits_positions``): the same loss value as ``baseline``, computed the way both
  were before logits were kept.
* ``cal``: :class:`mllm_align.align.CAL` defaults (image tokens dropped, per-sample pooling).
* ``cal_mask_flat``: ``CAL(no_image_pass='mask', pooling='flat')`` (the original's numbers, this
  implementation's gather-first memory handling).
* ``original``: the reference code's computation written out (second pass over the full sequence
  with the image keys masked, full-vocabulary fp32 logits of both passes plus a clone, flat pooling,
  cross-entropy over all [B·(L-1), V] rows).

``cal`` over ``baseline`` is CAL's cost with both computed the lean way (kept logits in the
with-image and the no-image pass).

Reported: median step time per variant, the spread (min–max), and the overhead as the median over
repetitions of the per-repetition ratio variant / reference (min–max in brackets), plus the ratio of
the best (minimum) times, the estimate least disturbed by other jobs on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mllm_align.align import CAL, cal_loss  # noqa: E402
from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from mllm_align.models import AlignPlugin, LLaVAModel, MultimodalInputs, VisionTower  # noqa: E402


class _FullLogitsLoss(AlignPlugin):
    """A plug-in that replaces ``loss_lm`` and reads logits at every position (as the original does)."""

    replaces_lm_loss = True

    def logits_positions(self, inputs, lm_positions):
        return None

    def loss(self, model, inputs, logits, positions):
        return self.compute_loss(model, inputs, logits)


class UniformWeights(_FullLogitsLoss):
    """No second pass: CAL's loss with all weights 1 (= the mean cross-entropy)."""

    def compute_loss(self, model, inputs, logits):
        weights = torch.ones(logits.shape[0], logits.shape[1] - 1)
        return {'loss_lm': cal_loss(logits, inputs.labels, weights)}


class OriginalCAL(_FullLogitsLoss):
    """The reference code's CAL loss (foundation-multimodal-models/CAL @ 633a06c), as a plug-in."""

    def compute_loss(self, model, inputs, logits):
        labels = inputs.labels
        V = logits.shape[-1]
        with torch.no_grad():
            masked = MultimodalInputs(inputs.inputs_embeds.clone(),
                                      inputs.attention_mask & ~inputs.image_mask, inputs.position_ids,
                                      torch.zeros_like(inputs.image_mask))
            logits_wo_img = model.run_llm(masked).logits.float()  # (B, L, V) fp32
        shift_logits = logits.float()[:, :-1].contiguous().view(-1, V)  # (B·(L-1), V)
        shift_labels = labels[:, 1:].contiguous().view(-1)
        with torch.no_grad():
            labels_c = shift_labels.clone()
            labels_c[labels_c == IGNORE_INDEX] = 0
            w_img = shift_logits.clone()  # full-vocabulary copy
            wo_img = logits_wo_img[:, :-1].contiguous().reshape(-1, V)
            del logits_wo_img
            w_img = torch.gather(w_img, 1, labels_c[:, None])
            wo_img = torch.gather(wo_img, 1, labels_c[:, None])
            sub = torch.clamp(w_img - wo_img, min=1, max=5)
            sub = F.avg_pool1d(sub[:, 0][None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
        loss = F.cross_entropy(shift_logits, shift_labels, reduction='none') * sub
        return {'loss_lm': loss.sum() / (sub[shift_labels != IGNORE_INDEX].sum() + 1e-6)}


def build_model(hidden: int, layers: int, vocab: int, freeze_llm: bool) -> LLaVAModel:
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
        max_position_embeddings=2048, attn_implementation='sdpa', pad_token_id=0, bos_token_id=1))
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=336, patch_size=14))
    return LLaVAModel(llm=llm, visual_encoder=VisionTower(model=clip), freeze_llm=freeze_llm)


def make_batch(shape: str, batch: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for _ in range(batch):
        if shape == 'pretrain':
            n = int(torch.randint(50, 71, (), generator=g))
            text = torch.randint(3, vocab, (n,), generator=g)
            ids.append(torch.cat([torch.tensor([1, IMAGE_TOKEN_INDEX]), text]))
            labels.append(torch.cat([torch.tensor([IGNORE_INDEX, IGNORE_INDEX]), text]))
        else:
            prompt = torch.randint(3, vocab, (int(torch.randint(35, 46, (), generator=g)),), generator=g)
            n = int(torch.randint(380, 421, (), generator=g))
            text = torch.randint(3, vocab, (n,), generator=g)
            lab = text.clone()
            # Multi-turn: alternate question (ignored) and answer (supervised) spans, ~30 % / ~70 %.
            pos = 0
            while pos < n:
                q = int(torch.randint(15, 30, (), generator=g))
                a = int(torch.randint(40, 70, (), generator=g))
                lab[pos:pos + q] = IGNORE_INDEX
                pos += q + a
            ids.append(torch.cat([torch.tensor([1]), prompt, torch.tensor([IMAGE_TOKEN_INDEX]), text]))
            labels.append(torch.cat([torch.full((1 + len(prompt) + 1,), IGNORE_INDEX), lab]))
    T = max(len(x) for x in ids)
    input_ids = torch.zeros(batch, T, dtype=torch.long)
    label_t = torch.full((batch, T), IGNORE_INDEX)
    attn = torch.zeros(batch, T, dtype=torch.bool)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, :len(x)], label_t[i, :len(y)], attn[i, :len(x)] = x, y, True
    pixel_values = torch.randn(batch, 3, 336, 336, generator=g)
    return dict(input_ids=input_ids, attention_mask=attn, labels=label_t, pixel_values=pixel_values)


def step(model: LLaVAModel, data: dict) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    losses = model(data, mode='loss')
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    return time.perf_counter() - t0


def bench_shape(shape: str, args: argparse.Namespace) -> dict[str, list[float]]:
    model = build_model(args.hidden, args.layers, args.vocab, freeze_llm=(shape == 'pretrain'))
    model.train()
    data = make_batch(shape, args.batch, args.vocab)
    variants = {'baseline': None, 'baseline_lean': UniformWeights(), 'cal': CAL(),
                'cal_mask_flat': CAL(no_image_pass='mask', pooling='flat'),
                'original': OriginalCAL()}
    names = list(variants)
    times = {n: [] for n in names}
    def use(n: str) -> None:  # swap the loss plug-in on the one built model
        if 'cal' in model.plugins:
            model.remove_plugin('cal')
        if variants[n] is not None:
            model.add_plugin('cal', variants[n])

    for n in names:  # warm-up
        use(n)
        step(model, data)
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in order:
            use(n)
            times[n].append(step(model, data))
        print(f'  [{shape}] rep {rep + 1}/{args.reps}: ' +
              ', '.join(f'{n} {times[n][-1]:.2f}s' for n in names), flush=True)
    return times


def _overhead(ts: list[float], ref: list[float]) -> str:
    """Median of the per-repetition ratios (min–max), then the ratio of the best (minimum) times."""
    ratios = [t / b for t, b in zip(ts, ref)]
    return (f'{(statistics.median(ratios) - 1) * 100:+.1f} % '
            f'({(min(ratios) - 1) * 100:+.1f} … {(max(ratios) - 1) * 100:+.1f} %); '
            f'best {(min(ts) / min(ref) - 1) * 100:+.1f} %')


def summarise(shape: str, times: dict[str, list[float]], data_len: tuple[int, int]) -> None:
    print(f'\n{shape}: B×L = {data_len[0]}×{data_len[1]} spliced tokens')
    print('| variant | median step (s) | min–max (s) | vs baseline | vs baseline_lean |')
    print('|---|---|---|---|---|')
    for n, ts in times.items():
        vs_base = _overhead(ts, times['baseline']) if n != 'baseline' else '—'
        lean = n not in ('baseline', 'baseline_lean')
        vs_lean = _overhead(ts, times['baseline_lean']) if lean else '—'
        spread = f'{min(ts):.3f}–{max(ts):.3f}'
        print(f'| {n} | {statistics.median(ts):.3f} | {spread} | {vs_base} | {vs_lean} |')
    print(f'raw times (s): {json.dumps({n: [round(t, 3) for t in ts] for n, ts in times.items()})}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', nargs='+', default=['pretrain', 'sft'], choices=['pretrain', 'sft'])
    parser.add_argument('--reps', type=int, default=8, help='interleaved repetitions per variant')
    parser.add_argument('--batch', type=int, default=2, help='samples per step')
    parser.add_argument('--hidden', type=int, default=512, help='LLM hidden size (heads of 64)')
    parser.add_argument('--layers', type=int, default=8, help='LLM decoder layers')
    parser.add_argument('--vocab', type=int, default=32000, help='LLM vocabulary (LLaMA: 32000)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'args: {vars(args)}')
    print(f'machine: {platform.machine()} {platform.processor() or ""}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads', flush=True)
    results = {}
    for shape in args.shapes:
        data = make_batch(shape, args.batch, args.vocab)
        spliced = data['attention_mask'].sum(1) + 575 * (data['input_ids'] == IMAGE_TOKEN_INDEX).sum(1)
        results[shape] = (bench_shape(shape, args), (args.batch, int(spliced.max())))
    for shape, (times, dims) in results.items():
        summarise(shape, times, dims)


if __name__ == '__main__':
    main()
