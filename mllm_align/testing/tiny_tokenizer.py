"""Tiny REAL tokenizers (trained byte-level BPE) with each LLM family's special tokens and chat template.

Tests and the tiny offline assets need tokenizers that behave like the real ones (special tokens
are never split, BOS handling, a ``chat_template`` for ``apply_chat_template``) but are small and
built offline. :func:`build_tiny_tokenizer` trains a byte-level BPE on a caller's corpus with the
HF ``tokenizers`` library (deterministic: the same corpus gives the same files) in well under a
second, and wraps it as a ``PreTrainedTokenizerFast`` ready for ``save_pretrained``.

The chat templates are written here to produce the same text as the families' official ones
(checked against the real templates in ``tests/data/test_templates.py``):

=========  ==================================================================================
family     special tokens (BOS / EOS / PAD) and template
=========  ==================================================================================
llama3     ``<|begin_of_text|>`` / ``<|eot_id|>`` / ``<|finetune_right_pad_id|>``; Llama-3-Instruct
           headers, messages trimmed, BOS in the text; the tokenizer itself prepends BOS when
           ``add_special_tokens=True`` (like Meta's fixed ``tokenizer.json``)
qwen2      no BOS / ``<|im_end|>`` / ``<|endoftext|>``; ChatML with Qwen2's default system prompt
qwen2_vl   as qwen2, plus Qwen2-VL's vision tokens (``<|vision_start|>``, ``<|vision_end|>``,
           ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``) and Qwen2-VL-Instruct's own chat
           template, verbatim (:data:`QWEN2_VL_CHAT_TEMPLATE`)
phi3       ``<s>`` / ``<|endoftext|>`` / ``<|endoftext|>``; ``<|user|>\\n…<|end|>\\n``, EOS after a
           conversation without generation prompt (Phi-3-mini-instruct)
vicuna     ``<s>`` / ``</s>`` / ``<unk>``; LLaVA-1.5 ``conv_vicuna_v1`` text, BOS in the text and
           prepended by the tokenizer (LLaMA-2 behaviour); pad = unk as in LLaVA
=========  ==================================================================================

The vocabulary holds the special tokens first (ids 0…k), the 256 byte symbols, then the merges
learnt from ``corpus``; ``len(tokenizer) <= vocab_size`` (a small corpus stops earlier).
"""
from __future__ import annotations

from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mllm_align.data.templates import QWEN2_SYSTEM, VICUNA_SYSTEM

__all__ = ['build_tiny_tokenizer', 'TINY_TOKENIZER_KINDS', 'CHAT_TEMPLATES', 'SAMPLE_CORPUS',
           'QWEN2_VL_CHAT_TEMPLATE', 'QWEN2_VL_SPECIAL_TOKENS']

TokenizerKind = Literal['llama3', 'qwen2', 'vicuna', 'phi3', 'qwen2_vl']
TINY_TOKENIZER_KINDS: tuple[str, ...] = ('llama3', 'qwen2', 'vicuna', 'phi3', 'qwen2_vl')

# A few sentences for quick tokenizers in tests (the tiny assets train on their dataset's text).
SAMPLE_CORPUS: tuple[str, ...] = (
    'What is in the image? A red circle on the left and a blue square on the right.',
    'Describe the picture in detail. There are two shapes: a green triangle and a yellow star.',
    'How many objects are there? There are 3 objects. Answer with one word: circle.',
    'The quick brown fox jumps over the lazy dog. Hello there! How are you today?',
    'You are a helpful assistant. system user assistant USER: ASSISTANT:',
    VICUNA_SYSTEM, QWEN2_SYSTEM,
)

# Pre-tokenization regexes of the real families (Llama-3 groups up to 3 digits, Qwen2 single
# digits); GPT-2's for the SentencePiece families, which have no regex of their own.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Jinja chat templates (HF renders them with trim_blocks/lstrip_blocks; `\n` inside quotes is an
# escape Jinja turns into a newline).
_LLAMA3_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}")
_QWEN2_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + QWEN2_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
_PHI3_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] in ['system', 'user', 'assistant'] -%}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- else -%}{{ eos_token }}{%- endif -%}")
_VICUNA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_text = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = \"" + VICUNA_SYSTEM.replace('"', '\\"') + "\" -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- system_text + ' ' -}}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' + m['content'] + ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + m['content'] + '</s>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}")

# Qwen2-VL-2B/7B-Instruct's `chat_template` (their chat_template.json), transcribed verbatim: the reference the
# `qwen2_vl` template of mllm_align.data.templates is checked against (tests/data/test_templates.py). An image
# content item becomes <|vision_start|><|image_pad|><|vision_end|>; the processor then repeats <|image_pad|> once
# per merged patch.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
#: Qwen2-VL's vision special tokens (after Qwen2's three), in the order of the real vocabulary.
QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = ('<|vision_start|>', '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>',
                                            '<|video_pad|>')

CHAT_TEMPLATES: dict[str, str] = {
    'llama3': _LLAMA3_TEMPLATE, 'qwen2': _QWEN2_TEMPLATE, 'phi3': _PHI3_TEMPLATE,
    'vicuna': _VICUNA_TEMPLATE, 'qwen2_vl': QWEN2_VL_CHAT_TEMPLATE,
}

# special tokens (in id order), the roles they play, whether the tokenizer prepends BOS
_SPECS: dict[str, dict] = {
    'llama3': dict(
        special=['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>',
                 '<|eot_id|>', '<|finetune_right_pad_id|>'],
        bos='<|begin_of_text|>', eos='<|eot_id|>', pad='<|finetune_right_pad_id|>', unk=None,
        regex=_LLAMA3_REGEX, add_bos=True),
    'qwen2': dict(
        special=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
        bos=None, eos='<|im_end|>', pad='<|endoftext|>', unk=None, regex=_QWEN2_REGEX, add_bos=False),
    'qwen2_vl': dict(
        special=['<|endoftext|>', '<|im_start|>', '<|im_end|>', *QWEN2_VL_SPECIAL_TOKENS],
        bos=None, eos='<|im_end|>', pad='<|endoftext|>', unk=None, regex=_QWEN2_REGEX, add_bos=False),
    'phi3': dict(
        special=['<unk>', '<s>', '</s>', '<|endoftext|>', '<|assistant|>', '<|end|>', '<|system|>',
                 '<|user|>'],
        bos='<s>', eos='<|endoftext|>', pad='<|endoftext|>', unk='<unk>', regex=None, add_bos=False),
    'vicuna': dict(
        special=['<unk>', '<s>', '</s>'],
        bos='<s>', eos='</s>', pad='<unk>', unk='<unk>', regex=None, add_bos=True),
}


def build_tiny_tokenizer(kind: TokenizerKind, corpus: list[str],
                         vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer of family ``kind`` on ``corpus``.

    Args:
        kind: ``'llama3'``, ``'qwen2'``, ``'vicuna'``, ``'phi3'`` or ``'qwen2_vl'``.
        corpus: training texts (the dataset's conversations, template words, …).
        vocab_size: upper bound of ``len(tokenizer)`` (special tokens + 256 bytes + merges).

    Returns:
        A ``PreTrainedTokenizerFast`` with BOS/EOS/PAD(/UNK) set, right padding and the family's
        ``chat_template``.

    Raises:
        ValueError: unknown ``kind``, or ``vocab_size`` too small for the bytes and special tokens.
    """
    if kind not in _SPECS:
        raise ValueError(f'Unknown tokenizer kind {kind!r}; expected one of {TINY_TOKENIZER_KINDS}.')
    spec = _SPECS[kind]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(spec['special']):
        raise ValueError(f'vocab_size={vocab_size} is too small: a byte-level BPE needs '
                         f'{len(alphabet)} byte symbols plus {len(spec["special"])} special tokens.')

    tok = Tokenizer(models.BPE())
    if spec['regex'] is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(spec['regex']), behavior='isolated'),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec['special'],
                                  initial_alphabet=alphabet, show_progress=False)
    # Sorted, de-duplicated input: the trained merges depend on the texts, not on their order.
    tok.train_from_iterator(sorted(set(corpus)), trainer=trainer)

    if spec['add_bos']:
        bos = spec['bos']
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f'{bos} $A', pair=f'{bos} $A {bos} $B', special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    kwargs = dict(bos_token=spec['bos'], eos_token=spec['eos'], pad_token=spec['pad'])
    if spec['unk'] is not None:
        kwargs['unk_token'] = spec['unk']
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=CHAT_TEMPLATES[kind], padding_side='right',
        clean_up_tokenization_spaces=False, model_max_length=1_000_000, **kwargs)
