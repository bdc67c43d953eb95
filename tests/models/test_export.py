"""HF export of LLaVAModel: tiny random LLaMA + CLIP and Qwen2 + SigLIP, saved with save_pretrained."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.engine.build import build_model_from_config, image_processor_from_config
from mllm_align.models import LLaVAModel, VisionTower, load_llm, load_tokenizer
from mllm_align.models.export import (
    EXPORT_INFO_NAME,
    compare_logits,
    export_llava_to_hf,
    vision_feature_select_strategy,
)

REPO = Path(__file__).resolve().parents[2]
VOCAB = 64
WORDS = ['describe', 'the', 'image', 'in', 'one', 'sentence', '.', 'a', 'red', 'square', 'what', 'is', 'this', '?']


def _tokenizer(num_tokens: int) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer: <pad>=0, <s>=1, </s>=2, <unk>=3, then words; prepends <s>."""
    vocab = ['<pad>', '<s>', '</s>', '<unk>'] + WORDS
    vocab += [f'w{i}' for i in range(num_tokens - len(vocab))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
                                   unk_token='<unk>')


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    return _build_dirs(tmp_path_factory.mktemp('export_models'))


def _build_dirs(root: Path) -> Path:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(LlamaConfig(**common)).save_pretrained(root / 'llama')
    _tokenizer(VOCAB).save_pretrained(root / 'llama')  # full vocabulary: <image> forces a resize
    Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True)).save_pretrained(root / 'qwen2')
    _tokenizer(40).save_pretrained(root / 'qwen2')  # <image> fits in the existing rows
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=16, patch_size=8)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / 'clip')
    CLIPImageProcessor(size={'shortest_edge': 16}, crop_size={'height': 16, 'width': 16}).save_pretrained(root / 'clip')
    SiglipVisionModel(SiglipVisionConfig(**vision)).save_pretrained(root / 'siglip')
    SiglipImageProcessor(size={'height': 16, 'width': 16}).save_pretrained(root / 'siglip')
    return root


def _model(dirs, llm='llama', tower='clip', select_feature='patch', perturb=True, **kwargs):
    model = LLaVAModel(llm=dict(type=load_llm, path=str(dirs / llm), attn_implementation='eager'),
                       visual_encoder=dict(type=VisionTower, path=str(dirs / tower), select_feature=select_feature),
                       tokenizer=dict(type=load_tokenizer, path=str(dirs / llm)), **kwargs)
    if perturb:  # trained-looking projector and adapters (LoRA B is zero at init, a no-op)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith('projector.') or 'lora_B' in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _image_processor(dirs, tower):
    cls = CLIPImageProcessor if tower == 'clip' else SiglipImageProcessor
    return cls.from_pretrained(dirs / tower)


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0)
CASES = {  # id: (llm, tower, select_feature, LLaVAModel kwargs, expected strategy, tokens per image)
    'llama-clip-llm_lora': ('llama', 'clip', 'patch', dict(llm_lora=LORA), 'default', 4),
    'qwen2-siglip-vision_lora': ('qwen2', 'siglip', 'patch',
                                 dict(visual_encoder_lora=dict(target_modules=['q_proj', 'v_proj'], **LORA)),
                                 'full', 4),
    'llama-clip-cls_patch': ('llama', 'clip', 'cls_patch', {}, 'full', 5),
}


@pytest.mark.parametrize('case', list(CASES))
def test_export_reproduces_logits(dirs, tmp_path, case):
    llm, tower, select_feature, kwargs, strategy, n_img = CASES[case]
    model = _model(dirs, llm, tower, select_feature, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_llava_to_hf(model, tmp_path / 'hf', image_processor=_image_processor(dirs, tower),
                             source_config='cfg.py', source_checkpoint='iter_1.pth')

    # The caller's model is untouched: same trained tensors, adapters still separate.
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)

    hf = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation='eager').eval()
    cfg = hf.config
    assert cfg.vision_feature_select_strategy == strategy and cfg.image_seq_length == n_img
    assert cfg.vision_feature_layer == -2 and hf.dtype == torch.float32
    assert not any('lora' in k for k in hf.state_dict())
    processor = LlavaProcessor.from_pretrained(out)
    assert processor.tokenizer.convert_ids_to_tokens(cfg.image_token_index) == '<image>'
    if llm == 'llama':  # tokenizer held all 64 ids: one row added
        assert cfg.image_token_index == VOCAB and cfg.text_config.vocab_size == VOCAB + 1
    else:
        assert cfg.image_token_index == 40 and cfg.text_config.vocab_size == VOCAB
        assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # still tied

    # HF processor expands <image> to the tower's token count; logits match ours position by position.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    # The exported tokenizer adds no BOS itself (chat templates write it): the text carries it.
    batch = processor(images=image, text='<s><image> describe the image in one sentence .', return_tensors='pt')
    assert set(batch) == {'input_ids', 'attention_mask', 'pixel_values'}  # no token_type_ids
    ids = batch['input_ids'][0]
    assert int((ids == cfg.image_token_index).sum()) == n_img
    ours_ids = torch.cat([ids[:1], torch.tensor([IMG]), ids[1 + n_img:]])  # <s> <image> text
    with torch.no_grad():
        ours = model(dict(input_ids=ours_ids[None], pixel_values=batch['pixel_values']), mode='tensor')[0]
        theirs = hf(**batch).logits[0, :, :VOCAB]
    assert ours.shape == theirs.shape == (len(ids), VOCAB)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert compare_logits(model, out, hf_model=hf) < 1e-4
    # ... and the comparison can fail: an untrained projector / adapter gives other logits.
    assert compare_logits(_model(dirs, llm, tower, select_feature, perturb=False, **kwargs), out, hf_model=hf) > 1e-3

    info = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert info['source_checkpoint'] == 'iter_1.pth' and info['image_seq_length'] == n_img
    assert info['lora_merged'] == dict(llm='llm_lora' in kwargs, visual_encoder='visual_encoder_lora' in kwargs)


def test_bfloat16_without_tokenizer(dirs, tmp_path):
    model = _model(dirs).to(torch.bfloat16)
    model.tokenizer = None
    out = export_llava_to_hf(model, tmp_path / 'hf')
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype='auto', attn_implementation='eager')
    assert hf.dtype == torch.bfloat16 and json.loads((out / 'config.json').read_text())['dtype'] == 'bfloat16'
    assert hf.config.image_token_index == VOCAB and not (out / 'tokenizer_config.json').exists()
    model.float()  # bf16 weights upcast exactly: the fp32 comparison sees only the mapping
    assert compare_logits(model, out) < 1e-3


def test_linear_projector_is_refused(dirs, tmp_path):
    model = _model(dirs, projector=dict(type='linear'))
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        export_llava_to_hf(model, tmp_path / 'hf')
    assert not (tmp_path / 'hf').exists()


def test_out_dir_overwrite_rules(dirs, tmp_path):
    model = _model(dirs, 'qwen2', 'siglip')
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not empty'):
        export_llava_to_hf(model, busy)
    with pytest.raises(FileExistsError, match='not a previous export'):
        export_llava_to_hf(model, busy, overwrite=True)
    assert (busy / 'notes.txt').read_text() == 'keep me'

    out = export_llava_to_hf(model, tmp_path / 'hf')  # no image processor: tokenizer only
    assert (out / 'tokenizer_config.json').is_file() and not (out / 'processor_config.json').exists()
    with pytest.raises(FileExistsError, match='--overwrite'):
        export_llava_to_hf(model, out)
    export_llava_to_hf(model, out, image_processor=_image_processor(dirs, 'siglip'), overwrite=True)
    assert (out / 'processor_config.json').is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp dirs left


def test_select_strategy_mapping():
    assert vision_feature_select_strategy('patch', 1) == 'default'  # CLIP, DINOv2: drop CLS
    assert vision_feature_select_strategy('patch', 0) == 'full'  # SigLIP
    assert vision_feature_select_strategy('cls_patch', 5) == 'full'
    with pytest.raises(ValueError, match='registers'):
        vision_feature_select_strategy('patch', 5, 'Dinov2WithRegistersModel')


def test_mismatched_image_processor_is_refused(dirs, tmp_path):
    with pytest.raises(ValueError, match='32×32 images but the vision tower takes 16×16'):
        export_llava_to_hf(_model(dirs), tmp_path / 'hf',
                           image_processor=CLIPImageProcessor(size={'shortest_edge': 32},
                                                              crop_size={'height': 32, 'width': 32}))


CONFIG = '''from peft import LoraConfig

from mllm_align.models import LLaVAModel, VisionTower, load_llm, load_tokenizer

# PART 1 Settings
llm_name_or_path = {llm!r}
visual_encoder_name_or_path = {vision!r}

# PART 2 Model & Tokenizer
model = dict(
    type=LLaVAModel,
    llm=dict(type=load_llm, path=llm_name_or_path, attn_implementation='eager'),
    visual_encoder=dict(type=VisionTower, path=visual_encoder_name_or_path),
    tokenizer=dict(type=load_tokenizer, path=llm_name_or_path),
    llm_lora=dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0))
'''


def test_convert_script_end_to_end(dirs, tmp_path):
    cfg_path = tmp_path / 'llava_tiny_export.py'
    cfg_path.write_text(CONFIG.format(llm=str(dirs / 'llama'), vision=str(dirs / 'clip')))
    trained = build_model_from_config(cfg_path)
    gen = torch.Generator().manual_seed(5)
    state = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in trained.state_dict().items()}
    ckpt = tmp_path / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1), state_dict=state), ckpt)
    rebuilt = build_model_from_config(cfg_path, ckpt)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in state.items())

    out = tmp_path / 'hf'
    cmd = [sys.executable, 'tools/convert_to_hf.py', str(cfg_path), str(ckpt), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'convert_to_hf: config=' in proc.stdout and 'OK' in proc.stdout
    assert (out / 'processor_config.json').is_file()  # image processor found in the tower directory
    info = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert info['source_checkpoint'] == str(ckpt.resolve()) and info['lora_merged']['llm']
    assert compare_logits(rebuilt, out) < 1e-4
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids('<image>') == VOCAB

    rerun = subprocess.run(cmd + ['--no-verify'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode != 0 and '--overwrite' in rerun.stderr


# ------------------------------------------------------------------ evaluation harness contract
FAMILY = {'plain': 'vicuna', 'vicuna_v1': 'vicuna', 'llama3': 'llama3', 'qwen2': 'qwen2', 'phi3': 'phi3',
          'mistral': 'vicuna'}
_IMAGE, _TEXT = {'type': 'image'}, (lambda t: {'type': 'text', 'text': t})  # noqa: E731
HARNESS_CONVERSATIONS = {  # what lmms-eval (string content) and VLMEvalKit (item lists) send
    'image_text': [{'role': 'user', 'content': [_IMAGE, _TEXT('What is in the image?')]}],
    'string': [{'role': 'user', 'content': '<image>\nWhat is in the image?'}],
    'system_multi_turn': [{'role': 'system', 'content': [_TEXT('Answer in one word.')]},
                          {'role': 'user', 'content': [_IMAGE, _TEXT('Shape?')]},
                          {'role': 'assistant', 'content': 'a star'},
                          {'role': 'user', 'content': [_TEXT('And the colour?')]}],
    'two_images': [{'role': 'user', 'content': [_IMAGE, _IMAGE, _TEXT('Which one is red?')]}],
}


@pytest.fixture(scope='module')
def family_dirs(dirs):
    """Random tiny LLaMAs with each family's tiny BPE tokenizer (BOS/EOS/stop tokens as the real ones)."""
    from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer
    torch.manual_seed(1)
    for kind in set(FAMILY.values()):
        tok = build_tiny_tokenizer(kind, list(SAMPLE_CORPUS), vocab_size=400)
        LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                     pad_token_id=tok.pad_token_id)).save_pretrained(dirs / f'fam_{kind}')
        tok.save_pretrained(dirs / f'fam_{kind}')
    return dirs


def _non_square_images(n):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (12 + 5 * k, 21, 3), dtype=np.uint8)) for k in range(n)]


def _expanded(ids, image_token_id, n):
    return [t for i in ids for t in ([image_token_id] * n if i == IMG else [i])]


@pytest.mark.parametrize('template', list(FAMILY))
def test_harness_prompts_ids_and_pixels_match_training(family_dirs, tmp_path, template):
    from transformers import AutoProcessor, GenerationConfig

    from mllm_align.data.hf_chat_template import messages_to_conversation
    from mllm_align.data.image_processing import process_images
    from mllm_align.data.templates import build_generation_prompt, get_template, render_conversation

    kind = FAMILY[template]
    model = LLaVAModel(llm=dict(type=load_llm, path=str(family_dirs / f'fam_{kind}'), attn_implementation='eager'),
                       visual_encoder=dict(type=VisionTower, path=str(family_dirs / 'clip')),
                       tokenizer=dict(type=load_tokenizer, path=str(family_dirs / f'fam_{kind}')), template=template)
    image_processor = _image_processor(family_dirs, 'clip')
    out = export_llava_to_hf(model, tmp_path / 'hf', image_processor=image_processor)
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == 'LlavaProcessor'
    image_token_id = json.loads((out / 'config.json').read_text())['image_token_index']
    tok = model.tokenizer
    bos = tok.bos_token_id
    for name, messages in HARNESS_CONVERSATIONS.items():
        conv = messages_to_conversation(messages)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert prompt == render_conversation(conv, tok, template, add_generation_prompt=True), name
        # lmms-eval renders with the tokenizer's template: the same text.
        assert processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
        images = _non_square_images(prompt.count('<image>'))
        inputs = processor(images=images, text=prompt, return_tensors='pt')
        assert set(inputs) == {'input_ids', 'attention_mask', 'pixel_values'}, name  # no token_type_ids
        ids = inputs['input_ids'][0].tolist()
        assert ids == _expanded(build_generation_prompt(conv, tok, template), image_token_id, 4), name
        if bos is not None:
            assert ids.count(bos) == (1 if '{bos}' in get_template(template).prefix else 0), name  # never doubled
        # Padded to square with the mean, then resize/crop/normalise: exactly training's pixels.
        torch.testing.assert_close(inputs['pixel_values'], process_images(images, image_processor, True),
                                   atol=1e-6, rtol=0)
    gen = GenerationConfig.from_pretrained(out)
    stop = get_template(template).stop_token_ids(tok)
    assert gen.eos_token_id == (stop[0] if len(stop) == 1 else stop) and gen.pad_token_id == model.pad_token_id
    info = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert info['template'] == template and info['pad_image_to_square'] is True


def test_processor_contract_check_fails_on_a_wrong_template_or_double_bos(family_dirs, tmp_path):
    from mllm_align.data.hf_chat_template import chat_template_jinja
    from mllm_align.models.hf_processor import build_llava_processor, check_processor_contract

    llm_dir = family_dirs / 'fam_vicuna'
    model = LLaVAModel(llm=dict(type=load_llm, path=str(llm_dir)),
                       visual_encoder=dict(type=VisionTower, path=str(family_dirs / 'clip')),
                       tokenizer=dict(type=load_tokenizer, path=str(llm_dir)), template='vicuna_v1')
    image_processor = _image_processor(family_dirs, 'clip')
    out = export_llava_to_hf(model, tmp_path / 'hf', image_processor=image_processor, pad_image_to_square=False)
    assert json.loads((out / 'preprocessor_config.json').read_text())['image_processor_type'] == 'CLIPImageProcessor'
    image_token_id = json.loads((out / 'config.json').read_text())['image_token_index']
    args = (image_processor, False, 4, image_token_id)
    check_processor_contract(out, model.tokenizer, 'vicuna_v1', *args)  # what the export itself ran
    with pytest.raises(ValueError, match="'llama3' template gives"):
        check_processor_contract(out, model.tokenizer, 'llama3', *args)
    with pytest.raises(ValueError, match='other pixel_values than training'):
        check_processor_contract(out, model.tokenizer, 'vicuna_v1', image_processor, True, 4, image_token_id)
    # The training tokenizer as is (it prepends <s>) under a template that writes <s>: two BOS.
    tok = load_tokenizer(str(llm_dir))
    tok.add_tokens(['<image>'], special_tokens=True)
    raw = (tmp_path / 'raw', model.tokenizer, 'vicuna_v1', image_processor, False, 4,
           tok.convert_tokens_to_ids('<image>'))

    def save_raw():
        build_llava_processor(tok, image_processor, chat_template_jinja('vicuna_v1'), 8, 'default', 1).save_pretrained(
            raw[0])

    save_raw()
    with pytest.raises(ValueError, match='token_type_ids'):  # the tokenizer as the LLM ships it
        check_processor_contract(*raw)
    tok.model_input_names = tok.init_kwargs['model_input_names'] = ['input_ids', 'attention_mask']  # both: saved
    save_raw()
    with pytest.raises(ValueError, match='two BOS'):
        check_processor_contract(*raw)


def test_export_settings_come_from_the_config(tmp_path):
    from mmengine.config import Config

    from mllm_align.engine.build import export_settings_from_config
    cfg = Config(dict(model=dict(template='qwen2'), train_dataloader=dict(dataset=dict(template='qwen2'))))
    assert export_settings_from_config(cfg) == dict(template='qwen2', pad_image_to_square=True)
    cfg = Config(dict(model=dict(), train_dataloader=dict(dataset=dict(template='phi3', pad_image_to_square=False))))
    assert export_settings_from_config(cfg) == dict(template='phi3', pad_image_to_square=False)
    cfg = Config(dict(model=dict(template='vicuna_v1'), train_dataloader=dict(dataset=dict(template='plain'))))
    with pytest.raises(ValueError, match="model.template='vicuna_v1' but train_dataloader.dataset.template='plain'"):
        export_settings_from_config(cfg)


SFT_CONFIG = 'projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py'


@pytest.mark.slow
def test_harness_generate_gives_the_trained_models_answer(tiny_assets, tmp_path, monkeypatch):
    """Train the tiny SFT config a few steps, convert with the CLI, then drive the export exactly as
    lmms-eval's llava_hf / VLMEvalKit do: the greedy answer tokens equal LLaVAModel.predict's."""
    from mmengine.config import Config
    from transformers import AutoProcessor

    from mllm_align.data import llava_collate_fn
    from mllm_align.data.image_processing import process_images
    from mllm_align.data.templates import build_generation_prompt
    from mllm_align.models.llava import build_module

    monkeypatch.chdir(REPO)  # the tiny config's paths are relative to the repository
    cfg = Config.fromfile(SFT_CONFIG)
    model = build_model_from_config(cfg).train()
    dataset = build_module(cfg.train_dataloader.dataset)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    for step in range(3):  # a few real SFT steps (vicuna_v1 conversations, one- and two-image samples)
        batch = llava_collate_fn([dataset[i] for i in range(8 * step, 8 * step + 8)], model.pad_token_id)
        model(batch['data'], mode='loss')['loss_lm'].backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    ckpt = tmp_path / 'iter_3.pth'
    torch.save(dict(meta=dict(iter=3), state_dict=model.state_dict()), ckpt)

    out = tmp_path / 'hf'
    proc = subprocess.run([sys.executable, 'tools/convert_to_hf.py', SFT_CONFIG, str(ckpt), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'vicuna_v1 (from the config)' in proc.stdout and 'OK' in proc.stdout

    # --- the harness side: only transformers, only the export directory -----------------------------
    processor = AutoProcessor.from_pretrained(out)
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    with Image.open(cfg.evaluation_images[0]) as img:
        image = img.convert('RGB').crop((0, 4, img.width, img.height - 6))  # non-square: padding matters
    for question in cfg.evaluation_inputs:
        messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors='pt')
        with torch.no_grad():
            generated = hf.generate(**inputs, max_new_tokens=model.max_new_tokens, do_sample=False)
        new_tokens = generated[:, inputs['input_ids'].shape[1]:]
        answer = processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

        # --- mllm_align's own chat path on the same image and question ---------------------------------
        ids = build_generation_prompt([{'from': 'human', 'value': f'<image>\n{question}'}], model.tokenizer,
                                      model.template)
        pixels = process_images([image], image_processor_from_config(cfg), pad_to_square=True)
        ours = model.predict(dict(input_ids=torch.tensor([ids]), pixel_values=pixels,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.bool)))[0]
        assert new_tokens[0].tolist() == ours['token_ids'], question
        assert answer.strip() == ours['prediction'] and ours['token_ids'], question
        print(f'{question!r} -> {answer!r} ({len(ours["token_ids"])} tokens)')
