"""Answer questions about images with any :class:`~mllm_align.models.base.MultimodalModel`: one chat turn, a
batch of VQA prompts, a multi-turn :class:`ChatSession`.

The path is the model's public interface, as ``EvaluateChatHook`` and ``MultimodalModel.predict`` use it::

    (image, conversation) ──► build_generation_prompt (model.template, model.tokenizer; one IMAGE_TOKEN_INDEX)
                          ──► image entries: process_image_inputs(image_processor, pad_to_square) as in training,
                              or model.process_images (an HF export's processor pads as training did)
                          ──► llava_collate_fn (right-padded ids) ──► model.prepare_inputs(padding_side='left')
                          ──► greedy: model.generate_ids  |  temperature > 0: sample_ids (seeded)
                          ──► ids cut at the first stop id, decoded with skip_special_tokens, stripped

Takes built objects only (a model, an image processor, PIL images); building a model from a config or an
HF directory is the config layer's (``mllm_align/engine/vqa_eval.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from ..data.collate import llava_collate_fn
from ..data.image_processing import process_image_inputs
from ..data.templates import build_generation_prompt
from ..models.splice import MultimodalInputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

    from ..models.base import MultimodalModel

__all__ = ['ChatSession', 'answer_batch', 'build_chat_batch', 'decode_answers', 'generate_answer_ids',
           'sample_ids']


def _model_device(model: 'MultimodalModel') -> torch.device:
    return next(model.parameters()).device


def build_chat_batch(model: 'MultimodalModel', images: Sequence['Image.Image | Sequence[Image.Image]'],
                     conversations: Sequence[Sequence[Mapping[str, Any]]], *, image_processor: Any = None,
                     pad_to_square: bool = True, system: str | None = None,
                     sample_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The model's batch for B prompts that each end with an open assistant turn, one or more images each.

    Args:
        model: the model (its ``tokenizer`` and ``template`` build the prompt ids).
        images: per prompt an RGB PIL image (e.g. :func:`~mllm_align.data.image_loading.load_image`) or a list
            of them, in the order of the prompt's ``<image>`` marks.
        conversations: B LLaVA conversations ending with a human turn; as many ``<image>`` as images.
        image_processor: the training image processor; None: ``model.process_images`` (its own, e.g. an HF
            export's, which pads as training did).
        pad_to_square: pad to a square before ``image_processor`` (LLaVA-1.5 ``pad``; the config's
            ``pad_image_to_square``). Ignored when ``image_processor`` is None.
        system: system prompt (default: the template's).
        sample_ids: names for errors (default ``'0'``, ``'1'``, …).

    Returns:
        ``{'input_ids' [B, T] right-padded, 'attention_mask' [B, T], 'labels' (all ignored), 'pixel_values', …}``
        on the model's device.

    Raises:
        ValueError: no template, or ``images`` and ``conversations`` differ in length.
        ConversationError: a conversation the template cannot encode (naming the sample).
    """
    if model.template is None:
        raise ValueError(f'{type(model).__name__} has no chat template: set model.template in the config (or '
                         'pass --template for an HF directory).')
    if len(images) != len(conversations) or not images:
        raise ValueError(f'build_chat_batch: {len(images)} images for {len(conversations)} prompts; give one image '
                         'per prompt (at least one).')
    ids = list(sample_ids) if sample_ids is not None else [str(i) for i in range(len(images))]
    groups = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
    items = []
    for sid, conv, group in zip(ids, conversations, groups):
        marks = sum(str(turn.get('value', '')).count(DEFAULT_IMAGE_TOKEN) for turn in conv)
        if marks != len(group):
            raise ValueError(f'Prompt {sid}: {marks} {DEFAULT_IMAGE_TOKEN} in its text for {len(group)} image(s); '
                             f'put one {DEFAULT_IMAGE_TOKEN} per image, in order.')
        prompt = build_generation_prompt(conv, model.tokenizer, model.template, system=system, sample_id=sid)
        items.append(dict(id=sid, input_ids=prompt, labels=[IGNORE_INDEX] * len(prompt)))
    flat = [im for group in groups for im in group]
    if image_processor is None:
        image_entries = model.process_images(flat)
    else:
        image_entries = process_image_inputs(flat, image_processor, pad_to_square)
    data = llava_collate_fn(items, pad_token_id=model.pad_token_id)['data']
    data.pop('pixel_values', None)
    device = _model_device(model)
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    for key, value in image_entries.items():
        out[key] = value.to(device) if isinstance(value, torch.Tensor) else [v.to(device) for v in value]
    return out


@torch.no_grad()
def sample_ids(model: 'MultimodalModel', inputs: MultimodalInputs, eos_token_id: Sequence[int], max_new_tokens: int,
               temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Temperature sampling from left-padded spliced inputs: ``[B, new tokens]`` ids (pad id after a stop id).

    Step k draws x_k ~ softmax(logits(x_<k)[-1] / τ) for every sample, then appends x_k's embedding, a True
    mask column, ``False`` in the image mask and position ``max(real positions) + 1`` on every position axis
    (``[B, L]`` 1-D RoPE and ``[3, B, L]`` M-RoPE alike). Each step is a full pass through
    :meth:`~mllm_align.models.base.MultimodalModel.run_llm` (no KV cache: answers are a few tokens, and every
    plug-in sees each pass with a mask that matches it). Stops when every sample has produced a stop id.

    Args:
        model: the model.
        inputs: ``model.prepare_inputs(data, padding_side='left')``.
        eos_token_id: stop ids (``model.stop_token_ids()``).
        max_new_tokens: at most this many new tokens.
        temperature: τ > 0.
        generator: the seeded ``torch.Generator`` (on the model's device) that makes the draw reproducible.

    Raises:
        ValueError: ``temperature <= 0`` (use the greedy ``model.generate_ids``) or ``max_new_tokens < 1``.
    """
    if temperature <= 0:
        raise ValueError(f'sample_ids needs temperature > 0, got {temperature}; temperature 0 is greedy '
                         '(model.generate_ids).')
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
    embeds, mask = inputs.inputs_embeds, inputs.attention_mask.bool()
    positions, image_mask = inputs.position_ids, inputs.image_mask
    B = embeds.shape[0]
    stops = torch.tensor(list(eos_token_id), device=embeds.device)
    done = torch.zeros(B, dtype=torch.bool, device=embeds.device)
    tokens = []
    for _ in range(max_new_tokens):
        step = MultimodalInputs(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                image_mask=image_mask)
        logits = model.run_llm(step).logits[:, -1].float()  # (B, V)
        probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
        next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        next_ids = torch.where(done, torch.full_like(next_ids, model.pad_token_id), next_ids)
        tokens.append(next_ids)
        done |= torch.isin(next_ids, stops)
        if bool(done.all()):
            break
        new_embeds = model.input_embeddings(next_ids[:, None]).to(embeds.dtype)  # (B, 1, D)
        embeds = torch.cat([embeds, new_embeds], dim=1)  # (B, L + 1, D)
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, L + 1)
        image_mask = torch.cat([image_mask, image_mask.new_zeros(B, 1)], dim=1)  # (B, L + 1)
        real = mask[:, :-1].expand_as(positions)  # (..., B, L): True at real tokens
        last = positions.masked_fill(~real, -1).amax(dim=-1, keepdim=True)  # (..., B, 1)
        positions = torch.cat([positions, last + 1], dim=-1)  # (..., B, L + 1)
    return torch.stack(tokens, dim=1)  # (B, new tokens)


@torch.no_grad()
def generate_answer_ids(model: 'MultimodalModel', data: dict[str, Any], *, max_new_tokens: int = 16,
                        temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """New token ids per sample for a batch of :func:`build_chat_batch`, cut before the first stop id.

    Greedy (``temperature == 0``) is the model's own ``greedy_ids``, what ``MultimodalModel.predict`` runs
    (``max_new_tokens`` an argument here instead of the model's attribute); ``temperature > 0`` samples with
    :func:`sample_ids`.

    Raises:
        ValueError: ``temperature < 0`` or ``max_new_tokens < 1``.
    """
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
    stops = model.stop_token_ids()
    if temperature == 0:
        out = model.greedy_ids(data, max_new_tokens)
    else:
        out = sample_ids(model, model.prepare_inputs(data, padding_side='left'), stops, max_new_tokens, temperature,
                         generator)
    answers = []
    for ids in out.tolist():
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        answers.append(ids[:cut])
    return answers


def decode_answers(model: 'MultimodalModel', ids: Sequence[Sequence[int]]) -> list[str]:
    """Token ids → text (special tokens skipped, whitespace stripped), as ``predict`` decodes."""
    return [model.tokenizer.decode(list(row), skip_special_tokens=True).strip() for row in ids]


def answer_batch(model: 'MultimodalModel', images: Sequence['Image.Image'], questions: Sequence[str], *,
                 image_processor: Any = None, pad_to_square: bool = True, max_new_tokens: int = 16,
                 temperature: float = 0.0, generator: torch.Generator | None = None, system: str | None = None,
                 sample_ids: Sequence[str] | None = None) -> list[str]:
    """One answer per ``(image, question)``: a single user turn ``<image>\\n{question}`` (the question is used
    as is when it already holds ``<image>``, as LLaVA data writes it). Args as :func:`build_chat_batch` and
    :func:`generate_answer_ids`."""
    conversations = [[{'from': 'human', 'value': q if DEFAULT_IMAGE_TOKEN in q else f'{DEFAULT_IMAGE_TOKEN}\n{q}'}]
                     for q in questions]
    data = build_chat_batch(model, images, conversations, image_processor=image_processor,
                            pad_to_square=pad_to_square, system=system, sample_ids=sample_ids)
    ids = generate_answer_ids(model, data, max_new_tokens=max_new_tokens, temperature=temperature,
                              generator=generator)
    return decode_answers(model, ids)


class ChatSession:
    """A multi-turn chat about one image: the image goes with the first question, answers become history.

    Args:
        model: the model (eval mode is the caller's; :meth:`ask` runs under ``torch.no_grad()``).
        image: the RGB PIL image.
        image_processor, pad_to_square, system: as :func:`build_chat_batch`.
        max_new_tokens: answer length cap.
        temperature: 0 = greedy; > 0 samples with a ``torch.Generator`` seeded with ``seed``.
        seed: the sampling seed.

    Raises:
        ValueError: ``temperature < 0``.
    """

    def __init__(self, model: 'MultimodalModel', image: 'Image.Image', *, image_processor: Any = None,
                 pad_to_square: bool = True, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None) -> None:
        if temperature < 0:
            raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
        self.model = model
        self.image = image
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.system = system
        self.history: list[dict[str, str]] = []
        self.generator: torch.Generator | None = None
        if temperature > 0:
            self.generator = torch.Generator(device=_model_device(model))
            self.generator.manual_seed(seed)

    def ask(self, question: str) -> str:
        """The answer to ``question`` given the earlier turns; both are appended to :attr:`history` (unless the
        answer is empty). ``<image>`` in a question is dropped: the session's one image opens the first turn.

        Raises:
            ValueError: an empty question.
        """
        question = question.replace(DEFAULT_IMAGE_TOKEN, '').strip()  # the one image goes with the first turn
        if not question:
            raise ValueError('ChatSession.ask: the question is empty.')
        value = f'{DEFAULT_IMAGE_TOKEN}\n{question}' if not self.history else question
        conversation = self.history + [{'from': 'human', 'value': value}]
        with torch.no_grad():
            data = build_chat_batch(self.model, [self.image], [conversation], image_processor=self.image_processor,
                                    pad_to_square=self.pad_to_square, system=self.system)
            ids = generate_answer_ids(self.model, data, max_new_tokens=self.max_new_tokens,
                                      temperature=self.temperature, generator=self.generator)
        answer = decode_answers(self.model, ids)[0]
        if answer:  # an empty reply cannot be history (templates refuse it): that turn is forgotten
            self.history = conversation + [{'from': 'gpt', 'value': answer}]
        return answer
