"""An mllm_align chat template as a transformers Jinja ``chat_template``, for HF exports.

Evaluation harnesses (lmms-eval's ``llava_hf``, VLMEvalKit) drive a ``LlavaForConditionalGeneration``
through ``processor.apply_chat_template(messages, add_generation_prompt=True)`` (or the tokenizer's),
then ``processor(images=…, text=prompt)``. :func:`chat_template_jinja` writes a Jinja template that
renders, for a :class:`~mllm_align.data.templates.ChatTemplate`, exactly the text
:func:`~mllm_align.data.templates.render_conversation` renders, so the harness sees the prompt the
model was trained with.

HF messages are ``{'role': 'system'|'user'|'assistant', 'content': str | list[item]}``; a list's
items are ``{'type': 'image'}`` and ``{'type': 'text', 'text': str}``. A list is flattened the way
LLaVA data writes a turn (:func:`flatten_content`): every image first, as one ``<image>`` each, then
the texts, joined by ``'\\n'``, so ``[image, text q]`` gives ``'<image>\\nq'`` and two images give
``'<image>\\n<image>\\nq'``, as in the training conversations. String content passes through
unchanged (lmms-eval writes ``'<image>\\nq'`` itself). Roles ``human``/``gpt`` are accepted as in
:func:`~mllm_align.data.templates.normalize_conversation`; a system message other than the first,
an unknown role, an unknown content type or ``<image>`` in an assistant message raise (Jinja's
``raise_exception``, a ``TemplateError`` in transformers).

``{bos}``/``{eos}`` become the ``bos_token``/``eos_token`` variables transformers passes from the
tokenizer (empty when it has none). The template writes BOS itself where the mllm_align template
does, so the exported tokenizer must not add it again (see :mod:`mllm_align.models.export`).
Each assistant reply (the supervised piece) is wrapped in ``{% generation %}``, so
``return_assistant_tokens_mask=True`` marks what training supervised.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from ..constants import DEFAULT_IMAGE_TOKEN
from .templates import ChatTemplate, get_template

__all__ = ['chat_template_jinja', 'flatten_content', 'messages_to_conversation']

_SPECIAL = re.compile(r'(\{bos\}|\{eos\})')
_SPECIAL_VARS = {'{bos}': "(bos_token or '')", '{eos}': "(eos_token or '')"}


def flatten_content(content: str | Sequence[Mapping[str, Any]], image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """HF message content → the text of one LLaVA turn (what the Jinja template does to it).

    A string is returned unchanged; a list gives its images first (one ``image_token`` each),
    then its texts, all joined by ``'\\n'``.

    Raises:
        ValueError: an item that is not a dict with ``type`` ``'image'`` or ``'text'``.
    """
    if isinstance(content, str):
        return content
    images, texts = [], []
    for k, item in enumerate(content):
        kind = item.get('type') if isinstance(item, Mapping) else None
        if kind == 'image':
            images.append(image_token)
        elif kind == 'text':
            texts.append(item['text'])
        else:
            raise ValueError(f'Content item {k} is {item!r}: only {{"type": "image"}} and '
                             '{"type": "text", "text": ...} items are supported.')
    return '\n'.join(images + texts)


def messages_to_conversation(messages: Sequence[Mapping[str, Any]],
                             image_token: str = DEFAULT_IMAGE_TOKEN) -> list[dict[str, str]]:
    """HF messages (``role``/``content``, content a string or a list) → mllm_align ``role``/``content`` turns."""
    return [{'role': m['role'], 'content': flatten_content(m['content'], image_token)} for m in messages]


def _lit(text: str) -> str:
    # A JSON string is a valid Jinja string literal (Jinja unescapes \n, \", \\ and \uXXXX).
    return json.dumps(text, ensure_ascii=False)


def _specials(piece: str) -> list[str]:
    return [_SPECIAL_VARS[p] if p in _SPECIAL_VARS else _lit(p) for p in _SPECIAL.split(piece) if p]


def _expr(fmt: str, key: str | None = None, var: str | None = None) -> str:
    """Jinja expression of one template piece: ``{bos}``/``{eos}`` filled, the first ``{key}`` → ``var``.

    Mirrors ``templates._fill`` / ``_fill_special``: text substituted for ``{key}`` is never searched
    for ``{bos}``/``{eos}``.
    """
    if key is None:
        parts = _specials(fmt)
    else:
        before, sep, after = fmt.partition('{' + key + '}')
        parts = _specials(before) + ([var] if sep else []) + _specials(after)
    return ' ~ '.join(parts) if parts else "''"


def chat_template_jinja(template: str | ChatTemplate, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """A transformers ``chat_template`` that renders ``template`` exactly as mllm_align does.

    For every conversation mllm_align accepts (a system message first or not, multi-turn history,
    images in user turns), ``apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True)`` equals ``render_conversation(messages_to_conversation(messages),
    tokenizer, template, add_generation_prompt=True)``; without ``add_generation_prompt`` it
    equals the training text (with the template's ``suffix``).

    Args:
        template: a registered name (``plain``, ``vicuna_v1``, ``llama3``, ``qwen2``, ``qwen2_vl``,
            ``phi3``, ``mistral``) or a :class:`ChatTemplate`.
        image_token: the image placeholder text content items of type ``image`` become.

    Returns:
        The Jinja source (one line, no text outside tags).

    Raises:
        ValueError: unknown template name.
    """
    tpl = get_template(template)
    img = _lit(image_token)
    trim = ' | trim' if tpl.strip_content else ''
    err = "{{ raise_exception(%s) }}"
    macro = (
        '{%- macro mm_content(content) -%}'
        '{%- if content is string -%}{{ content }}'
        '{%- else -%}'
        '{%- set acc = namespace(images=[], texts=[]) -%}'
        '{%- for item in content -%}'
        "{%- if item is mapping and item['type'] == 'image' -%}"
        f'{{%- set acc.images = acc.images + [{img}] -%}}'
        "{%- elif item is mapping and item['type'] == 'text' -%}"
        "{%- set acc.texts = acc.texts + [item['text']] -%}"
        '{%- else -%}'
        + err % ("'mllm_align chat template: content items must be {\"type\": \"image\"} or "
                 "{\"type\": \"text\", \"text\": ...}, got ' ~ (item | string)") +
        '{%- endif -%}'
        '{%- endfor -%}'
        "{{ (acc.images + acc.texts) | join('\\n') }}"
        '{%- endif -%}'
        '{%- endmacro -%}')
    if tpl.default_system is None:
        init = 'system_text=\'\', has_system=false'
    else:
        init = f'system_text={_lit(tpl.default_system)}, has_system=true'
    head = (
        '{%- if not messages -%}'
        + err % "'mllm_align chat template: the conversation is empty'" +
        '{%- endif -%}'
        f'{{{{- {_expr(tpl.prefix)} -}}}}'
        f"{{%- set ns = namespace({init}, block='', start=0) -%}}"
        "{%- if (messages[0]['role'] | lower) == 'system' -%}"
        "{%- set ns.system_text = mm_content(messages[0]['content']) -%}"
        '{%- set ns.has_system = true -%}{%- set ns.start = 1 -%}'
        '{%- endif -%}')
    if tpl.system:
        head += ('{%- if ns.has_system -%}'
                 f"{{%- set ns.block = {_expr(tpl.system, 'system', '(ns.system_text' + trim + ')')} -%}}"
                 '{%- endif -%}')
    if not tpl.system_into_first_user:
        head += '{{- ns.block -}}'
    user = f"{{%- set text = mm_content(m['content']){trim} -%}}"
    if tpl.images_only_user:
        user += f'{{%- set text = {img} * text.count({img}) -%}}'
    if tpl.image != '{image}':  # Qwen2-VL: <|vision_start|>{image}<|vision_end|> around every image
        before, _, after = tpl.image.partition('{image}')
        user += f'{{%- set text = text.replace({img}, {_lit(before)} ~ {img} ~ {_lit(after)}) -%}}'
    if tpl.system_into_first_user:
        user += "{%- set text = ns.block ~ text -%}{%- set ns.block = '' -%}"
    user += f"{{{{- {_expr(tpl.user, 'content', 'text')} -}}}}"
    assistant = (
        f"{{%- set text = mm_content(m['content']){trim} -%}}"
        f'{{%- if {img} in text -%}}'
        + err % (f"'mllm_align chat template: an assistant message contains ' ~ {img} ~ "
                 "'; images belong in user messages'") +
        '{%- endif -%}'
        f'{{{{- {_expr(tpl.assistant)} -}}}}'
        f"{{%- generation -%}}{{{{- {_expr(tpl.reply, 'content', 'text')} -}}}}{{%- endgeneration -%}}"
        f'{{{{- {_expr(tpl.turn_sep)} -}}}}')
    loop = (
        "{%- for m in messages[ns.start:] -%}"
        "{%- set role = m['role'] | lower -%}"
        "{%- if role in ['user', 'human'] -%}" + user +
        "{%- elif role in ['assistant', 'gpt'] -%}" + assistant +
        "{%- elif role == 'system' -%}"
        + err % "'mllm_align chat template: only the first message may be a system message'" +
        '{%- else -%}'
        + err % ("'mllm_align chat template: unknown role ' ~ m['role'] ~ "
                 "'; expected system (first only), user or assistant'") +
        '{%- endif -%}'
        '{%- endfor -%}')
    tail = (f'{{%- if add_generation_prompt -%}}{{{{- {_expr(tpl.assistant)} -}}}}'
            f'{{%- else -%}}{{{{- {_expr(tpl.suffix)} -}}}}{{%- endif -%}}')
    return macro + head + loop + tail
