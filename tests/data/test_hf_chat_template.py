"""The Jinja chat template of every mllm_align template renders exactly mllm_align's text, through transformers."""
import pytest
from jinja2.exceptions import TemplateError

from mllm_align.data.hf_chat_template import chat_template_jinja, flatten_content, messages_to_conversation
from mllm_align.data.templates import TEMPLATES, ChatTemplate, render_conversation
from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer

FAMILY = {'plain': 'vicuna', 'vicuna_v1': 'vicuna', 'llama3': 'llama3', 'qwen2': 'qwen2', 'phi3': 'phi3',
          'mistral': 'vicuna', 'qwen2_vl': 'qwen2_vl'}
IMAGE, TEXT = {'type': 'image'}, lambda t: {'type': 'text', 'text': t}  # noqa: E731
CONVERSATIONS = {
    'image_then_text': [{'role': 'user', 'content': [IMAGE, TEXT('What is in the image?')]}],
    'text_before_image': [{'role': 'user', 'content': [TEXT('Which one? '), IMAGE]}],
    'string_content': [{'role': 'user', 'content': '<image>\nDescribe it.'}],
    'two_images': [{'role': 'user', 'content': [IMAGE, IMAGE, TEXT('Which image is red?')]}],
    'images_only': [{'role': 'user', 'content': [IMAGE]}],
    'system_list': [{'role': 'system', 'content': [TEXT(' Be brief. ')]},
                    {'role': 'user', 'content': [IMAGE, TEXT('Colour?')]}],
    'multi_turn': [{'role': 'system', 'content': 'Answer in one word.'},
                   {'role': 'user', 'content': [IMAGE, TEXT('Shape?')]},
                   {'role': 'assistant', 'content': [TEXT('a star')]},
                   {'role': 'user', 'content': 'And its colour {bos}?'}],
    'llava_speakers': [{'role': 'human', 'content': '<image>\nQ?'}, {'role': 'gpt', 'content': 'A.'},
                       {'role': 'human', 'content': 'Q2?'}],
}


@pytest.fixture(scope='module')
def tokenizers():
    return {kind: build_tiny_tokenizer(kind, list(SAMPLE_CORPUS), vocab_size=400)
            for kind in set(FAMILY.values())}


def _render(tokenizer, template, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, chat_template=chat_template_jinja(template), tokenize=False,
                                         **kwargs)


@pytest.mark.parametrize('template', list(FAMILY))
def test_renders_mllm_align_text_for_every_template(tokenizers, template):
    assert set(FAMILY) <= set(TEMPLATES)
    tok = tokenizers[FAMILY[template]]
    for name, messages in CONVERSATIONS.items():
        conv = messages_to_conversation(messages)
        prompt = _render(tok, template, messages, add_generation_prompt=True)
        assert prompt == render_conversation(conv, tok, template, add_generation_prompt=True), name
        # Without a generation prompt: the training text (history incl. the suffix).
        assert _render(tok, template, messages) == render_conversation(conv, tok, template), name


def test_image_placement_and_bos(tokenizers):
    tok = tokenizers['vicuna']
    prompt = _render(tok, 'vicuna_v1', CONVERSATIONS['text_before_image'], add_generation_prompt=True)
    assert prompt.startswith('<s>') and prompt.count('<s>') == 1
    assert prompt.endswith('USER: <image>\nWhich one?  ASSISTANT:')  # images first, as LLaVA data
    plain = _render(tok, 'plain', CONVERSATIONS['two_images'], add_generation_prompt=True)
    assert plain == '<s><image><image>'  # pre-training format: the user turn is its images
    qwen = _render(tokenizers['qwen2'], 'qwen2', CONVERSATIONS['image_then_text'], add_generation_prompt=True)
    assert qwen.startswith('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n')
    assert qwen.endswith('<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n')
    mistral = _render(tok, 'mistral', CONVERSATIONS['system_list'], add_generation_prompt=True)
    assert mistral == '<s>[INST]  Be brief. \n\n<image>\nColour? [/INST]'  # system merged into the first turn


def test_assistant_mask_marks_the_supervised_reply(tokenizers):
    tok = tokenizers['qwen2']
    out = tok.apply_chat_template(CONVERSATIONS['multi_turn'][:3], chat_template=chat_template_jinja('qwen2'),
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out['input_ids'], out['assistant_masks']) if m]
    assert tok.decode(marked) == 'a star<|im_end|>'


def test_custom_template_and_literal_escaping(tokenizers):
    tpl = ChatTemplate(name='quotes', prefix='{bos}"\'\\', user='Q: {content}\n', assistant='A:',
                       reply=' {content}{eos}', default_system='Sys "x" \u00e9\U0001F600', system='[{system}]')
    tok = tokenizers['vicuna']
    messages = CONVERSATIONS['multi_turn'][1:]
    assert _render(tok, tpl, messages, add_generation_prompt=True) == render_conversation(
        messages_to_conversation(messages), tok, tpl, add_generation_prompt=True)


@pytest.mark.parametrize('messages, match', [
    ([{'role': 'user', 'content': 'q'}, {'role': 'system', 'content': 's'}], 'only the first message'),
    ([{'role': 'tool', 'content': 'q'}], 'unknown role tool'),
    ([{'role': 'user', 'content': [{'type': 'video'}]}], 'content items must be'),
    ([{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': [IMAGE]}], 'assistant message contains'),
])
def test_invalid_conversations_raise(tokenizers, messages, match):
    with pytest.raises(TemplateError, match=match):
        _render(tokenizers['vicuna'], 'vicuna_v1', messages, add_generation_prompt=True)


def test_flatten_content():
    assert flatten_content('as is <image>') == 'as is <image>'
    assert flatten_content([TEXT('a'), IMAGE, TEXT('b'), IMAGE]) == '<image>\n<image>\na\nb'
    with pytest.raises(ValueError, match='item 0'):
        flatten_content([{'type': 'image_url', 'image_url': 'x'}])
