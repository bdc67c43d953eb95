"""Processing side of the HF export: harness tokenizer (no automatic BOS, no token_type_ids), LLaVA image padding."""
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import processors
from transformers import AutoTokenizer, CLIPImageProcessor, LlamaTokenizerFast, LlavaImageProcessor

from mllm_align.data.image_processing import process_images
from mllm_align.models import load_image_processor, load_tokenizer
from mllm_align.models.hf_processor import generation_token_ids, harness_tokenizer, llava_image_processor
from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer


def _tokenizers(tiny_assets):
    vicuna = load_tokenizer(str(tiny_assets.llm('vicuna')))  # TemplateProcessing: prepends <s>
    llama3 = build_tiny_tokenizer('llama3', list(SAMPLE_CORPUS), vocab_size=400)
    llama3.backend_tokenizer.post_processor = processors.Sequence([  # Meta's layout: ByteLevel + BOS template
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single='<|begin_of_text|> $A', pair='<|begin_of_text|> $A $B',
                                      special_tokens=[('<|begin_of_text|>', llama3.bos_token_id)])])
    llama_fast = LlamaTokenizerFast(tokenizer_object=vicuna.backend_tokenizer, bos_token='<s>', eos_token='</s>',
                                    unk_token='<unk>', add_bos_token=True, add_eos_token=True)
    return {'vicuna': vicuna, 'llama3_sequence': llama3, 'LlamaTokenizerFast': llama_fast}


def test_harness_tokenizer_adds_no_special_tokens_after_reload(tiny_assets, tmp_path):
    for name, tok in _tokenizers(tiny_assets).items():
        text = 'What is in the image?'
        assert tok(text).input_ids != tok(text, add_special_tokens=False).input_ids, name  # the problem
        harness = harness_tokenizer(tok, chat_template='{{ bos_token }}')
        assert tok(text).input_ids != tok(text, add_special_tokens=False).input_ids, name  # the original untouched
        harness.save_pretrained(tmp_path / name)
        reloaded = AutoTokenizer.from_pretrained(tmp_path / name)
        out = reloaded(text)
        assert set(out) == {'input_ids', 'attention_mask'}, name  # no token_type_ids for generate()
        assert out.input_ids == tok(text, add_special_tokens=False).input_ids, name
        assert reloaded.chat_template == '{{ bos_token }}', name


def test_generation_ids_stop_at_the_template_stop_tokens(tiny_assets):
    llama3 = load_tokenizer(str(tiny_assets.llm('llama')))
    ids = generation_token_ids(llama3, 'llama3', pad_token_id=5)
    vocab = llama3.get_vocab()
    assert ids['eos_token_id'][:2] == [vocab['<|eot_id|>'], vocab['<|end_of_text|>']]
    assert ids['pad_token_id'] == 5 and ids['bos_token_id'] == llama3.bos_token_id
    vicuna = load_tokenizer(str(tiny_assets.llm('vicuna')))
    assert generation_token_ids(vicuna, 'vicuna_v1', 0)['eos_token_id'] == vicuna.eos_token_id


@pytest.mark.parametrize('tower', ['clip', 'siglip', 'dinov2'])
def test_llava_image_processor_pads_like_training(tiny_assets, tower):
    train = load_image_processor(str(tiny_assets.vision(tower)))
    exported = llava_image_processor(train, pad_to_square=True, image_size=32)
    assert isinstance(exported, LlavaImageProcessor) and exported.do_pad
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(20, 50), (47, 31)]]
    ours = process_images(images, train, pad_to_square=True)
    theirs = torch.as_tensor(np.asarray(exported(images=images, return_tensors='np')['pixel_values']))
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    assert not torch.allclose(theirs, process_images(images, train, pad_to_square=False))  # padding matters
    assert llava_image_processor(train, pad_to_square=False) is train


class _FlippingProcessor(CLIPImageProcessor):
    """A processor with a step of its own that LlavaImageProcessor cannot reproduce."""

    def __call__(self, images, **kwargs):
        images = images if isinstance(images, list) else [images]
        return super().__call__([im.transpose(Image.FLIP_LEFT_RIGHT) for im in images], **kwargs)


def test_unreproducible_image_pipeline_is_refused(tiny_assets):
    train = _FlippingProcessor.from_pretrained(str(tiny_assets.vision('clip')))
    with pytest.raises(ValueError, match='pad_image_to_square=False'):
        llava_image_processor(train, pad_to_square=True, image_size=32)
