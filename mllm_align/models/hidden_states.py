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
against statistics of *all* rows), so the probe is run through the model twice: 2N forward passes.
Caching the pass-1 hidden states on disk instead would cost N·K·L·D values (≈40 GB in bf16 for
LLaVA-1.5-7B at N=100, K=32, L≈1.5k), written once and read once, which takes longer than the
second pass on a GPU and needs the disk; so the forward pass is repeated. Both passes must see the
same hidden states: the model is put in eval mode (no dropout) and restored afterwards.

Models: anything with ``prepare_inputs(data) -> MultimodalInputs``, ``run_llm(inputs, **kw)``,
``tokenizer`` and ``template``: :class:`~mllm_align.models.llava.LLaVAModel` (LoRA and plug-ins
included) and :class:`HFLlavaModel`, which wraps a transformers ``LlavaForConditionalGeneration``
(e.g. one written by ``tools/convert_to_hf.py``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from ..align.moca import MOCA_WEIGHTS_NAME, load_moca
from ..constants import IMAGE_TOKEN_INDEX
from ..metrics.mir import MIRAccumulator, MIRResult, SqrtMode
from .builders import resolve_pad_token_id
from .splice import MultimodalInputs, splice_image_features

__all__ = ['TEXT_TOKENS', 'HFLlavaModel', 'TextTokens', 'compute_model_mir', 'iter_modality_hidden_states',
           'modality_masks', 'num_llm_layers', 'parse_layers']

TextTokens = Literal['after_image', 'text', 'all']
TEXT_TOKENS: tuple[str, ...] = ('after_image', 'text', 'all')


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
def num_llm_layers(model: Any) -> int:
    """K, the number of decoder layers of the model's LLM."""
    llm = getattr(model, 'llm', None)
    config = getattr(llm, 'config', None)
    if config is None:
        raise TypeError(f'{type(model).__name__} has no `llm.config`; MIR extraction needs a LLaVAModel or '
                        'an HFLlavaModel.')
    if hasattr(config, 'get_text_config'):
        config = config.get_text_config()
    return int(config.num_hidden_layers)


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
def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _collate(encoded: list[Any], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    T = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(encoded), T, dtype=torch.bool)
    for b, e in enumerate(encoded):
        input_ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[b, :len(e.input_ids)] = True
    pixels = torch.cat([e.pixel_values for e in encoded])  # (B, 3, H, W): one image per sample
    return dict(input_ids=input_ids.to(device), attention_mask=attention.to(device), pixel_values=pixels.to(device))


def _hidden_states(model: Any, inputs: MultimodalInputs) -> tuple[torch.Tensor, ...]:
    try:
        out = model.run_llm(inputs, output_hidden_states=True, logits_to_keep=1)
    except TypeError:  # an LLM without `logits_to_keep`
        out = model.run_llm(inputs, output_hidden_states=True)
    hidden = getattr(out, 'hidden_states', None)
    if hidden is None:
        raise ValueError(f'{type(model).__name__}.run_llm returned no hidden_states; the LLM must support '
                         'output_hidden_states=True.')
    return hidden


def _max_positions(model: Any) -> int | None:
    config = getattr(getattr(model, 'llm', None), 'config', None)
    if config is not None and hasattr(config, 'get_text_config'):
        config = config.get_text_config()
    return getattr(config, 'max_position_embeddings', None)


def iter_modality_hidden_states(model: Any, probe: Any, layers: str | Sequence[int] | None = None,
                                dtype: torch.dtype | None = torch.float32, *,
                                text_tokens: TextTokens = 'after_image', batch_size: int = 1,
                                progress: Any = None) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Yield ``(vision_layers, text_layers)`` for each probe pair, in probe order.

    ``vision_layers[j]`` is ``[P, D]`` (that sample's vision rows at layer ``layers[j]``) and
    ``text_layers[j]`` is ``[n_t, D]``, on the model's device. The model is switched to eval mode for
    the iteration and restored when the iterator is exhausted or closed; forward passes run under
    ``torch.no_grad()`` (the consumer's grad mode is untouched between samples).

    Args:
        model: a :class:`LLaVAModel` or :class:`HFLlavaModel` (needs ``tokenizer`` and ``template``).
        probe: a :class:`~mllm_align.data.mir_probe.MIRProbe`.
        layers: layer numbers or spec (:func:`parse_layers`); default all decoder layers 1..K.
        dtype: dtype of the yielded rows (default float32; None keeps the model's dtype). The model
            itself runs in its own dtype (cast it beforehand for bf16).
        text_tokens: which non-vision positions count as text (module docstring).
        batch_size: pairs per forward pass (right-padded; results do not depend on it beyond
            floating-point noise).
        progress: an object with ``update(n)`` (e.g. tqdm), advanced once per pair.

    Raises:
        ValueError: bad layers, a prompt longer than the LLM's ``max_position_embeddings`` (naming
            the pair), or a hidden-state count that does not match the LLM's layers.
    """
    num_layers = num_llm_layers(model)
    layer_ids = parse_layers(layers, num_layers)
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    tokenizer, template = getattr(model, 'tokenizer', None), getattr(model, 'template', None)
    device = _model_device(model)
    pad_id = int(getattr(model, 'pad_token_id', 0) or 0)
    max_pos = _max_positions(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(probe), batch_size):
            idx = range(start, min(start + batch_size, len(probe)))
            encoded = [probe.encode(i, tokenizer, template) for i in idx]
            batch = _collate(encoded, pad_id, device)
            with torch.no_grad():
                inputs = model.prepare_inputs(batch)
                lengths = inputs.attention_mask.sum(dim=1)
                if max_pos is not None and int(lengths.max()) > max_pos:
                    b = int(lengths.argmax())
                    pair = probe.pairs[idx[b]]
                    raise ValueError(f'Pair {idx[b]} ({pair.image_id} + {pair.text_id}) is {int(lengths[b])} tokens '
                                     f'long, more than the LLM\'s max_position_embeddings={max_pos}; lower '
                                     '--text-max-tokens.')
                hidden = _hidden_states(model, inputs)
                if len(hidden) != num_layers + 1:
                    raise ValueError(f'The LLM returned {len(hidden)} hidden states; expected {num_layers + 1} '
                                     f'(embeddings + {num_layers} layers).')
                vision, text = modality_masks(inputs, text_tokens, [e.text_mask for e in encoded],
                                              batch['input_ids'])
                rows = []
                for b in range(len(encoded)):
                    v = [hidden[k][b][vision[b]] for k in layer_ids]  # K' × (P, D)
                    t = [hidden[k][b][text[b]] for k in layer_ids]  # K' × (n_t, D)
                    if dtype is not None:
                        v = [x.to(dtype) for x in v]
                        t = [x.to(dtype) for x in t]
                    rows.append((v, t))
                del hidden, inputs
            for v, t in rows:
                if progress is not None:
                    progress.update(1)
                yield v, t
    finally:
        model.train(was_training)


def compute_model_mir(model: Any, probe: Any, layers: str | Sequence[int] | None = None, sqrt: SqrtMode = 'exact',
                      *, dtype: torch.dtype | None = torch.float32, text_tokens: TextTokens = 'after_image',
                      batch_size: int = 1, median_bins: int = 1024, progress: Any = None) -> MIRResult:
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


# ---------------------------------------------------------------------------------------------
# transformers LlavaForConditionalGeneration
# ---------------------------------------------------------------------------------------------
class HFLlavaModel(nn.Module):
    """A transformers ``LlavaForConditionalGeneration`` behind the extraction interface of LLaVAModel.

    ``prepare_inputs`` takes mllm_align prompt ids (one ``IMAGE_TOKEN_INDEX`` placeholder per image),
    computes the image features with HF's own ``get_image_features`` (vision tower, feature layer
    and strategy, projector) and splices them with :func:`splice_image_features`; ``run_llm`` runs the
    language model (``model.language_model``) on the spliced embeddings. This is what
    ``LlavaForConditionalGeneration.forward`` does with ``image_seq_length`` ``<image>`` tokens,
    without needing the expanded ids.

    A MoCa-trained export (``moca.safetensors`` beside the weights) is calibrated as in training:
    :meth:`from_pretrained` re-attaches MoCa to the language model's decoder layers and
    :meth:`run_llm` gives it the spliced batch's image mask, so MIR of the export equals MIR of the
    trained ``LLaVAModel``.

    Args:
        hf_model: the loaded ``LlavaForConditionalGeneration``.
        tokenizer: its tokenizer.
        template: the mllm_align chat template the model was trained with.
        moca: a :class:`~mllm_align.align.moca.MoCa` already attached to ``hf_model``'s language model
            (None: no calibration).
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, template: str | None = None,
                 moca: nn.Module | None = None) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.template = template
        self.moca = moca

    @property
    def llm(self) -> nn.Module:
        """The language model (a ``LlamaModel``, ``Qwen2Model``, …; its last hidden state is normed)."""
        return self.hf_model.model.language_model

    @property
    def pad_token_id(self) -> int:
        return resolve_pad_token_id(self.llm.config, self.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, template: str | None = None,
                        dtype: torch.dtype | str | None = None, device: str | torch.device = 'cpu') -> 'HFLlavaModel':
        """Load an HF Llava directory, its tokenizer, and the template.

        The template is ``template`` if given, else the ``model.template`` of the mllm_align config
        recorded in the directory's ``mllm_align_export.json`` (written by ``tools/convert_to_hf.py``).
        A MoCa export in the directory is loaded and attached (see the class docstring).

        Raises:
            ValueError: not a Llava directory, or no template can be found.
        """
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        path = Path(path)
        config_file = path / 'config.json'
        if not config_file.is_file():
            raise ValueError(f'{path} is not a transformers model directory (no config.json).')
        model_type = json.loads(config_file.read_text()).get('model_type')
        if model_type != 'llava':
            raise ValueError(f'{path} holds a {model_type!r} model; expected an HF Llava export '
                             '(LlavaForConditionalGeneration, model_type "llava").')
        if template is None:
            template = _template_from_export(path)
        if template is None:
            raise ValueError(f'No chat template for {path}: pass --template (e.g. vicuna_v1, plain); it is read '
                             'from the source config named in mllm_align_export.json when that config exists.')
        from ..engine.checkpoint import hf_weights_kwargs
        kwargs = {} if dtype is None else dict(dtype=dtype)
        hf_model = LlavaForConditionalGeneration.from_pretrained(str(path), **kwargs, **hf_weights_kwargs(path))
        hf_model = hf_model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        moca = None
        if (path / MOCA_WEIGHTS_NAME).is_file():
            moca = load_moca(path).to(device)
            moca.attach(hf_model.model.language_model)
            print_log(f'{path}: MoCa export found and attached ({moca.num_layers} layers).', logger='current')
        return cls(hf_model, tokenizer, template, moca)

    def prepare_inputs(self, data: dict) -> MultimodalInputs:
        """Spliced inputs: ``input_ids [B, T]`` with placeholders, ``attention_mask``, ``pixel_values [N, 3, H, W]``."""
        pixel_values = data.get('pixel_values')
        features = None
        if pixel_values is not None:
            dtype = next(self.hf_model.model.vision_tower.parameters()).dtype
            features = self.hf_model.get_image_features(pixel_values=pixel_values.to(dtype))
            if isinstance(features, (list, tuple)):
                features = torch.stack(list(features))  # (N, P, D)
        attention = data.get('attention_mask')
        if attention is None:
            attention = torch.ones_like(data['input_ids'], dtype=torch.bool)
        return splice_image_features(data['input_ids'], attention, self.hf_model.get_input_embeddings(), features,
                                     pad_token_id=self.pad_token_id)

    def run_llm(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """The language model on spliced inputs (``.hidden_states`` with ``output_hidden_states=True``)."""
        kwargs.pop('logits_to_keep', None)  # the decoder computes no logits
        if self.moca is not None:
            self.moca.set_image_mask(inputs.image_mask)
        return self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                        position_ids=inputs.position_ids, use_cache=False, **kwargs)


def _template_from_export(path: Path) -> str | None:
    info_file = path / 'mllm_align_export.json'
    if not info_file.is_file():
        return None
    source = json.loads(info_file.read_text()).get('source_config')
    if not source or not Path(source).is_file():
        return None
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(source)
        template = cfg.model.get('template')
    except Exception as exc:  # noqa: BLE001 - the config is only a hint
        print_log(f'Could not read the template from {source}: {exc}', logger='current', level=logging.WARNING)
        return None
    return template if isinstance(template, str) else None
