"""Per-layer hidden states of vision and text tokens, for MIR, streamed one sample at a time.

For each pair of a :class:`~mllm_align.data.mir_probe.MIRProbe` the model runs one forward pass
(``prepare_inputs`` → ``run_llm(..., output_hidden_states=True)``) and yields, for each chosen LLM
layer k, the rows of the vision tokens ``V_k [P, D]`` and of the text tokens ``T_k [n_t, D]``.

Which positions are which:

* **vision** = the model's own ``image_mask`` (the spliced image-feature rows): no token count or
  offset is assumed (the seed hard-codes 576 tokens after the ``<image>`` position).
* **text** (``text_tokens``):

  - ``'after_image'`` (default, the seed's ``latent[image_start_idx + 576:]``): every real
    (non-padding) position after the last vision token: the template text between the image and
    the probe text (e.g. ``\\n ASSISTANT:``), the text itself and the end-of-turn token(s). BOS and
    the system prompt, before the image, are excluded; they are few, identical in every sample, and
    BOS's hidden state is an attention-sink outlier far from both modalities.
  - ``'text'``: only the probe text's own tokens (the supervised reply tokens that are not special
    tokens); needs the probe's ``placement='reply'``.
  - ``'all'``: every real non-vision position, BOS and system prompt included.

Layers are numbered as the indices of HF's ``hidden_states`` tuple: ``1..K`` are the outputs of the
K decoder layers, ``0`` is the embedding output (never part of ``'all'``; the seed skips it too).
Layer K is HF's last hidden state, which is taken **after the final norm** (RMSNorm/LayerNorm) in
every HF decoder, as in the seed; layers ``1..K-1`` are raw residual-stream states.

Memory. One sample's hidden states of every layer exist at a time (K+1 tensors ``[1, L, D]`` in the
model dtype, since HF returns them all; ``logits_to_keep=1`` avoids the ``[L, V]`` logits), then
only the chosen layers' rows are kept until the consumer moves on. :func:`compute_model_mir` feeds
them to :class:`~mllm_align.metrics.mir.MIRAccumulator`, whose state does not grow with N except
for one float64 norm per row. The accumulator needs two passes over the data (Eq. M2 flags rows
against statistics of *all* rows). The evaluator (``evaluation/mir.py``) keeps the pass-1 rows in memory
for the second pass while they fit its budget (1 GiB by default: the demo's SmolLM2 probe holds ~0.4 GB) and
otherwise runs the probe through the model again: 2N forward passes. Caching them on disk instead would cost
N·K·L·D values (≈40 GB in bf16 for LLaVA-1.5-7B at N=100, K=32, L≈1.5k), written once and read once, which
takes longer than the second pass on a GPU and needs the disk. Both passes must see the same hidden
states: the model is put in eval mode (no dropout) and restored afterwards.

Models: any :class:`~mllm_align.models.base.MultimodalModel` (``prepare_inputs``, ``run_llm``,
``llm_config``, ``tokenizer``, ``template``): :class:`~mllm_align.models.llava.LLaVAModel` (LoRA and
plug-ins included), :class:`~mllm_align.models.hf_llava.HFLlavaModel` (an exported HF Llava directory),
and the other bases. The steps are public so that evaluators can run them batch by batch
(:func:`probe_batches` → :func:`batch_modality_hidden_states`; ``mllm_align/evaluation/mir.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import torch

from ..constants import IMAGE_TOKEN_INDEX
from ..metrics.mir import MIRAccumulator, MIRResult, SqrtMode
from .splice import MultimodalInputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .base import MultimodalModel

__all__ = ['TEXT_TOKENS', 'TextTokens', 'batch_modality_hidden_states', 'compute_model_mir',
           'iter_modality_hidden_states', 'modality_masks', 'num_llm_layers', 'parse_layers', 'probe_batches']

TextTokens = Literal['after_image', 'text', 'all']
TEXT_TOKENS: tuple[str, ...] = ('after_image', 'text', 'all')


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
def _text_config(model: 'MultimodalModel') -> Any:
    config = getattr(model, 'llm_config', None)
    if config is None:
        raise TypeError(f'{type(model).__name__} has no `llm_config`; MIR extraction needs a '
                        'mllm_align.models.MultimodalModel (LLaVAModel, HFLlavaModel, …).')
    return config.get_text_config() if hasattr(config, 'get_text_config') else config


def num_llm_layers(model: 'MultimodalModel') -> int:
    """K, the number of decoder layers of the model's LLM (``llm_config.num_hidden_layers``)."""
    return int(_text_config(model).num_hidden_layers)


def parse_layers(spec: str | int | Sequence[int] | None, num_layers: int) -> list[int]:
    """Layer numbers (HF ``hidden_states`` indices) from a spec, sorted and de-duplicated.

    Args:
        spec: None or ``'all'`` (layers 1..K); an int; a list of ints; or a string of comma-separated
            numbers and inclusive ranges, e.g. ``'1-16'``, ``'1,3,5'``, ``'2-4,8'``.
        num_layers: K. Valid numbers are 0 (embedding output, only when asked for) to K.

    Raises:
        ValueError: an unparsable spec, an empty selection, or a number outside 0..K (naming K).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == 'all'):
        return list(range(1, num_layers + 1))
    if isinstance(spec, bool):
        raise ValueError(f'layers={spec!r}: expected "all", a number, a range like "1-16" or a list.')
    if isinstance(spec, int):
        numbers = [spec]
    elif isinstance(spec, str):
        numbers = []
        for part in spec.replace(' ', '').split(','):
            if not part:
                continue
            try:
                if '-' in part:
                    lo, hi = part.split('-', 1)
                    a, b = int(lo), int(hi)
                    if b < a:
                        raise ValueError
                    numbers.extend(range(a, b + 1))
                else:
                    numbers.append(int(part))
            except ValueError:
                raise ValueError(f'layers={spec!r}: cannot parse {part!r}; use "all", numbers and inclusive '
                                 'ranges, e.g. "1-16" or "1,3,5".') from None
    else:
        numbers = [int(x) for x in spec]
    if not numbers:
        raise ValueError(f'layers={spec!r} selects no layer.')
    bad = sorted({n for n in numbers if not 0 <= n <= num_layers})
    if bad:
        raise ValueError(f'layers={spec!r}: layer(s) {bad} out of range; the LLM has {num_layers} decoder layers, '
                         f'numbered 1..{num_layers} (0 = embedding output).')
    return sorted(set(numbers))


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------
def modality_masks(inputs: MultimodalInputs, text_tokens: TextTokens = 'after_image',
                   text_masks: Sequence[Sequence[bool] | None] | None = None,
                   input_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vision [B, L], text [B, L])`` bool masks over the spliced sequence (module docstring).

    Args:
        inputs: the spliced batch (``image_mask``, ``attention_mask``).
        text_tokens: which non-vision positions count as text.
        text_masks: for ``'text'``: per sample, a bool per *unspliced* prompt token (True at the
            text's own tokens), as :class:`~mllm_align.data.mir_probe.EncodedPair.text_mask`.
        input_ids: ``[B, T]`` the unspliced prompt ids (for ``'text'``).

    Raises:
        ValueError: an unknown ``text_tokens``; a sample without vision tokens (``'after_image'``);
            ``'text'`` without text masks.
    """
    if text_tokens not in TEXT_TOKENS:
        raise ValueError(f'text_tokens={text_tokens!r}: use one of {TEXT_TOKENS}.')
    valid = inputs.attention_mask.bool()
    vision = inputs.image_mask & valid  # (B, L)
    other = valid & ~inputs.image_mask  # (B, L)
    if text_tokens == 'all':
        return vision, other
    if text_tokens == 'after_image':
        B, L = vision.shape
        slots = torch.arange(L, device=vision.device).expand(B, L)
        if not bool(vision.any(dim=1).all()):
            raise ValueError("text_tokens='after_image' needs an image in every sample.")
        last = torch.where(vision, slots, -1).max(dim=1).values  # (B,) last vision slot
        return vision, other & (slots > last[:, None])
    if text_masks is None or input_ids is None or any(m is None for m in text_masks):
        raise ValueError("text_tokens='text' needs the text's token mask, which only placement='reply' "
                         "provides; use placement='reply' or text_tokens='after_image'.")
    text = torch.zeros_like(other)
    for b, mask in enumerate(text_masks):
        keep = (input_ids[b, :len(mask)] != IMAGE_TOKEN_INDEX).cpu()  # the rest is right padding
        flags = torch.tensor(list(mask), dtype=torch.bool)[keep].to(other.device)
        slots = other[b].nonzero(as_tuple=True)[0]
        if slots.shape[0] != flags.shape[0]:
            raise ValueError(f'Sample {b}: {slots.shape[0]} text positions after splicing but {flags.shape[0]} '
                             'text-mask entries.')
        text[b, slots] = flags
    return vision, text


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _collate(encoded: list[Any], pad_id: int, device: torch.device) -> dict[str, Any]:
    """Right-padded ``input_ids [B, T]``, ``attention_mask [B, T]``, the images of every pair along dim 0
    (``pixel_values``; ``image_grid_thw`` too when the pairs carry it), and the pairs' ``text_masks``."""
    T = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(encoded), T, dtype=torch.bool)
    for b, e in enumerate(encoded):
        input_ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[b, :len(e.input_ids)] = True
    batch: dict[str, Any] = dict(input_ids=input_ids.to(device), attention_mask=attention.to(device))
    batch['pixel_values'] = torch.cat([e.pixel_values for e in encoded]).to(device)  # (N, ...) one image per pair
    grids = [getattr(e, 'image_grid_thw', None) for e in encoded]
    if all(g is not None for g in grids):
        batch['image_grid_thw'] = torch.cat(grids).to(device)  # (N, 3)
    batch['text_masks'] = [e.text_mask for e in encoded]
    return batch


def _max_positions(model: 'MultimodalModel') -> int | None:
    return getattr(_text_config(model), 'max_position_embeddings', None)


def probe_batches(model: 'MultimodalModel', probe: Any, batch_size: int = 1) -> Iterator[dict[str, Any]]:
    """The probe's pairs encoded for ``model`` (its tokenizer and template) and collated, in probe order.

    Each batch holds ``input_ids [B, T]`` (one ``IMAGE_TOKEN_INDEX`` per pair), ``attention_mask``,
    ``pixel_values`` (and ``image_grid_thw`` when the probe gives it) on the model's device, plus
    ``text_masks`` (per pair, see :func:`modality_masks`) and ``pair_indices`` (the probe indices).

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    tokenizer, template = getattr(model, 'tokenizer', None), getattr(model, 'template', None)
    device = _model_device(model)
    pad_id = int(getattr(model, 'pad_token_id', 0) or 0)
    for start in range(0, len(probe), batch_size):
        idx = list(range(start, min(start + batch_size, len(probe))))
        batch = _collate([probe.encode(i, tokenizer, template) for i in idx], pad_id, device)
        batch['pair_indices'] = idx
        yield batch


@torch.no_grad()
def batch_modality_hidden_states(model: 'MultimodalModel', batch: dict[str, Any], layer_ids: Sequence[int],
                                 dtype: torch.dtype | None = torch.float32, *,
                                 text_tokens: TextTokens = 'after_image',
                                 probe: Any = None) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """One forward pass of a :func:`probe_batches` batch: per pair, ``(vision_layers, text_layers)``.

    ``vision_layers[j]`` is ``[P, D]`` (the pair's vision rows at layer ``layer_ids[j]``), ``text_layers[j]``
    ``[n_t, D]``, on the model's device. Runs under ``torch.no_grad()`` in the model's current mode (the
    caller puts it in eval mode).

    Args:
        model: the base.
        batch: from :func:`probe_batches`.
        layer_ids: HF ``hidden_states`` indices (:func:`parse_layers`).
        dtype: dtype of the returned rows (None keeps the model's).
        text_tokens: which non-vision positions count as text (module docstring).
        probe: the probe (only to name a pair in errors).

    Raises:
        ValueError: a prompt longer than the LLM's ``max_position_embeddings`` (naming the pair), or a
            hidden-state count that does not match the LLM's layers.
    """
    num_layers = num_llm_layers(model)
    max_pos = _max_positions(model)
    data = {k: v for k, v in batch.items() if k not in ('text_masks', 'pair_indices')}
    inputs = model.prepare_inputs(data)
    lengths = inputs.attention_mask.sum(dim=1)
    if max_pos is not None and int(lengths.max()) > max_pos:
        b = int(lengths.argmax())
        index = batch.get('pair_indices', list(range(len(lengths))))[b]
        what = f'Pair {index}'
        if probe is not None:
            pair = probe.pairs[index]
            what += f' ({pair.image_id} + {pair.text_id})'
        raise ValueError(f"{what} is {int(lengths[b])} tokens long, more than the LLM's "
                         f'max_position_embeddings={max_pos}; lower --text-max-tokens.')
    keep = dict(logits_to_keep=1) if getattr(model, 'supports_logits_to_keep', False) else {}
    out = model.run_llm(inputs, output_hidden_states=True, **keep)
    hidden = getattr(out, 'hidden_states', None)
    if hidden is None:
        raise ValueError(f'{type(model).__name__}.run_llm returned no hidden_states; the LLM must support '
                         'output_hidden_states=True.')
    if len(hidden) != num_layers + 1:
        raise ValueError(f'The LLM returned {len(hidden)} hidden states; expected {num_layers + 1} '
                         f'(embeddings + {num_layers} layers).')
    vision, text = modality_masks(inputs, text_tokens, batch.get('text_masks'), batch['input_ids'])
    rows = []
    for b in range(inputs.attention_mask.shape[0]):
        v = [hidden[k][b][vision[b]] for k in layer_ids]  # K' × (P, D)
        t = [hidden[k][b][text[b]] for k in layer_ids]  # K' × (n_t, D)
        if dtype is not None:
            v = [x.to(dtype) for x in v]
            t = [x.to(dtype) for x in t]
        rows.append((v, t))
    return rows


def iter_modality_hidden_states(model: 'MultimodalModel', probe: Any, layers: str | Sequence[int] | None = None,
                                dtype: torch.dtype | None = torch.float32, *,
                                text_tokens: TextTokens = 'after_image', batch_size: int = 1,
                                progress: Any = None) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Yield ``(vision_layers, text_layers)`` for each probe pair, in probe order.

    ``vision_layers[j]`` is ``[P, D]`` (that sample's vision rows at layer ``layers[j]``) and
    ``text_layers[j]`` is ``[n_t, D]``, on the model's device. The model is switched to eval mode for
    the iteration and restored when the iterator is exhausted or closed; forward passes run under
    ``torch.no_grad()`` (the consumer's grad mode is untouched between samples).

    Args:
        model: a ``MultimodalModel`` (needs ``tokenizer`` and ``template``).
        probe: a :class:`~mllm_align.data.mir_probe.MIRProbe`.
        layers: layer numbers or spec (:func:`parse_layers`); default all decoder layers 1..K.
        dtype: dtype of the yielded rows (default float32; None keeps the model's dtype). The model
            itself runs in its own dtype (cast it beforehand for bf16).
        text_tokens: which non-vision positions count as text (module docstring).
        batch_size: pairs per forward pass (right-padded; results do not depend on it beyond
            floating-point noise).
        progress: an object with ``update(n)`` (e.g. tqdm), advanced once per pair.

    Raises:
        ValueError: bad layers or batch size, and the errors of :func:`batch_modality_hidden_states`.
    """
    layer_ids = parse_layers(layers, num_llm_layers(model))
    if text_tokens not in TEXT_TOKENS:
        raise ValueError(f'text_tokens={text_tokens!r}: use one of {TEXT_TOKENS}.')
    was_training = model.training
    model.eval()
    try:
        for batch in probe_batches(model, probe, batch_size):
            rows = batch_modality_hidden_states(model, batch, layer_ids, dtype, text_tokens=text_tokens, probe=probe)
            del batch
            for v, t in rows:
                if progress is not None:
                    progress.update(1)
                yield v, t
    finally:
        model.train(was_training)


def compute_model_mir(model: 'MultimodalModel', probe: Any, layers: str | Sequence[int] | None = None,
                      sqrt: SqrtMode = 'exact', *, dtype: torch.dtype | None = torch.float32,
                      text_tokens: TextTokens = 'after_image', batch_size: int = 1, median_bins: int = 1024,
                      progress: Any = None) -> MIRResult:
    """MIR of ``model`` on ``probe``: two streaming passes into :class:`MIRAccumulator` (2N forwards).

    Args:
        model, probe, layers, dtype, text_tokens, batch_size: as in :func:`iter_modality_hidden_states`.
        sqrt: the square-root term (``'exact'``, ``'seed-sqrtm'``, ``'seed-fast'``; see ``metrics/mir.py``).
        median_bins: the accumulator's histogram bins for the median row.
        progress: advanced once per pair and pass (2N in all); its ``set_description`` (if any) names the pass.

    Returns:
        :class:`MIRResult`; ``per_layer[j]`` belongs to layer ``parse_layers(layers, K)[j]``.
    """
    layer_ids = parse_layers(layers, num_llm_layers(model))
    acc = MIRAccumulator(len(layer_ids), sqrt=sqrt, median_bins=median_bins)
    for pass_index in (1, 2):
        if progress is not None and hasattr(progress, 'set_postfix_str'):
            progress.set_postfix_str(f'pass {pass_index}/2')
        for vision_layers, text_layers in iter_modality_hidden_states(
                model, probe, layer_ids, dtype, text_tokens=text_tokens, batch_size=batch_size, progress=progress):
            acc.update(vision_layers, text_layers)
        if pass_index == 1:
            acc.start_second_pass()
    return acc.compute()
