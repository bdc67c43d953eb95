"""Chat templates: LLaVA conversations → ``input_ids`` and an exact ``labels`` mask.

A template is a small frozen dataclass of text pieces (see :class:`ChatTemplate`). A conversation
is rendered as::

    prefix  [system block]  ( user turn | assistant header · REPLY · turn_sep )*  [suffix]

where only the ``REPLY`` pieces (the assistant's text plus the template's end-of-turn token) are
supervised. ``encode_conversation`` tokenizes that text piece by piece: consecutive unsupervised
pieces are joined into one segment, and each segment is split at ``<image>`` so that every image
becomes ONE ``IMAGE_TOKEN_INDEX`` placeholder (LLaVA's ``tokenizer_image_token`` convention).
Every label is therefore known exactly, without re-tokenizing prefixes or guessing offsets.

Segment boundaries and whole-string tokenization. For byte-level BPE tokenizers (Llama-3,
Qwen2, Phi-3-style, and the tiny test tokenizers) the concatenated segment ids equal
``tokenizer.apply_chat_template(messages, tokenize=True)`` for text-only conversations, because
every boundary sits next to a special token (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``</s>``) or
between a header ending in ``\\n``/``:`` and a reply, which the pre-tokenizer splits there anyway.
Known exceptions, all rare in LLaVA data:

* ``qwen2``/``phi3``: a reply that itself starts with ``\\n`` (the header's ``\\n`` and the reply's
  would merge into one ``\\n\\n`` token in whole-string tokenization). ``llama3`` trims every
  message as its official template does, so it has no such case.
* ``vicuna_v1``: the space between ``ASSISTANT:`` and the reply is carried by the reply segment
  (``' ' + reply``), which matches GPT-2-style pre-tokenization (a space attaches to the following
  word) and LLaVA's rendering; the space is therefore supervised together with the first word.
  With a SentencePiece (LLaMA-2 / Vicuna) tokenizer each segment gets its own dummy-prefix ``▁``,
  so ids can differ from whole-string tokenization at segment starts, as in LLaVA's
  ``preprocess_v1``. ``plain`` has no chat template to compare with.
* ``mistral``: here the segments ARE the reference. mistral-common (Mistral's tokenizer library,
  the ground truth for the v1 SentencePiece tokenizer of Mistral-7B-Instruct v0.1/v0.2) encodes
  each message on its own: BOS, ``encode('[INST] q [/INST]')``, ``encode(reply)``, EOS, … where
  every ``encode`` adds SentencePiece's dummy-prefix ``▁``. ``encode_conversation`` cuts the text
  at the same places, so its ids equal mistral-common's (training conversations and generation
  prompts, with and without a system message; ``tests/data/fixtures/mistral``) for a tokenizer
  that adds the ``▁`` at the start of every text span, also right after ``<s>``/``</s>``:
  SentencePiece itself, ``LlamaTokenizer`` and ``LlamaTokenizerFast`` with ``legacy=True`` (the
  default). Known exceptions: (1) a ``legacy=False`` fast tokenizer (``Metaspace`` with
  ``prepend_scheme='first'``) adds no ``▁`` after ``<s>``, so the second id is ``[`` instead of
  ``▁[``, and a reply that starts with a space loses one ``▁``; (2) ``<s>``, ``</s>``, ``<unk>``
  typed inside a message are special tokens to HF tokenizers but text to mistral-common;
  (3) images: mistral-common's v1 tokenizer has none; ``<image>`` cuts a segment, so the text after
  it gets its own ``▁`` (as with LLaVA's ``tokenizer_image_token`` on LLaMA-2). Tokenizing the
  rendered text as ONE string gives other ids (no ``▁`` before a reply or after ``</s>``), which
  is why Mistral's updated chat template writes those spaces out (see below).

Reference formats (rendered text, checked in ``tests/data/test_templates.py``):

* ``plain``: LLaVA ``conv_llava_plain`` for pre-training: ``{bos}<image>caption{eos}``; the human
  turn is reduced to its image placeholders. LLaVA ends the caption with ``\\n``; here the
  tokenizer's EOS is used so the model learns to stop.
* ``vicuna_v1``: LLaVA-1.5 ``conv_vicuna_v1``:
  ``{bos}{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>``.
* ``llama3``: Meta-Llama-3-8B-Instruct's template (no default system prompt, BOS before the
  first header, messages trimmed). Llama-3.1's template adds a dated default system block and is
  not what this template produces.
* ``qwen2``: Qwen2-Instruct ChatML, with the default system ``You are a helpful assistant.``.
* ``chatml``: plain ChatML, no default system prompt (a system block only when the conversation has a
  system turn), as Qwen3's template writes it without tools or thinking.
* ``smollm2``: SmolLM2-Instruct's ChatML: ``qwen2``'s layout with SmolLM2's default system prompt
  (``You are a helpful AI assistant named SmolLM, trained by Hugging Face``), as its GGUF's template writes it.
* ``qwen2_vl``: Qwen2-VL-Instruct: ``qwen2``'s ChatML, each ``<image>`` of a user turn written
  ``<|vision_start|><image><|vision_end|>`` (:attr:`ChatTemplate.image`), as Qwen2-VL's own template
  writes an image content item (with ``<|image_pad|>`` for the placeholder, which its processor repeats
  once per merged patch). A LLaVA turn ``'<image>\\nq'`` therefore renders what the real template
  renders for the content items ``[image, text '\\nq']``; ids are equal once the placeholder is replaced
  by ``<|image_pad|>`` (``tests/data/test_templates.py``).
* ``phi3``: Phi-3-mini-instruct (``<|user|>\\n…<|end|>\\n``), ending a training conversation with
  the tokenizer's EOS as the official template does.
* ``mistral``: Mistral-7B-Instruct v0.1/v0.2 and VW-LMM's ``mistral`` conversation:
  ``{bos}[INST] {q} [/INST]{a}</s>[INST] {q2} [/INST]{a2}</s>``; a generation prompt ends after
  ``[/INST]``. No default system prompt; a system message is merged into the first user turn as
  ``{system}\\n\\n{q}`` (mistral-common; :attr:`ChatTemplate.system_into_first_user`). The text is
  that of Mistral's first v0.2 chat template (which rejects system messages). Mistral's updated
  template renders ``<s> [INST] {q} [/INST] {a}</s> [INST] …``, spelling out the dummy prefixes
  for whole-string tokenization with a ``legacy=False`` tokenizer: the same ids as here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

__all__ = [
    'ChatTemplate', 'ConversationError', 'TEMPLATES', 'register_template', 'get_template',
    'normalize_conversation', 'render_conversation', 'encode_conversation',
    'build_generation_prompt', 'VICUNA_SYSTEM', 'QWEN2_SYSTEM'
]

VICUNA_SYSTEM = ('A chat between a curious user and an artificial intelligence assistant. '
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QWEN2_SYSTEM = 'You are a helpful assistant.'
SMOLLM2_SYSTEM = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face'

# LLaVA speaker names and HF roles → canonical role
_SPEAKERS: dict[str, str] = {
    'human': 'user', 'user': 'user',
    'gpt': 'assistant', 'assistant': 'assistant',
    'system': 'system',
}


class ConversationError(ValueError):
    """A conversation the template cannot encode; ``cause`` is a short machine-readable reason.

    Causes: ``'empty_conversation'``, ``'unknown_speaker'``, ``'bad_turn'``,
    ``'image_token_in_reply'``.
    """

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class ChatTemplate:
    """Text pieces of one chat format.

    ``{bos}``/``{eos}`` in any piece are replaced by the tokenizer's BOS/EOS token text (or ''
    when the tokenizer has none); ``{system}``/``{content}`` by the message text.

    Args:
        name: registry name.
        prefix: start of every conversation (e.g. ``'{bos}'``), not supervised.
        system: the system block, with ``{system}``; not supervised (see ``system_into_first_user``).
        default_system: system text used when the conversation has none (None: no system block).
        user: a user turn, with ``{content}``; not supervised.
        assistant: the assistant header before each reply; not supervised.
        reply: the reply with ``{content}`` and the end-of-turn marker; SUPERVISED.
        turn_sep: text after each reply; not supervised.
        suffix: text after a training conversation (not after a generation prompt); not supervised.
        stop_words: strings that end a generated reply (besides the tokenizer's EOS).
        strip_content: strip whitespace around every message (Llama-3's ``| trim``).
        images_only_user: keep only the ``<image>`` placeholders of user turns (``plain``).
        system_into_first_user: the formats without a system role (Mistral v1): instead of a
            block of its own, the filled ``system`` piece is put in front of the FIRST user
            turn's text, inside ``user``'s ``{content}`` (``system='{system}\\n\\n'`` gives
            mistral-common's ``system + "\\n\\n" + content``). Without a user turn it is dropped.
        image: how each ``<image>`` of a user turn is written, ``{image}`` standing for the
            placeholder itself (Qwen2-VL: ``'<|vision_start|>{image}<|vision_end|>'``); the
            default writes it unchanged.
    """

    name: str
    prefix: str = ''
    system: str = ''
    default_system: str | None = None
    user: str = '{content}'
    assistant: str = ''
    reply: str = '{content}'
    turn_sep: str = ''
    suffix: str = ''
    stop_words: tuple[str, ...] = ()
    strip_content: bool = False
    images_only_user: bool = False
    system_into_first_user: bool = False
    image: str = '{image}'

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end generation: each stop word that is a single token, plus the EOS id."""
        ids: list[int] = []
        vocab = tokenizer.get_vocab()
        for word in self.stop_words:
            if word in vocab and vocab[word] not in ids:
                ids.append(vocab[word])
        eos = getattr(tokenizer, 'eos_token_id', None)
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids


TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate, force: bool = False) -> ChatTemplate:
    """Add ``template`` to :data:`TEMPLATES` under ``template.name``.

    Raises:
        ValueError: if the name is taken and ``force`` is False.
    """
    if template.name in TEMPLATES and not force:
        raise ValueError(f'A chat template named {template.name!r} is already registered; '
                         'pass force=True to replace it.')
    TEMPLATES[template.name] = template
    return template


register_template(ChatTemplate(
    name='plain', prefix='{bos}', reply='{content}{eos}', images_only_user=True))
register_template(ChatTemplate(
    name='vicuna_v1', prefix='{bos}', system='{system} ', default_system=VICUNA_SYSTEM,
    user='USER: {content} ', assistant='ASSISTANT:', reply=' {content}</s>', stop_words=('</s>',)))
register_template(ChatTemplate(
    name='llama3', prefix='{bos}',
    system='<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>',
    user='<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>',
    assistant='<|start_header_id|>assistant<|end_header_id|>\n\n', reply='{content}<|eot_id|>',
    stop_words=('<|eot_id|>', '<|end_of_text|>'), strip_content=True))
register_template(ChatTemplate(
    name='qwen2', system='<|im_start|>system\n{system}<|im_end|>\n', default_system=QWEN2_SYSTEM,
    user='<|im_start|>user\n{content}<|im_end|>\n', assistant='<|im_start|>assistant\n',
    reply='{content}<|im_end|>', turn_sep='\n', stop_words=('<|im_end|>', '<|endoftext|>')))
register_template(ChatTemplate(
    name='chatml', system='<|im_start|>system\n{system}<|im_end|>\n',
    user='<|im_start|>user\n{content}<|im_end|>\n', assistant='<|im_start|>assistant\n',
    reply='{content}<|im_end|>', turn_sep='\n', stop_words=('<|im_end|>', '<|endoftext|>')))
register_template(ChatTemplate(
    name='smollm2', system='<|im_start|>system\n{system}<|im_end|>\n', default_system=SMOLLM2_SYSTEM,
    user='<|im_start|>user\n{content}<|im_end|>\n', assistant='<|im_start|>assistant\n',
    reply='{content}<|im_end|>', turn_sep='\n', stop_words=('<|im_end|>', '<|endoftext|>')))
register_template(ChatTemplate(
    name='qwen2_vl', system='<|im_start|>system\n{system}<|im_end|>\n', default_system=QWEN2_SYSTEM,
    user='<|im_start|>user\n{content}<|im_end|>\n', assistant='<|im_start|>assistant\n',
    reply='{content}<|im_end|>', turn_sep='\n', stop_words=('<|im_end|>', '<|endoftext|>'),
    image='<|vision_start|>{image}<|vision_end|>'))
register_template(ChatTemplate(
    name='phi3', system='<|system|>\n{system}<|end|>\n', user='<|user|>\n{content}<|end|>\n',
    assistant='<|assistant|>\n', reply='{content}<|end|>', turn_sep='\n', suffix='{eos}',
    stop_words=('<|end|>', '<|endoftext|>')))
register_template(ChatTemplate(
    name='mistral', prefix='{bos}', system='{system}\n\n', system_into_first_user=True,
    user='[INST] {content} [/INST]', reply='{content}{eos}', stop_words=('</s>',)))


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """The registered template ``name`` (a :class:`ChatTemplate` passes through).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, ChatTemplate):
        return name
    if name not in TEMPLATES:
        raise ValueError(f'Unknown chat template {name!r}; valid names: {sorted(TEMPLATES)}. '
                         'Register a new one with mllm_align.data.register_template.')
    return TEMPLATES[name]


# ----------------------------------------------------------------------------------------------
# Conversation handling
# ----------------------------------------------------------------------------------------------
def normalize_conversation(conversations: Sequence[Mapping[str, Any]],
                           sample_id: str | None = None) -> list[tuple[str, str]]:
    """LLaVA turns (``from``/``value``) or HF messages (``role``/``content``) → ``[(role, text)]``.

    Roles are ``'system'`` (first turn only), ``'user'``, ``'assistant'``.

    Raises:
        ConversationError: empty conversation, unknown speaker, malformed turn, system turn
            that is not first.
    """
    where = f'sample {sample_id!r}: ' if sample_id is not None else ''
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise ConversationError(f'{where}the conversation is empty; a sample needs at least one '
                                'human and one gpt turn in `conversations`.', 'empty_conversation')
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise ConversationError(f'{where}turn {k} is {type(turn).__name__}, expected a dict '
                                    'with `from` and `value`.', 'bad_turn')
        speaker = turn.get('from', turn.get('role'))
        text = turn.get('value', turn.get('content'))
        role = _SPEAKERS.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise ConversationError(
                f'{where}turn {k} has unknown speaker {speaker!r}; expected one of '
                f'{sorted(_SPEAKERS)} in `from` (or `role`).', 'unknown_speaker')
        if not isinstance(text, str):
            raise ConversationError(f'{where}turn {k} ({speaker}) has no text `value` '
                                    f'(found {type(text).__name__}).', 'bad_turn')
        if role == 'system' and k != 0:
            raise ConversationError(f'{where}turn {k} is a system turn; only the first turn may be '
                                    'a system prompt.', 'bad_turn')
        turns.append((role, text))
    return turns


def _fill_special(piece: str, tokenizer: Any) -> str:
    if '{bos}' in piece:
        piece = piece.replace('{bos}', getattr(tokenizer, 'bos_token', None) or '')
    if '{eos}' in piece:
        piece = piece.replace('{eos}', getattr(tokenizer, 'eos_token', None) or '')
    return piece


def _fill(fmt: str, key: str, value: str, tokenizer: Any) -> str:
    # Split instead of str.format: message text may contain braces.
    before, _, after = fmt.partition('{' + key + '}')
    return _fill_special(before, tokenizer) + value + _fill_special(after, tokenizer)


def _pieces(turns: list[tuple[str, str]], tokenizer: Any, tpl: ChatTemplate, system: str | None,
            add_generation_prompt: bool, sample_id: str | None) -> list[tuple[str, bool]]:
    """The conversation as ``[(text, supervised)]`` pieces."""
    pieces: list[tuple[str, bool]] = [(_fill_special(tpl.prefix, tokenizer), False)]
    if turns and turns[0][0] == 'system':
        system_text: str | None = turns[0][1]
        turns = turns[1:]
    else:
        system_text = system if system is not None else tpl.default_system
    system_block = ''
    if system_text is not None and tpl.system:
        if tpl.strip_content:
            system_text = system_text.strip()
        system_block = _fill(tpl.system, 'system', system_text, tokenizer)
    if not tpl.system_into_first_user:
        pieces.append((system_block, False))
    for role, text in turns:
        if tpl.strip_content:
            text = text.strip()
        if role == 'user':
            if tpl.images_only_user:
                text = DEFAULT_IMAGE_TOKEN * text.count(DEFAULT_IMAGE_TOKEN)
            if tpl.image != '{image}':
                text = text.replace(DEFAULT_IMAGE_TOKEN, tpl.image.replace('{image}', DEFAULT_IMAGE_TOKEN))
            if tpl.system_into_first_user:
                text, system_block = system_block + text, ''
            pieces.append((_fill(tpl.user, 'content', text, tokenizer), False))
        else:
            if DEFAULT_IMAGE_TOKEN in text:
                where = f'sample {sample_id!r}: ' if sample_id is not None else ''
                raise ConversationError(f'{where}an assistant (gpt) turn contains {DEFAULT_IMAGE_TOKEN!r}; '
                                        'images belong in human turns.', 'image_token_in_reply')
            pieces.append((_fill_special(tpl.assistant, tokenizer), False))
            pieces.append((_fill(tpl.reply, 'content', text, tokenizer), True))
            pieces.append((_fill_special(tpl.turn_sep, tokenizer), False))
    if add_generation_prompt:
        pieces.append((_fill_special(tpl.assistant, tokenizer), False))
    else:
        pieces.append((_fill_special(tpl.suffix, tokenizer), False))
    return [p for p in pieces if p[0]]


def _merge(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Join consecutive pieces with the same supervision (fewer boundaries → exact tokenization)."""
    merged: list[tuple[str, bool]] = []
    for text, sup in pieces:
        if merged and merged[-1][1] == sup:
            merged[-1] = (merged[-1][0] + text, sup)
        else:
            merged.append((text, sup))
    return merged


def render_conversation(conversations: Sequence[Mapping[str, Any]], tokenizer: Any,
                        template: str | ChatTemplate, system: str | None = None,
                        add_generation_prompt: bool = False, sample_id: str | None = None) -> str:
    """The conversation as text (``<image>`` kept), e.g. to compare with a chat template's rendering."""
    tpl = get_template(template)
    turns = normalize_conversation(conversations, sample_id)
    return ''.join(t for t, _ in _pieces(turns, tokenizer, tpl, system, add_generation_prompt, sample_id))


def _tokenize_pieces(pieces: list[tuple[str, bool]], tokenizer: Any) -> tuple[list[int], list[int]]:
    chunks: list[tuple[str | None, bool]] = []  # None = an image placeholder
    for text, sup in _merge(pieces):
        parts = text.split(DEFAULT_IMAGE_TOKEN)
        for k, part in enumerate(parts):
            if k > 0:
                chunks.append((None, False))
            if part:
                chunks.append((part, sup))
    input_ids: list[int] = []
    labels: list[int] = []
    for text, sup in chunks:
        if text is None:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            continue
        # One call per segment (not a batch call: batch encoding starts the Rust thread pool,
        # which makes forked DataLoader workers disable tokenizer parallelism with a warning).
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        input_ids.extend(ids)
        labels.extend(ids if sup else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def encode_conversation(conversations: Sequence[Mapping[str, Any]], tokenizer: Any,
                        template: str | ChatTemplate, system: str | None = None,
                        sample_id: str | None = None) -> tuple[list[int], list[int]]:
    """Tokenize a training conversation; returns ``(input_ids, labels)``, two lists of length L.

    Each ``<image>`` in a human turn becomes one ``IMAGE_TOKEN_INDEX`` in ``input_ids``; labels are
    ``IGNORE_INDEX`` everywhere except on assistant replies and their end-of-turn token.

    Args:
        conversations: LLaVA turns ``[{'from': 'human'|'gpt'|'system', 'value': str}]`` (also
            ``user``/``assistant`` and HF ``role``/``content`` keys).
        tokenizer: a HF tokenizer (``encode(segment, add_special_tokens=False)`` per text segment;
            BOS/EOS come from the template).
        template: a registered name or a :class:`ChatTemplate`.
        system: system prompt if the conversation has no system turn (default: the template's).
        sample_id: named in error messages.

    Raises:
        ConversationError: see :func:`normalize_conversation`; also an ``<image>`` in a reply.
        ValueError: unknown template name.
    """
    tpl = get_template(template)
    turns = normalize_conversation(conversations, sample_id)
    return _tokenize_pieces(_pieces(turns, tokenizer, tpl, system, False, sample_id), tokenizer)


def build_generation_prompt(conversations: Sequence[Mapping[str, Any]], tokenizer: Any,
                            template: str | ChatTemplate, system: str | None = None,
                            sample_id: str | None = None) -> list[int]:
    """Prompt ids for generation: the history plus an open assistant turn.

    ``conversations`` must end with a human/user turn (earlier gpt turns are history).
    Images are ``IMAGE_TOKEN_INDEX`` placeholders, as in training. Stop generation at
    ``get_template(template).stop_token_ids(tokenizer)``.

    Raises:
        ConversationError: malformed conversation, or one that does not end with a user turn.
    """
    tpl = get_template(template)
    turns = normalize_conversation(conversations, sample_id)
    if turns[-1][0] != 'user':
        where = f'sample {sample_id!r}: ' if sample_id is not None else ''
        raise ConversationError(f'{where}a generation prompt must end with a human/user turn, '
                                f'found {turns[-1][0]!r} last.', 'bad_turn')
    input_ids, _ = _tokenize_pieces(_pieces(turns, tokenizer, tpl, system, True, sample_id), tokenizer)
    return input_ids
