"""Contrastive Alignment (CAL): re-weight each target token's loss by how much the image helps predict it.

Xiao, Wu, Wang, Li, Zhou, Guo, "Seeing the Image: Prioritizing Visual Correlation by Contrastive
Alignment" (NeurIPS 2024, https://arxiv.org/abs/2405.17871), method section. Reference code:
github.com/foundation-multimodal-models/CAL @ 633a06c, ``llava/model/language_model/llava_llama.py``
(``LlavaLlamaForCausalLM.base_forward``).

For a target token at position t with gold id y_t (position t - 1 predicts it)::

    Δ_t = z_t[y_t] - z̃_t[y_t]                    z: logits with the image, z̃: without it (raw logits)
    w   = AvgPool_window(clamp(Δ, α, β))          defaults α = 1, β = 5, window = 3
    L   = Σ_t w_t · CE_t / Σ_{t valid} w_t        w is a constant (no gradient through the weights)

The logits without the image come from a second LLM pass under ``torch.no_grad``. In the original the
image tokens stay in the sequence and are masked out of attention; masked keys contribute nothing to
the text queries, so here the image tokens are *dropped* and the remaining tokens keep their original
position ids: the text positions get the same logits (``tests/align/test_cal.py`` checks it) from a
sequence ~10x shorter in pre-training (576 image + ~60 text tokens).

Departures from the reference code, and the options that reproduce it:

* Pooling. The original pools the flattened batch ``[B·(L-1)]`` with
  ``AvgPool1d(3, stride=1, padding=1, count_include_pad=False)``: the window crosses sample boundaries
  (the last token of one sample averages with the first of the next) and every position takes part,
  including ignored ones (prompt, image slots, padding), whose Δ is read at gold id 0 (the labels'
  -100 replaced by 0). ``pooling='flat'`` does exactly that. The default ``pooling='sample'`` pools each
  sample over its valid (supervised) targets only; see :func:`cal_token_weights_from_gold` for the rules.
* Precision and memory. The original makes fp32 copies of the full ``[B, L, V]`` logits of both
  passes (plus a clone) before gathering the gold token. Here gold logits are gathered in the logits'
  own dtype and only the ``[B, L-1]`` result is upcast; the cross-entropy is computed on the
  supervised rows only. With ``pooling='sample'`` only supervised targets enter the weights, so when
  the LLM accepts HF ``logits_to_keep`` neither pass materialises ``[B, L, V]``: the with-image pass
  keeps the rows at :func:`~mllm_align.models.supervised_positions` (``[B, P, V]``, see
  :meth:`CAL.logits_positions`) and the no-image pass the compact slots that predict a supervised
  target (``[B', P', V]``); the gold logits are scattered back into ``[B, L-1]``, so the pooling is
  unchanged. ``pooling='flat'`` reads every position and keeps full logits.
* The token right after an image. Its prediction comes from the last image slot. In the original's
  masked pass that slot still holds the image embedding as its query (only the image *keys* are
  masked), so its "no-image" logit still sees the image through its own residual stream. Dropping the
  image makes the preceding text token the predictor — the prediction of the text without the image.
  If no text precedes the image (e.g. Qwen2, which has no BOS token, in the ``plain`` pre-training
  template) that target has no image-free prediction: it contributes nothing to the pooling and takes
  the pooled weight of its neighbours. ``no_image_pass='mask'`` runs the original's masked
  full-length pass instead; with ``pooling='flat'`` it reproduces the original's weights.
* Model support. The original is a fork of LLaVA's LLaMA wrapper; it crashes on other LLMs and in
  eval mode (``logits_wo_img`` is only defined when ``self.training``). Here the pass goes through
  :meth:`MultimodalModel.run_llm` with ``inputs_embeds``, ``attention_mask`` and ``position_ids`` only, so
  it works for any decoder-only HF LLM (LLaMA, Qwen2, Mistral, Phi-3, …), peft-wrapped or not, in
  train and eval mode.
* Dropout. The no-image pass runs in the model's current mode, as in the original (which only runs it
  in training, with dropout on). With dropout > 0 the two passes draw different masks and Δ carries
  that noise; the supported LLMs' released configs use no dropout.
* Samples without an image. Both passes would see the same tokens, so Δ = 0 exactly and the weight is
  ``clamp(0, α, β)`` (= α for the default α = 1): such samples are left out of the no-image pass.

Shapes: B batch, L spliced length, V vocabulary, Lc compacted (image-free) length.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..models.base import MultimodalModel
from ..models.plugin import AlignPlugin
from ..models.splice import MultimodalInputs

__all__ = ['CAL', 'cal_loss', 'cal_token_weights', 'cal_token_weights_from_gold', 'drop_image_tokens',
           'gather_gold_logits', 'gold_token_ids']

Pooling = Literal['sample', 'flat']
NoImagePass = Literal['drop', 'mask']


def _check_args(alpha: float, beta: float, window: int, pooling: str) -> None:
    if alpha > beta:
        raise ValueError(f'CAL needs alpha <= beta (the clamp range), got alpha={alpha}, beta={beta}.')
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f'CAL window must be a positive odd integer (a centred average), got {window!r}.')
    if pooling not in ('sample', 'flat'):
        raise ValueError(f"CAL pooling must be 'sample' or 'flat', got {pooling!r}.")


def _window_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Centred window sums along the last dim of ``[N, T]``, zeros beyond the ends."""
    if window == 1:
        return x
    pad = window // 2
    return F.avg_pool1d(x[:, None], window, stride=1, padding=pad, count_include_pad=True)[:, 0] * window


def gold_token_ids(labels: torch.Tensor) -> torch.Tensor:
    """Gold ids of the shifted targets, ``[B, L] -> [B, L-1]``; 0 at ignored targets (as the original)."""
    shift = labels[:, 1:]
    return shift.masked_fill(shift == IGNORE_INDEX, 0)


def gather_gold_logits(logits: torch.Tensor, labels: torch.Tensor,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
    """Gold-token logits of the shifted targets in fp32: ``[B, L, V], [B, L] -> [B, L-1]``.

    Gathered in the logits' own dtype, then upcast: no full-vocabulary copy is made.

    Args:
        logits: ``[B, L, V]``, or ``[B, P, V]`` at ``positions`` (HF ``logits_to_keep``).
        labels: ``[B, L]`` (-100 = ignored); position t predicts ``labels[:, t + 1]``.
        positions: ``[P]`` sequence positions (< L - 1) of the logits' rows; None: every position.

    Returns:
        ``[B, L-1]`` fp32; with ``positions``, 0 at the shifted targets outside ``positions``.
    """
    ids = gold_token_ids(labels)  # (B, L-1)
    if positions is None:
        return logits[:, :-1].gather(-1, ids[..., None]).squeeze(-1).float()  # (B, L-1)
    gold = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)  # (B, L-1)
    gold[:, positions] = logits.gather(-1, ids[:, positions, None]).squeeze(-1).float()  # (B, P)
    return gold


def cal_token_weights_from_gold(gold_img: torch.Tensor, gold_noimg: torch.Tensor, labels: torch.Tensor,
                                alpha: float = 1.0, beta: float = 5.0, window: int = 3,
                                pooling: Pooling = 'sample',
                                has_noimg: torch.Tensor | None = None) -> torch.Tensor:
    """CAL token weights from the gold-token logits of the two passes.

    Δ = gold_img - gold_noimg; w = AvgPool_window(clamp(Δ, alpha, beta)) (the paper's re-weighting).

    Pooling rules (``window = 2k + 1``, centred):

    * ``'sample'`` (default): per sample, w_t is the mean of clamp(Δ_s) over the *contributing*
      positions s with |s - t| <= k; the window does not extend past the sample's ends (no zero
      padding is averaged in) and skips non-contributing positions. A position contributes if its
      target is valid (label != -100) and it has an image-free logit (``has_noimg``). Valid targets
      without an image-free logit receive the mean of their contributing neighbours, or alpha if
      there is none. Ignored targets get weight 0.
    * ``'flat'`` (the original): the ``[B, L-1]`` grid is flattened to one sequence of B·(L-1) and
      pooled with ``AvgPool1d(window, stride=1, padding=k, count_include_pad=False)``: windows cross
      sample boundaries and ignored targets contribute (their Δ at gold id 0). Positions without an
      image-free logit are skipped like padding (the original has none). The returned weights are then
      set to 0 at ignored targets (the original multiplies them by a zero cross-entropy instead).

    Args:
        gold_img: ``[B, L-1]`` logit of the gold token (0 at ignored targets) with the image.
        gold_noimg: ``[B, L-1]`` the same without the image.
        labels: ``[B, L]`` (-100 = ignored); position t predicts ``labels[:, t + 1]``.
        alpha, beta: clamp range of Δ (paper: 1 and 5).
        window: pooling window, a positive odd integer (paper: 3; 1 = no pooling).
        pooling: ``'sample'`` or ``'flat'`` (see above).
        has_noimg: ``[B, L-1]`` bool, True where ``gold_noimg`` holds an image-free logit; None = all.

    Returns:
        ``[B, L-1]`` fp32 weights, aligned with the shifted labels, 0 at ignored targets, no grad.

    Raises:
        ValueError: alpha > beta, an even or non-positive window, or an unknown pooling.
    """
    _check_args(alpha, beta, window, pooling)
    valid = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
    has = torch.ones_like(valid) if has_noimg is None else has_noimg.bool()
    delta = gold_img.detach().float() - gold_noimg.detach().float()  # (B, L-1)
    has = has & torch.isfinite(delta)
    clamped = delta.nan_to_num(0.0).clamp(alpha, beta)
    contrib = (has & valid) if pooling == 'sample' else has
    B, T = valid.shape
    if pooling == 'flat':  # one sequence of B·(L-1) positions, windows cross sample boundaries
        clamped, contrib = clamped.reshape(1, B * T), contrib.reshape(1, B * T)
    c = contrib.float()
    num = _window_sum(clamped * c, window)
    den = _window_sum(c, window)
    weights = torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, alpha))
    return weights.reshape(B, T) * valid


def cal_token_weights(logits_img: torch.Tensor, logits_noimg: torch.Tensor, labels: torch.Tensor,
                      alpha: float = 1.0, beta: float = 5.0, window: int = 3,
                      pooling: Pooling = 'sample') -> torch.Tensor:
    """CAL token weights from the full logits of the two passes (both aligned with ``labels``).

    Args:
        logits_img: ``[B, L, V]`` logits with the image.
        logits_noimg: ``[B, L, V]`` logits of the same positions without the image (e.g. the
            original's masked pass; for a dropped pass use :func:`cal_token_weights_from_gold`).
        labels: ``[B, L]`` (-100 = ignored).
        alpha, beta, window, pooling: see :func:`cal_token_weights_from_gold`.

    Returns:
        ``[B, L-1]`` fp32 weights aligned with ``labels[:, 1:]``, 0 at ignored targets.
    """
    return cal_token_weights_from_gold(gather_gold_logits(logits_img.detach(), labels),
                                       gather_gold_logits(logits_noimg.detach(), labels), labels,
                                       alpha=alpha, beta=beta, window=window, pooling=pooling)


def cal_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
             positions: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted next-token cross-entropy: Σ_t w_t · CE_t / Σ_{t valid} w_t (the paper's re-weighting).

    Only the supervised rows are upcast to fp32 (``[N_valid, V]``, not ``[B, L, V]``). The denominator
    is clamped at 1e-6 (the original adds 1e-6); a batch without supervised targets gives a zero loss
    that still touches the graph.

    Args:
        logits: ``[B, L, V]``; position t predicts ``labels[:, t + 1]``. Or ``[B, P, V]`` at
            ``positions``, which must contain every supervised position (e.g.
            :func:`~mllm_align.models.supervised_positions`); supervised targets outside are dropped.
        labels: ``[B, L]`` (-100 = ignored).
        weights: ``[B, L-1]`` (detached; values at ignored targets are not used).
        positions: ``[P]`` sorted sequence positions of the logits' rows; None: every position.
    """
    if positions is None:
        logits, targets, w_all = logits[:, :-1], labels[:, 1:], weights  # (B, L-1, V), (B, L-1) x2
    else:
        targets, w_all = labels[:, positions + 1], weights[:, positions]  # (B, P), (B, P)
    valid = targets != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    rows = logits[valid].float()  # (N, V) supervised rows only
    ce = F.cross_entropy(rows, targets[valid], reduction='none')  # (N,)
    w = w_all.detach()[valid].to(ce.dtype)  # (N,)
    return (w * ce).sum() / w.sum().clamp_min(1e-6)


def drop_image_tokens(inputs: MultimodalInputs,
                      rows: torch.Tensor | None = None) -> tuple[MultimodalInputs, torch.Tensor]:
    """The image-free sequence: image tokens (and padding) removed, original position ids kept.

    Per sample, the kept tokens (real, non-image) are moved to the front in order; the sequence is
    right-padded to ``Lc = max kept + 1``. The extra padding slot keeps the 2-D attention mask from
    being all True: with flash-attention and batch size 1 an all-True mask is dropped and position ids
    that jump (e.g. 0 → 577) would then be read as packed-sequence boundaries. Padding slots continue
    the position ids upwards.

    Args:
        inputs: the spliced batch.
        rows: ``[B']`` indices of the samples to keep (default: all).

    Returns:
        The compacted :class:`MultimodalInputs` (``image_mask`` all False, no labels) and ``dest``:
        ``[B', L]`` long, the compact index of each original position, -1 where dropped.
    """
    embeds, attn, pos = inputs.inputs_embeds, inputs.attention_mask.bool(), inputs.position_ids
    ids = inputs.input_ids
    if rows is not None:
        embeds, attn, pos, ids = embeds[rows], attn[rows], pos[..., rows, :], ids[rows] if ids is not None else None
        image_mask = inputs.image_mask[rows]
    else:
        image_mask = inputs.image_mask
    keep = attn & ~image_mask  # (B', L)
    B, L, D = embeds.shape
    lead = pos.shape[:-2]  # () for 1-D positions, (3,) for M-RoPE: positions are [..., B', L]
    n_keep = keep.sum(1)  # (B',)
    Lc = int(n_keep.max()) + 1 if B else 1
    dest = torch.where(keep, keep.long().cumsum(1) - 1, torch.full_like(keep, -1, dtype=torch.long))  # (B', L)
    b_idx, t_idx = keep.nonzero(as_tuple=True)
    c_idx = dest[b_idx, t_idx]
    out_embeds = embeds.new_zeros(B, Lc, D)
    out_embeds[b_idx, c_idx] = embeds[b_idx, t_idx]
    out_pos = torch.zeros(*lead, B, Lc, dtype=pos.dtype, device=pos.device)
    out_pos[..., b_idx, c_idx] = pos[..., b_idx, t_idx]
    slots = torch.arange(Lc, device=pos.device)[None, :]  # (1, Lc)
    out_mask = slots < n_keep[:, None]  # (B', Lc)
    last_idx = (n_keep - 1).clamp(min=0)[:, None].expand(*lead, B, 1)  # (..., B', 1)
    last = out_pos.gather(-1, last_idx)  # (..., B', 1)
    last = torch.where(n_keep[:, None] > 0, last, torch.full_like(last, -1))
    out_pos = torch.where(out_mask, out_pos, last + 1 + slots - n_keep[:, None])
    out_ids = None
    if ids is not None:
        out_ids = torch.zeros(B, Lc, dtype=ids.dtype, device=ids.device)
        out_ids[b_idx, c_idx] = ids[b_idx, t_idx]
    compact = MultimodalInputs(inputs_embeds=out_embeds, attention_mask=out_mask, position_ids=out_pos,
                               image_mask=torch.zeros_like(out_mask), labels=None, input_ids=out_ids)
    return compact, dest


class CAL(AlignPlugin):
    """CAL loss re-weighting as a plug-in: ``plugins=dict(cal=dict(type=CAL, alpha=1.0, beta=5.0, ...))``.

    :meth:`compute_loss` replaces the plain ``loss_lm`` by the weighted cross-entropy (module
    docstring for the math and how it departs from the original code). Its no-image pass goes through
    the base's ``run_llm``, so every other plug-in (MoCa, …) sees that pass too, without CAL knowing them.

    Args:
        alpha: lower clamp of the logit difference Δ (paper: 1).
        beta: upper clamp of Δ (paper: 5).
        window: average-pooling window over the clamped Δ, positive odd (paper: 3).
        pooling: ``'sample'`` (per sample, valid targets only; default) or ``'flat'`` (the original:
            over the flattened batch, ignored positions included).
        no_image_pass: ``'drop'`` (image tokens removed, original position ids kept; default) or
            ``'mask'`` (the original: full length, image keys masked out of attention). With
            ``pooling='flat'`` the latter reproduces the original's weights.

    Raises:
        ValueError: alpha > beta, an even or non-positive window, an unknown pooling or pass.
    """

    replaces_lm_loss = True

    def __init__(self, alpha: float = 1.0, beta: float = 5.0, window: int = 3,
                 pooling: Pooling = 'sample', no_image_pass: NoImagePass = 'drop') -> None:
        super().__init__()
        _check_args(alpha, beta, window, pooling)
        if no_image_pass not in ('drop', 'mask'):
            raise ValueError(f"CAL no_image_pass must be 'drop' or 'mask', got {no_image_pass!r}.")
        self.alpha, self.beta, self.window = float(alpha), float(beta), window
        self.pooling, self.no_image_pass = pooling, no_image_pass

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, beta={self.beta}, window={self.window}, '
                f'pooling={self.pooling!r}, no_image_pass={self.no_image_pass!r}')

    def logits_positions(self, inputs: MultimodalInputs, lm_positions: torch.Tensor) -> torch.Tensor | None:
        """The with-image logits :meth:`compute_loss` needs (plug-in protocol).

        ``'sample'`` pooling reads only supervised targets: the LM loss's positions
        (:func:`~mllm_align.models.base.supervised_positions`, passed as HF ``logits_to_keep``).
        ``'flat'`` pooling reads every position: None.
        """
        return lm_positions if self.pooling == 'sample' else None

    def loss(self, model: MultimodalModel, inputs: MultimodalInputs, logits: torch.Tensor,
             positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Plug-in protocol: :meth:`compute_loss`."""
        return self.compute_loss(model, inputs, logits, positions)

    @torch.no_grad()
    def no_image_gold_logits(self, model: MultimodalModel, inputs: MultimodalInputs,
                             targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gold-token logits without the image, aligned with the shifted labels.

        Runs ``model.run_llm`` once under ``no_grad`` in the model's current train/eval mode (skipped when
        no sample has an image, or no needed target has an image-free prediction to keep). With
        ``targets`` and a model whose LLM accepts HF ``logits_to_keep`` (``model.supports_logits_to_keep``),
        lm_head runs only on the rows that predict those targets: ``[B', P', V]`` logits, P' the union
        over the samples of the (compact) predictor positions, instead of ``[B', Lc, V]`` (``[B, P, V]``
        instead of ``[B, L, V]`` for ``'mask'``).

        Args:
            model: the base (:class:`~mllm_align.models.base.MultimodalModel`).
            inputs: the spliced batch (needs ``labels``).
            targets: ``[B, L-1]`` bool, the shifted targets whose image-free logit is needed; None: all.

        Returns:
            ``gold_noimg [B, L-1]`` fp32 and ``has_noimg [B, L-1]`` bool (True where defined). With
            ``targets``, values outside ``targets`` may be left at 0 / False.
        """
        labels = inputs.labels
        B, L = labels.shape
        gold_ids = gold_token_ids(labels)  # (B, L-1)
        keep = targets is not None and bool(model.supports_logits_to_keep)
        if self.no_image_pass == 'mask':
            masked = MultimodalInputs(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask.bool() & ~inputs.image_mask,
                position_ids=inputs.position_ids, image_mask=torch.zeros_like(inputs.image_mask),
                labels=None, input_ids=inputs.input_ids)
            if not keep:
                logits = model.run_llm(masked).logits  # (B, L, V)
                gold = logits[:, :-1].gather(-1, gold_ids[..., None]).squeeze(-1).float()  # (B, L-1)
                return gold, torch.isfinite(gold)
            positions = targets.any(0).nonzero().squeeze(1)  # (P,) shifted index t = predictor position
            if positions.numel() == 0:
                return torch.zeros(B, L - 1, device=labels.device), torch.zeros_like(targets)
            logits = model.run_llm(masked, logits_to_keep=positions).logits  # (B, P, V)
            gold = torch.zeros(B, L - 1, dtype=torch.float32, device=labels.device)
            gold[:, positions] = logits.gather(-1, gold_ids[:, positions, None]).squeeze(-1).float()
            return gold, torch.isfinite(gold) & targets

        gold = torch.zeros(B, L - 1, dtype=torch.float32, device=labels.device)
        has = torch.zeros(B, L - 1, dtype=torch.bool, device=labels.device)
        with_image = inputs.image_mask.any(1)  # (B,)
        rows = with_image.nonzero(as_tuple=True)[0]  # (B',)
        # Samples without an image: the no-image pass would see the same tokens, Δ = 0 exactly.
        has[~with_image] = True
        if rows.numel() == 0:
            return gold, has  # gold_noimg is replaced by gold_img where Δ = 0 (see compute_loss)
        compact, dest = drop_image_tokens(inputs, rows)  # dest: (B', L) compact index or -1
        # Compact target c is predicted by compact slot c - 1; its gold id is the original label.
        need = dest >= 1  # (B', L) compact index <= original, so t >= 1
        if targets is not None:
            need[:, 1:] &= targets[rows]  # target t is shifted index t - 1
        b_idx, t_idx = need.nonzero(as_tuple=True)
        pred = dest[b_idx, t_idx] - 1  # (N,) compact predictor slot
        if keep:
            if pred.numel() == 0:
                return gold, has
            slots = torch.unique(pred)  # (P',) sorted union over the samples
            logits = model.run_llm(compact, logits_to_keep=slots).logits  # (B', P', V)
            pred = torch.searchsorted(slots, pred)  # row of each predictor in the kept logits
        else:
            logits = model.run_llm(compact).logits  # (B', Lc, V)
        ids = gold_ids[rows][b_idx, t_idx - 1]  # gold id of target t (shifted index t - 1)
        values = logits[b_idx, pred].gather(-1, ids[:, None]).squeeze(-1).float()  # (N,)
        gold[rows[b_idx], t_idx - 1] = values
        has[rows[b_idx], t_idx - 1] = True
        return gold, has

    def compute_loss(self, model: MultimodalModel, inputs: MultimodalInputs, logits: torch.Tensor,
                     positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The CAL-weighted ``loss_lm`` and diagnostics for one batch.

        With ``'sample'`` pooling the no-image pass computes logits only where a supervised target is
        predicted, if the LLM accepts ``logits_to_keep`` (see :meth:`no_image_gold_logits`).

        Args:
            model: the base (its ``run_llm`` runs the no-image pass).
            inputs: the spliced batch of the with-image pass (needs ``labels [B, L]``).
            logits: logits of the with-image pass (with grad): ``[B, L, V]``, or ``[B, P, V]`` at
                ``positions``.
            positions: ``[P]`` the sequence positions of the rows of ``logits`` (HF ``logits_to_keep``),
                as given by :meth:`logits_positions` (or any sorted superset); None: every position.

        Returns:
            ``{'loss_lm': weighted CE, 'cal/weight_mean': mean weight over valid targets,
            'cal/delta_mean': mean Δ over valid targets}``; only ``loss_lm`` carries a gradient.

        Raises:
            ValueError: no labels, or ``positions`` with ``'flat'`` pooling (which reads every position).
        """
        labels = inputs.labels
        if labels is None:
            raise ValueError('CAL needs `labels` in the batch (it re-weights the training loss).')
        if positions is not None and self.pooling != 'sample':
            raise ValueError("CAL pooling='flat' reads every position: pass full logits (positions=None).")
        valid = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
        gold_img = gather_gold_logits(logits.detach(), labels, positions)  # (B, L-1)
        # The base's run_llm tells every plug-in about this extra pass, then about the main pass again.
        gold_noimg, has_noimg = self.no_image_gold_logits(
            model, inputs, targets=valid if self.pooling == 'sample' else None)
        if self.no_image_pass == 'drop':
            no_image = ~inputs.image_mask.any(1)  # (B,) Δ = 0 exactly
            gold_noimg = torch.where(no_image[:, None], gold_img, gold_noimg)
        weights = cal_token_weights_from_gold(gold_img, gold_noimg, labels, alpha=self.alpha,
                                              beta=self.beta, window=self.window, pooling=self.pooling,
                                              has_noimg=has_noimg)
        defined = valid & has_noimg
        delta = gold_img - gold_noimg
        zero = gold_img.new_zeros(())
        return {
            'loss_lm': cal_loss(logits, labels, weights, positions),
            'cal/weight_mean': weights[valid].mean() if valid.any() else zero,
            'cal/delta_mean': delta[defined].mean() if defined.any() else zero,
        }
