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
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, LlavaForConditionalGeneration, LlavaProcessor,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessor,
                          SiglipVisionConfig, SiglipVisionModel)

from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import LLaVAModel, VisionTower, load_llm, load_tokenizer
from mllm_align.models.export import (EXPORT_INFO_NAME, build_model_from_config, compare_logits,
                                      export_llava_to_hf, vision_feature_select_strategy)

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
    batch = processor(images=image, text='<image> describe the image in one sentence .', return_tensors='pt')
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
