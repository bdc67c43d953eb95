"""Visual words (VW-LMM): the LLM's next-token distribution supervises the image slots.

Peng et al., "Multi-modal Auto-regressive Modeling via Visual Words", arXiv:2403.07720 (2024),
https://arxiv.org/abs/2403.07720. Reference code (inference only, no training scripts):
https://github.com/pengts/VW-LMM at b1aeaef — the loss in
``visual_words/model/language_model/vw_llama.py`` (``forward``), pseudo image features in
``visual_words/model/vw_pif_arch.py`` (``prepare_inputs_labels_for_multimodal``)::

    x_t  ──vm_head──► z_t ──softmax──► q_t        visual word of image slot t (target)
    h_{t-1} ─lm_head─► logits_{t-1} ─softmax─► p_{t-1}   the LLM's prediction of slot t
    L_vm  = 1/M Σ_t KL(q_t ‖ p_{t-1})                 mean over the M supervised image slots
    total = CE_text + weight · L_vm

    pif:  F′ = softmax(vm_head(F)) · E                 E = the LLM input embedding matrix [V, D]

Shapes: B batch, L spliced length, D LLM hidden size, V vocabulary, N images in the batch, P tokens
per image, S image slots in the batch (= N·P), M supervised slots (S minus the skipped ones).

Where this departs from the reference code, and why:

* **Never a [B, L, V] tensor.** The reference applies ``vm_head`` to every position
  (``vm_head(inputs_embeds)``, [B, L, V]), copies the shifted logits and targets
  (``.contiguous()``, two more [B, L, V]) and, in the pif model, builds a dense label tensor
  [B, L, V] filled with −100 around the softmaxed targets. Here only the M rows of ``logits`` at
  positions t−1 are read, and the KL and its gradient are computed in row chunks
  (:class:`_VisualWordKL`): no tensor larger than ``chunk_size × V`` is allocated besides the
  gradient of the logits themselves (which the text loss needs anyway). Benchmark:
  ``benchmarks/bench_visual_words_memory.py``, figures in ``docs/benchmarks.md``.
* **Slot rule.** Slot t is supervised by the logits at t−1, as the reference's shift
  (``logits[..., :-1]`` against ``labels[..., 1:]``). A slot whose t−1 is not a valid position is
  skipped: t = 0 (an image at the very start of the sequence — e.g. the ``plain`` template on a
  tokenizer without BOS, such as Qwen2) or, with ``attention_mask``, a padding position (left
  padding). The mean is over the remaining M slots (the reference's ``KLDivLoss(reduction=
  'batchmean')`` over the selected rows, i.e. the same mean).
* **vm_head init.** The reference creates ``vm_head = nn.Linear(hidden, vocab, bias=False)`` beside
  ``lm_head`` and initialises it with the HF ``post_init`` (normal, std = ``initializer_range`` =
  0.02 for LLaMA/Vicuna/Mistral/Qwen2); its released checkpoints carry a trained ``vm_head``, and
  the training code, hence any copy from ``lm_head``, is not published. ``vm_head_init='normal'``
  (default) reproduces that init; ``'lm_head'`` and ``'embed_tokens'`` copy the LLM's output or
  input embedding matrix at :meth:`VisualWords.attach` time (the base calls it right after
  building the plug-in, before ``pretrained_pth`` is loaded).
* **pif targets.** With pseudo image features the reference computes the target q from the
  projected features F *before* they are replaced by F′ (``textual_image_score`` in
  ``vw_pif_arch.py``). :meth:`VisualWords.pseudo_image_features` keeps F for the loss, so the
  target is the same here.
* **pif with several images.** The reference's multi-image branch (``images`` a list or 5-D) is
  broken: ``softmax`` is called without ``dim`` (for the 3-D score tensor PyTorch's legacy rule
  picks dim 0, normalising across images instead of the vocabulary) and ``einsum("id,li->ld")``
  is given a 3-D tensor (a subscript-count error). Here F′ is computed row by row over the
  vocabulary for any number of images per sample (all N·P rows of ``features [N, P, D]``).
* **DeepSpeed ZeRO-3.** ZeRO-3 keeps every parameter partitioned and gathers a module's own
  parameters (not its children's) just before that module's forward and again before its backward.
  ``vm_head`` is a child ``nn.Linear`` whose forward never runs, and pif reads the LLM's input
  embedding matrix E, so both run through :meth:`VisualWords.forward`, and when the parameters are
  partitioned (they carry ``ds_id``) ``vm_head.weight`` and E are registered as external parameters
  of this module (``deepspeed.zero.register_external_parameter``): DeepSpeed gathers them for this
  module's forward and backward only, and releases them after. The custom autograd function saves
  ``vm_head.weight`` itself and reads it in backward, after that backward gather; pif's
  checkpointed chunks recompute after it too. Without DeepSpeed nothing is imported or registered
  and the computation is the same. Checked on CPU with DeepSpeed's CPU accelerator against the
  same model without DeepSpeed (losses, gradients and updated weights over two SGD steps, visual
  words + pif + MoCa + CAL, 1 and 2 processes): ``tools/check_zero3.py``, ``tests/align/test_zero3.py``.
  (DeepSpeed 0.19's engine also discovers a partitioned parameter read through a module attribute
  during its forward and gathers it for the whole step at the top-level module; the registration
  here does not rely on that and keeps ``vm_head`` gathered only while this module runs.)
* **Tokens added to the tokenizer.** The reference never resizes ``vm_head``.
  :meth:`VisualWords.resize` keeps the existing rows; ``model.resize_token_embeddings(n)``
  resizes the LLM embeddings and ``vm_head`` together (the entry point to use).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.base import MultimodalModel
from ..models.plugin import AlignPlugin
from ._zero3 import zero3_gather_in

__all__ = ['VisualWords', 'visual_word_loss', 'pseudo_image_features', 'visual_word_slots']

VmHeadInit = Literal['normal', 'lm_head', 'embed_tokens']

# Rows per chunk: about 2M elements (8 MB in float32) per [chunk, V] temporary; a chunk keeps about
# four of them alive (docs/benchmarks.md, "Visual words: loss memory").
_CHUNK_ELEMENTS = 1 << 21


def _chunk_rows(vocab_size: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f'chunk_size={chunk_size}: give a positive number of rows (or None).')
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(vocab_size, 1))


def visual_word_slots(image_mask: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image slot in batch order, and which of them the loss supervises.

    Args:
        image_mask: ``[B, L]`` bool, True at image slots.
        attention_mask: ``[B, L]`` bool/0-1 or None. When given, a slot whose t−1 is padding is skipped.

    Returns:
        ``(b, t, keep)``, each ``[S]``: batch index and position of every image slot, row-major (the
        order in which :func:`~mllm_align.models.splice.splice_image_features` lays out the images'
        feature rows), and ``keep``, True where t−1 is a valid position (t ≥ 1 and, with
        ``attention_mask``, not padding).
    """
    b, t = image_mask.nonzero(as_tuple=True)  # (S,), (S,)
    keep = t > 0
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[b, (t - 1).clamp(min=0)]
    return b, t, keep


class _VisualWordKL(torch.autograd.Function):
    """Σ over rows of KL(softmax(x W^T) ‖ softmax(logits[b, t])), fused and chunked.

    Forward reads ``chunk`` rows of ``logits`` at a time, computes the target logits of the same rows,
    and accumulates the KL sum and the target entropy sum; it keeps only the two per-row
    log-normalisers ``[M]``. Backward recomputes the rows per chunk (the [M, V] target logits are
    never stored); at most about four ``[chunk, V]`` temporaries are alive at a time (in-place
    updates). Gradients, for one row with a = log q − log p:
    ∂KL/∂logits = p − q;  ∂KL/∂z = q ⊙ (a − KL_row);  z = x W^T, so ∂x = ∂z W and ∂W = ∂zᵀ x.
    Computed in float32 (float64 if an input is float64), autocast off.

    Inputs: logits ``[B, L, V]``, b ``[M]``, t ``[M]`` (the rows of logits to read), x ``[M, D]``,
    weight ``[V, D]``, chunk (int). Outputs: ``(kl_sum, entropy_sum)``, float32 scalars; the
    entropy sum is not differentiable.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, b: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
                weight: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        M = b.shape[0]
        dt = _compute_dtype(logits, x, weight)
        kl_sum = torch.zeros((), dtype=dt, device=logits.device)
        ent_sum = torch.zeros((), dtype=dt, device=logits.device)
        lse_p = torch.empty(M, dtype=dt, device=logits.device)  # (M,) log Σ exp(logits row)
        lse_q = torch.empty(M, dtype=dt, device=logits.device)  # (M,) log Σ exp(target logits row)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            w = weight.to(dt)  # (V, D); no copy when already float32
            for s in range(0, M, chunk):
                log_p, log_q = _chunk_log_probs(logits, b[s:s + chunk], t[s:s + chunk], x[s:s + chunk], w,
                                                lse_p[s:s + chunk], lse_q[s:s + chunk])
                q = log_q.exp()  # (c, V)
                ent_sum -= (q * log_q).sum()
                kl_sum += log_p.neg_().add_(log_q).mul_(q).sum()  # Σ q (log q − log p), in place of log p
        ctx.save_for_backward(logits, b, t, x, weight, lse_p, lse_q)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(ent_sum)
        return kl_sum, ent_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_kl: torch.Tensor, grad_ent: torch.Tensor) -> tuple:
        logits, b, t, x, weight, lse_p, lse_q = ctx.saved_tensors
        need_logits, _, _, need_x, need_w, _ = ctx.needs_input_grad
        grad_logits = grad_x = grad_w = None
        if need_logits:
            grad_logits = torch.zeros_like(logits)  # the one [B, L, V] tensor: the gradient of the logits
        if need_x:
            grad_x = torch.empty_like(x)
        dt = _compute_dtype(logits, x, weight)
        if need_w:
            grad_w = torch.zeros(weight.shape, dtype=dt, device=weight.device)
        g = grad_kl.to(dt)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            w = weight.to(dt)
            for s in range(0, b.shape[0], ctx.chunk):
                bc, tc, xc = b[s:s + ctx.chunk], t[s:s + ctx.chunk], x[s:s + ctx.chunk]
                log_p, log_q = _chunk_log_probs(logits, bc, tc, xc, w, lse_p[s:s + ctx.chunk],
                                                lse_q[s:s + ctx.chunk], recompute=True)
                q = log_q.exp()  # (c, V)
                if need_x or need_w:
                    a = log_q.sub_(log_p)  # (c, V) a = log q − log p, in place of log q
                    kl_rows = torch.einsum('cv,cv->c', q, a)  # (c,)
                    dz = a.sub_(kl_rows[:, None]).mul_(q).mul_(g)  # (c, V) q ⊙ (a − KL_row) · g, in place
                    if need_x:
                        grad_x[s:s + ctx.chunk] = (dz @ w).to(x.dtype)  # (c, D)
                    if need_w:
                        grad_w += dz.T @ xc.to(dt)  # (V, D)
                    del a, dz
                if need_logits:
                    p = log_p.exp_()  # (c, V), in place of log p
                    grad_logits[bc, tc] = p.sub_(q).mul_(g).to(logits.dtype)  # (p − q) · g
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_logits, None, None, grad_x, grad_w, None


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_log_probs(logits: torch.Tensor, b: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
                     w: torch.Tensor, lse_p: torch.Tensor, lse_q: torch.Tensor,
                     recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p (LLM prediction) and log q (visual word) of one chunk of rows, in ``w``'s dtype, each ``[c, V]``.

    Writes the rows' log-normalisers into ``lse_p``, ``lse_q`` ``[c]``, or, with ``recompute``, reads them.
    """
    rows = logits[b, t]  # (c, V): only these rows of the logits are read (a copy)
    rows = rows.to(w.dtype) if rows.dtype != w.dtype else rows
    z = x.to(w.dtype) @ w.T  # (c, D) @ (D, V) -> (c, V) target logits
    if not recompute:
        torch.logsumexp(rows, dim=-1, out=lse_p)
        torch.logsumexp(z, dim=-1, out=lse_q)
    return rows.sub_(lse_p[:, None]), z.sub_(lse_q[:, None])  # in place: log p, log q


def _visual_word_kl(logits: torch.Tensor, image_mask: torch.Tensor, slot_features: torch.Tensor,
                    vm_head_weight: torch.Tensor, detach_target: bool = False,
                    attention_mask: torch.Tensor | None = None,
                    chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean KL and mean target entropy over supervised slots, from features of *every* image slot.

    ``slot_features [S, D]`` holds one row per image slot in :func:`visual_word_slots` order (the
    spliced embeddings, or the pre-pif features). Returns ``(kl_mean, entropy_mean, M)``.
    """
    if logits.dim() != 3:
        raise ValueError(f'logits must be [B, L, V], got shape {tuple(logits.shape)}.')
    if image_mask.shape != logits.shape[:2]:
        raise ValueError(f'image_mask {tuple(image_mask.shape)} does not match logits {tuple(logits.shape)} '
                         'in [B, L].')
    V = logits.shape[-1]
    if vm_head_weight.dim() != 2 or vm_head_weight.shape[0] != V:
        raise ValueError(f'vm_head has {vm_head_weight.shape[0]} rows but the logits have V={V}: the '
                         'visual-word head and the LLM output must share a vocabulary. After adding tokens, '
                         'resize both with model.resize_token_embeddings(n).')
    b, t, keep = visual_word_slots(image_mask, attention_mask)
    if slot_features.shape[0] != b.shape[0] or slot_features.shape[-1] != vm_head_weight.shape[1]:
        raise ValueError(f'{slot_features.shape[0]} feature rows of width {slot_features.shape[-1]} for '
                         f'{b.shape[0]} image slots and a vm_head of width {vm_head_weight.shape[1]}.')
    x = slot_features[keep]  # (M, D)
    weight = vm_head_weight
    if detach_target:
        x, weight = x.detach(), weight.detach()
    M = int(x.shape[0])
    kl_sum, ent_sum = _VisualWordKL.apply(logits, b[keep], t[keep] - 1, x, weight,
                                          _chunk_rows(V, chunk_size))
    denom = max(M, 1)  # no supervised slot: a zero that still touches the graph
    return kl_sum / denom, ent_sum / denom, M


def visual_word_loss(logits: torch.Tensor, inputs_embeds: torch.Tensor, vm_head_weight: torch.Tensor,
                     image_mask: torch.Tensor, detach_target: bool = False, *,
                     attention_mask: torch.Tensor | None = None,
                     chunk_size: int | None = None) -> torch.Tensor:
    """L_vm = 1/M Σ_t KL(softmax(vm_head(x_t)) ‖ softmax(logits_{t−1})) over the image slots t.

    Only the rows ``logits[b, t−1]`` of the supervised slots are read, in chunks of ``chunk_size``
    rows; the KL and its gradients are computed chunk by chunk in float32 (no [B, L, V] or [M, V]
    tensor besides the logits and their gradient).

    Args:
        logits: ``[B, L, V]`` the LLM's next-token logits.
        inputs_embeds: ``[B, L, D]`` the LLM input embeddings; at image slots, the projected visual
            features x_t.
        vm_head_weight: ``[V, D]`` the visual-word head (``nn.Linear(D, V, bias=False).weight``).
        image_mask: ``[B, L]`` bool, True at image slots.
        detach_target: stop the gradient through q (into ``vm_head`` and the features); see
            :class:`VisualWords`.
        attention_mask: ``[B, L]`` or None; with it, slots whose t−1 is padding are skipped.
        chunk_size: rows per chunk; None picks about 2M elements per ``[chunk, V]`` temporary.

    Returns:
        A float32 scalar; 0 (attached to the graph) when no slot is supervised.

    Raises:
        ValueError: shapes disagree (e.g. ``vm_head`` and logits with different vocabularies).
    """
    if inputs_embeds.shape[:2] != image_mask.shape:
        raise ValueError(f'inputs_embeds {tuple(inputs_embeds.shape)} does not match image_mask '
                         f'{tuple(image_mask.shape)} in [B, L].')
    return _visual_word_kl(logits, image_mask, inputs_embeds[image_mask], vm_head_weight, detach_target,
                           attention_mask, chunk_size)[0]


def _pif_rows(x: torch.Tensor, weight: torch.Tensor, embed_weight: torch.Tensor) -> torch.Tensor:
    """softmax(x W^T) E for a chunk of rows: ``[c, D] -> [c, D]`` (probabilities in float32 or wider)."""
    z = F.linear(x.to(weight.dtype), weight)  # (c, V)
    q = torch.softmax(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)  # (c, V)
    return q.to(embed_weight.dtype) @ embed_weight  # (c, V) @ (V, D) -> (c, D)


def pseudo_image_features(features: torch.Tensor, vm_head_weight: torch.Tensor, embed_weight: torch.Tensor,
                          chunk_size: int | None = None) -> torch.Tensor:
    """Pseudo image features F′ = softmax(vm_head(F)) · E, row by row.

    Each output row is a convex combination of the rows of E (weights ≥ 0 summing to 1). Works on
    any number of images ``N`` (one or several per sample: rows are independent). Under autograd the
    rows are processed in chunks with activation checkpointing, so the [N·P, V] probabilities are
    never stored: each chunk's are recomputed in backward.

    Args:
        features: ``[N, P, D]`` (or ``[R, D]``) projected image features F.
        vm_head_weight: ``[V, D]``.
        embed_weight: ``[V, D]`` the LLM input embedding matrix E.
        chunk_size: rows per chunk; None picks about 2M elements per ``[chunk, V]`` temporary.

    Returns:
        F′ with the shape of ``features``, in ``embed_weight``'s dtype.
    """
    if vm_head_weight.shape[0] != embed_weight.shape[0]:
        raise ValueError(f'vm_head has {vm_head_weight.shape[0]} rows but the embedding matrix has '
                         f'{embed_weight.shape[0]}: resize both with model.resize_token_embeddings(n).')
    rows = features.reshape(-1, features.shape[-1])  # (N·P, D)
    chunk = _chunk_rows(embed_weight.shape[0], chunk_size)
    grad = torch.is_grad_enabled() and (rows.requires_grad or vm_head_weight.requires_grad
                                        or embed_weight.requires_grad)
    outs = []
    for s in range(0, rows.shape[0], chunk):
        xc = rows[s:s + chunk]
        if grad:
            outs.append(checkpoint(_pif_rows, xc, vm_head_weight, embed_weight, use_reentrant=False))
        else:
            outs.append(_pif_rows(xc, vm_head_weight, embed_weight))
    out = torch.cat(outs) if outs else rows.new_zeros(0, embed_weight.shape[1], dtype=embed_weight.dtype)
    return out.reshape(*features.shape[:-1], embed_weight.shape[1])  # (N, P, D)


class VisualWords(AlignPlugin):
    """VW-LMM visual-word supervision as a plug-in (:class:`~mllm_align.models.AlignPlugin`).

    The visual word of image slot t is q_t = softmax(vm_head(x_t)) over the
    LLM vocabulary; the LLM's next-token distribution at t−1 predicts it, and
    ``loss_vm = weight · 1/M Σ_t KL(q_t ‖ p_{t−1})`` is added to the text loss (module docstring for
    the slot rule and where this departs from the reference code).

    Configure with ``plugins=dict(visual_words=dict(type=VisualWords, weight=1.0, ...))`` in the model;
    ``hidden_size`` and ``vocab_size`` are filled in from the LLM. ``vm_head`` is trainable and so
    saved in checkpoints (``model.visual_words.vm_head.weight``). Works under DDP, DeepSpeed ZeRO-2
    and ZeRO-3: everything that reads ``vm_head`` (and E) runs in :meth:`forward` (module docstring,
    "DeepSpeed ZeRO-3"; checked by ``tools/check_zero3.py``).

    Args:
        hidden_size: D, the LLM hidden size.
        vocab_size: V, rows of the LLM input embedding (= its output vocabulary).
        weight: multiplier of L_vm in the total loss (the reference adds it with 1.0).
        detach_target: stop the gradient through q. Default False, as the reference. Without it,
            gradients reach ``vm_head`` and the projector through the *target* too, so the cheapest way
            to lower the loss is to make the targets trivially predictable rather than to make the LLM
            predict informative ones (e.g. q drifting toward whatever the LLM already predicts, or
            toward a flat, image-independent distribution): the visual words can collapse. With
            ``detach_target=True`` only the prediction side learns; ``vm_head`` then gets no gradient
            from this loss (a zero gradient is passed so DDP still reduces it), so use it with a
            ``vm_head`` trained in an earlier stage (``pretrained_pth``) or with ``pif`` (F′ still
            trains ``vm_head``).
        pif: replace the projected image features by pseudo image features
            F′ = softmax(vm_head(F)) · E (VW-LMM-pif). The target q is computed from F, before the
            replacement, as in the reference.
        vm_head_init: ``'normal'`` (N(0, ``init_std``), the reference's HF ``post_init``), ``'lm_head'``
            or ``'embed_tokens'`` (copy the LLM's output / input embedding matrix in :meth:`attach`).
        init_std: standard deviation of the ``'normal'`` init.
        chunk_size: rows per chunk in the loss and in pif; None picks ~2M elements per temporary.

    Raises:
        ValueError: an unknown ``vm_head_init`` or a non-positive size.
    """

    def __init__(self, hidden_size: int, vocab_size: int, weight: float = 1.0, detach_target: bool = False,
                 pif: bool = False, vm_head_init: VmHeadInit = 'normal', init_std: float = 0.02,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        if vm_head_init not in ('normal', 'lm_head', 'embed_tokens'):
            raise ValueError(f"vm_head_init={vm_head_init!r}: use 'normal', 'lm_head' or 'embed_tokens'.")
        if hidden_size < 1 or vocab_size < 1:
            raise ValueError(f'VisualWords needs positive sizes, got hidden_size={hidden_size}, '
                             f'vocab_size={vocab_size}.')
        self.vm_head = nn.Linear(hidden_size, vocab_size, bias=False)  # untied from lm_head
        nn.init.normal_(self.vm_head.weight, mean=0.0, std=init_std)
        self.weight = float(weight)
        self.detach_target = bool(detach_target)
        self.pif = bool(pif)
        self.vm_head_init = vm_head_init
        self.chunk_size = chunk_size
        self._image_features: torch.Tensor | None = None  # pif: F before replacement, for the targets

    @property
    def vocab_size(self) -> int:
        return self.vm_head.out_features

    def extra_repr(self) -> str:
        return (f'weight={self.weight}, detach_target={self.detach_target}, pif={self.pif}, '
                f'vm_head_init={self.vm_head_init!r}')

    @classmethod
    def build_kwargs(cls, model: MultimodalModel) -> dict[str, Any]:
        """D and V from the base's LLM (``hidden_size``, ``vocab_size``)."""
        return dict(hidden_size=model.hidden_size, vocab_size=model.vocab_size)

    @property
    def exportable(self) -> bool:  # type: ignore[override]
        """``vm_head`` is training-only and left out of an export; a pif model cannot run without it."""
        return not self.pif

    def attach(self, llm: nn.Module) -> None:
        """Initialise ``vm_head`` from the LLM when ``vm_head_init`` asks for a copy (else a no-op).

        The base calls it once after building the plug-in (before ``pretrained_pth`` is loaded,
        so a trained ``vm_head`` in a checkpoint wins). ``llm``: the base or an HF causal LM.

        Raises:
            ValueError: the LLM matrix does not have ``vm_head``'s shape.
        """
        if self.vm_head_init == 'normal':
            return
        if isinstance(llm, MultimodalModel):
            llm = llm.language_model
        source = llm.get_output_embeddings() if self.vm_head_init == 'lm_head' else llm.get_input_embeddings()
        src = source.weight
        if tuple(src.shape) != tuple(self.vm_head.weight.shape):
            raise ValueError(f'vm_head_init={self.vm_head_init!r}: the LLM matrix is {tuple(src.shape)} but '
                             f'vm_head is {tuple(self.vm_head.weight.shape)} [V, D].')
        with torch.no_grad():
            self.vm_head.weight.copy_(src.to(self.vm_head.weight.dtype))

    @torch.no_grad()
    def resize(self, new_vocab_size: int) -> None:
        """Resize ``vm_head`` to ``new_vocab_size`` rows, keeping the existing rows.

        New rows are set to the mean of the old rows (HF's ``mean_resizing``, without its random
        perturbation), so a new token starts with an average logit. Call it through
        ``model.resize_token_embeddings(n)`` (which resizes the LLM too), before the optimizer
        is built: the parameter is replaced.
        """
        if new_vocab_size < 1:
            raise ValueError(f'new_vocab_size={new_vocab_size}: must be positive.')
        old = self.vm_head.weight
        V_old, D = old.shape
        if new_vocab_size == V_old:
            return
        new = old.new_empty(new_vocab_size, D)
        keep = min(V_old, new_vocab_size)
        new[:keep] = old[:keep]
        if new_vocab_size > V_old:
            new[V_old:] = old.mean(0)
        self.vm_head.weight = nn.Parameter(new, requires_grad=old.requires_grad)
        self.vm_head.out_features = new_vocab_size
        print_log(f'VisualWords: vm_head resized from {V_old} to {new_vocab_size} rows.', logger='current')

    def forward(self, op: Literal['loss', 'pif'], *tensors: torch.Tensor | None) -> Any:
        """The computations that read ``vm_head.weight`` (and E), inside this module's forward (ZeRO-3).

        Called by :meth:`compute_loss` and :meth:`pseudo_image_features`, which check their inputs and
        register the partitioned parameters first (module docstring, "DeepSpeed ZeRO-3").

        * ``op='pif'``, tensors ``(features [N, P, D], embed_weight [V, D])``: returns F′ ``[N, P, D]``.
        * ``op='loss'``, tensors ``(logits [B, L, V], image_mask [B, L], slot_features [S, D],
          attention_mask [B, L] or None)``: returns ``(weight · L_vm, L_vm, H(q))``, the last two detached.

        Raises:
            ValueError: an unknown ``op``.
        """
        vm_head_weight = self.vm_head.weight  # gathered here under ZeRO-3
        if op == 'pif':
            features, embed_weight = tensors
            return pseudo_image_features(features, vm_head_weight, embed_weight, self.chunk_size)
        if op == 'loss':
            logits, image_mask, slot_features, attention_mask = tensors
            kl, entropy, _ = _visual_word_kl(logits, image_mask, slot_features, vm_head_weight,
                                             self.detach_target, attention_mask, self.chunk_size)
            loss = self.weight * kl
            if self.detach_target:
                loss = loss + vm_head_weight.sum() * 0.0  # zero gradient: vm_head stays in DDP's reduction
            return loss, kl.detach(), entropy.detach()
        raise ValueError(f"VisualWords.forward: unknown op {op!r}; use 'loss' or 'pif'.")

    # ------------------------------------------------------------------ plug-in protocol
    def transform_image_features(self, features: list[torch.Tensor], model: MultimodalModel) -> list[torch.Tensor]:
        """With ``pif``: every image's rows replaced by F′ (:meth:`pseudo_image_features`); else unchanged."""
        if not self.pif or not features:
            return features
        counts = [f.shape[0] for f in features]
        packed = features[0] if len(features) == 1 else torch.cat(features, 0)  # (S, D)
        embed_weight = next(model.input_embeddings.parameters())  # (V, D); ZeRO-3: not an attribute read
        return list(self.pseudo_image_features(packed, embed_weight).split(counts, 0))

    def logits_positions(self, inputs: Any, lm_positions: torch.Tensor) -> torch.Tensor | None:
        """The loss reads the logits before every image slot: all positions."""
        return None

    def loss(self, model: MultimodalModel, inputs: Any, logits: torch.Tensor,
             positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Plug-in protocol: :meth:`compute_loss` (``logits`` are always ``[B, L, V]`` here)."""
        if positions is not None:
            raise ValueError('VisualWords reads logits at every position; got logits at selected positions.')
        return self.compute_loss(model, inputs, logits)

    def resize_vocab(self, vocab_size: int) -> None:
        """Plug-in protocol: :meth:`resize`."""
        self.resize(vocab_size)

    def pseudo_image_features(self, features: torch.Tensor, embed_weight: torch.Tensor) -> torch.Tensor:
        """``[N, P, D] -> [N, P, D]`` (or ``[S, D]``): F′ = softmax(vm_head(F)) · E (keeps F for the next loss).

        ``embed_weight`` is the LLM's input embedding parameter (``[V, D]``); under ZeRO-3 it is gathered
        for this module's forward and backward.
        """
        self._image_features = features
        zero3_gather_in(self, [*self.vm_head.parameters(), embed_weight])
        return self('pif', features, embed_weight)

    def compute_loss(self, model: nn.Module, inputs: Any, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'loss_vm': weight · L_vm, 'visual_words/kl': L_vm, 'visual_words/target_entropy': H(q)}``.

        Args:
            model: the base (unused).
            inputs: the spliced ``MultimodalInputs`` (``inputs_embeds``, ``image_mask``, ``attention_mask``).
            logits: ``[B, L, V]`` the LLM's logits for ``inputs``.

        Raises:
            ValueError: with ``pif``, the kept image features do not match the batch's image slots.
        """
        image_mask = inputs.image_mask
        if self.pif:
            feats, self._image_features = self._image_features, None
            num_slots = int(image_mask.sum())
            if feats is None:
                if num_slots:
                    raise ValueError('VisualWords(pif=True): no image features were kept for this batch; '
                                     "compute the loss on inputs from the model's prepare_inputs.")
                slot_features = inputs.inputs_embeds[image_mask]
            else:
                slot_features = feats.reshape(-1, feats.shape[-1])  # (N·P, D), batch order of images
                if slot_features.shape[0] != num_slots:
                    raise ValueError(f'VisualWords(pif=True): {slot_features.shape[0]} kept feature rows for '
                                     f'{num_slots} image slots; the loss must follow the forward pass that '
                                     'built these inputs.')
        else:
            slot_features = inputs.inputs_embeds[image_mask]  # (S, D): the projected features x_t
        zero3_gather_in(self, self.vm_head.parameters())
        loss, kl, entropy = self('loss', logits, image_mask, slot_features, inputs.attention_mask)
        return {'loss_vm': loss, 'visual_words/kl': kl, 'visual_words/target_entropy': entropy}

